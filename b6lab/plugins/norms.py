"""Built-in norm placements: where each block puts its LayerNorms and residual additions.

A placement is an nn.Module built as `factory(d_model, n_layers)` and called as
`forward(x, attn, ffn)` with the block's two sublayers. `final_norm` says whether the model
needs a norm after the last block (it does unless the block already ends with one).
"""

import torch.nn as nn

import b6lab


class PreLN(nn.Module):
    """Pre-LN (GPT-2, nanoGPT): x + F(LN(x)); the residual stream itself is never normalised."""

    final_norm = True

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.ln_attn, self.ln_ffn = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, x, attn, ffn):
        x = x + attn(self.ln_attn(x))
        x = x + ffn(self.ln_ffn(x))
        return x


class PostLN(nn.Module):
    """Post-LN (the original Transformer): LN(x + F(x)); needs warmup to train stably when deep."""

    final_norm = False

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.ln_attn, self.ln_ffn = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, x, attn, ffn):
        x = self.ln_attn(x + attn(x))
        x = self.ln_ffn(x + ffn(x))
        return x


class SandwichLN(nn.Module):
    """Sandwich-LN (CogView): x + LN(F(LN(x))); a norm on each sublayer's output too."""

    final_norm = True

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.ln_attn_in, self.ln_attn_out = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ln_ffn_in, self.ln_ffn_out = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, x, attn, ffn):
        x = x + self.ln_attn_out(attn(self.ln_attn_in(x)))
        x = x + self.ln_ffn_out(ffn(self.ln_ffn_in(x)))
        return x


class DeepNorm(nn.Module):
    """DeepNorm (Wang et al. 2022): LN(alpha * x + F(x)), alpha = (2N)^1/4, with the value,
    output and feed-forward weights initialised Xavier-normal with gain beta = (8N)^-1/4, so that
    Post-LN stays stable at depth."""

    final_norm = False

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.alpha = (2 * n_layers) ** 0.25
        self.beta = (8 * n_layers) ** -0.25
        self.ln_attn, self.ln_ffn = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, x, attn, ffn):
        x = self.ln_attn(self.alpha * x + attn(x))
        x = self.ln_ffn(self.alpha * x + ffn(x))
        return x

    def init_residual(self, attn, ffn):
        d_model = attn.proj.weight.size(0)
        q_k, value = attn.qkv.weight.data[: 2 * d_model], attn.qkv.weight.data[2 * d_model :]
        for weight in q_k.view(2, d_model, d_model):
            nn.init.xavier_normal_(weight, gain=1.0)
        for weight in (value, attn.proj.weight.data, ffn.up.weight.data, ffn.down.weight.data):
            nn.init.xavier_normal_(weight, gain=self.beta)


@b6lab.hookimpl
def b6lab_register_norm(register):
    register("pre", PreLN)
    register("post", PostLN)
    register("sandwich", SandwichLN)
    register("deepnorm", DeepNorm)
