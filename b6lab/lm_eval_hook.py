"""Makes `lm_eval --model b6lab` find b6lab's model with lm-eval 0.4.13 and earlier.

Those releases discover no plugins: lm-eval registers its own models in `lm_eval/models/__init__.py`
as lazy "module:Class" names, and a model outside it exists only once its module is imported. So
the wheel installs this file at the top of site-packages as `_b6lab_lm_eval_hook` with a .pth file
that calls `install()` at interpreter start (the way setuptools' own editable installs hook in):
a finder that waits for `lm_eval.models` and then adds b6lab's lazy name next to lm-eval's.
Until then it costs one string comparison per import; it imports nothing, and b6lab's model
module (torch, lm-eval) only when lm-eval asks for the model. Later lm-eval releases read the
entry point b6lab declares (group `lm_eval.models` in pyproject.toml); the name is then already
there and this adds nothing.
"""

import sys

MODEL = "b6lab"
TARGET = "b6lab.lm_eval_model:B6LabLM"  # the same as the entry point in pyproject.toml


class AfterLmEvalModels:
    """A meta-path finder that finds nothing itself: it wraps the loader of `lm_eval.models`."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "lm_eval.models":
            return None
        sys.meta_path.remove(cls)  # once is enough, and find_spec below must not come back here
        from importlib.util import find_spec

        spec = find_spec(name)
        if spec is not None and spec.loader is not None:
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                register()

            spec.loader.exec_module = exec_module
        return spec


def register() -> None:
    """Add b6lab's lazy name to lm-eval's model registry, unless something registered it already."""
    registry = getattr(sys.modules.get("lm_eval.api.registry"), "model_registry", None)
    if registry is not None and MODEL not in registry:  # None: a layout this hook predates
        registry.register(MODEL, target=TARGET)


def install() -> None:
    if "lm_eval.models" in sys.modules:
        register()
    elif AfterLmEvalModels not in sys.meta_path:
        sys.meta_path.insert(0, AfterLmEvalModels)
