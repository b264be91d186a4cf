"""Built-in optimizers: Lion (implemented here), torch's AdamW, Muon (torch's, with AdamW beside it)
and schedule-free AdamW (the `schedulefree` package, an optional extra).

A factory gets the model's parameter groups: the first decays (weight matrices), the second
has weight_decay 0.0 already set (norms, biases); the factory's `weight_decay` fills in the rest.
Each group also holds its parameters' names under "param_names" (torch's own key for them).
"""

from __future__ import annotations

import importlib.util
from typing import Annotated

import torch

import b6lab
from b6lab.errors import ConfigError
from b6lab.validation import within

# The ranges torch itself would refuse (with a traceback, at the first step), checked with the
# config (validation.check_options): "optim.lr (in FILE): must be a number > 0, got -0.001".
PositiveNumber = Annotated[float, within(lambda v: v > 0, "a number > 0")]
NotNegative = Annotated[float, within(lambda v: v >= 0, "a number >= 0")]
Momentum = Annotated[float, within(lambda v: 0 <= v < 1, "a number in [0, 1)")]
Betas = Annotated[tuple[float, float], within(lambda b: all(0 <= v < 1 for v in b), "two numbers in [0, 1), e.g. [0.9, 0.99]")]


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):

        c = b1 * m + (1 - b1) * g           # interpolate momentum and gradient
        p = p - lr * (sign(c) + wd * p)     # sign update, decoupled weight decay
        m = b2 * m + (1 - b2) * g           # momentum tracks the gradient more slowly

    Every coordinate moves by exactly lr (plus decay), so lr wants to be 3-10x smaller than
    AdamW's and weight decay 3-10x larger. One state tensor per parameter (AdamW keeps two).
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0, foreach: bool | None = None):
        if lr <= 0:
            raise ValueError(f"Lion lr must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            momenta = [self._momentum(p) for p in params]
            foreach = group["foreach"]
            if foreach is None:  # torch's own rule: foreach when every tensor is on a GPU
                foreach = all(p.is_cuda for p in params)
            update = _lion_foreach if foreach else _lion_single
            update(params, grads, momenta, group["lr"], *group["betas"], group["weight_decay"])
        return loss

    def _momentum(self, p):
        state = self.state[p]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["exp_avg"]


def _lion_single(params, grads, momenta, lr, beta1, beta2, weight_decay):
    for p, g, m in zip(params, grads, momenta):
        if weight_decay:
            p.mul_(1 - lr * weight_decay)
        p.add_(torch.lerp(m, g, 1 - beta1).sign_(), alpha=-lr)
        m.lerp_(g, 1 - beta2)


def _lion_foreach(params, grads, momenta, lr, beta1, beta2, weight_decay):
    # The same three lines as _lion_single, one kernel per line for all parameters at once.
    if weight_decay:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    updates = torch._foreach_lerp(momenta, grads, 1 - beta1)
    torch._foreach_sign_(updates)
    torch._foreach_add_(params, updates, alpha=-lr)
    torch._foreach_lerp_(momenta, grads, 1 - beta2)


def lion(param_groups, *, lr: PositiveNumber = 3e-4, weight_decay: NotNegative = 0.3, betas: Betas = (0.9, 0.99),
         foreach: bool | None = None):
    """Lion, sign-of-momentum updates (Chen et al. 2023); lr and wd set ~3x from AdamW's."""
    return Lion(param_groups, lr=lr, betas=betas, weight_decay=weight_decay, foreach=foreach)


def adamw(param_groups, *, lr: PositiveNumber = 1e-3, weight_decay: NotNegative = 0.1, betas: Betas = (0.9, 0.95),
          eps: PositiveNumber = 1e-8, fused: bool | None = None):
    """torch.optim.AdamW, fused into one kernel where this torch supports it (CUDA and CPU)."""
    if fused is None:
        fused = True  # torch >= 2.4 fuses AdamW on CUDA and on CPU; it raises on other devices
    try:
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
    except RuntimeError:
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """Muon's share: the 2-D weights inside the blocks (attention and feed-forward projections).
    The embedding, the LM head (tied to it or not), norms and biases are not hidden matrices.
    (A wrapped model's names have a prefix: DDP's "module.blocks.0...".)"""
    return param.dim() == 2 and (name.startswith("blocks.") or ".blocks." in name)


def split_groups(groups: list[dict], chosen) -> tuple[list[dict], list[dict]]:
    """Each group split by chosen(name, param) into (the others, the chosen), each part keeping its
    group's settings; empty parts are dropped."""
    others, picked = [], []
    for group in groups:
        mask = [chosen(name, p) for name, p in zip(group["param_names"], group["params"])]
        for routed, to in ((False, others), (True, picked)):
            params = [p for p, m in zip(group["params"], mask) if m == routed]
            if params:
                names = [n for n, m in zip(group["param_names"], mask) if m == routed]
                to.append({**group, "params": params, "param_names": names})
    return others, picked


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on the hidden matrices and torch.optim.AdamW on the other parameters, as one
    optimizer: one param_groups list (which the LR schedule scales) and one state (which checkpoints
    save), shared with the two inner optimizers."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon_options: dict, adamw_options: dict):
        self.muon = torch.optim.Muon(muon_groups, **muon_options)
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw_options)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {})
        self._share()

    def _share(self):
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    def step(self, closure=None):
        loss = self.muon.step(closure)  # the closure (if any) runs once, inside the first optimizer
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)  # makes new group dicts and a new state: share them again
        self._share()


def muon(
    param_groups, *, lr: PositiveNumber = 0.02, momentum: Momentum = 0.95, nesterov: bool = True, ns_steps: int = 5,
    weight_decay: NotNegative = 0.0, adjust_lr_fn: str = "original", adamw_lr: PositiveNumber = 1e-3,
    adamw_betas: Betas = (0.9, 0.95), adamw_weight_decay: NotNegative = 0.1,
):
    """Muon (Jordan et al. 2024, torch.optim.Muon) on the blocks' 2-D weights; AdamW on embeddings, head, norms, biases."""
    if adjust_lr_fn not in ("original", "match_rms_adamw"):
        raise ConfigError(f"must be original or match_rms_adamw, got {adjust_lr_fn!r}", key="optim.adjust_lr_fn")
    if any("param_names" not in group for group in param_groups):
        raise ConfigError("muon routes parameters by name, and these groups have no param_names", key="optim.name")
    adamw_groups, muon_groups = split_groups(param_groups, is_hidden_matrix)
    muon_options = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay, adjust_lr_fn=adjust_lr_fn)
    adamw_options = dict(lr=adamw_lr, betas=adamw_betas, weight_decay=adamw_weight_decay)
    try:
        return MuonAdamW(muon_groups, adamw_groups, muon_options, adamw_options)
    except ValueError as exc:  # torch's own checks of lr, momentum, adjust_lr_fn, ...
        raise ConfigError(str(exc), key="optim") from None


# What AdamWScheduleFree keeps in its param groups that is state, not a setting: its step count, the
# sum and peak of its averaging weights, and whether the weights are now y (train) or x (eval). A
# resumed run takes these from the checkpoint (the trainer's _restore reads `group_state_keys`).
SCHEDULE_FREE_GROUP_STATE = ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode")


def schedulefree_missing(**_context) -> str | None:
    if importlib.util.find_spec("schedulefree") is None:
        return "the schedulefree package is not installed: pip install 'b6lab[schedulefree]'"
    return None


def adamw_schedulefree(
    param_groups, *, lr: PositiveNumber = 2.5e-3, betas: Betas = (0.9, 0.95), eps: PositiveNumber = 1e-8,
    weight_decay: NotNegative = 0.1, warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0,
):
    """Schedule-free AdamW (Defazio et al. 2024, schedulefree.AdamWScheduleFree): no LR decay; use schedule.name=constant."""
    from schedulefree import AdamWScheduleFree

    if warmup_steps < 0:
        raise ConfigError(f"must be >= 0, got {warmup_steps}", key="optim.warmup_steps")
    optimizer = AdamWScheduleFree(param_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                  warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power)
    optimizer.group_state_keys = SCHEDULE_FREE_GROUP_STATE
    optimizer.train()  # b6lab trains right after building it; its evaluations and saves call eval()
    return optimizer


@b6lab.hookimpl
def b6lab_register_optimizer(register):
    register("lion", lion)
    register("adamw", adamw)
    register("muon", muon)
    register("adamw-schedulefree", adamw_schedulefree, unavailable=schedulefree_missing)
