"""Pre-LN with RMSNorm (LLaMA): a norm placement that supplies the model's final norm itself.
Use it with `model: {norm: rms-pre}` and `plugins: [plugins/rmsnorm_pre.py]`."""
import torch.nn as nn

import b6lab


class RMSNormPreLN(nn.Module):
    """Pre-LN with RMSNorm (LLaMA, Zhang & Sennrich 2019): x + F(RMS(x)), and an RMSNorm after the last block."""

    def __init__(self, d_model: int, n_layers: int, *, rms_eps: float = 1e-6):
        super().__init__()
        self.norm_attn = nn.RMSNorm(d_model, eps=rms_eps)
        self.norm_ffn = nn.RMSNorm(d_model, eps=rms_eps)
        # A module here is the model's final norm (instead of its own LayerNorm): every block's
        # wiring builds one, and the model keeps the first block's.
        self.final_norm = nn.RMSNorm(d_model, eps=rms_eps)

    def forward(self, x, attn, ffn):
        x = x + attn(self.norm_attn(x))
        x = x + ffn(self.norm_ffn(x))
        return x


@b6lab.hookimpl
def b6lab_register_norm(register):
    register("rms-pre", RMSNormPreLN)
