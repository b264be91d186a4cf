"""RoPE's rotation in eager mode, written into one output: model.apply_rope's numbers, fewer passes.

The plain expression (model.apply_rope) takes seven kernels and as many temporaries; here
queries and keys are rotated by four kernels writing straight into one output, and the gradient
is the rotation by the opposite angle. Why it is the default, and what it saves: fast_paths.py.
"""

from __future__ import annotations

import torch

from b6lab.model import apply_rope as plain_rope
from b6lab.model import rope_tables_for


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """model.apply_rope: x (batch, seq, ..., head_dim) rotated by its positions' angles."""
    if torch.compiler.is_compiling():  # the compiler fuses the plain expression into one kernel itself
        return plain_rope(x, cos, sin)
    return _Rotation.apply(x, *rope_tables_for(x, cos, sin))


class _Rotation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def _rotate(x, cos, sin):
    if x.dtype == torch.bfloat16 and x.device.type == "cpu":
        # torch's CPU kernels take a slow, unvectorised path on these strided bf16 views: an fp32
        # copy is rotated instead (and rounds once, where the bf16 route rounds twice).
        return _rotate(x.float(), cos.float(), sin.float()).to(x.dtype)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    (x1, x2), (out1, out2) = x.chunk(2, dim=-1), out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-1)
    torch.mul(x1, sin, out=out2).addcmul_(x2, cos)
    return out
