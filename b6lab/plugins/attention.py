"""Built-in attention backends: eager (the reference math), sdpa, flex, flash-attn 1/2/3/4, and auto.

Every backend takes and returns (batch, heads, seq, head_dim); the flash-attn ones transpose to
their (batch, seq, heads, head_dim) layout and back, and compute in fp16/bf16 only.

Grouped-query attention: a backend whose `grouped_kv` attribute is True is given keys and
values with fewer heads than the queries (model.n_kv_heads) and handles them itself (sdpa,
flex, flash-attn 2/3/4 natively); every other backend gets them repeated to n_heads by the model.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

import b6lab
from b6lab.errors import ConfigError
from b6lab.attention import AttentionContext, Requirements, attention_mask, grouped
from b6lab.flex_attention import flex

HALF = (torch.float16, torch.bfloat16)
FLASH_V1 = Requirements(cuda=True, dtypes=HALF, max_head_dim=128, min_capability=(7, 5), module="flash_attn", version_prefix="1.")
FLASH_V2 = Requirements(cuda=True, dtypes=HALF, max_head_dim=256, min_capability=(8, 0), module="flash_attn", version_prefix="2.")
FLASH_V3 = Requirements(
    cuda=True, dtypes=HALF, max_head_dim=256, min_capability=(9, 0), max_capability=(9, 0),
    module="flash_attn_interface", dropout=False,
)
# flash-attn 4 (the flash-attn-4 package, CuTe DSL kernels): Hopper and data-centre Blackwell
# (sm90, sm100, sm110; not the sm120 consumer parts), no dropout.
FLASH_V4 = Requirements(
    cuda=True, dtypes=HALF, max_head_dim=256, min_capability=(9, 0), max_capability=(11, 9),
    module="flash_attn.cute", dropout=False,
)
# auto takes flash-v4 on Blackwell, where it is the kernel written for the chip; on Hopper flash-v3
# (tuned for it) stays first until a measurement there says otherwise.
FLASH_V4_AUTO = Requirements(
    cuda=True, dtypes=HALF, max_head_dim=256, min_capability=(10, 0), max_capability=(11, 9),
    module="flash_attn.cute", dropout=False,
)
FLEX_NEEDS = Requirements(cuda=True, dropout=False)


def flex_unavailable(**context) -> str | None:
    """flex_attention refuses a backward pass on a CPU (torch 2.13, eager and compiled: see
    docs/architecture.md), so it trains on CUDA GPUs only."""
    reason = FLEX_NEEDS(**context)
    if reason and "CUDA" in reason:
        return (f"{reason}; torch {torch.__version__.split('+')[0]} refuses FlexAttention's backward pass on a CPU, "
                "compiled or not (\"FlexAttention does not support backward on CPU\"): use sdpa or eager there")
    return reason


# What `auto` tries, best first; sdpa always runs.
AUTO_ORDER = ("flash-v4", "flash-v3", "flash-v2", "sdpa")


def eager(context: AttentionContext):
    """Reference math: softmax(q k^T * scale + mask) v, the softmax in fp32."""

    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        scores = (q @ k.transpose(-2, -1)) * scale
        mask = attention_mask(q.size(-2), k.size(-2), causal, docs, q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = F.dropout(torch.softmax(scores.float(), dim=-1).to(q.dtype), p=dropout_p)
        return weights @ v

    return attend


SDPA_KERNELS = ("auto", "flash", "efficient", "math", "cudnn")


def sdpa(context: AttentionContext, *, sdpa_kernel: str = "auto"):
    """torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient / math kernels)."""
    if sdpa_kernel not in SDPA_KERNELS:
        raise ConfigError(f"must be one of {', '.join(SDPA_KERNELS)}", key="model.sdpa_kernel")
    kernel = _kernel_context(sdpa_kernel)

    @grouped
    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # torch's CPU attention kernels are slower in bf16 than in fp32 (the backward 2.5x at
            # head_dim 32: benchmarks/README.md, "Small models on this CPU"): on a CPU, fp32 it is.
            with torch.autocast("cpu", enabled=False):
                return attend(q.float(), k.float(), v.float(), causal=causal, docs=docs, dropout_p=dropout_p,
                              scale=scale).to(q.dtype)
        gqa = k.size(1) != q.size(1)
        with kernel():
            if docs is None and (not causal or q.size(-2) == k.size(-2)):
                return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale, enable_gqa=gqa)
            if sdpa_kernel == "flash":  # torch's own message would be a list of kernel warnings
                raise ConfigError(
                    "torch's flash kernel takes no attention mask, and this call needs one (packed-document "
                    "boundaries from data.doc_masking, or a causal mask offset by a KV cache); use "
                    "sdpa_kernel=auto, or attention flash-v2/flash-v3 for packed documents",
                    key="model.sdpa_kernel",
                )
            mask = attention_mask(q.size(-2), k.size(-2), causal, docs, q.device)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)

    return attend


def _kernel_context(name: str):
    if name == "auto":
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }[name]
    return lambda: sdpa_kernel(backend)


def _flash_layout(q, k, v):
    """(B, H, S, D) -> flash-attn's (B, S, H, D), in half precision (the autocast dtype, else bf16)."""
    dtype = q.dtype if q.dtype in HALF else (torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16)
    return [t.transpose(1, 2).to(dtype) for t in (q, k, v)]


def _rows_as_documents(batch: int, seq: int, device) -> torch.Tensor:
    return torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device=device)


def flash_v1(context: AttentionContext):
    """flash-attn 1.x: only the unpadded (varlen) functions; each row or packed document is one sequence."""
    from flash_attn.flash_attn_interface import flash_attn_unpadded_func

    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        B, H, Sq, D = q.shape
        Sk = k.size(2)
        q_, k_, v_ = _flash_layout(q, k, v)
        if docs is not None:
            cu_q = cu_k = docs.cu_seqlens
            max_q = max_k = docs.max_seqlen
        else:
            cu_q, cu_k, max_q, max_k = _rows_as_documents(B, Sq, q.device), _rows_as_documents(B, Sk, q.device), Sq, Sk
        out = flash_attn_unpadded_func(
            q_.reshape(B * Sq, H, D), k_.reshape(B * Sk, H, D), v_.reshape(B * Sk, H, D),
            cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale=scale, causal=causal,
        )
        return out.view(B, Sq, H, D).transpose(1, 2).to(q.dtype)

    return attend


def flash_v2(context: AttentionContext):
    """flash-attn 2.x: padded flash_attn_func, or flash_attn_varlen_func for packed documents."""
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    @grouped
    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        B, H, S, D = q.shape
        q_, k_, v_ = _flash_layout(q, k, v)
        if docs is None:
            out = flash_attn_func(q_, k_, v_, dropout_p, softmax_scale=scale, causal=causal)
        else:
            cu, max_len = docs.cu_seqlens, docs.max_seqlen
            out = flash_attn_varlen_func(
                q_.reshape(B * S, H, D), k_.reshape(B * S, -1, D), v_.reshape(B * S, -1, D),
                cu, cu, max_len, max_len, dropout_p, softmax_scale=scale, causal=causal,
            ).view(B, S, H, D)
        return out.transpose(1, 2).to(q.dtype)

    return attend


def flash_v3(context: AttentionContext):
    """flash-attn 3 (flash_attn_interface, Hopper GPUs): no dropout."""
    import flash_attn_interface as fa3

    return _flash_v3_or_v4(fa3.flash_attn_func, fa3.flash_attn_varlen_func)


def flash_v4(context: AttentionContext):
    """flash-attn 4 (the flash-attn-4 package, flash_attn.cute; Hopper and Blackwell GPUs): no dropout."""
    from flash_attn.cute import flash_attn_func, flash_attn_varlen_func

    return _flash_v3_or_v4(flash_attn_func, flash_attn_varlen_func)


def _flash_v3_or_v4(flash_attn_func, flash_attn_varlen_func):
    """flash-attn 3 and 4 share their call: no dropout argument, an (out, lse) pair from some releases."""

    @grouped
    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        B, H, S, D = q.shape
        q_, k_, v_ = _flash_layout(q, k, v)
        if docs is None:
            out = flash_attn_func(q_, k_, v_, softmax_scale=scale, causal=causal)
        else:
            cu, max_len = docs.cu_seqlens, docs.max_seqlen
            out = flash_attn_varlen_func(
                q_.reshape(B * S, H, D), k_.reshape(B * S, -1, D), v_.reshape(B * S, -1, D),
                cu, cu, max_len, max_len, softmax_scale=scale, causal=causal,
            )
        out = out[0] if isinstance(out, tuple) else out  # FA4 and some FA3 releases also return the LSE
        return out.reshape(B, S, H, D).transpose(1, 2).to(q.dtype)

    return attend


FACTORIES = {
    "flash-v4": (flash_v4, FLASH_V4_AUTO), "flash-v3": (flash_v3, FLASH_V3), "flash-v2": (flash_v2, FLASH_V2),
    "sdpa": (sdpa, None),
}


def choose(context: AttentionContext) -> str:
    """The best backend that runs in `context`: flash-v4 on Blackwell, flash-v3, flash-v2, then sdpa."""
    for name in AUTO_ORDER:
        _, requires = FACTORIES[name]
        if requires is None or requires(**context.as_kwargs()) is None:
            return name
    return "sdpa"


def auto(context: AttentionContext):
    """The best available here: flash-v4 (Blackwell) -> flash-v3 -> flash-v2 -> sdpa (sdpa on CPU)."""
    name = choose(context)
    backend = FACTORIES[name][0](context)
    backend.chosen = name
    return backend


@b6lab.hookimpl
def b6lab_register_attention(register):
    register("eager", eager)
    register("sdpa", sdpa)
    register("flash-v1", flash_v1, unavailable=FLASH_V1)
    register("flash-v2", flash_v2, unavailable=FLASH_V2)
    register("flash-v3", flash_v3, unavailable=FLASH_V3)
    register("flash-v4", flash_v4, unavailable=FLASH_V4)
    register("flex", flex, unavailable=flex_unavailable)
    register("auto", auto)
