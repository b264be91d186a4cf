"""What every attention backend shares: its call signature, document boundaries, and requirements.

A backend is called as

    backend(q, k, v, *, causal, docs, dropout_p, scale) -> out

with q, k, v and out shaped (batch, heads, seq, head_dim), torch's layout. `causal` asks for
causal masking (the model only asks for it when q and k have the same length); `docs`, when
not None, restricts attention to tokens of the same packed document. k and v have fewer heads
than q (grouped-query attention) only for a backend marked `grouped`; the others get them
repeated to q's heads by the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
import importlib.util

import torch


def grouped(attend):
    """Mark a backend as taking keys and values with fewer heads than the queries (GQA) as they are."""
    attend.grouped_kv = True
    return attend


@dataclass(frozen=True)
class AttentionContext:
    """What a backend is built for; `auto` picks by it and `unavailable` checks against it."""

    device: torch.device
    dtype: torch.dtype  # the dtype attention computes in (the autocast dtype under AMP)
    head_dim: int
    dropout: float = 0.0

    def as_kwargs(self) -> dict:
        return {"device": self.device, "dtype": self.dtype, "head_dim": self.head_dim, "dropout": self.dropout}


class Documents:
    """The document boundaries of a packed batch, in the forms the backends want.

    Built from the token ids: a document ends at (and includes) each end-of-sequence token.
    """

    def __init__(self, doc_ids: torch.Tensor):
        self.doc_ids = doc_ids  # (B, S): which document of its row each position belongs to

    @classmethod
    def from_tokens(cls, idx: torch.Tensor, eos_id: int) -> "Documents":
        is_eos = (idx == eos_id).to(torch.int32)
        return cls(torch.cumsum(is_eos, dim=1) - is_eos)

    def mask(self) -> torch.Tensor:
        """(B, 1, S, S) bool, True where query i and key j are in the same document."""
        same = self.doc_ids[:, :, None] == self.doc_ids[:, None, :]
        return same[:, None]

    @cached_property
    def cu_seqlens(self) -> torch.Tensor:
        """int32 offsets of each document in the batch flattened to (B*S,): flash-attn's varlen form."""
        B, S = self.doc_ids.shape
        flat = self.doc_ids.reshape(-1)
        starts = torch.ones_like(flat, dtype=torch.bool)
        starts[1:] = flat[1:] != flat[:-1]
        starts[::S] = True  # every row starts a new sequence, whatever its first document id
        offsets = torch.nonzero(starts).flatten()
        end = torch.tensor([B * S], device=flat.device)
        return torch.cat([offsets, end]).to(torch.int32)

    @cached_property
    def max_seqlen(self) -> int:
        return int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max())


def attention_mask(q_len: int, k_len: int, causal: bool, docs: Documents | None, device) -> torch.Tensor | None:
    """Boolean mask (True = may attend), broadcastable to (B, H, q_len, k_len), or None for no mask.

    Causal masking is aligned to the end: the last query sees every key (as with a KV cache).
    """
    mask = None
    if causal:
        q_pos = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
        mask = torch.arange(k_len, device=device)[None, :] <= q_pos
    if docs is not None:
        same_doc = docs.mask()[..., -q_len:, -k_len:]
        mask = same_doc if mask is None else same_doc & mask
    return mask


@dataclass(frozen=True)
class Requirements:
    """What a backend needs to run; called with a context, it returns why not, or None."""

    cuda: bool = False
    dtypes: tuple[torch.dtype, ...] | None = None
    max_head_dim: int | None = None
    min_capability: tuple[int, int] | None = None
    max_capability: tuple[int, int] | None = None
    module: str | None = None  # an importable module the backend needs
    version_prefix: str | None = None  # e.g. "2." for flash_attn 2.x
    dropout: bool = True  # whether it supports attention dropout

    def __call__(self, device=None, dtype=None, head_dim=None, dropout=0.0, **_) -> str | None:
        if self.module:
            reason = _module_missing(self.module, self.version_prefix)
            if reason:
                return reason
        device = torch.device(device) if device is not None else None
        if self.cuda:
            if not torch.cuda.is_available():
                return "needs a CUDA GPU (none found)"
            if device is not None and device.type != "cuda":
                return f"needs a CUDA GPU (this run is on {device.type})"
            capability = torch.cuda.get_device_capability(device if device is not None and device.index is not None else None)
            if self.min_capability and capability < self.min_capability:
                return f"needs compute capability >= {_cc(self.min_capability)} (this GPU has {_cc(capability)})"
            if self.max_capability and capability > self.max_capability:
                return f"needs compute capability <= {_cc(self.max_capability)} (this GPU has {_cc(capability)})"
        if self.dtypes and dtype is not None and dtype not in self.dtypes:
            names = " or ".join(_dtype_name(d) for d in self.dtypes)
            return f"computes in {names} only (this run computes in {_dtype_name(dtype)}; set train.precision)"
        if self.max_head_dim and head_dim is not None and head_dim > self.max_head_dim:
            return f"supports head_dim <= {self.max_head_dim} (this model has {head_dim})"
        if not self.dropout and dropout:
            return f"has no attention dropout (this model has dropout {dropout})"
        return None


def _module_missing(module: str, version_prefix: str | None) -> str | None:
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        return f"{top} not installed"
    if module != top:  # a submodule (flash_attn.cute is flash-attn 4's, beside flash-attn 2's flash_attn)
        try:
            found = importlib.util.find_spec(module) is not None
        except Exception as exc:  # the parent package fails to import
            return f"{top} does not import: {exc}"
        if not found:
            return f"{module} not installed"
    if version_prefix:
        try:
            imported = importlib.import_module(top)
        except Exception as exc:  # a broken CUDA build fails at import time
            return f"{top} does not import: {exc}"
        version = getattr(imported, "__version__", "")
        if not version.startswith(version_prefix):
            return f"needs {top} {version_prefix}x (installed: {version or 'unknown version'})"
    return None


def _cc(capability) -> str:
    return f"{capability[0]}.{capability[1]}"


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
