"""B6 for transformers: the b6lab model in a form `AutoModelForCausalLM` loads (model_type "b6").

`b6lab export --format hf` copies this file into the exported folder, and its config.json's
auto_map points at it, so `from_pretrained(folder, trust_remote_code=True)` works wherever torch
and transformers are installed, without b6lab. It is self-contained for that reason: it imports
nothing from b6lab, and restates b6lab/model.py's math (RoPE with half-split pairs; the built-in
norm placements, norm layers and feed-forwards; grouped-query attention, QK-norm, logit
soft-capping) with the same module names, so b6lab's state dict loads into it key for key.
`b6lab export` compares the logits before writing, and tests/test_export.py after loading.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5 renamed the cache argument and output field from past_key_values to cache.
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class B6Config(PretrainedConfig):
    model_type = "b6"

    def __init__(self, vocab_size=256, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=None, intermediate_size=1024, max_position_embeddings=256, norm_placement="pre",
                 norm_layer="layernorm", feedforward="gelu", mlp_bias=False, attention_bias=False, qk_norm=False,
                 softmax_scale=None, logit_softcap=None, rope_theta=10000.0, initializer_range=0.02,
                 tie_word_embeddings=True, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.intermediate_size, self.max_position_embeddings = intermediate_size, max_position_embeddings
        self.norm_placement, self.norm_layer, self.feedforward = norm_placement, norm_layer, feedforward
        self.mlp_bias, self.attention_bias, self.qk_norm = mlp_bias, attention_bias, qk_norm
        self.softmax_scale, self.logit_softcap, self.rope_theta = softmax_scale, logit_softcap, rope_theta
        self.initializer_range = initializer_range
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


NORM_LAYERS = {
    "layernorm": lambda dim: nn.LayerNorm(dim),
    "layernorm-nobias": lambda dim: nn.LayerNorm(dim, bias=False),
    "rmsnorm": lambda dim: nn.RMSNorm(dim, eps=1e-5),
}


class PreLN(nn.Module):
    final_norm = True

    def __init__(self, config):
        super().__init__()
        self.ln_attn, self.ln_ffn = _norm(config), _norm(config)

    def forward(self, x, attn, ffn):
        x = x + attn(self.ln_attn(x))
        return x + ffn(self.ln_ffn(x))


class PostLN(nn.Module):
    final_norm = False

    def __init__(self, config):
        super().__init__()
        self.ln_attn, self.ln_ffn = _norm(config), _norm(config)

    def forward(self, x, attn, ffn):
        x = self.ln_attn(x + attn(x))
        return self.ln_ffn(x + ffn(x))


class SandwichLN(nn.Module):
    final_norm = True

    def __init__(self, config):
        super().__init__()
        self.ln_attn_in, self.ln_attn_out = _norm(config), _norm(config)
        self.ln_ffn_in, self.ln_ffn_out = _norm(config), _norm(config)

    def forward(self, x, attn, ffn):
        x = x + self.ln_attn_out(attn(self.ln_attn_in(x)))
        return x + self.ln_ffn_out(ffn(self.ln_ffn_in(x)))


class PeriLN(SandwichLN):
    embedding_norm = True  # and a norm on the embeddings


class DeepNorm(nn.Module):
    final_norm = False

    def __init__(self, config):
        super().__init__()
        self.alpha = (2 * config.num_hidden_layers) ** 0.25
        self.ln_attn, self.ln_ffn = _norm(config), _norm(config)

    def forward(self, x, attn, ffn):
        x = self.ln_attn(self.alpha * x + attn(x))
        return self.ln_ffn(self.alpha * x + ffn(x))


PLACEMENTS = {"pre": PreLN, "post": PostLN, "sandwich": SandwichLN, "peri": PeriLN, "deepnorm": DeepNorm}


def _norm(config, dim=None):
    return NORM_LAYERS[config.norm_layer](dim or config.hidden_size)


def apply_rope(x, cos, sin):
    """x (batch, heads, seq, head_dim) rotated pairwise (first half with second half) by cos/sin (batch, seq, head_dim/2)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """n_heads query heads and n_kv_heads key/value heads (fewer: grouped-query), from one fused
    projection whose rows are all query heads, then all key heads, then all value heads."""

    def __init__(self, config, layer: int):
        super().__init__()
        d = config.hidden_size
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = d // self.n_heads
        self.qkv = nn.Linear(d, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=config.attention_bias)
        self.proj = nn.Linear(d, d, bias=config.attention_bias)
        self.q_norm = _norm(config, self.head_dim) if config.qk_norm else None
        self.k_norm = _norm(config, self.head_dim) if config.qk_norm else None
        self.scale = config.softmax_scale or self.head_dim**-0.5
        self.layer = layer

    def forward(self, x, rope, mask, cache):
        B, S, C = x.shape
        H, K = self.n_heads, self.n_kv_heads
        q, k, v = self.qkv(x).view(B, S, H + 2 * K, self.head_dim).split([H, K, K], dim=2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)
        if K != H:
            k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
        causal = mask is None and S > 1
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(B, S, C))


class FeedForward(nn.Module):
    """gelu: down(gelu_tanh(up x)); relu2: down(relu(up x)^2); swiglu: down(silu(gate x) * up x)."""

    def __init__(self, config):
        super().__init__()
        self.kind = config.feedforward
        if self.kind == "swiglu":
            self.gate = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x):
        if self.kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        if self.kind == "relu2":
            return self.down(F.relu(self.up(x)).square())
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config, layer: int):
        super().__init__()
        self.attn = Attention(config, layer)
        self.ffn = FeedForward(config)
        self.wiring = PLACEMENTS[config.norm_placement](config)

    def forward(self, x, rope, mask, cache):
        return self.wiring(x, lambda h: self.attn(h, rope, mask, cache), self.ffn)


class B6ForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = B6Config
    base_model_prefix = "b6"
    _no_split_modules = ["Block"]
    _supports_cache_class = True
    _tied_weights_keys = {"lm_head.weight": "tok_emb.weight"}

    def __init__(self, config: B6Config):
        super().__init__(config)
        if config.norm_placement not in PLACEMENTS:
            raise ValueError(f"norm_placement {config.norm_placement!r} is not one of {', '.join(PLACEMENTS)}")
        placement = PLACEMENTS[config.norm_placement]
        self.tok_emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.emb_norm = _norm(config) if getattr(placement, "embedding_norm", False) else None
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = _norm(config) if placement.final_norm else nn.Identity()
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_emb

    def set_input_embeddings(self, value):
        self.tok_emb = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                use_cache=None, labels=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
        B, S = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:  # left padding: each row counts its positions from its first token
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -S:]
            else:
                position_ids = torch.arange(past, past + S, device=input_ids.device).expand(B, S)
        # Computed here rather than kept as a buffer: from_pretrained builds the model on the meta
        # device and fills in only what the weights file holds.
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        pairs = torch.arange(0, head_dim, 2, dtype=torch.float32, device=input_ids.device)
        inv_freq = 1.0 / (self.config.rope_theta ** (pairs / head_dim))
        angles = position_ids.float()[..., None] * inv_freq
        rope = (angles.cos(), angles.sin())
        mask = None
        if past or (attention_mask is not None and not bool(attention_mask.all())):
            mask = _attention_mask(attention_mask, B, S, past, input_ids.device)
        x = self.tok_emb(input_ids)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        for block in self.blocks:
            x = block(x, rope, mask, cache)
        logits = self.lm_head(self.final_norm(x))
        if self.config.logit_softcap:
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache if use_cache else None})


def _attention_mask(attention_mask, B, S, past, device):
    """Which keys each query sees (B, 1, S, past + S): earlier or same positions that are not padding
    (a query always sees itself, so that a row of padding attends to something)."""
    queries = torch.arange(past, past + S, device=device)[:, None]
    keys = torch.arange(past + S, device=device)[None, :]
    allowed = (keys <= queries)[None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, -(past + S):].bool()
    return (allowed | (keys == queries)[None])[:, None]
