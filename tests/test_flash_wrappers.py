"""The flash plugins' own code on a CPU: layout (B, H, S, D) <-> (B, S, H, D), the cast to half
precision and back, and packed documents as cu_seqlens.

flash-attn needs CUDA and cannot be installed here, so its functions are stood in for by
reference math written from flash-attn's documented contract (one sequence per cu_seqlens
segment, causal masks aligned to the bottom right). What this checks is b6lab's side of the
call; tests/gpu/test_flash_attention.py checks the real kernels wherever flash-attn is installed.
"""

import sys
import types

import pytest
import torch

from b6lab.attention import AttentionContext, Documents
from b6lab.plugins import attention

B, H, S, D = 2, 3, 12, 8


def reference(q, k, v, scale, causal):
    """One sequence, flash layout (S, H, D), computed in fp32."""
    q, k, v = (t.float().transpose(0, 1) for t in (q, k, v))  # (H, S, D)
    scores = (q @ k.transpose(-2, -1)) * scale
    if causal:
        sq, sk = q.size(1), k.size(1)
        keep = torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + (sk - sq)
        scores = scores.masked_fill(~keep, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).transpose(0, 1)


def padded(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    assert q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] == D and q.shape[2] == H
    return torch.stack([reference(q[b], k[b], v[b], softmax_scale, causal) for b in range(q.size(0))]).to(q.dtype)


def varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
    assert q.dim() == 3 and cu_q.dtype == torch.int32 and cu_k.dtype == torch.int32
    out = torch.empty(q.shape, dtype=torch.float32)
    for i in range(len(cu_q) - 1):
        qs, ks = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
        assert qs.stop - qs.start <= max_q and ks.stop - ks.start <= max_k
        out[qs] = reference(q[qs], k[ks], v[ks], softmax_scale, causal)
    return out.to(q.dtype)


@pytest.fixture
def stand_in_flash_attn(monkeypatch):
    flash_attn = types.ModuleType("flash_attn")
    flash_attn.flash_attn_func, flash_attn.flash_attn_varlen_func = padded, varlen
    interface = types.ModuleType("flash_attn.flash_attn_interface")
    interface.flash_attn_unpadded_func = varlen  # the 1.x name
    fa3 = types.ModuleType("flash_attn_interface")
    fa3.flash_attn_func = lambda q, k, v, softmax_scale=None, causal=False: padded(q, k, v, 0.0, softmax_scale, causal)
    fa3.flash_attn_varlen_func = lambda q, k, v, cu_q, cu_k, mq, mk, softmax_scale=None, causal=False: (
        varlen(q, k, v, cu_q, cu_k, mq, mk, 0.0, softmax_scale, causal), None)  # some FA3 releases add the LSE
    for name, module in [("flash_attn", flash_attn), ("flash_attn.flash_attn_interface", interface), ("flash_attn_interface", fa3)]:
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("factory", [attention.flash_v1, attention.flash_v2, attention.flash_v3])
@pytest.mark.parametrize("with_docs", [False, True], ids=["rows", "packed-docs"])
def test_flash_plugin_matches_eager(stand_in_flash_attn, factory, with_docs):
    context = AttentionContext(torch.device("cpu"), torch.float32, head_dim=D)
    backend, eager = factory(context), attention.eager(context)
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, S, D) for _ in range(3))
    docs = None
    if with_docs:
        docs = Documents(torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 12]))
    got = backend(q, k, v, causal=True, docs=docs, dropout_p=0.0, scale=D**-0.5)
    want = eager(q, k, v, causal=True, docs=docs, dropout_p=0.0, scale=D**-0.5)
    assert got.shape == q.shape and got.dtype == q.dtype  # back in the caller's layout and dtype
    torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)  # flash computes in bf16


def test_flash_plugins_decode_one_token_against_a_longer_cache(stand_in_flash_attn):
    """Generation: one query against every cached key (the model passes causal=False then)."""
    context = AttentionContext(torch.device("cpu"), torch.float32, head_dim=D)
    torch.manual_seed(0)
    q, k, v = torch.randn(1, H, 1, D), torch.randn(1, H, S, D), torch.randn(1, H, S, D)
    want = attention.eager(context)(q, k, v, causal=False, docs=None, dropout_p=0.0, scale=D**-0.5)
    for factory in (attention.flash_v1, attention.flash_v2, attention.flash_v3):
        got = factory(context)(q, k, v, causal=False, docs=None, dropout_p=0.0, scale=D**-0.5)
        torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)
