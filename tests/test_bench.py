"""`b6lab bench` and the performance changes it measures (no timing is asserted here).

The bench's JSON line, its side-by-side of attention backends, and the fused LM-head loss that
must give what F.cross_entropy over the full logits gives, loss and gradients.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from b6lab import cpu_bf16
from b6lab.cli import main
from b6lab.lm_loss import LOSS_CHUNK_ELEMENTS, lm_loss

QUICK = ["--preset", "tiny", "--json", "--steps", "2", "--warmup", "1", "--set", "logging.progress=false"]


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_ends_with_a_json_line_of_its_figures(tmp_path):
    """Through the installed command line, as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "b6lab.cli", "bench", *QUICK, "--peak-tflops", "1.0"],
                          capture_output=True, text=True, cwd=tmp_path, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert "tokens/s" in done.stdout and "MFU" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tokens_per_sec"] > 0 and result["step_time_s"] > 0
    assert len(result["step_times_s"]) == 2 and result["compile"] is False  # compile: auto is off on a CPU
    assert result["tokens_per_sec"] == pytest.approx(2 * 8 * 64 / sum(result["step_times_s"]), rel=1e-2)
    assert result["peak_mem_mb"] > 0
    assert result["params"] == 115328  # the tiny preset with the byte tokenizer
    assert result["peak_tflops"] == 1.0 and result["peak_source"] == "given"
    assert result["mfu"] == pytest.approx(result["flops_per_token"] * result["tokens_per_sec"] / 1e12)
    assert result["tokens_per_step"] == 8 * 64 and result["attention"] == "sdpa"
    assert not any(tmp_path.iterdir()), "the bench's run folder belongs in a temporary directory"


def test_bench_measures_the_peak_when_not_given(capsys):
    assert main(["bench", *QUICK, "--steps", "1", "--warmup", "0"]) == 0
    result = last_json(capsys)
    assert result["peak_source"].startswith("measured") and result["peak_tflops"] > 0
    assert 0 < result["mfu"]


def test_bf16_on_the_fp32_gemm_is_measured_against_the_fp32_peak(capsys, monkeypatch):
    monkeypatch.setattr(cpu_bf16, "BF16_ON_FP32_GEMM", True)
    assert main(["bench", *QUICK, "--steps", "1", "--warmup", "0", "--set", "train.precision=bf16"]) == 0
    result = last_json(capsys)
    assert result["precision"] == "bf16" and result["peak_source"].startswith("measured (fp32 matmul")


def test_every_attention_backend_side_by_side(capsys):
    assert main(["bench", *QUICK, "--steps", "1", "--warmup", "0", "--peak-tflops", "1.0", "--same-process",
                 "--set", "model.attention=all", "--set", "train.precision=fp32"]) == 0  # fp32: eager vs sdpa to 1e-5
    rows = {row["attention"]: row for row in last_json(capsys)["backends"]}
    assert {"eager", "sdpa", "flex", "flash-v1", "flash-v2", "flash-v3", "flash-v4", "auto"} <= set(rows)
    assert rows["eager"]["max_abs_diff"] == 0.0
    assert rows["sdpa"]["max_abs_diff"] < 1e-5
    for name in ("eager", "sdpa"):
        assert rows[name]["tokens_per_sec"] > 0 and rows[name]["peak_mem_mb"] > 0
        assert rows[name]["attention"] == name
    if not torch.cuda.is_available():
        assert "CUDA" in rows["flash-v2"]["unavailable"] or "not installed" in rows["flash-v2"]["unavailable"]
        assert rows["auto"]["chooses"] == "sdpa"
        assert "CUDA" in rows["flex"]["unavailable"]  # no backward pass on a CPU


def test_bench_refuses_zero_steps(capsys):
    assert main(["bench", "--preset", "tiny", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The fused LM head + cross-entropy keeps the numbers of the plain route


def plain_loss(h, weight, targets):
    return F.cross_entropy(F.linear(h, weight).float().flatten(0, -2), targets.flatten(), ignore_index=-1)


def loss_and_grads(loss_fn, h, weight, targets, autocast=False, scale=3.0):
    h, weight = h.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(h, weight, targets)
    (scale * loss).backward()  # 3: a gradient other than 1 reaches the loss, as with accumulation
    return loss.detach(), h.grad, weight.grad


@pytest.fixture
def head_inputs():
    torch.manual_seed(0)
    h, weight = torch.randn(3, 50, 16), torch.randn(300, 16) * 0.3
    targets = torch.randint(0, 300, (3, 50))
    targets[0, :7] = -1  # ignored positions
    return h, weight, targets


@pytest.mark.parametrize("chunk_elements", [LOSS_CHUNK_ELEMENTS, 300 * 40])  # one chunk; four uneven ones
@pytest.mark.parametrize("scale", [1.0, 3.0])  # loss.backward() itself takes a shorter way
def test_fused_loss_equals_cross_entropy_over_full_logits(head_inputs, chunk_elements, scale, monkeypatch):
    monkeypatch.setattr("b6lab.lm_loss.LOSS_CHUNK_ELEMENTS", chunk_elements)
    expected, got = loss_and_grads(plain_loss, *head_inputs, scale=scale), loss_and_grads(lm_loss, *head_inputs, scale=scale)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_fused_loss_stays_exact_where_the_targets_probability_underflows(head_inputs):
    """A target 200 below the row's top logit has probability exp(-200), zero in fp32: its loss
    (~200) must still come out finite and exact, as the plain route's log-softmax gives it."""
    h, weight, targets = head_inputs
    h = h.clone()
    h[1, :5] = weight[targets[1, :5] + 1] * 400  # the next id's logit far above the target's
    expected, got = loss_and_grads(plain_loss, h, weight, targets), loss_and_grads(lm_loss, h, weight, targets)
    assert expected[0].isfinite() and expected[0] > 5
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fused_loss_under_bf16_autocast_is_close(head_inputs):
    expected, got = loss_and_grads(plain_loss, *head_inputs, autocast=True), loss_and_grads(lm_loss, *head_inputs, autocast=True)
    torch.testing.assert_close(got[0], expected[0], atol=2e-2, rtol=1e-2)
    for a, b in zip(got[1:], expected[1:]):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-2)
        assert a.dtype == torch.float32  # gradients come back in the parameters' dtype


def test_fused_loss_under_fp16_autocast_keeps_its_tiny_gradients():
    """fp16 gradients are made in forward, before the GradScaler's scale arrives in backward:
    at ~1 / (tokens x vocab) each, fp16 would flush them to zero."""
    torch.manual_seed(0)
    h, weight = torch.randn(2048, 16), torch.randn(4096, 16) * 0.3
    targets = torch.randint(0, 4096, (2048,))
    expected = loss_and_grads(plain_loss, h, weight, targets)
    h, weight = h.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = lm_loss(h, weight, targets)
    (3.0 * loss).backward()
    for got, want in zip((h.grad, weight.grad), expected[1:]):
        torch.testing.assert_close(got, want, atol=2e-3 * want.abs().max().item(), rtol=2e-2)


def test_fused_loss_without_grad_mode_computes_no_gradients(head_inputs):
    h, weight, targets = head_inputs
    weight = weight.clone().requires_grad_()
    with torch.no_grad():
        loss = lm_loss(h, weight, targets)
    torch.testing.assert_close(loss, plain_loss(h, weight.detach(), targets))
    assert loss.grad_fn is None

