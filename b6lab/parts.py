"""Build each part of a run from its plugin: attention, model, optimizer, schedule, data, tokenizer.

This is the one place where config names become objects. A plugin asked for by name that
cannot run here is an error saying why; only `auto` chooses quietly, and reports its choice.
Each part is built as factory(*fixed, **options), with the options the config resolved, and
checked against its kind's contract (`b6lab.hookspecs`, `b6lab.contracts`) as soon as it is
built; whatever a plugin raises reaches the user as one line naming the key, the kind, the
plugin and where it came from (`--debug` shows the traceback).
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from b6lab import contracts, fast_paths, registry
from b6lab.attention import AttentionContext
from b6lab.config import DataConfig, ModelConfig, OptimConfig, RunConfig, ScheduleConfig, plugin_choices
from b6lab.data.documents import Corpus
from b6lab.errors import ConfigError, PluginError, UsageError, exception_line
from b6lab.model import B6, NORM_LAYERS
from b6lab.train.records import is_disk_full


SECTION_NAMES = {ModelConfig: "model", DataConfig: "data", OptimConfig: "optim", ScheduleConfig: "schedule"}


def plugin_kwargs(section, reg: registry.Registration) -> dict:
    """The options of `section` that belong to this plugin, as the config resolved them (checked,
    defaults filled in: validation.plugin_options; a section made by hand gets the defaults), with
    every required one set. Building is factory(*fixed, **these)."""
    kwargs = {key: section.options.get(key, default) for key, default in reg.options.items()}
    unset = reg.unset_required(kwargs)
    if unset:
        key = f"{SECTION_NAMES.get(type(section), '')}.{unset}"
        raise PluginError(f"{key} is required by {reg.label}: set it, e.g. --set {key}=...")
    return kwargs


@contextmanager
def plugin_errors(reg: registry.Registration, key: str):
    """Whatever the plugin raises while building or checking its part, as one line naming it."""
    try:
        yield
    except contracts.ContractError as exc:
        raise PluginError(f"{key}: {reg.label}: {exc}") from exc
    except UsageError:
        raise
    except Exception as exc:
        if is_disk_full(exc):  # not the plugin's mistake: the run ends as at any write on a full disk
            raise
        raise PluginError(f"{key}: {reg.label} raised {exception_line(exc)}") from exc


def usable(kind: str, name: str, **context) -> registry.Registration:
    """The plugin, or an error saying why it cannot run in `context`."""
    reg = registry.get(kind, name)
    reason = reg.why_unavailable(**context)
    if reason:
        raise PluginError(f"{_cannot_run(kind, name, reason)} (it comes from {reg.source})")
    return reg


def why_unavailable(cfg: RunConfig, context: AttentionContext) -> str | None:
    """Why the first of the run's plugins that cannot run in `context` can't, or None."""
    for _, kind, name in plugin_choices(cfg):
        reason = registry.get(kind, name).why_unavailable(**context.as_kwargs())
        if reason:
            return _cannot_run(kind, name, reason)
    return None


def _cannot_run(kind: str, name: str, reason: str) -> str:
    return f"{kind} plugin {name!r} cannot run here: {reason}"


def build_attention(cfg: ModelConfig, context: AttentionContext):
    """The attention backend, probed once on a tiny input, and the name of what runs (what `auto`
    chose, or the name asked for)."""
    reg = usable("attention", cfg.attention, **context.as_kwargs())
    with plugin_errors(reg, "model.attention"):
        backend = reg.build(context, **plugin_kwargs(cfg, reg))
        contracts.check_attention(backend, context)
    return backend, getattr(backend, "chosen", cfg.attention)


def build_model(cfg: ModelConfig, context: AttentionContext, z_loss: float = 0.0) -> tuple[B6, str]:
    """The model and the name of its attention backend; z_loss is train.z_loss (0 off)."""
    backend, chosen = build_attention(cfg, context)
    model = fast_paths.make_model(context, cfg, backend, norm_placement(cfg, context), feedforward(cfg, context),
                                  initialisation(cfg, context))
    parametrization(cfg).parametrize(model)
    model.z_loss = z_loss
    return model, chosen


def norm_placement(cfg: ModelConfig, context: AttentionContext):
    """factory(d_model, n_layers) -> the block wiring of model.norm, with model.norm_layer's norms;
    the first one built is checked."""
    reg = usable("norm", cfg.norm, **context.as_kwargs())
    options = plugin_kwargs(cfg, reg)
    if "make_norm" in inspect.signature(reg.factory).parameters:
        options["make_norm"] = NORM_LAYERS[cfg.norm_layer]
    elif cfg.norm_layer != "layernorm":
        raise ConfigError(
            f"norm placement {cfg.norm!r} builds its own norms (its factory takes no make_norm), so it "
            f"cannot use {cfg.norm_layer}; leave model.norm_layer at layernorm or pick another placement",
            key="model.norm_layer",
        )
    checked = []

    def build(d_model, n_layers):
        with plugin_errors(reg, "model.norm"):
            wiring = reg.build(d_model, n_layers, **options)
            if not checked:
                checked.append(contracts.check_norm(wiring, d_model))
        return wiring

    build.__name__ = cfg.norm
    return build


def feedforward(cfg: ModelConfig, context: AttentionContext):
    """factory(d_model, d_ff) -> the feed-forward of model.feedforward, with model.bias; the first
    one built is checked."""
    reg = usable("feedforward", cfg.feedforward, **context.as_kwargs())
    options = plugin_kwargs(cfg, reg)
    checked = []

    def build(d_model, d_ff):
        with plugin_errors(reg, "model.feedforward"):
            module = reg.build(d_model, d_ff, bias=cfg.bias, **options)
            if not checked:
                checked.append(contracts.check_feedforward(module, d_model))
        return module

    build.__name__ = cfg.feedforward
    return build


def initialisation(cfg: ModelConfig, context: AttentionContext):
    """init(model) of model.init, which sets a built model's weights; checked on the model it inits."""
    reg = usable("init", cfg.init, **context.as_kwargs())
    with plugin_errors(reg, "model.init"):
        init = reg.build(**plugin_kwargs(cfg, reg))
        contracts.check_init(init)

    def init_weights(model):
        with plugin_errors(reg, "model.init"):
            init(model)
            contracts.check_initialised(model)

    return init_weights


def parametrization(cfg: ModelConfig | None):
    """The model.parametrization plugin's object: how the init, the logits and each parameter
    group's lr scale with width (the default's, for a model b6lab did not build)."""
    cfg = cfg if isinstance(cfg, ModelConfig) else ModelConfig()
    reg = usable("parametrization", cfg.parametrization)
    with plugin_errors(reg, "model.parametrization"):
        return reg.build(**plugin_kwargs(cfg, reg))


def param_groups(model: nn.Module, decay_embeddings: bool = True) -> list[dict]:
    """Weight matrices decay; norms, biases (and embeddings unless decay_embeddings) do not.
    Each group carries its parameters' names (torch's "param_names"), by which Muon routes them."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = {"params": [], "param_names": []}, {"params": [], "param_names": [], "weight_decay": 0.0}
    for name, param in model.named_parameters():  # each shared (tied) tensor once
        if not param.requires_grad:
            continue
        is_matrix = param.dim() >= 2 and (decay_embeddings or id(param) not in embeddings)
        group = decay if is_matrix else no_decay
        group["params"].append(param)
        group["param_names"].append(name)
    return [decay, no_decay]


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.decay_embeddings)
    return parametrization(getattr(model, "cfg", None)).optimizer(
        model, groups, cfg.name, lambda groups: _optimizer_over(cfg, groups))


def _optimizer_over(cfg: OptimConfig, groups: list[dict], probe: bool = False) -> torch.optim.Optimizer:
    reg = usable("optimizer", cfg.name)
    with plugin_errors(reg, "optim.name"):
        optimizer = reg.build(groups, **plugin_kwargs(cfg, reg))
        contracts.check_optimizer(optimizer, groups, probe=probe)
    return optimizer


def build_schedule(cfg: ScheduleConfig, max_steps: int):
    reg = usable("scheduler", cfg.name)
    with plugin_errors(reg, "schedule.name"):
        schedule = reg.build(max_steps, **plugin_kwargs(cfg, reg))
        contracts.check_scheduler(schedule, max_steps)
    return schedule


def build_source(cfg: DataConfig):
    reg = usable("dataset", cfg.source)
    with plugin_errors(reg, "data.source"):
        source = reg.build(cfg.val_fraction, **plugin_kwargs(cfg, reg))
        contracts.check_dataset(source)
    return source


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
    with plugin_errors(reg, "data.tokenizer"):
        tokenizer = reg.build(Corpus(source, cache_dir(cfg)), **plugin_kwargs(cfg, reg))
        contracts.check_tokenizer(tokenizer)
    return tokenizer


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
    """Build and check every chosen part that is cheap to build (the optimizer over a stand-in
    parameter, one step), so a bad plugin or option fails before any compute is spent, in a sweep
    before its first trial. The data source and tokenizer are only looked up and their required
    options checked (the config checked the rest): building them can mean reading a corpus.
    Returns the name of the attention backend that runs (what `auto` chose)."""
    _, attention = build_attention(cfg.model, context)
    norm_placement(cfg.model, context)(cfg.model.d_model, cfg.model.n_layers)
    feedforward(cfg.model, context)(cfg.model.d_model, cfg.model.d_ff)
    initialisation(cfg.model, context)
    scaling = parametrization(cfg.model)
    getattr(scaling, "check_optimizer", lambda name: None)(cfg.optim.name)  # one it has no rules for, before any run
    build_schedule(cfg.schedule, cfg.train.max_steps)
    _optimizer_over(cfg.optim, contracts.stand_in_groups(), probe=True)
    plugin_kwargs(cfg.data, usable("dataset", cfg.data.source))
    plugin_kwargs(cfg.data, usable("tokenizer", cfg.data.tokenizer))
    return attention
