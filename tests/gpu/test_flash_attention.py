"""Each flash backend against `eager` computed in fp32: outputs and gradients, bf16 tolerances,
causal, with and without packed-document boundaries. A backend that cannot run on this GPU
(flash_attn not installed, FA3 on a non-Hopper GPU, ...) is skipped with its reason."""

import pytest
import torch

from b6lab import registry
from b6lab.attention import AttentionContext, Documents

BACKENDS = [("flash-v1", {}), ("flash-v2", {}), ("flash-v3", {}), ("flash-v4", {}), ("flex", {}), ("sdpa", {"sdpa_kernel": "flash"}),
            ("sdpa", {"sdpa_kernel": "efficient"}), ("sdpa", {}), ("auto", {})]
B, H, S, D = 2, 4, 256, 64


def build(name, options, dtype=torch.bfloat16):
    context = AttentionContext(torch.device("cuda"), dtype, head_dim=D)
    reg = registry.get("attention", name)
    reason = reg.why_unavailable(**context.as_kwargs())
    if reason:
        pytest.skip(f"{name}: {reason}")
    return reg.build(context, **options)


def inputs(cuda, with_docs):
    generator = torch.Generator(device=cuda).manual_seed(0)
    q, k, v = (torch.randn(B, H, S, D, device=cuda, generator=generator) for _ in range(3))
    docs = None
    if with_docs:  # row 0: three documents; row 1: one
        doc_ids = torch.zeros(B, S, dtype=torch.int64, device=cuda)
        doc_ids[0, 70:] = 1
        doc_ids[0, 200:] = 2
        docs = Documents(doc_ids)
    return q, k, v, docs


def run(backend, q, k, v, docs, dtype):
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out = backend(q, k, v, causal=True, docs=docs, dropout_p=0.0, scale=D**-0.5)
    out.backward(torch.ones_like(out))
    return [t.float() for t in (out, q.grad, k.grad, v.grad)]


@pytest.mark.parametrize("with_docs", [False, True], ids=["rows", "packed-docs"])
@pytest.mark.parametrize("name,options", BACKENDS, ids=lambda p: p if isinstance(p, str) else ",".join(f"{k}={v}" for k, v in p.items()))
def test_backend_matches_fp32_eager(cuda, name, options, with_docs):
    backend = build(name, options)
    q, k, v, docs = inputs(cuda, with_docs)
    if with_docs and options.get("sdpa_kernel") == "flash":
        with pytest.raises(Exception, match="document"):  # torch's flash kernel takes no mask: a clear error
            run(backend, q, k, v, docs, torch.bfloat16)
        return
    expected = run(build("eager", {}, torch.float32), q, k, v, docs, torch.float32)
    got = run(backend, q, k, v, docs, torch.bfloat16)
    for what, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a, b, atol=3e-2, rtol=3e-2, msg=lambda m: f"{name} {options} {what}: {m}")


def test_packed_documents_do_not_see_each_other(cuda):
    """The second document's output must not change when the first one's tokens do."""
    backend = build("auto", {})
    q, k, v, docs = inputs(cuda, with_docs=True)
    base = run(backend, q, k, v, docs, torch.bfloat16)[0]
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[0, :, :70] = torch.randn_like(t[0, :, :70])
    changed = run(backend, q2, k2, v2, docs, torch.bfloat16)[0]
    torch.testing.assert_close(changed[0, :, 70:], base[0, :, 70:], atol=0, rtol=0)
