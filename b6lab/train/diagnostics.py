"""What a norm study looks at, per block: the gradient norm and the residual stream's RMS.

Xiong et al. (2020, "On Layer Normalization in the Transformer Architecture", Fig. 3) explain
why Post-LN needs warmup by the gradient of each layer at initialisation: with Post-LN it grows
toward the last layers, with Pre-LN it stays flat. The trainer writes one line of these at
initialisation (step 0) and at every evaluation, so `b6lab compare` can draw that picture.

Step 0 costs no extra backward pass: its gradient norms are those of the first training step,
whose backward runs at the initial weights (the optimizer moves them only after), and its
residual RMS is measured on the first validation batch before that step. At an evaluation the
gradients are those the last training step left, and the RMS is measured on the same batch.
"""

from __future__ import annotations

import torch


def block_grad_norms(model, total_norm: float, grad_clip: float | None) -> list[float]:
    """The L2 norm of each block's gradient (first block first), as it was before clipping.

    Reads the .grad the last optimizer step left; clip_grad_norm_ scaled every gradient by
    grad_clip / (total_norm + 1e-6) when that was below 1, so dividing by it undoes the clip."""
    scale = 1.0
    if grad_clip and total_norm > 0:
        scale = min(1.0, grad_clip / (total_norm + 1e-6))
    norms = []
    for block in model.blocks:
        grads = [p.grad.detach().float() for p in block.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else torch.zeros(())
        norms.append(norm.item() / scale)
    return norms


@torch.no_grad()
def block_residual_rms(model, x: torch.Tensor, docs=None, autocast=None) -> list[float]:
    """The root mean square of the residual stream after each block, on the token ids x.

    Runs the uncompiled model once in eval mode with a forward hook on each block."""
    rms: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: rms.append(out.float().pow(2).mean().sqrt()))
             for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        with autocast if autocast is not None else torch.autocast(x.device.type, enabled=False):
            model.hidden_states(x, docs)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return [value.item() for value in rms]
