"""Build each part of a run from its plugin: attention, model, optimizer, schedule, data, tokenizer.

This is the one place where config names become objects. A plugin asked for by name that
cannot run here is an error saying why; only `auto` chooses quietly, and reports its choice.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from b6lab import registry
from b6lab.attention import AttentionContext
from b6lab.config import DataConfig, ModelConfig, OptimConfig, RunConfig, ScheduleConfig
from b6lab.data.documents import Corpus
from b6lab.errors import ConfigError, PluginError
from b6lab.model import B6


def plugin_kwargs(section, reg: registry.Registration) -> dict:
    """The options of `section` that belong to this plugin (its factory's keyword-only arguments)."""
    return {key: section.options.get(key, default) for key, default in reg.options.items()}


def usable(kind: str, name: str, **context) -> registry.Registration:
    """The plugin, or an error saying why it cannot run in `context`."""
    reg = registry.get(kind, name)
    reason = reg.why_unavailable(**context)
    if reason:
        raise PluginError(f"{_cannot_run(kind, name, reason)} (it comes from {reg.source})")
    return reg


def why_unavailable(cfg: RunConfig, context: AttentionContext) -> str | None:
    """Why the first of the run's plugins that cannot run in `context` can't, or None."""
    choices = [("attention", cfg.model.attention), ("norm", cfg.model.norm), ("optimizer", cfg.optim.name),
               ("scheduler", cfg.schedule.name), ("dataset", cfg.data.source), ("tokenizer", cfg.data.tokenizer)]
    for kind, name in choices:
        reason = registry.get(kind, name).why_unavailable(**context.as_kwargs())
        if reason:
            return _cannot_run(kind, name, reason)
    return None


def _cannot_run(kind: str, name: str, reason: str) -> str:
    return f"{kind} plugin {name!r} cannot run here: {reason}"


def build_attention(cfg: ModelConfig, context: AttentionContext):
    """The attention backend, and the name of what runs (what `auto` chose, or the name asked for)."""
    reg = usable("attention", cfg.attention, **context.as_kwargs())
    backend = reg.build(context, **plugin_kwargs(cfg, reg))
    return backend, getattr(backend, "chosen", cfg.attention)


def build_model(cfg: ModelConfig, context: AttentionContext) -> tuple[B6, str]:
    backend, chosen = build_attention(cfg, context)
    norm = registry.get("norm", cfg.norm)
    options = plugin_kwargs(cfg, norm)

    def norm_placement(d_model, n_layers):
        return norm.build(d_model, n_layers, **options)

    norm_placement.__name__ = cfg.norm
    return B6(cfg, backend, norm_placement), chosen


def param_groups(model: nn.Module, decay_embeddings: bool = True) -> list[dict]:
    """Weight matrices decay; norms, biases (and embeddings unless decay_embeddings) do not."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():  # each shared (tied) tensor once
        if not param.requires_grad:
            continue
        is_matrix = param.dim() >= 2 and (decay_embeddings or id(param) not in embeddings)
        (decay if is_matrix else no_decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    reg = usable("optimizer", cfg.name)
    check_optimizer_options(cfg, reg)
    return reg.build(param_groups(model, cfg.decay_embeddings), **plugin_kwargs(cfg, reg))


# The options most optimizers share, checked by name whatever the plugin (a sweep's pre-check too).
OPTIMIZER_RULES = {
    "lr": (lambda v: v > 0, "a number > 0"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "eps": (lambda v: v > 0, "a number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1), e.g. [0.9, 0.99]"),
}


def check_optimizer_options(cfg: OptimConfig, reg: registry.Registration) -> None:
    for key, value in plugin_kwargs(cfg, reg).items():
        if key in OPTIMIZER_RULES and value is not None:
            ok, accepted = OPTIMIZER_RULES[key]
            try:
                good = ok(value)
            except TypeError:
                good = False
            if not good:
                raise ConfigError(f"must be {accepted}, got {value!r}", key=f"optim.{key}")


def build_schedule(cfg: ScheduleConfig, max_steps: int):
    reg = usable("scheduler", cfg.name)
    return reg.build(max_steps, **plugin_kwargs(cfg, reg))


def build_source(cfg: DataConfig):
    reg = usable("dataset", cfg.source)
    return reg.build(cfg.val_fraction, **plugin_kwargs(cfg, reg))


def cache_dir(cfg: DataConfig | None = None) -> Path:
    """Where b6lab caches (trained tokenizers): data.cache_dir, else $B6LAB_CACHE, else
    $XDG_CACHE_HOME/b6lab, else ~/.cache/b6lab (the XDG default)."""
    chosen = (cfg.cache_dir if cfg else None) or os.environ.get("B6LAB_CACHE")
    if chosen:
        return Path(chosen).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: an unset, empty or relative XDG_CACHE_HOME means ~/.cache.
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "b6lab"


def build_tokenizer(cfg: DataConfig, source):
    reg = usable("tokenizer", cfg.tokenizer)
    return reg.build(Corpus(source, cache_dir(cfg)), **plugin_kwargs(cfg, reg))


def resolve_vocab(cfg: ModelConfig, tokenizer) -> ModelConfig:
    """model.vocab_size follows the tokenizer unless set; rounded up to a multiple of 64 (faster matmuls)."""
    if cfg.vocab_size is None:
        return replace(cfg, vocab_size=-(-tokenizer.vocab_size // 64) * 64)
    if cfg.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"{cfg.vocab_size} is smaller than the tokenizer's vocabulary ({tokenizer.vocab_size}); "
            "leave it unset to follow the tokenizer",
            key="model.vocab_size",
        )
    return cfg


def check_plugins(cfg: RunConfig, context: AttentionContext) -> str:
    """Build the cheap parts once, so a bad plugin option fails before any compute is spent.
    Returns the name of the attention backend that runs (what `auto` chose)."""
    _, attention = build_attention(cfg.model, context)
    norm = registry.get("norm", cfg.model.norm)
    norm.build(cfg.model.d_model, cfg.model.n_layers, **plugin_kwargs(cfg.model, norm))
    build_schedule(cfg.schedule, cfg.train.max_steps)
    check_optimizer_options(cfg.optim, usable("optimizer", cfg.optim.name))
    usable("dataset", cfg.data.source)
    usable("tokenizer", cfg.data.tokenizer)
    return attention
