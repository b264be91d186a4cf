"""Built-in feed-forwards: GELU (GPT-2's, the default), SwiGLU (LLaMA's) and squared ReLU (Primer's).

A feed-forward is an nn.Module built as `factory(d_model, d_ff, *, bias, **options)` and called
on (batch, seq, d_model). `d_ff` is `model.d_ff`, None when unset: each feed-forward then takes
its conventional width. `bias` is `model.bias`. The Linear that adds into the residual stream is
marked `residual_projection` (scaled at init, as GPT-2).

What d_ff means follows the papers: the hidden width, i.e. the rows of the up projection. A
gated feed-forward (SwiGLU) has three matrices where the others have two, so at the same d_ff it
has 1.5x the parameters; Shazeer (2020) and LLaMA shrink it to 2/3 of the dense width to compare
at equal parameters: 2/3 * 4 * d_model, rounded up to a multiple of
`ff_multiple_of` (16), is SwiGLU's default.
`ff_match_dense: true` reads an explicit d_ff as the dense width to match (hidden = 2/3 d_ff).
"""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F

import b6lab
from b6lab.errors import ConfigError


class GELU(nn.Module):
    """down(gelu(up(x))), GPT-2's MLP (tanh-approximated GELU)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.down.residual_projection = True

    def forward(self, x):
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020, "GLU Variants Improve Transformer"; LLaMA)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=bias)
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.down.residual_projection = True

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class ReLU2(nn.Module):
    """down(relu(up(x))^2), squared ReLU (So et al. 2021, "Primer"; modded-nanogpt)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.down.residual_projection = True

    def forward(self, x):
        return self.down(F.relu(self.up(x)).square())


def gelu(d_model: int, d_ff: int | None = None, bias: bool = False):
    """GELU MLP, GPT-2's; d_ff defaults to 4 * d_model."""
    return GELU(d_model, d_ff or 4 * d_model, bias)


def relu2(d_model: int, d_ff: int | None = None, bias: bool = False):
    """Squared-ReLU MLP (Primer); d_ff defaults to 4 * d_model."""
    return ReLU2(d_model, d_ff or 4 * d_model, bias)


def swiglu(d_model: int, d_ff: int | None = None, bias: bool = False, *, ff_match_dense: bool = False, ff_multiple_of: int = 16):
    """SwiGLU (LLaMA): d_ff is the gated width; unset, 2/3 of 4 * d_model (the GELU MLP's parameters)."""
    if ff_multiple_of < 1:
        raise ConfigError(f"must be at least 1, got {ff_multiple_of}", key="model.ff_multiple_of")
    if d_ff is not None and not ff_match_dense:
        return SwiGLU(d_model, d_ff, bias)
    dense = d_ff or 4 * d_model
    return SwiGLU(d_model, math.ceil(2 * dense / 3 / ff_multiple_of) * ff_multiple_of, bias)


@b6lab.hookimpl
def b6lab_register_feedforward(register):
    register("gelu", gelu)
    register("swiglu", swiglu)
    register("relu2", relu2)
