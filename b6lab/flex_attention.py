"""The `flex` attention backend: torch's FlexAttention, with its masks built as block masks.

FlexAttention (torch.nn.attention.flex_attention) takes the mask as a function of (batch, head,
query index, key index) and turns it into a block mask: which tiles of the score matrix are
empty, full or partial, so the kernel skips the empty ones. Causal, sliding-window and document
masks are the three here, combined as the call needs them. Compiled (torch.compile), it runs as
one fused kernel; uncompiled it materialises the whole score matrix (a debugging mode).

On a CPU torch 2.13 refuses its backward pass (flex_attention raises "FlexAttention does not
support backward on CPU" for inputs that require grad, under torch.compile too, and inductor has a
C++ kernel for the forward only), so it trains on CUDA GPUs only; its forward runs on a CPU (the
tests compare it with eager there).
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import and_masks, create_block_mask, flex_attention

from b6lab.attention import AttentionContext, Documents, grouped
from b6lab.errors import ConfigError


def flex(context: AttentionContext, *, window: int = 0, flex_compile: bool = True):
    """FlexAttention: causal, sliding-window (window > 0 tokens) and document masks as block masks."""
    if window < 0:
        raise ConfigError(f"must be >= 0 (0: no window), got {window}", key="model.window")
    attention = torch.compile(flex_attention, dynamic=False) if flex_compile else flex_attention
    masks = BlockMasks(window)

    @grouped
    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        if dropout_p:
            raise ConfigError("the flex backend has no attention dropout; set model.dropout=0", key="model.dropout")
        block_mask = masks.get(q.size(-2), k.size(-2), causal, docs, q.device)
        return attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.size(1) != q.size(1))

    return attend


class BlockMasks:
    """The block mask of the last call, rebuilt when the shape, causality or documents change: every
    layer of one forward pass asks for the same one."""

    def __init__(self, window: int):
        self.window = window
        self.key, self.docs, self.mask = None, None, None

    def get(self, q_len: int, k_len: int, causal: bool, docs: Documents | None, device):
        key = (q_len, k_len, causal, device)
        if key != self.key or docs is not self.docs:
            self.mask = block_mask(q_len, k_len, causal, self.window, docs, device)
            self.key, self.docs = key, docs
        return self.mask


def block_mask(q_len: int, k_len: int, causal: bool, window: int, docs: Documents | None, device):
    """The block mask of these masks together, or None when nothing is masked. Queries are the last
    q_len of the k_len positions (as with a KV cache)."""
    offset = k_len - q_len
    mods = []
    if causal:
        mods.append(lambda b, h, q, kv: q + offset >= kv)
    if window:
        mods.append(lambda b, h, q, kv: q + offset - kv < window)
    if docs is not None:
        doc_ids = docs.doc_ids
        mods.append(lambda b, h, q, kv: doc_ids[b, q + offset] == doc_ids[b, kv])
    if not mods:
        return None
    batch = docs.doc_ids.size(0) if docs is not None else None
    return create_block_mask(and_masks(*mods), batch, None, q_len, k_len, device=device)
