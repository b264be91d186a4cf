"""The grid expanded into trials, and every trial's config resolved and checked before anything runs.

A trial's config is the base config with its grid values and seed laid over it, exactly as
`b6lab train --set` would lay them: so a typo or an impossible value in the fifth grid point is
the same one-line error `b6lab train` gives, reported before the first trial starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from b6lab import parts, registry
from b6lab.attention import AttentionContext
from b6lab.config import RunConfig, load_config, plugin_choices
from b6lab.errors import ConfigError, PluginError, UsageError
from b6lab.sweep.grid import LADDER_KEY, SEED_KEY, Experiment, point_key
from b6lab.train import hardware


@dataclass
class Trial:
    index: int  # 1-based position in the grid
    name: str  # its run folder's name: the grid values and the seed
    point: dict  # its Ray config: grid key -> value, and the seed
    grid: dict[str, str]  # grid key -> the value's label
    seed: int
    config: dict  # the resolved run config, as RunConfig.to_dict(): what the worker rebuilds
    run_dir: Path
    plugins: dict[str, str]  # kind -> the plugin that will run (what `auto` chooses, where known)
    params: int | None  # None where the vocabulary can't be known before the run
    tokens: int  # tokens the trial trains on
    skip_reason: str | None = None  # set when skip_unavailable drops it

    @property
    def key(self) -> str:
        return point_key(self.point)

    @property
    def max_steps(self) -> int:
        return self.config["train"]["max_steps"]

    @property
    def config_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resolve_trials(exp: Experiment) -> list[Trial]:
    """Every trial of the sweep, each config loaded and its cheap parts built once; raises on the first mistake."""
    for spec in exp.plugins:
        try:
            registry.load_plugin_path(spec)
        except UsageError as exc:
            raise ConfigError(str(exc), key="plugins", file=str(exp.file)) from None
    # Each trial loads the base config's plugins and the sweep's, wherever its worker runs.
    plugins = list(dict.fromkeys(_load(exp, {}, None, "the base config").plugins + exp.plugins))
    points = exp.points()
    names = [trial_name(exp, point) for point in points]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"two grid points share the folder name {name}; give their values distinct labels",
                              key="grid", file=str(exp.file))
    sizes, checked = ModelSizes(), {}
    return [_resolve(exp, index, point, name, f"trial {index} of {len(points)}: {name}", plugins, sizes, checked)
            for index, (point, name) in enumerate(zip(points, names), 1)]


def _resolve(exp: Experiment, index: int, point: dict, name: str, where: str, plugins: list[str],
             sizes: ModelSizes, checked: dict[str, tuple[str | None, str]]) -> Trial:
    run_dir = exp.trials_dir / name
    overrides = _grid_values(exp, point)
    # A tuned sweep's confirmation runs: each grid point at its own chosen setting.
    arm = point_key({k: v for k, v in point.items() if k != SEED_KEY})
    overrides |= (exp.tuned or {}).get(arm) or {}
    # logging.progress stays as the sweep file sets it: a trial's stdout is no terminal, so its
    # train.log gets plain progress lines, never a redrawn bar.
    overrides |= {"train.seed": point[SEED_KEY], "train.out_dir": str(run_dir), "name": exp.name, "plugins": plugins}
    overrides |= _sweep_data_path(exp, point)
    cfg = _load_at_rung(exp, overrides, point, where, sizes)
    config = cfg.to_dict()
    with _located(exp, point, where):
        # Finding the data's files is cheap (building a source reads nothing), and a path that
        # matches nothing would otherwise fail every trial after Ray has started.
        sizes.source(cfg)
        context = trial_context(cfg, exp.gpus)
        # Trials that differ only where no plugin looks (the seed, say) share one check: a probe
        # costs a fraction of a second, and a sweep has many seeds.
        parts_key = json.dumps([{section: config[section] for section in ("model", "data", "optim", "schedule")},
                                cfg.train.max_steps, repr(context)], sort_keys=True, default=str)
        if parts_key not in checked:
            reason = parts.why_unavailable(cfg, context) if context else None
            if reason and not exp.skip_unavailable:
                raise PluginError(f"{reason} (set skip_unavailable: true to skip such grid points)")
            checked[parts_key] = reason, parts.check_plugins(cfg, context) if context and not reason else cfg.model.attention
        reason, chosen = checked[parts_key]
        params = sizes.count(cfg)
    return Trial(
        index=index, name=name, point=point, grid={axis.key: axis.label(point[axis.key]) for axis in exp.grid},
        seed=point[SEED_KEY], config=config, run_dir=run_dir,
        plugins={kind: name for _, kind, name in plugin_choices(cfg)} | {"attention": chosen},
        params=params, tokens=cfg.train.max_steps * cfg.train.batch_size * cfg.train.grad_accum_steps * cfg.seq_len,
        skip_reason=reason,
    )


def _load_at_rung(exp: Experiment, overrides: dict, point: dict, where: str, sizes: ModelSizes) -> RunConfig:
    """The point's config; on a ladder, trained for its rung's token budget (a trial's and a tuning
    run's alike: an lr tuned at another length would not be the rung's)."""
    cfg = _load(exp, overrides, point, where)
    if exp.ladder:
        cfg = _load(exp, overrides | {"train.max_steps": _rung_steps(exp, point, cfg, sizes)}, point, where)
    return cfg


def _rung_steps(exp: Experiment, point: dict, cfg: RunConfig, sizes: ModelSizes) -> int:
    """Training steps for this rung's token budget (tokens per parameter x parameters, or as given).
    Every grid point of a rung trains on the same tokens: those of the rung's first point (arms whose
    parameter counts differ a little, Post-LN's extra norm say, are compared at equal data)."""
    axis = next(axis for axis in exp.grid if axis.key == LADDER_KEY)
    rung = axis.values.index(point[LADDER_KEY])
    params = sizes.rungs.setdefault(rung, sizes.count(cfg))
    if params is None and exp.ladder.budget_rule == "tokens_per_param":
        raise ConfigError("needs the model's parameter count, which needs its vocabulary before the run: set "
                          "model.vocab_size, or give ladder.tokens per rung", key="ladder.tokens_per_param",
                          file=str(exp.file))
    per_step = cfg.train.batch_size * cfg.train.grad_accum_steps * cfg.seq_len
    return max(1, math.ceil(exp.ladder.tokens(rung, params) / per_step))


def _grid_values(exp: Experiment, point: dict) -> dict:
    """The dotted config keys a grid point sets, and their values."""
    return {k: v for axis in exp.grid for k, v in axis.overrides(point[axis.key]).items()}


def _sweep_data_path(exp: Experiment, point: dict) -> dict:
    """{"data.path": ...} as the sweep file gives it (grid, else base.set, else inline base), each
    relative entry made absolute against the sweep file's folder, as its `plugins:` are; {} where the
    sweep file gives none (a base config file's data.path means what it means to `b6lab train`)."""
    inline = exp.base.inline.get("data")
    inline = {"data.path": inline["path"]} if isinstance(inline, dict) and "path" in inline else {}
    layers = (_grid_values(exp, point), exp.base.overrides, inline)
    given = next((layer["data.path"] for layer in layers if "data.path" in layer), None)
    if given is None:
        return {}
    folder = exp.file.resolve().parent

    def located(entry):
        return os.path.join(folder, os.path.expanduser(entry)) if isinstance(entry, str) else entry

    return {"data.path": [located(entry) for entry in given] if isinstance(given, list) else located(given)}


def trial_name(exp: Experiment, point: dict) -> str:
    """norm=post,warmup_steps=0,seed=1: readable in `ls`, safe as a folder name."""
    words = [f"{axis.short}={axis.label(point[axis.key])}" for axis in exp.grid] + [f"seed={point[SEED_KEY]}"]
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(words))
    if len(name) > 120:  # folder names have limits; keep the start readable and the whole unique
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def _load(exp: Experiment, overrides: dict, point: dict | None, where: str) -> RunConfig:
    """The base config with `overrides` laid over its own `set:` values, as `b6lab train --set` would lay them."""
    base = exp.base
    with _located(exp, point, where) as origin:
        return load_config(base.file, preset=base.preset, overrides=base.overrides | overrides, origin=origin,
                           data=None if base.file else base.inline)


@contextlib.contextmanager
def _located(exp: Experiment, point: dict | None, where: str):
    """A config or usage error inside says which trial of which sweep file it belongs to; yields
    `origin(key)`, the part of the sweep file a value laid over the base came from."""
    origin = _origin(exp, point)
    try:
        yield origin
    except ConfigError as exc:
        file = exc.file
        if file is None:  # an error no layer is named for: the key's part of the sweep file
            file = origin(exc.key)
        elif file == "<config>":  # the base's inline sections
            file = origin(exc.key) if origin(exc.key) != str(exp.file) else f"base of {exp.file}"
        raise ConfigError(f"{exc.message} ({where})", key=exc.key, file=file) from None
    except UsageError as exc:
        raise UsageError(f"{exp.file}, {where}: {exc}") from None


def _origin(exp: Experiment, point: dict | None):
    """Where a value laid over the base came from, in the sweep file's terms: its ladder, its grid,
    its base's `set:`, else the sweep file itself (the seed, the run folder, the tuned values)."""
    grid_keys = set(_grid_values(exp, point)) if point else set()

    def origin(key: str | None) -> str:
        if exp.ladder and key in exp.ladder.keys:
            return f"ladder of {exp.file}"
        if key in grid_keys:
            return f"grid of {exp.file}"
        if key in exp.base.overrides:
            return f"base.set of {exp.file}"
        return str(exp.file)

    return origin


def trial_context(cfg: RunConfig, gpus: float) -> AttentionContext | None:
    """What the trial's attention will run on, judged here; None when it runs on a GPU this machine lacks."""
    device_name = cfg.train.device
    if device_name == "auto":
        device_name = "cuda" if gpus > 0 else "cpu"
    elif device_name.startswith("cuda") and gpus == 0:
        raise ConfigError("asks for a GPU, but resources.gpu gives each trial none", key="train.device")
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        return None  # a cluster's GPU: each trial checks its own parts when it starts
    precision = hardware.resolve_precision(cfg.train.precision, device)
    return AttentionContext(device, hardware.DTYPES[precision], cfg.model.head_dim, cfg.model.dropout)


class ModelSizes:
    """Parameter counts without building weights (on the meta device), the vocabulary from the
    run's tokenizer. Building the tokenizer here also warms its cache, so that trials starting
    together don't each train the same BPE."""

    def __init__(self):
        self.sources: dict[str, object] = {}  # data config -> its source
        self.tokenizers: dict[str, object] = {}
        self.counts: dict[str, int] = {}  # model config -> parameters
        self.rungs: dict[int, int | None] = {}  # a ladder's rung -> the parameters its token budget is set by

    def source(self, cfg: RunConfig):
        """The run's data source, built once per data config; raises on files that aren't there."""
        key = self._data_key(cfg)
        if key not in self.sources:
            self.sources[key] = parts.build_source(cfg.data)
        return self.sources[key]

    def count(self, cfg: RunConfig) -> int | None:
        model_cfg = cfg.model
        if model_cfg.vocab_size is None:
            tokenizer = self._tokenizer(cfg)
            if tokenizer is None:
                return None
            model_cfg = parts.resolve_vocab(model_cfg, tokenizer)
        # Attention backends hold no weights; eager builds anywhere, whatever the trial will use.
        model_cfg = replace(model_cfg, attention="eager")
        key = json.dumps(asdict(model_cfg), sort_keys=True, default=str)
        if key not in self.counts:
            context = AttentionContext(torch.device("cpu"), torch.float32, model_cfg.head_dim, model_cfg.dropout)
            with torch.device("meta"):
                model, _ = parts.build_model(model_cfg, context)
            self.counts[key] = model.num_params()
        return self.counts[key]

    @staticmethod
    def _data_key(cfg: RunConfig) -> str:
        return json.dumps([cfg.data.source, cfg.data.tokenizer, cfg.data.options], sort_keys=True, default=str)

    def _tokenizer(self, cfg: RunConfig):
        key = self._data_key(cfg)
        if key not in self.tokenizers:
            try:
                self.tokenizers[key] = parts.build_tokenizer(cfg.data, self.source(cfg))
            except UsageError:
                self.tokenizers[key] = None  # e.g. a Hub corpus this machine can't reach; the trial will say
        return self.tokenizers[key]


def tuning_configs(exp: Experiment) -> dict[str, dict]:
    """Each arm's config for its tuning runs (the first tuning seed's), every tuned key checked at
    both ends of its range (or each choice) before anything runs: arm key -> config dict."""
    from b6lab.sweep.tuning import arm_name, arms

    configs, sizes = {}, ModelSizes()
    plugins = list(dict.fromkeys(_load(exp, {}, None, "the base config").plugins + exp.plugins))
    for arm in arms(exp):
        where = f"tuning {arm_name(exp, arm)}"
        point = arm | {SEED_KEY: exp.tuning.seeds[0]}
        # data.path relative to the sweep file, as for the grid's trials
        overrides = _grid_values(exp, arm) | {"train.seed": exp.tuning.seeds[0], "name": exp.name,
                                              "plugins": plugins} | _sweep_data_path(exp, arm)
        for tuned in exp.tuning.keys:
            for value in tuned.bounds():
                _load(exp, overrides | {tuned.key: value}, point, f"{where}, {tuned.key}={value}")
        # On a ladder each (arm, rung) is tuned at the rung's length: the best lr moves with width.
        configs[point_key(arm)] = _load_at_rung(exp, overrides, point, where, sizes).to_dict()
    return configs
