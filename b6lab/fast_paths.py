"""The performance layer: where b6lab runs a faster implementation of the same arithmetic as the
plain model, chosen here, in one place, when a run's model is built.

model.py is the architecture in plain PyTorch, as nanoGPT writes it. Each fast path stands in for
one piece of it, is the default because it was measured to win, and leaves the numbers alone
(each has a test against the plain piece). The figures that justify each one are in
benchmarks/README.md, in the section named:

| seam | plain | fast path | where it runs | figures |
| --- | --- | --- | --- | --- |
| `B6(loss=)`, the LM head's loss | model.next_token_loss | lm_loss.lm_loss: fused, chunked, buffers kept between steps | everywhere | "CPU: b6lab against HF transformers and nanoGPT": "Where b6lab's margin comes from" and the `lm_loss.py` tables |
| `B6(rotate=)`, RoPE's rotation | model.apply_rope | rope_kernel.apply_rope: one output, four kernels; bf16 on a CPU rotated in fp32 | eager mode (a compiled graph gets the plain one) | the same section; "First pass": "The step" |
| the model's Linear layers | nn.Linear | cpu_bf16.Linear: bf16 operands on the fp32 GEMM | bf16 autocast on a CPU without bf16 instructions | the same section's `bf16_matmul.py` table |
| freed memory | glibc's malloc | hardware.keep_freed_memory: freed blocks kept for the next step | a CPU run (the trainer calls it) | "Second pass": "Where the time still went" (`step_profile.py`) |

The attention backends' own fast routes (sdpa on fp32 copies of bf16 on a CPU) are theirs: a
backend is a plugin, chosen by model.attention.
"""

from __future__ import annotations

from b6lab import cpu_bf16, lm_loss, rope_kernel
from b6lab.attention import AttentionContext
from b6lab.model import B6


def make_model(context: AttentionContext, *parts, **options) -> B6:
    """B6(*parts, **options) with the fast paths that win in `context` (the table above)."""
    model = B6(*parts, rotate=rope_kernel.apply_rope, loss=lm_loss.lm_loss, **options)
    if cpu_bf16.emulated(context.dtype, context.device):
        cpu_bf16.use_fp32_gemm(model)  # only a run whose bf16 matmuls are emulated pays the check
    return model
