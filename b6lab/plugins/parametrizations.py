"""Built-in parametrizations (`model.parametrization`): how the weights' init, the output logits and
each parameter group's learning rate scale with the model's width.

A parametrization is built as `factory(**options)` and returns an object with two methods, and
a third that is optional:

    parametrize(model)                      after the model is built and initialised (model.init)
    optimizer(model, groups, name, build)   build(groups) builds optim.name's optimizer; returns it
    check_optimizer(name)                   raises for an optimizer it has no rules for (a sweep's pre-check)

`standard` changes nothing: the model and optimizer are exactly those b6lab builds without it.

`mup` is μP (Yang et al. 2022, "Tensor Programs V", Table 3 in its output-multiplier form, as the
`mup` package implements it) for Adam-family optimizers. With m = d_model / mup_base_width:

| parameter                                   | init            | lr (Adam, Lion)  | weight decay |
|---------------------------------------------|-----------------|------------------|--------------|
| hidden matrices (attention, feed-forward)   | std x m^-1/2    | lr / m           | wd x m       |
| embedding (tied to the LM head or not)      | unchanged       | unchanged        | unchanged    |
| untied LM head                              | unchanged       | unchanged        | unchanged    |
| norm gains, biases                          | unchanged       | unchanged        | unchanged    |
| logits                                      | x 1/m (a fixed readout multiplier on the final hidden state) |

At the base width (m = 1) μP is standard parametrization to the bit, so the base model is the one
tuned and every wider model inherits its hyperparameters. Why each rule: an Adam or Lion update
moves every coordinate by about lr whatever the gradient's scale, and a hidden matrix's update
is correlated with its input, so its effect on the output grows with fan_in: lr / m keeps it
width-independent. The init std x m^-1/2 makes the hidden variance 1/fan_in (gpt2's 0.02 is
the base's). The logits sum d_model products of coordinates that become correlated in training:
1/m keeps them from growing with width. The tied embedding is both the input (whose rules are
"unchanged") and the readout: the multiplier acts on the readout's input instead of on the
shared weight, as the mup package's MuSharedReadout does. Lion's update is sign(.) x lr, the
same per-coordinate size as Adam's, so Adam's rules apply to it. Weight decay is scaled up as
lr is scaled down, so that each step's shrink lr x wd stays as at the base (torch's AdamW and
Lion multiply the two; the mup package's MuAdamW does the same).

The attention logit scale: μP asks for 1/d_head, standard for 1/sqrt(d_head). When d_head is
the same at every width (more heads, not wider heads: what `b6lab transfer-check` does) the two
differ by a constant the base's tuning absorbs, and nothing is changed. With
`mup_base_head_dim` set, the scale becomes sqrt(base_head_dim) / d_head (1/sqrt(d_head) at the
base, 1/d_head beyond it), for ladders that widen the heads.

Not here: μP's depth extensions (Depth-μP, Yang et al. 2023; CompleteP, Dey et al. 2025) need a
multiplier on each residual branch, which the norm placement plugins own; a ladder over depth
keeps standard depth scaling. Other optimizers (Muon, SGD, a plugin's) have other μP rules and
are refused by name.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

import b6lab
from b6lab.errors import ConfigError
from b6lab.model import CausalSelfAttention
from b6lab.plugins.optimizers import is_hidden_matrix, split_groups

# Sign-based or Adam-style: each coordinate's update is about lr, whatever the gradient's scale.
MUP_OPTIMIZERS = ("lion", "adamw")
# Inits whose hidden matrices' std is itself 1/sqrt(fan-in)-like: μP's m^-1/2 on top would count it twice.
WIDTH_SCALED_INITS = ("xavier",)


class Standard:
    """Standard parametrization: what b6lab builds, unchanged."""

    def parametrize(self, model: nn.Module) -> None:
        pass

    def optimizer(self, model: nn.Module, groups: list[dict], name: str, build: Callable) -> torch.optim.Optimizer:
        return build(groups)


class MuP:
    """μP for Adam-family optimizers, relative to a model of width `base_width` (see the module's table)."""

    def __init__(self, base_width: int, base_head_dim: int | None = None):
        self.base_width, self.base_head_dim = base_width, base_head_dim

    def width_multiplier(self, model: nn.Module) -> float:
        return model.cfg.d_model / self.base_width

    def parametrize(self, model: nn.Module) -> None:
        cfg = model.cfg
        if cfg.init in WIDTH_SCALED_INITS:
            raise ConfigError(f"model.parametrization=mup scales the hidden matrices' init by sqrt(mup_base_width / "
                              f"d_model) and needs an init whose scale does not follow the width, as gpt2's; "
                              f"{cfg.init} already does", key="model.init")
        m = self.width_multiplier(model)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if is_hidden_matrix(name, param):
                    param.mul_(m**-0.5)
        model.readout_multiplier = 1.0 / m
        if self.base_head_dim is not None:
            base_scale = cfg.softmax_scale or self.base_head_dim**-0.5
            for module in model.modules():
                if isinstance(module, CausalSelfAttention):
                    module.scale = base_scale * self.base_head_dim / module.head_dim

    def check_optimizer(self, name: str) -> None:
        if name not in MUP_OPTIMIZERS:
            raise ConfigError(f"model.parametrization=mup has the μP rules of Adam-family optimizers "
                              f"({', '.join(MUP_OPTIMIZERS)}), not of {name!r}; use one of those or "
                              f"model.parametrization=standard", key="optim.name")

    def optimizer(self, model: nn.Module, groups: list[dict], name: str, build: Callable) -> torch.optim.Optimizer:
        self.check_optimizer(name)
        # The hidden matrices in groups of their own (after the others: the first group's lr is the
        # one a run logs, optim.lr itself), so their lr and weight decay can be scaled.
        others, hidden = split_groups(groups, is_hidden_matrix)
        optimizer = build(others + hidden)
        m = self.width_multiplier(model)
        for group in optimizer.param_groups[len(others):]:
            group["lr"] /= m
            group["weight_decay"] *= m
        return optimizer


def standard():
    """Standard parametrization (the default): b6lab's model and optimizer as they are."""
    return Standard()


def mup(*, mup_base_width: int = 64, mup_base_head_dim: int | None = None):
    """μP (Yang et al. 2022) for lion and adamw: hidden init x (base/width)^1/2, hidden lr x base/width, logits x base/width."""
    if mup_base_width < 1:
        raise ConfigError(f"must be a width >= 1, got {mup_base_width}", key="model.mup_base_width")
    if mup_base_head_dim is not None and mup_base_head_dim < 1:
        raise ConfigError(f"must be a head size >= 1, or unset, got {mup_base_head_dim}", key="model.mup_base_head_dim")
    return MuP(mup_base_width, mup_base_head_dim)


@b6lab.hookimpl
def b6lab_register_parametrization(register):
    register("standard", standard)
    register("mup", mup)
