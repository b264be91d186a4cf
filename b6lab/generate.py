"""Sampling text from a trained model, one token at a time with a KV cache."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import torch

from b6lab import parts
from b6lab.attention import AttentionContext
from b6lab.config import config_from_dict
from b6lab.errors import DataError, UsageError, exception_line
from b6lab.model import B6, KVCache
from b6lab.train import checkpoint


def checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint `path` names: a checkpoint folder, or a run folder's best checkpoint (else its last)."""
    folder = Path(path)
    if (folder / "checkpoints").is_dir():
        folder = checkpoint.find(folder / "checkpoints" / "best") or checkpoint.find(folder / "checkpoints" / "last") or folder
    found = checkpoint.find(folder)
    if found is None:
        raise UsageError(f"{path} is not a checkpoint (a folder with model.pt or torch.distributed.checkpoint shards, "
                         "and COMPLETE) nor a run folder with checkpoints/")
    return found


def load_for_sampling(path: str | Path, device: str = "auto") -> tuple[B6, object, str]:
    """(model, tokenizer, note) from a checkpoint folder, or from a run folder (its best checkpoint)."""
    folder = checkpoint_folder(path)
    model_state, _, config = checkpoint.load(folder)
    cfg = config_from_dict(config)
    tokenizer = checkpoint.load_tokenizer(checkpoint.find(folder))
    if tokenizer is None:
        tokenizer = parts.build_tokenizer(cfg.data, parts.build_source(cfg.data))
    model_cfg = replace(cfg.model, vocab_size=config["run"]["resolved"]["vocab_size"], dropout=0.0, gradient_checkpointing=False)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    context = AttentionContext(dev, torch.float32, model_cfg.head_dim, 0.0)
    note = "; ".join(parts.registry.source_changes(config.get("run", {}).get("plugins")))
    reason = parts.registry.get("attention", model_cfg.attention).why_unavailable(**context.as_kwargs())
    if reason:
        note = "; ".join(filter(None, [note, f"attention {model_cfg.attention} cannot run here ({reason}); sampling with auto"]))
        model_cfg = replace(model_cfg, attention="auto")
    model, _ = parts.build_model(model_cfg, context)
    try:
        model.load_state_dict(model_state)
    except RuntimeError as exc:
        raise DataError(f"{folder}'s model.pt does not fit its config.yaml ({exception_line(exc, 200)})") from None
    return model.to(dev).eval(), tokenizer, note


class PastContextWarning(UserWarning):
    """Sampling went past the positions the model was trained on."""


def past_context_message(max_seq_len: int) -> str:
    return (f"generating past the model's max_seq_len ({max_seq_len} positions, what it was trained on): RoPE "
            "extrapolates to positions it never saw, and the text usually degrades from there")


@torch.no_grad()
def sample(model: B6, prompt_ids: list[int], *, max_new_tokens: int, temperature: float = 0.8,
           top_k: int | None = 50, eos_id: int | None = None, generator: torch.Generator | None = None):
    """Yield new token ids: the prompt fills the cache once, then each token costs one position.

    Past model.cfg.max_seq_len it goes on (RoPE's tables grow), with one PastContextWarning, as
    transformers warns when a generation exceeds the model's maximum length."""
    device = next(model.parameters()).device
    cache = KVCache(len(model.blocks))
    max_seq_len = model.cfg.max_seq_len
    if len(prompt_ids) > max_seq_len:
        warnings.warn(past_context_message(max_seq_len), PastContextWarning, stacklevel=2)
    logits = model(torch.tensor([prompt_ids], device=device), cache=cache)[:, -1]
    for position in range(len(prompt_ids), len(prompt_ids) + max_new_tokens):
        if position == max_seq_len:  # this token makes the text longer than any the model saw
            warnings.warn(past_context_message(max_seq_len), PastContextWarning, stacklevel=2)
        if temperature <= 0:
            token = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator)
        if eos_id is not None and token.item() == eos_id:
            return
        yield token.item()
        logits = model(token, cache=cache)[:, -1]
