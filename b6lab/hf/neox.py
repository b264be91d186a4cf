"""A Pre-LN B6 is exactly a GPT-NeoX with rotary on every dimension and a sequential residual.

Checked against transformers' modeling_gpt_neox.py: per block x + attn(LN(x)) then x + mlp(LN(x))
(use_parallel_residual=False), a final LayerNorm, eps 1e-5; RoPE on all of head_dim
(partial_rotary_factor 1.0) with the same inv_freq and the same half-split pairing (rotate_half);
softmax scale 1/sqrt(head_dim); `gelu_pytorch_tanh` is torch's tanh GELU as in b6lab's feed-forward.
What differs is only layout: NeoX's fused qkv interleaves q, k, v per head (b6lab stacks all q,
then all k, then all v), and its MLP always has biases (zeros where b6lab has none).
"""

from __future__ import annotations

import torch


def neox_config(model: dict, vocab_size: int, eos_id: int):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=model["d_model"], num_hidden_layers=model["n_layers"],
        num_attention_heads=model["n_heads"], intermediate_size=model["d_ff"] or 4 * model["d_model"],
        hidden_act="gelu_pytorch_tanh", max_position_embeddings=model["max_seq_len"], layer_norm_eps=1e-5,
        rotary_pct=1.0, rotary_emb_base=model["rope_theta"], use_parallel_residual=False,
        attention_bias=model["attn_bias"], attention_dropout=0.0, hidden_dropout=0.0,
        tie_word_embeddings=model["tie_embeddings"], bos_token_id=eos_id, eos_token_id=eos_id,
    )


def neox_state_dict(state: dict, n_layers: int, n_heads: int) -> dict:
    """b6lab's Pre-LN weights under GPT-NeoX's names and layout."""
    out = {"gpt_neox.embed_in.weight": state["tok_emb.weight"], "lm_head.weight": state["lm_head.weight"],
           "gpt_neox.final_layer_norm.weight": state["final_norm.weight"],
           "gpt_neox.final_layer_norm.bias": state["final_norm.bias"]}
    for i in range(n_layers):
        b6, neox = f"blocks.{i}.", f"gpt_neox.layers.{i}."
        for name in ("weight", "bias"):
            out[neox + f"input_layernorm.{name}"] = state[b6 + f"wiring.ln_attn.{name}"]
            out[neox + f"post_attention_layernorm.{name}"] = state[b6 + f"wiring.ln_ffn.{name}"]
            if b6 + f"attn.qkv.{name}" in state:
                out[neox + f"attention.query_key_value.{name}"] = _heads_interleaved(state[b6 + f"attn.qkv.{name}"], n_heads)
                out[neox + f"attention.dense.{name}"] = state[b6 + f"attn.proj.{name}"]
        for b6_name, neox_name in (("up", "dense_h_to_4h"), ("down", "dense_4h_to_h")):
            weight = state[b6 + f"ffn.{b6_name}.weight"]
            out[neox + f"mlp.{neox_name}.weight"] = weight
            out[neox + f"mlp.{neox_name}.bias"] = state.get(b6 + f"ffn.{b6_name}.bias", torch.zeros(weight.size(0)))
    return out


def _heads_interleaved(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows [q heads; k heads; v heads] -> [q0 k0 v0; q1 k1 v1; ...], as NeoX splits its fused projection."""
    rows = qkv.shape[0]
    return qkv.reshape(3, n_heads, rows // (3 * n_heads), *qkv.shape[1:]).transpose(0, 1).reshape(qkv.shape)
