"""Sliding-window attention: each token sees itself and the `window - 1` tokens before it.
Use it with `model: {attention: sliding-window, window: 128}` and `plugins: [plugins/sliding_window.py]`."""
import torch
import torch.nn.functional as F

import b6lab
from b6lab.attention import attention_mask
from b6lab.errors import ConfigError


def sliding_window(context, *, window: int = 128):
    """Causal attention over the last `window` tokens only (Longformer, Mistral), via torch SDPA."""
    if window < 1:
        raise ConfigError(f"must be at least 1, got {window}", key="model.window")

    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        q_len, k_len = q.size(-2), k.size(-2)
        query_pos = torch.arange(k_len - q_len, k_len, device=q.device)[:, None]  # end-aligned, as with a KV cache
        near = query_pos - torch.arange(k_len, device=q.device)[None, :] < window
        mask = attention_mask(q_len, k_len, causal, docs, q.device)
        mask = near if mask is None else mask & near
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)

    return attend


@b6lab.hookimpl
def b6lab_register_attention(register):
    register("sliding-window", sliding_window)
