"""bf16 matmuls on the fp32 GEMM (b6lab/cpu_bf16.py) give the numbers torch's bf16 kernels give.

Each test runs both routes on this machine, whatever its CPU, by setting the flag that
chooses between them.
"""

import torch

from b6lab import cpu_bf16
from b6lab.cpu_bf16 import Linear
from b6lab.lm_loss import lm_loss
from tests.test_model import tiny_model

BF16_ULP = 2.0**-7  # bf16 keeps 8 significant bits: neighbours differ by at most 2^-7 relatively


def route(monkeypatch, on_fp32_gemm: bool) -> None:
    monkeypatch.setattr(cpu_bf16, "BF16_ON_FP32_GEMM", on_fp32_gemm)


def linear_forward_backward(layer, x):
    x = x.clone().requires_grad_()
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    (y.float() * torch.linspace(-1, 1, y.size(-1))).sum().backward()
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad


def test_only_bf16_on_a_cpu_without_bf16_instructions_takes_the_fp32_gemm(monkeypatch):
    route(monkeypatch, True)
    assert cpu_bf16.emulated(torch.bfloat16, torch.device("cpu"))
    assert not cpu_bf16.emulated(torch.float32, torch.device("cpu"))
    assert not cpu_bf16.emulated(torch.bfloat16, torch.device("cuda"))
    route(monkeypatch, False)
    assert not cpu_bf16.emulated(torch.bfloat16, torch.device("cpu"))


def test_bf16_linear_products_are_exact_and_rounded_once(monkeypatch):
    """Products of bf16 numbers are exact in fp32, so the output is the exact sum rounded to bf16
    (up to the order of the fp32 additions)."""
    route(monkeypatch, True)
    torch.manual_seed(0)
    layer, x = Linear(96, 200), torch.randn(3, 40, 96)
    y = linear_forward_backward(layer, x)[0]
    x16, w16, b16 = (t.detach().to(torch.bfloat16).double() for t in (x, layer.weight, layer.bias))
    exact = x16 @ w16.t() + b16
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), exact, rtol=BF16_ULP / 2, atol=1e-6)


def test_bf16_linear_on_the_fp32_gemm_matches_torchs_bf16_kernels(monkeypatch):
    torch.manual_seed(0)
    layer, x = Linear(96, 200), torch.randn(3, 40, 96)
    route(monkeypatch, False)
    expected = linear_forward_backward(layer, x)
    route(monkeypatch, True)
    got = linear_forward_backward(layer, x)
    for a, b, name in zip(got, expected, ["output", "input grad", "weight grad", "bias grad"]):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a.float(), b.float(), rtol=2 * BF16_ULP, atol=2 * BF16_ULP * b.abs().max().item())


def test_fused_loss_in_bf16_is_the_same_on_either_route(monkeypatch):
    torch.manual_seed(0)
    h, weight, targets = torch.randn(2, 64, 32), torch.randn(500, 32) * 0.3, torch.randint(0, 500, (2, 64))
    results = []
    for on_fp32_gemm in (False, True):
        route(monkeypatch, on_fp32_gemm)
        h_, w_ = h.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm_loss(h_, w_, targets)
        loss.backward()
        results.append((loss.detach(), h_.grad, w_.grad))
    for got, want in zip(*reversed(results)):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2 * BF16_ULP, atol=2 * BF16_ULP * want.abs().max().item())


def test_a_bf16_training_step_of_the_model_is_the_same_on_either_route(monkeypatch):
    model = cpu_bf16.use_fp32_gemm(tiny_model("sdpa").train())  # as fast_paths.make_model does for such a run
    apply = cpu_bf16._Bf16Linear.apply
    idx = torch.randint(0, 256, (2, 33))
    calls = []
    monkeypatch.setattr(cpu_bf16._Bf16Linear, "apply", lambda *args: calls.append(1) or apply(*args))
    results = []
    for on_fp32_gemm in (False, True):
        route(monkeypatch, on_fp32_gemm)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_torch, grads_torch), (loss_gemm, grads_gemm) = results
    assert len(calls) == 4 * len(model.blocks)  # every Linear of every block took the fp32 GEMM once
    torch.testing.assert_close(loss_gemm, loss_torch, rtol=1e-2, atol=0)
    for got, want in zip(grads_gemm, grads_torch):
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2 * want.abs().max().item())


def test_the_model_gets_the_fp32_gemm_linear_only_where_the_emulation_applies(monkeypatch):
    from b6lab import parts
    from b6lab.attention import AttentionContext
    from b6lab.config import load_config

    cfg = load_config(preset="tiny", overrides=["model.vocab_size=256"]).model
    route(monkeypatch, True)
    for dtype, swapped in ((torch.bfloat16, True), (torch.float32, False)):
        model, _ = parts.build_model(cfg, AttentionContext(torch.device("cpu"), dtype, cfg.head_dim))
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert all((type(m) is Linear) == swapped for m in linears)
        assert model.lm_head.weight is model.tok_emb.weight  # still tied
        assert model.blocks[0].ffn.down.residual_projection
