"""bf16 matmuls on CPUs that have no bf16 instructions.

A bf16 matmul multiplies bf16 operands and adds the products up in fp32. CPUs with AMX or
AVX512-BF16 do that in hardware. On one with neither (AVX-512 alone) torch's bf16 kernels run
well below the fp32 GEMM's speed. The product of two bf16 numbers is exact in fp32, so the fp32
GEMM can do the same arithmetic: widen the bf16 operands (exactly), multiply and add in fp32, and
round the result to bf16 where the result is a bf16 activation. Same numbers up to the order of
the additions, faster than torch's bf16 kernels there: benchmarks/README.md's `bf16_matmul.py`
table has the figures (fast_paths.py swaps these layers in).

Only the model's own matmuls (its Linear layers and the LM-head loss) take this route; the
attention backends keep their own kernels. Where the CPU has bf16 instructions, or the device
is a GPU, everything runs as torch would run it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first CPU's entries in /proc/cpuinfo ("model name", "flags", ...); empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}


def cpu_flags() -> frozenset[str]:
    """The x86 CPU's feature flags; empty elsewhere (other systems, ARM)."""
    return frozenset(cpu_info().get("flags", "").split())


def cpu_has_bf16_instructions() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls in hardware (auto precision picks bf16 on such CPUs)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


# Read once: torch.compile traces emulated() into the graph, and a constant is what it can trace.
# Where the flags are unknown (not x86 Linux), the matmuls are left to torch.
BF16_ON_FP32_GEMM = bool(cpu_flags()) and not cpu_has_bf16_instructions()


def emulated(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether bf16 matmuls on this device go through the fp32 GEMM."""
    return dtype == torch.bfloat16 and device.type == "cpu" and BF16_ON_FP32_GEMM


class Linear(nn.Linear):
    """nn.Linear, with its bf16-autocast matmuls on the fp32 GEMM where the CPU lacks bf16 ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu") and emulated(torch.get_autocast_dtype("cpu"), x.device):
            return _Bf16Linear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class _Bf16Linear(torch.autograd.Function):
    """y = x w^T + b with bf16 operands (as autocast would cast them), fp32 products, y in bf16.
    The weight and bias gradients stay in fp32 (they are added into fp32 parameters); the input's
    gradient is rounded to bf16 like the activations it belongs to."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x16, w16 = x.to(torch.bfloat16), weight.to(torch.bfloat16)
        ctx.save_for_backward(x16, w16)
        ctx.has_bias, ctx.x_dtype = bias is not None, x.dtype
        with torch.autocast("cpu", enabled=False):
            b = bias.to(torch.bfloat16).float() if bias is not None else None
            y = F.linear(x16.float(), w16.float(), b)
        return y.to(torch.bfloat16)

    @staticmethod
    def backward(ctx, grad_y):
        x16, w16 = ctx.saved_tensors
        grad = grad_y.to(torch.bfloat16).float().flatten(0, -2)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ w16.float()).to(torch.bfloat16).to(ctx.x_dtype).view(x16.shape)
        grad_w = grad.t() @ x16.float().flatten(0, -2) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def use_fp32_gemm(model: nn.Module) -> nn.Module:
    """Swap each nn.Linear of a built model for the Linear above, keeping its parameters, so that
    model.py stays plain PyTorch and only a run whose bf16 matmuls are emulated pays the check."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                swapped = Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
                swapped.weight, swapped.bias = child.weight, child.bias
                swapped.__dict__.update({k: v for k, v in child.__dict__.items() if not k.startswith("_")})
                setattr(parent, name, swapped)
    return model
