"""SGD with momentum, its update written out: the example to copy when torch has no optimizer for
your rule and you write its step() yourself. (To offer one torch already has, wrapping it is
enough: plugins/README.md section 1 registers torch.optim.SGD in three lines.) Both keep the
param groups b6lab passes, so the norms' and biases' weight_decay 0.0 holds.
Use it with `optim: {name: sgd, lr: 0.1, momentum: 0.9}` and `plugins: [plugins/sgd_momentum.py]`."""
import torch

import b6lab


class SGDMomentum(torch.optim.Optimizer):
    """v = momentum * v + g;  p -= lr * v  (Nesterov: p -= lr * (g + momentum * v)), where g holds the
    L2 weight decay wd * p: the updates of torch.optim.SGD without dampening."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, nesterov: bool):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # the second group (norms, biases) arrives with weight_decay 0.0
            lr, momentum = group["lr"], group["momentum"]
            for p in (p for p in group["params"] if p.grad is not None):
                g = p.grad.add(p, alpha=group["weight_decay"])
                v = self.state[p].setdefault("velocity", torch.zeros_like(p))
                v.mul_(momentum).add_(g)
                p.add_(g.add(v, alpha=momentum) if group["nesterov"] else v, alpha=-lr)
        return loss


def sgd(param_groups, *, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False):
    """SGD with (optionally Nesterov) momentum and L2 weight decay, as torch.optim.SGD."""
    return SGDMomentum(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


@b6lab.hookimpl
def b6lab_register_optimizer(register):
    register("sgd", sgd)
