"""The example plugins of plugins/: each checked against a reference, trained with, loaded from
its file, and loaded as an installed package through the "b6lab" entry-point group."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from b6lab import registry
from b6lab.attention import AttentionContext, Documents
from b6lab.config import load_config
from b6lab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SLIDING_WINDOW = ROOT / "plugins" / "sliding_window.py"
SGD_MOMENTUM = ROOT / "plugins" / "sgd_momentum.py"
CPU = AttentionContext(torch.device("cpu"), torch.float32, head_dim=8)


@pytest.fixture
def example_plugins():
    """Both example files registered for one test, as a config's `plugins:` list would."""
    names = [registry.load_plugin_path(str(path)) for path in (SLIDING_WINDOW, SGD_MOMENTUM)]
    yield
    for name in names:
        registry.unregister_plugin(name)


def banded_reference(q, k, v, window, docs=None):
    """softmax(q k^T / sqrt(d)) v over keys j with i - window < j <= i (and the same document)."""
    i = torch.arange(q.size(-2))[:, None]
    j = torch.arange(k.size(-2))[None, :]
    allowed = (j <= i) & (i - j < window)
    if docs is not None:
        allowed = allowed & docs.mask()
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def test_sliding_window_with_a_window_as_long_as_the_sequence_is_causal_attention(example_plugins):
    q, k, v = torch.randn(3, 2, 4, 12, 8).unbind(0)
    window = registry.get("attention", "sliding-window").build(CPU, window=12)
    eager = registry.get("attention", "eager").build(CPU)
    scale = 8**-0.5
    torch.testing.assert_close(window(q, k, v, causal=True, scale=scale), eager(q, k, v, causal=True, scale=scale))


@pytest.mark.parametrize("window", [1, 3, 5])
def test_sliding_window_sees_only_the_last_window_tokens(example_plugins, window):
    q, k, v = torch.randn(3, 2, 4, 12, 8).unbind(0)
    attend = registry.get("attention", "sliding-window").build(CPU, window=window)
    torch.testing.assert_close(attend(q, k, v, causal=True, scale=8**-0.5), banded_reference(q, k, v, window))


def test_sliding_window_respects_document_boundaries(example_plugins):
    q, k, v = torch.randn(3, 2, 4, 12, 8).unbind(0)
    tokens = torch.tensor([[5, 0, 7, 7, 7, 7, 0, 3, 3, 3, 3, 3], [1, 1, 1, 1, 1, 1, 1, 1, 0, 2, 2, 2]])
    docs = Documents.from_tokens(tokens, eos_id=0)
    attend = registry.get("attention", "sliding-window").build(CPU, window=4)
    out = attend(q, k, v, causal=True, docs=docs, scale=8**-0.5)
    torch.testing.assert_close(out, banded_reference(q, k, v, 4, docs))


def test_sliding_window_while_generating_sees_the_last_window_keys(example_plugins):
    # One new query against a KV cache of 10 keys: no causal mask, but still only the last 3 keys.
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 8)
    attend = registry.get("attention", "sliding-window").build(CPU, window=3)
    expected = torch.softmax((q @ k[..., -3:, :].transpose(-2, -1)) * 8**-0.5, dim=-1) @ v[..., -3:, :]
    torch.testing.assert_close(attend(q, k, v, causal=False, scale=8**-0.5), expected)


def test_a_window_that_is_not_an_integer_is_a_config_error(example_plugins):
    with pytest.raises(ConfigError, match="expected an integer") as caught:
        load_config(preset="tiny", overrides=["model.attention=sliding-window", "model.window=wide"])
    assert caught.value.key == "model.window"


def test_a_window_below_one_is_a_config_error_before_training(example_plugins):
    from b6lab import parts

    cfg = load_config(preset="tiny", overrides=["model.attention=sliding-window", "model.window=0"])
    with pytest.raises(ConfigError, match="at least 1") as caught:
        parts.check_plugins(cfg, AttentionContext(torch.device("cpu"), torch.float32, cfg.model.head_dim))
    assert caught.value.key == "model.window"


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_takes_the_same_steps_as_torch_sgd(example_plugins, nesterov):
    torch.manual_seed(0)
    start = [torch.randn(5, 4), torch.randn(4)]
    target = torch.randn(5, 4)

    def run(make_optimizer):
        weight, bias = (p.clone().requires_grad_() for p in start)
        optimizer = make_optimizer([{"params": [weight]}, {"params": [bias], "weight_decay": 0.0}])
        for _ in range(6):
            optimizer.zero_grad()
            ((weight - target) ** 2).sum().add(bias.pow(2).sum()).backward()
            optimizer.step()
        return weight.detach(), bias.detach()

    options = dict(lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=nesterov)
    ours = run(lambda groups: registry.get("optimizer", "sgd").build(groups, **options))
    theirs = run(lambda groups: torch.optim.SGD(groups, **options))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_a_run_trains_with_both_example_plugins_from_their_files(tmp_path):
    from b6lab.train.trainer import Trainer

    cfg = load_config(preset="tiny", overrides=[
        f"plugins=[{SLIDING_WINDOW}, {SGD_MOMENTUM}]", "model.attention=sliding-window", "model.window=16",
        "optim.name=sgd", "optim.lr=0.3", "train.max_steps=6", "train.eval_interval=6", "train.eval_steps=2",
        "logging.progress=false",
    ])
    try:
        summary = Trainer(cfg, tmp_path / "run", say=lambda _: None).run()
    finally:
        for path in (SLIDING_WINDOW, SGD_MOMENTUM):
            registry.unregister_plugin(f"file:{path}")
    assert summary["status"] == "completed" and math.isfinite(summary["final_val_loss"])
    recorded = (tmp_path / "run" / "config.yaml").read_text()
    assert f"file {SLIDING_WINDOW}" in recorded and f"file {SGD_MOMENTUM}" in recorded


def test_the_example_plugins_work_as_an_installed_package(tmp_path):
    """The same files as importable modules, with a .dist-info declaring entry points in the group
    "b6lab" on the path: what `pip install` of a plugin package leaves behind."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(SLIDING_WINDOW, site / "b6lab_sliding_window.py")
    shutil.copy(SGD_MOMENTUM, site / "b6lab_sgd_momentum.py")
    dist_info = site / "b6lab_example_plugins-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: b6lab-example-plugins\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[b6lab]\nsliding_window = b6lab_sliding_window\nsgd_momentum = b6lab_sgd_momentum\n"
    )
    script = textwrap.dedent(f"""
        import json
        from b6lab import registry
        from b6lab.config import load_config
        from b6lab.train.trainer import Trainer

        cfg = load_config(preset="tiny", overrides=[
            "model.attention=sliding-window", "model.window=16", "optim.name=sgd", "optim.lr=0.3",
            "train.max_steps=4", "train.eval_interval=4", "train.eval_steps=2", "logging.progress=false"])
        summary = Trainer(cfg, {str(tmp_path / "run")!r}, say=lambda _: None).run()
        print(json.dumps({{"status": summary["status"],
                           "sources": [registry.get("attention", "sliding-window").source,
                                       registry.get("optimizer", "sgd").source]}}))
    """)
    env = os.environ | {"PYTHONPATH": str(site), "B6LAB_LOAD_ENTRYPOINTS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    assert result["sources"] == [
        "package b6lab-example-plugins 0.1.0 (entry point sliding_window)",
        "package b6lab-example-plugins 0.1.0 (entry point sgd_momentum)",
    ]


RMSNORM_PRE = ROOT / "plugins" / "rmsnorm_pre.py"
SYNTHETIC_TEXT = ROOT / "plugins" / "synthetic_text.py"


def test_the_sums_source_is_reproducible_and_resumable():
    name = registry.load_plugin_path(str(SYNTHETIC_TEXT))
    try:
        source = registry.get("dataset", "sums").build(0.1, n_documents=200, text_seed=3)
        again = registry.get("dataset", "sums").build(0.1, n_documents=200, text_seed=3)
        train, val = list(source.documents("train")), list(source.documents("val"))
        with pytest.raises(ConfigError, match="at least 2"):
            registry.get("dataset", "sums").build(0.1, n_documents=1)
    finally:
        registry.unregister_plugin(name)
    assert len(train) + len(val) == 200 and 10 <= len(val) <= 30
    assert train == list(again.documents("train")) and list(source.documents("train", 5)) == train[5:]
    for line in "".join(train).splitlines():
        a, b, total = (int(x) for x in line.replace("+", "=").split("="))
        assert a + b == total


def test_a_run_trains_on_sums_with_the_rmsnorm_pre_placement(tmp_path):
    from b6lab.train.trainer import Trainer

    cfg = load_config(preset="tiny", overrides=[
        f"plugins=[{RMSNORM_PRE}, {SYNTHETIC_TEXT}]", "model.norm=rms-pre", "model.rms_eps=1e-5",
        "data.source=sums", "data.n_documents=2000", "data.tokenizer=byte", "train.max_steps=6",
        "train.eval_interval=6", "train.eval_steps=2", "logging.progress=false",
    ])
    try:
        trainer = Trainer(cfg, tmp_path / "run", say=lambda _: None)
        summary = trainer.run()
    finally:
        for path in (RMSNORM_PRE, SYNTHETIC_TEXT):
            registry.unregister_plugin(f"file:{path}")
    assert summary["status"] == "completed" and math.isfinite(summary["final_val_loss"])
    assert isinstance(trainer.model.final_norm, torch.nn.RMSNorm) and trainer.model.final_norm.eps == 1e-5
    recorded = (tmp_path / "run" / "config.yaml").read_text()
    assert f"file {RMSNORM_PRE}" in recorded and f"file {SYNTHETIC_TEXT}" in recorded
