"""Shared test set-up: no installed entry-point plugins, a private cache, offline wandb.

Fake plugins are registered through the `register_plugin` fixture and unregistered after the
test, so no test's plugins leak into another's. A run short enough for a test comes from the
`tiny_run` fixture (tests/tiny.py, which test modules import directly).
"""

import os
import tempfile

# Before b6lab loads any plugin: what happens to be installed must not change test results.
os.environ["B6LAB_LOAD_ENTRYPOINTS"] = "0"
os.environ.setdefault("B6LAB_CACHE", tempfile.mkdtemp(prefix="b6lab-test-cache-"))
os.environ["WANDB_MODE"] = "offline"
os.environ["HF_HUB_OFFLINE"] = "1"
# datasets leaves a lock file per load_dataset call in its cache: keep them out of the user's.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="b6lab-test-datasets-"))
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402

from b6lab import registry  # noqa: E402
from tests.tiny import TinyRun  # noqa: E402


@pytest.fixture
def register_plugin():
    """register_plugin(obj, name="test-plugin") registers a plugin object for this test only."""
    names = []

    def register(plugin, name="test-plugin", source="test fixture"):
        registry.load_plugins()
        registry.register_plugin(plugin, name, source)
        names.append(name)
        return plugin

    yield register
    for name in names:
        registry.unregister_plugin(name)


@pytest.fixture(scope="session")
def tiny_run() -> type[TinyRun]:
    """The factory of short `tiny` runs (TinyRun): `tiny_run.config(...)`, `tiny_run.train(folder, ...)`."""
    return TinyRun


@pytest.fixture
def tiny_overrides(tmp_path):
    """`--set` texts that make a `tiny` run take a few seconds and write into tmp_path."""
    return TinyRun.sets("train.log_interval=2", f"train.out_dir={tmp_path / 'run'}")


@pytest.fixture
def unload_new_plugins():
    """Unregister every plugin a test loaded (plugin files, a sweep's plugins) so no other test sees it."""
    before = {name for name, _ in registry.pm.list_name_plugin()}
    yield
    for name, _ in registry.pm.list_name_plugin():
        if name not in before:
            registry.unregister_plugin(name)
