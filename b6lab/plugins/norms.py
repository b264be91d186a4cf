"""Built-in norm placements: where each block puts its norms and residual additions.

A placement is an nn.Module built as `factory(d_model, n_layers, make_norm=nn.LayerNorm)` and
called as `forward(x, attn, ffn)` with the block's two sublayers. `make_norm(dim)` builds one
norm of the model's `model.norm_layer` (LayerNorm, LayerNorm without bias, RMSNorm); a placement
that has no `make_norm` parameter builds its own norms and takes only the default norm layer.

Two class attributes tell the model what it adds around the blocks:
- `final_norm`: True (the model adds a norm of `model.norm_layer` after the last block), False
  (none: the blocks already end with one), or an nn.Module (used as the final norm);
- `embedding_norm` (optional, default False): a norm on the embeddings before the first block.
"""

import torch.nn as nn

import b6lab


class PreLN(nn.Module):
    """Pre-LN (GPT-2, nanoGPT): x + F(LN(x)); the residual stream itself is never normalised."""

    final_norm = True

    def __init__(self, d_model: int, n_layers: int, make_norm=nn.LayerNorm):
        super().__init__()
        self.ln_attn, self.ln_ffn = make_norm(d_model), make_norm(d_model)

    def forward(self, x, attn, ffn):
        x = x + attn(self.ln_attn(x))
        x = x + ffn(self.ln_ffn(x))
        return x


class PostLN(nn.Module):
    """Post-LN (the original Transformer): LN(x + F(x)); needs warmup to train stably when deep."""

    final_norm = False

    def __init__(self, d_model: int, n_layers: int, make_norm=nn.LayerNorm):
        super().__init__()
        self.ln_attn, self.ln_ffn = make_norm(d_model), make_norm(d_model)

    def forward(self, x, attn, ffn):
        x = self.ln_attn(x + attn(x))
        x = self.ln_ffn(x + ffn(x))
        return x


class SandwichLN(nn.Module):
    """Sandwich-LN (CogView): x + LN(F(LN(x))); a norm on each sublayer's output too."""

    final_norm = True

    def __init__(self, d_model: int, n_layers: int, make_norm=nn.LayerNorm):
        super().__init__()
        self.ln_attn_in, self.ln_attn_out = make_norm(d_model), make_norm(d_model)
        self.ln_ffn_in, self.ln_ffn_out = make_norm(d_model), make_norm(d_model)

    def forward(self, x, attn, ffn):
        x = x + self.ln_attn_out(attn(self.ln_attn_in(x)))
        x = x + self.ln_ffn_out(ffn(self.ln_ffn_in(x)))
        return x


class PeriLN(SandwichLN):
    """Peri-LN (Kim et al. 2025; Gemma 2/3, OLMo 2 in part): x + LN(F(LN(x))) as Sandwich-LN, plus a
    norm on the embeddings and a final norm: every sublayer sees and adds normalised activations."""

    embedding_norm = True


class DeepNorm(nn.Module):
    """DeepNorm (Wang et al. 2022): LN(alpha * x + F(x)), alpha = (2N)^1/4, with the value,
    output and feed-forward weights initialised Xavier-normal with gain beta = (8N)^-1/4, so that
    Post-LN stays stable at depth."""

    final_norm = False

    def __init__(self, d_model: int, n_layers: int, make_norm=nn.LayerNorm):
        super().__init__()
        self.alpha = (2 * n_layers) ** 0.25
        self.beta = (8 * n_layers) ** -0.25
        self.ln_attn, self.ln_ffn = make_norm(d_model), make_norm(d_model)

    def forward(self, x, attn, ffn):
        x = self.ln_attn(self.alpha * x + attn(x))
        x = self.ln_ffn(self.alpha * x + ffn(x))
        return x

    def init_residual(self, attn, ffn):
        d_model = attn.proj.weight.size(0)
        kv_dim = (attn.qkv.weight.size(0) - d_model) // 2  # n_kv_heads * head_dim
        queries, keys, value = attn.qkv.weight.data.split([d_model, kv_dim, kv_dim])
        for weight in (queries, keys):
            nn.init.xavier_normal_(weight, gain=1.0)
        ffn_weights = [m.weight.data for m in ffn.modules() if isinstance(m, nn.Linear)]
        for weight in (value, attn.proj.weight.data, *ffn_weights):
            nn.init.xavier_normal_(weight, gain=self.beta)


@b6lab.hookimpl
def b6lab_register_norm(register):
    register("pre", PreLN)
    register("post", PostLN)
    register("sandwich", SandwichLN)
    register("peri", PeriLN)
    register("deepnorm", DeepNorm)
