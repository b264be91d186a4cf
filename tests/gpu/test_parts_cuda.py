"""Issue 15's parts on a CUDA GPU: flex (compiled, the way it runs) trains with GQA, QK-norm,
soft-capped logits, z-loss and Muon, and its sliding window matches eager's."""

import math

import torch

from b6lab import parts
from b6lab.attention import AttentionContext, Documents
from b6lab.config import load_config
from b6lab.plugins import attention


def test_flex_with_the_new_parts_trains_on_cuda():
    cfg = load_config(preset="tiny", overrides=[
        "model.attention=flex", "model.vocab_size=256", "model.n_heads=4", "model.n_kv_heads=2", "model.qk_norm=true",
        "model.norm=peri", "model.norm_layer=rmsnorm", "model.feedforward=swiglu", "model.logit_softcap=30",
        "train.z_loss=1e-4", "optim.name=muon",
    ])
    context = AttentionContext(torch.device("cuda"), torch.bfloat16, cfg.model.head_dim)
    torch.manual_seed(0)
    model, chosen = parts.build_model(cfg.model, context, z_loss=cfg.train.z_loss)
    model.cuda().train()
    optimizer = parts.build_optimizer(cfg.optim, model)
    idx = torch.randint(0, 256, (8, 65), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    docs = Documents.from_tokens(idx[:, :-1], eos_id=0)
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(idx[:, :-1], idx[:, 1:], docs=docs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert chosen == "flex" and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_flex_sliding_window_matches_eager_on_cuda():
    context = AttentionContext(torch.device("cuda"), torch.bfloat16, head_dim=64)
    flex = attention.flex(context, window=32)
    g = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, 64, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    got = flex(q, k, v, causal=True, docs=None, dropout_p=0.0, scale=0.125).float()
    pos = torch.arange(256, device="cuda")
    keep = (pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < 32)
    scores = (q.float() @ k.float().transpose(-2, -1)) * 0.125
    want = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ v.float()
    torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)


def test_the_fused_lm_loss_on_cuda_equals_cross_entropy_over_full_logits():
    """The loss's softmax runs in place over the chunk's logits (torch's kernel, out= its input):
    on CUDA, eager and compiled, fp32 and under bf16 autocast, it must give the plain route's
    loss and gradients, a 50k vocabulary in two chunks included."""
    import torch.nn.functional as F

    from b6lab import lm_loss as module

    torch.manual_seed(0)
    h0, w0 = torch.randn(2048, 64, device="cuda"), torch.randn(50304, 64, device="cuda") * 0.3
    targets = torch.randint(0, 50304, (2048,), device="cuda")
    targets[:7] = -1

    def run(fn, autocast):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = fn(h, w, targets)
        (3.0 * loss).backward()
        return loss.detach().float(), h.grad, w.grad

    plain = lambda h, w, t: F.cross_entropy(F.linear(h, w).float(), t, ignore_index=-1)  # noqa: E731
    for autocast, tolerance in ((False, dict(atol=1e-5, rtol=1e-4)), (True, dict(atol=2e-3, rtol=2e-2))):
        expected = run(plain, autocast)
        for fn in (module.lm_loss, torch.compile(module.lm_loss)):
            for got, want in zip(run(fn, autocast), expected):
                torch.testing.assert_close(got, want, **tolerance)
