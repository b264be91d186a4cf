"""A trained checkpoint's loss, perplexity and bits per byte on any data source.

The checkpoint brings its model, its tokenizer and its run's config; `--set data.…` points the
run's data section at other text (a local file, a Hub dataset, a named corpus) exactly as for
training. The split's blocks stream through the model (packing.split_blocks), so a split of any
size is read once, a batch at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import yaml

from b6lab import parts, registry
from b6lab.attention import Documents
from b6lab.bpb import bits_per_byte, token_byte_lengths
from b6lab.config import RECORD_KEYS, DataConfig, RunConfig, load_config, parse_override
from b6lab.data.packing import split_blocks
from b6lab.errors import ConfigError, DataError
from b6lab.generate import checkpoint_folder, load_for_sampling
from b6lab.model import B6

# What an evaluation may change: where the text comes from and how much of it is read at once.
SETTABLE = ("data.", "train.batch_size", "train.eval_steps")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Checkpoint:
    """A trained model ready to evaluate, with its tokenizer and the run config it is evaluated under."""

    model: B6
    tokenizer: object
    cfg: RunConfig
    folder: Path
    config: dict  # the checkpoint's config.yaml as written (with its `run` record)
    note: str  # what had to change to run here (an attention backend replaced), or ""


def load_checkpoint(path: str | Path, device: str = "auto", overrides: list[str] | tuple[str, ...] = ()) -> Checkpoint:
    """A checkpoint folder, or a run folder's checkpoints/best (else last), with `--set` overrides applied."""
    folder = checkpoint_folder(path)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    cfg = eval_config(config, overrides)
    model, tokenizer, note = load_for_sampling(folder, device)
    return Checkpoint(model, tokenizer, cfg, folder, config, note)


def eval_config(config: dict, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """The run's config with `data.*` (and the batch keys) overridden. A new data.source drops the
    old source's options, so that `--set data.source=text --set data.path=x.txt` needs nothing else."""
    data = {key: value for key, value in config.items() if key not in RECORD_KEYS}
    parsed = [parse_override(text) for text in overrides]
    for key, _ in parsed:
        if not key.startswith(SETTABLE):
            raise ConfigError("an evaluation can only set data.* (the text to evaluate on), train.batch_size and "
                              "train.eval_steps; the model is the checkpoint's", key=key)
        if key == "data.tokenizer":
            raise ConfigError("the tokenizer is the checkpoint's own; it cannot change after training", key=key)
    new_source = dict(parsed).get("data.source")
    if new_source is not None and new_source != data["data"].get("source"):
        old_options = registry.get("dataset", data["data"]["source"]).options
        data["data"] = {key: value for key, value in data["data"].items() if key not in old_options}
    return load_config(data=data, overrides=list(overrides))


class _WholeSource:
    """Both splits of a source, training part first, whatever split is asked for: for a single text
    file, the whole file in order."""

    def __init__(self, source):
        self.source, self.fingerprint = source, source.fingerprint

    def documents(self, split: str, start: int = 0) -> Iterator[str]:
        both = itertools.chain(self.source.documents("train"), self.source.documents("val"))
        return itertools.islice(both, start, None)


def build_source(data: DataConfig, split: str):
    """The source of `data`; for split "all", one that serves both of its splits as one."""
    source = parts.build_source(data)
    return _WholeSource(source) if split == "all" else source


@torch.no_grad()
def evaluate_text(ckpt: Checkpoint, *, split: str = "val", max_batches: int | None = None, precision: str = "fp32",
                  on_batch: Callable[[dict], None] | None = None) -> dict:
    """Loss (nats per token), perplexity and bits per byte of the checkpoint on `split` of cfg.data.

    Reads at most `max_batches` batches of train.batch_size blocks of data.seq_len tokens (all of
    the split when None); `on_batch` sees the running figures after each batch."""
    cfg, model, tokenizer = ckpt.cfg, ckpt.model, ckpt.tokenizer
    device = next(model.parameters()).device
    source = build_source(cfg.data, split)
    blocks = split_blocks(source, tokenizer, split, cfg.seq_len)
    byte_lengths = token_byte_lengths(tokenizer).to(device)
    loss_sum, tokens, n_bytes, batches = 0.0, 0, 0, 0
    while max_batches is None or batches < max_batches:
        batch = list(itertools.islice(blocks, cfg.train.batch_size))
        if not batch:
            break
        tokens_in = torch.from_numpy(np.stack(batch)).to(device)
        x, y = tokens_in[:, :-1], tokens_in[:, 1:]
        docs = Documents.from_tokens(x, tokenizer.eos_id) if cfg.data.doc_masking else None
        with autocast(device, precision):
            mean_loss = model(x, y, docs=docs).float().item()
        loss_sum += mean_loss * y.numel()
        tokens += y.numel()
        n_bytes += int(byte_lengths[y].sum())
        batches += 1
        if on_batch:
            on_batch(_figures(loss_sum, tokens, n_bytes, batches))
    if not batches:
        raise DataError(
            f"the {split} split of {source.fingerprint} holds fewer than data.seq_len + 1 = {cfg.seq_len + 1} tokens; "
            "evaluate on more text or set a shorter data.seq_len"
        )
    figures = _figures(loss_sum, tokens, n_bytes, batches)
    return {"checkpoint": str(ckpt.folder), "data": source.fingerprint, "split": split, **figures}


def autocast(device: torch.device, precision: str):
    """The autocast context of `precision` (fp32: none)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def _figures(loss_sum: float, tokens: int, n_bytes: int, batches: int) -> dict:
    loss = loss_sum / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float past ~709
        "bits_per_byte": bits_per_byte(loss_sum, n_bytes) if n_bytes else None,
        "tokens": tokens,
        "bytes": n_bytes,
        "batches": batches,
    }
