"""How likely a model finds a continuation of a context: the scoring under multiple-choice tasks
and the lm-evaluation-harness model, done the way lm-evaluation-harness does it for causal LMs."""

from __future__ import annotations

from typing import Callable

import torch

# Logits held at once while scoring (fp32): a batch is cut short before it needs more.
LOGITS_BUDGET = 2**27


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness's TemplateLM makes them: spaces that end
    the context move to the continuation, the whole text is encoded once and the continuation is
    what follows the context's own tokens; an empty context is the end-of-text token."""
    if not context:
        ids = tokenizer.encode(continuation)
        return ([tokenizer.eos_id], ids) if ids[:1] != [tokenizer.eos_id] else (ids[:1], ids[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


@torch.no_grad()
def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], *, max_length: int, batch_size: int = 16,
                   on_batch: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): the summed log-probability of the continuation
    given the context, and whether greedy decoding would produce exactly it.

    Context and continuation are joined and cut from the left to max_length + 1 tokens, as
    lm-evaluation-harness does. Requests go longest first, in right-padded batches (a causal model's
    positions never see the padding after them); `on_batch` gets the number of requests done."""
    device = next(model.parameters()).device
    vocab = model.lm_head.weight.size(0)
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    done = 0
    while done < len(order):
        inputs = []
        for i in order[done : done + batch_size]:
            context, continuation = requests[i]
            if not continuation:
                raise ValueError("a continuation to score needs at least one token")
            whole = (context + continuation)[-(max_length + 1):]
            if inputs and (len(inputs) + 1) * len(inputs[0]) * vocab > LOGITS_BUDGET:
                break
            inputs.append(whole[:-1])
        chosen = order[done : done + len(inputs)]
        x = torch.zeros(len(inputs), len(inputs[0]), dtype=torch.long)
        for row, ids in enumerate(inputs):
            x[row, : len(ids)] = torch.tensor(ids)
        logits = model(x.to(device))
        for row, i in enumerate(chosen):
            continuation = torch.tensor(requests[i][1][-max_length:], device=device)
            end = len(inputs[row])
            logprobs = torch.log_softmax(logits[row, end - len(continuation) : end].float(), dim=-1)
            total = logprobs.gather(1, continuation[:, None]).sum().item()
            results[i] = (total, bool((logprobs.argmax(dim=-1) == continuation).all()))
        done += len(inputs)
        if on_batch:
            on_batch(done)
    return results
