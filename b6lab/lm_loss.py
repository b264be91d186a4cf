"""The LM head and its loss, fused.

With a 50k vocabulary the logits are the largest tensor of a step (tokens x vocab x 4 bytes:
400 MB for 8 x 256 tokens) and the LM head is most of its FLOPs. The plain route writes the
logits, then their log-softmax, then the gradient of each, all that size. Here the head and
the loss go a chunk of tokens at a time, and since the loss is the end of the graph, each
chunk's gradient (softmax - one-hot) is multiplied into dh and dW right away, in forward.
Same FLOPs as the plain route; only one chunk of logits ever exists.

Two options of the output head ride along, chunk by chunk like the rest:
- logit soft-capping (Gemma 2): logits = c * tanh(logits / c), keeping every logit in (-c, c);
  its derivative 1 - tanh^2 multiplies the chunk's gradient;
- z-loss (PaLM, Chameleon): z * mean(log Z^2), Z the softmax's partition function, which keeps
  log Z near 0 so the logits do not drift; its gradient is 2 z log Z * softmax.

model.next_token_loss is the plain route; why this one is a run's default: fast_paths.py.
"""

from __future__ import annotations

import math
import threading

import torch

from b6lab import cpu_bf16

LOSS_CHUNK_ELEMENTS = 2**26  # logits per chunk at most (256 MB in fp32)


def lm_loss(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None = None, z_loss: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of the LM head's logits h @ weight^T against targets (-1 is ignored),
    the logits soft-capped at `softcap` if given, plus z_loss * mean(logsumexp(logits)^2)."""
    h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    # As few chunks as the budget allows, of equal size: chunks of 256 to 2048 tokens time
    # alike (benchmarks/README.md), so the budget, not speed, sets their number.
    chunks = max(1, -(-h.size(0) * weight.size(0) // LOSS_CHUNK_ELEMENTS))
    chunk = max(1, -(-h.size(0) // chunks))
    # (autograd.Function's forward always runs without grad mode, so whether gradients are wanted
    # at all, under torch.no_grad() say, has to be read here)
    return LinearCrossEntropy.apply(h, weight, targets, chunk, torch.is_grad_enabled(), softcap, z_loss)


class LinearCrossEntropy(torch.autograd.Function):
    """cross_entropy(h @ weight^T, targets, ignore_index=-1), chunk by chunk, gradients in forward."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int, grad_enabled: bool, softcap: float | None, z_loss: float):
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        want_dh, want_dw = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        # The gradient matmuls run in the autocast dtype, as the plain route's do, except in fp16:
        # there the gradient is made here, before backward brings the GradScaler's scale, and
        # values of ~1 / (tokens x vocab) would flush to zero, so they stay in fp32.
        grad_dtype = torch.float32 if dtype == torch.float16 else dtype
        # Where bf16 matmuls go through the fp32 GEMM (cpu_bf16.py), the bf16 operands are held
        # in fp32 and the products come out in fp32.
        held = torch.float32 if cpu_bf16.emulated(dtype, h.device) else dtype
        with torch.autocast(device, enabled=False):  # the casts are explicit below
            w = weight.to(dtype).to(held)
            w_grad = w if grad_dtype == dtype else weight.to(grad_dtype)
            valid = targets != -1
            count = valid.sum()
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            dh = torch.empty_like(h) if want_dh else None
            dw = None  # written by the first chunk, accumulated into by the others
            for start in range(0, h.size(0), chunk):
                rows = slice(start, start + chunk)
                h_c, valid_c = h[rows].to(dtype).to(held), valid[rows]
                h_grad = h_c if grad_dtype == dtype else h[rows].to(grad_dtype)
                t_c = targets[rows].clamp(min=0).unsqueeze(1)
                logits = _logits(h_c, w)
                if softcap:  # tanh kept (in the logits' buffer) for the gradient; capped logits in another
                    tanh = logits.div_(softcap).tanh_()
                    logits = torch.mul(tanh, softcap, out=_workspace(tanh.shape, torch.float32, h.device, "capped"))
                picked = logits.gather(1, t_c).squeeze(1)
                top = logits.amax(dim=1)
                probs = _softmax_(logits)  # in place: the chunk's logits are not needed again
                # log Z = the top logit - the log of its probability, the largest one: at least
                # 1 / vocab, its log never underflows where the target's can
                log_z = top - probs.amax(dim=1).log()
                total += torch.where(valid_c, log_z - picked, 0.0).sum()
                if z_loss:
                    total += z_loss * torch.where(valid_c, log_z.square(), 0.0).sum()
                if not (want_dh or want_dw):
                    continue
                # d(mean loss)/d(logits) = row_weight (softmax (1 + 2 z log Z) - one_hot), row_weight =
                # 1 / count on valid rows, 0 on ignored ones. row_weight scales the rows of h and of dh,
                # the matmuls' narrow sides, instead of the chunk's logits: one pass over them fewer.
                row_weight = (valid_c.float() / count).unsqueeze(1)
                if z_loss:
                    probs.mul_((1 + 2 * z_loss * log_z).unsqueeze(1))
                probs.scatter_add_(1, t_c, torch.full(t_c.shape, -1.0, dtype=probs.dtype, device=h.device))
                if softcap:  # through c tanh(x / c): times 1 - tanh^2
                    probs.mul_(tanh.square_().neg_().add_(1))
                grad = probs
                if grad_dtype != torch.float32:
                    grad = _workspace(probs.shape, grad_dtype, h.device, "half").copy_(probs)
                    if held == torch.float32:
                        grad = probs.copy_(grad)  # rounded to bf16, held in fp32
                if want_dh:
                    dh[rows] = (grad @ w_grad) * row_weight
                if want_dw:
                    h_weighted = (h_grad * row_weight).to(h_grad.dtype)
                if want_dw and dw is None:
                    dw = (grad.t() @ h_weighted).to(weight.dtype)
                elif want_dw and dw.dtype == grad.dtype:
                    dw.addmm_(grad.t(), h_weighted)
                elif want_dw:
                    dw += grad.t() @ h_weighted
        ctx.save_for_backward(dh, dw)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        if grad_loss.device.type == "cpu" and not torch.compiler.is_compiling() and grad_loss.item() == 1.0:
            # loss.backward() itself: spare a pass over dW (vocab x width; reading the value would
            # make a GPU wait, so there the product is always taken)
            return dh, dw, None, None, None, None, None
        dh = dh * grad_loss if dh is not None else None
        dw = dw * grad_loss if dw is not None else None
        return dh, dw, None, None, None, None, None


def _logits(h_c, w):
    """h_c @ w^T as fp32, written into the reused workspace."""
    out = _workspace((h_c.size(0), w.size(0)), torch.float32, h_c.device, "logits")
    if w.dtype == torch.float32:
        return torch.mm(h_c, w.t(), out=out)
    half = torch.mm(h_c, w.t(), out=_workspace(out.shape, w.dtype, h_c.device, "half"))
    return out.copy_(half)


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over each row, written over the logits: torch's kernel reads a row for its maximum,
    then for its sum of exponentials, and writes it once, where max, subtract, exp and sum as
    separate operations took four passes over the chunk, each 206 MB for cpu-small's. A compiled
    graph gets the plain call: the compiler fuses it itself."""
    if torch.compiler.is_compiling():
        return torch.softmax(logits, dim=1)
    return torch.ops.aten._softmax.out(logits, 1, False, out=logits)


def _workspace(shape, dtype, device, name: str) -> torch.Tensor:
    """A buffer for the loss's chunks, kept from one step to the next (one per thread). On a CPU
    a fresh tensor of 100+ MB is fresh pages from the OS at every step, and faulting them in slows
    the matmul that fills them (benchmarks/README.md, the `lm_loss.py` tables). CUDA's caching
    allocator and a compiled graph plan their own memory: there this is a plain allocation."""
    if device.type != "cpu" or torch.compiler.is_compiling():
        return torch.empty(shape, dtype=dtype, device=device)
    buffers = _buffers.__dict__
    numel = math.prod(shape)
    if (name, dtype) not in buffers or buffers[(name, dtype)].numel() < numel:
        buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buffers[(name, dtype)][:numel].view(shape)


_buffers = threading.local()
