"""The B6 model: a GPT-style decoder with rotary position embeddings.

token embedding -> n_layers x Block(attention, feed-forward) -> final norm -> LM head.
Three parts come from plugins and are passed in already built: the attention backend (how
softmax(q k^T) v is computed), the norm placement (how each block wires its norms and
residual connections around attention and the feed-forward) and the feed-forward itself.
Everything else is here, in plain PyTorch; docs/architecture.md describes each choice. A run's
model is built by fast_paths.py, which gives it faster routes to the same arithmetic: RoPE's
rotation, the loss, and bf16 matmuls on a CPU without bf16 instructions.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from b6lab.attention import Documents
from b6lab.config import ModelConfig


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021): rotate each pair of query/key dimensions by an angle proportional
    to the position, so that q_m . k_n depends only on m - n. The cos/sin tables are cached and
    grown when a longer sequence (or a generation past max_seq_len) asks for more."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._build(max_seq_len)

    def _build(self, length: int) -> None:
        positions = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
        angles = torch.outer(positions, self.inv_freq)  # (length, head_dim / 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, seq_len: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if offset + seq_len > self.cos.size(0):
            self._build(max(offset + seq_len, 2 * self.cos.size(0)))
        return self.cos[offset : offset + seq_len], self.sin[offset : offset + seq_len]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (batch, seq, ..., head_dim) by the angles of its positions (half-split pairing):
    x1' = x1 cos - x2 sin, x2' = x1 sin + x2 cos, with x1, x2 the two halves of head_dim."""
    cos, sin = rope_tables_for(x, cos, sin)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def rope_tables_for(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (seq, head_dim / 2) tables shaped to broadcast over x's heads (and q/k), in x's dtype."""
    shape = (cos.size(0),) + (1,) * (x.dim() - 3) + (cos.size(-1),)
    return cos.view(shape).to(x.dtype), sin.view(shape).to(x.dtype)


def next_token_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None = None,
                    z_loss: float = 0.0) -> torch.Tensor:
    """The mean cross-entropy of the LM head's logits h @ weight^T against targets (-1 is ignored),
    the logits soft-capped at `softcap` if given (Gemma 2: c tanh(logits / c)), plus z_loss times
    the mean squared log-partition (PaLM's z-loss, which keeps log Z near 0)."""
    logits = F.linear(h, weight).float().flatten(0, -2)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    targets = targets.flatten()
    loss = F.cross_entropy(logits, targets, ignore_index=-1)
    if z_loss:
        loss = loss + z_loss * torch.logsumexp(logits[targets != -1], dim=-1).square().mean()
    return loss


class KVCache:
    """Keys and values of the tokens seen so far, per layer, for generating one token at a time.
    Each layer holds n_kv_heads heads: grouped-query attention shrinks the cache by n_heads / n_kv_heads."""

    def __init__(self, n_layers: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.layers[0] is None else self.layers[0][0].size(2)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layers[layer] is not None:
            past_k, past_v = self.layers[layer]
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        self.layers[layer] = (k, v)
        return k, v


NORM_LAYERS = {
    "layernorm": lambda dim: nn.LayerNorm(dim),
    "layernorm-nobias": lambda dim: nn.LayerNorm(dim, bias=False),  # OLMo, PaLM: a gain, no shift
    "rmsnorm": lambda dim: nn.RMSNorm(dim, eps=1e-5),  # LLaMA: x / rms(x) * gain, no centring
}


class CausalSelfAttention(nn.Module):
    """Multi-head attention with n_kv_heads key/value heads: n_heads of them is multi-head attention,
    fewer is grouped-query attention (Ainslie et al. 2023), one is multi-query (Shazeer 2019)."""

    def __init__(self, cfg: ModelConfig, backend: Callable, layer: int, rotate: Callable = apply_rope):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.rotate = rotate  # apply_rope, or a faster rotation of the same numbers (fast_paths.py)
        self.qkv = nn.Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=cfg.attn_bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.attn_bias)
        self.proj.residual_projection = True  # scaled at init, as GPT-2
        # QK-norm (OLMo 2, Qwen 3): each head's queries and keys normalised before RoPE, which keeps
        # the attention logits from growing without bound.
        self.q_norm = NORM_LAYERS[cfg.norm_layer](self.head_dim) if cfg.qk_norm else None
        self.k_norm = NORM_LAYERS[cfg.norm_layer](self.head_dim) if cfg.qk_norm else None
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.backend = backend
        # Backends that take fewer key/value heads than query heads say so; the others get them repeated.
        self.repeat_kv = self.n_kv_heads != self.n_heads and not getattr(backend, "grouped_kv", False)
        self.scale = cfg.softmax_scale or self.head_dim**-0.5
        self.dropout = cfg.dropout
        self.layer = layer

    def forward(self, x, rope, docs: Documents | None = None, cache: KVCache | None = None):
        B, S, C = x.shape
        H, K = self.n_heads, self.n_kv_heads
        qk, v = self.qkv(x).view(B, S, H + 2 * K, self.head_dim).split([H + K, K], dim=2)
        if self.q_norm is not None:
            q, k = qk.split([H, K], dim=2)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=2)
        q, k = self.rotate(qk, *rope).split([H, K], dim=2)  # queries and keys rotated in one pass
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, S, head_dim)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if self.repeat_kv:
            k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
        # With a cache, a single new token attends to everything before it: no mask needed.
        causal = q.size(2) > 1
        dropout = self.dropout if self.training else 0.0
        y = self.backend(q, k, v, causal=causal, docs=docs, dropout_p=dropout, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, S, C)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Attention then feed-forward; the norm placement plugin decides where norms and residuals go."""

    def __init__(self, cfg: ModelConfig, backend: Callable, norm_placement: Callable, feedforward: Callable, layer: int,
                 rotate: Callable = apply_rope):
        super().__init__()
        self.attn = CausalSelfAttention(cfg, backend, layer, rotate)
        self.ffn = feedforward(cfg.d_model, cfg.d_ff)
        self.ffn_dropout = nn.Dropout(cfg.dropout)
        self.wiring = norm_placement(cfg.d_model, cfg.n_layers)

    def forward(self, x, rope, docs=None, cache=None):
        attn = lambda h: self.attn(h, rope, docs, cache)  # noqa: E731
        ffn = lambda h: self.ffn_dropout(self.ffn(h))  # noqa: E731
        return self.wiring(x, attn, ffn)


class B6(nn.Module):
    """The model. `norm_placement(d_model, n_layers)` and `feedforward(d_model, d_ff)` build each
    block's wiring and feed-forward (plugins, with the model's norm layer already bound);
    `init_weights(model)` (the model.init plugin) sets the weights' starting values. `rotate` and
    `loss` are RoPE's rotation and the LM head's loss: the plain ones above unless a faster one
    of the same arithmetic is given (a run's model is built by fast_paths.py)."""

    def __init__(self, cfg: ModelConfig, attention_backend: Callable, norm_placement: Callable, feedforward: Callable,
                 init_weights: Callable[[nn.Module], None], *, rotate: Callable = apply_rope,
                 loss: Callable = next_token_loss):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size must be resolved (from the tokenizer) before building the model")
        self.cfg = cfg
        make_norm = NORM_LAYERS[cfg.norm_layer]
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # A backend that is an nn.Module (a learned per-head temperature, say) gets its own copy per
        # block, as a layer's weights do: one object shared by every block would tie them across layers.
        backends = [attention_backend if i == 0 or not isinstance(attention_backend, nn.Module)
                    else copy.deepcopy(attention_backend) for i in range(cfg.n_layers)]
        self.blocks = nn.ModuleList(
            Block(cfg, backends[i], norm_placement, feedforward, i, rotate) for i in range(cfg.n_layers)
        )
        wiring = self.blocks[0].wiring
        # Peri-LN also normalises the embeddings before the first block.
        self.emb_norm = make_norm(cfg.d_model) if getattr(wiring, "embedding_norm", False) else None
        # Post-LN style placements already end each block with a norm (final_norm False); the others
        # need a final one, the model's own (True) or one the placement built.
        if isinstance(wiring.final_norm, nn.Module):
            self.final_norm = wiring.final_norm
            for block in self.blocks:  # each block's wiring built one: keep one, leave none unused
                del block.wiring.final_norm
        else:
            self.final_norm = make_norm(cfg.d_model) if wiring.final_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.loss = loss
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.z_loss = 0.0  # train.z_loss, set by parts.build_model; applied in training mode only
        self.readout_multiplier = 1.0  # on the LM head's input; model.parametrization sets it (μP: base / width)
        init_weights(self)
        for block in self.blocks:
            if hasattr(block.wiring, "init_residual"):
                block.wiring.init_residual(block.attn, block.ffn)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx, docs: Documents | None = None, cache: KVCache | None = None) -> torch.Tensor:
        offset = cache.length if cache is not None else 0
        rope = self.rope(idx.size(1), offset)
        x = self.dropout(self.tok_emb(idx))
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                # Keep only each block's input; recompute its insides during backward.
                x = checkpoint(block, x, rope, docs, use_reentrant=False)
            else:
                x = block(x, rope, docs, cache)
        return self.final_norm(x)

    def forward(self, idx, targets=None, docs: Documents | None = None, cache: KVCache | None = None):
        """Logits (B, S, vocab) without targets; the mean next-token cross-entropy with them (plus
        train.z_loss times the mean squared log-partition, in training)."""
        h = self.hidden_states(idx, docs, cache)
        if self.readout_multiplier != 1.0:
            h = h * self.readout_multiplier
        softcap = self.cfg.logit_softcap
        if targets is None:
            logits = self.lm_head(h)
            return softcap * torch.tanh(logits / softcap) if softcap else logits
        z_loss = self.z_loss if self.training else 0.0
        return self.loss(h, self.lm_head.weight, targets, softcap=softcap, z_loss=z_loss)


def flops_per_token(cfg: ModelConfig, num_params: int, seq_len: int) -> float:
    """Training FLOPs per token, as nanoGPT's estimate_mfu (PaLM appendix B):
    6N for the matmuls of forward and backward, plus 12 * layers * d_model * seq_len for the
    attention scores and their weighted sum. N counts the (tied) embedding once, since it is
    also the LM head's matmul; there are no position embeddings to leave out."""
    return 6 * num_params + 12 * cfg.n_layers * cfg.d_model * seq_len
