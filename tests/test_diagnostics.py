"""Per-block diagnostics in metrics.jsonl: gradient norm and residual RMS, at step 0 and at every evaluation."""

import math

import pytest

from b6lab.train.records import read_metrics


@pytest.fixture
def run(tiny_run):
    """run(tmp_path, *overrides, name="run") -> the diagnostics records of a 3-layer tiny run."""

    def run(tmp_path, *overrides, name="run"):
        tiny_run.train(tmp_path / name, "model.n_layers=3", *overrides, max_steps=6, eval_interval=3, eval_steps=1)
        return [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if "block_grad_norm" in r]

    return run


def test_one_line_per_evaluation_and_one_at_initialisation(tmp_path, run):
    lines = run(tmp_path)
    assert [(r["step"], r["tokens"]) for r in lines] == [(0, 0), (3, 3 * 8 * 64), (6, 6 * 8 * 64)]
    for record in lines:
        assert set(record) == {"step", "tokens", "block_grad_norm", "block_residual_rms"}
        assert len(record["block_grad_norm"]) == len(record["block_residual_rms"]) == 3
        assert all(math.isfinite(v) and v > 0 for v in record["block_grad_norm"] + record["block_residual_rms"])
    assert lines[0]["block_residual_rms"] != lines[-1]["block_residual_rms"]  # measured, not copied


def test_gradient_norms_are_taken_before_clipping(tmp_path, run):
    # Step 0's gradient is the first batch's at the initial weights, whatever the clip; a clip of
    # 1e-3 scales it by ~1000 before the optimizer sees it, and the record undoes that.
    clipped = run(tmp_path, "optim.grad_clip=0.001", name="clipped")[0]["block_grad_norm"]
    free = run(tmp_path, "optim.grad_clip=0", name="free")[0]["block_grad_norm"]
    assert clipped == pytest.approx(free, rel=1e-3)


def test_post_ln_gradients_grow_toward_the_last_block_at_initialisation(tmp_path, run):
    # Xiong et al. 2020, Fig. 3: Post-LN's gradient norm increases with the layer index at init;
    # Pre-LN's does not grow that way.
    post = run(tmp_path, "model.norm=post", "model.n_layers=6", "train.max_steps=1", name="post")[0]["block_grad_norm"]
    pre = run(tmp_path, "model.norm=pre", "model.n_layers=6", "train.max_steps=1", name="pre")[0]["block_grad_norm"]
    assert post[-1] / post[0] > pre[-1] / pre[0]
