"""The sweep file: what it may say, read and checked into an `Experiment`.

    name: norm_ablation                                  # default: the file's name
    base: {preset: tiny, set: {train.max_steps: 300}}    # or a config file path, or an inline config
    grid:                                                # the cartesian product is run
      model.norm: [pre, post, sandwich]
      optimizer:                                         # a key without a dot: each value sets several keys
        - {optim.name: adamw, optim.lr: 1.0e-3}
        - {optim.name: lion, optim.lr: 3.0e-4, label: lion}
    seeds: [0, 1]                                        # each grid point runs once per seed (train.seed)
    metric: val_loss                                     # minimised
    resources: {cpu: 1, gpu: 0}                          # per trial; fractions allowed
    max_concurrent: 2                                    # default: as many as the resources allow
    scheduler: {name: asha, grace_period: 100}           # optional early stopping on the metric
    plugins: [../plugins/sliding_window.py]              # relative to this file; loaded in every trial
    max_failures: 0                                      # retries of a trial that crashed
    skip_unavailable: false                              # skip grid points whose plugins can't run here
    storage: runs/sweeps/norm_ablation                   # the sweep's folder (default runs/sweeps/<name>)

Every mistake is a ConfigError naming the key and the file.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from b6lab.config import SECTIONS, read_yaml
from b6lab.registry import resolve_plugin_spec
from b6lab.errors import ConfigError

SWEEP_KEYS = ("name", "base", "grid", "seeds", "metric", "resources", "max_concurrent", "scheduler", "plugins",
              "max_failures", "skip_unavailable", "storage")
BASE_KEYS = ("preset", "set", "file")  # beside the config's own sections, which may sit inline
METRICS = ("val_loss",)  # what every trial reports at each evaluation; minimised
RESOURCE_KEYS = ("cpu", "gpu")
SCHEDULERS = {
    # name -> its keys and their types; "time_attr" counts training steps or tokens.
    "asha": {"time_attr": str, "grace_period": int, "max_t": int, "reduction_factor": float, "brackets": int},
}
TIME_ATTRS = ("step", "tokens")
SEED_KEY = "seed"  # the name of the seed in a trial's Ray config


@dataclass(frozen=True)
class Axis:
    """One grid key and its values. A dotted key sets one config key; a key without a dot is a
    group whose values are mappings that set several keys together (an optimizer with its own lr)."""

    key: str
    values: tuple
    short: str  # the name in trial names and table headers

    @property
    def is_group(self) -> bool:
        return "." not in self.key

    def overrides(self, value) -> dict[str, Any]:
        """The dotted config keys this value sets."""
        if self.is_group:
            return {k: v for k, v in value.items() if k != "label"}
        return {self.key: value}

    def label(self, value) -> str:
        """How a value reads in tables and trial names."""
        if not self.is_group:
            return value_label(value)
        if "label" in value:
            return str(value["label"])
        return " ".join(value_label(v) if i == 0 else f"{k.split('.')[-1]}={value_label(v)}"
                        for i, (k, v) in enumerate(self.overrides(value).items()))


@dataclass
class Base:
    """The run config every trial starts from: a file, or a preset plus inline sections, plus `set`."""

    file: Path | None = None
    preset: str | None = None
    inline: dict = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    file: Path
    base: Base
    grid: list[Axis]
    seeds: list[int]
    metric: str = "val_loss"
    cpus: float = 1.0
    gpus: float = 0.0
    max_concurrent: int | None = None
    scheduler: dict | None = None
    plugins: list[str] = field(default_factory=list)  # absolute paths (or module names)
    max_failures: int = 0
    skip_unavailable: bool = False
    storage: Path = Path()  # absolute: the sweep's folder

    @property
    def trials_dir(self) -> Path:
        return self.storage / "trials"

    @property
    def ray_dir(self) -> Path:
        return self.storage / "ray"

    def points(self) -> list[dict]:
        """The cartesian product of the grid, times the seeds: each point as the trial's Ray config."""
        points: list[dict] = [{}]
        for axis in self.grid:
            points = [point | {axis.key: value} for point in points for value in axis.values]
        return [point | {SEED_KEY: seed} for point in points for seed in self.seeds]


def value_label(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_label(v) for v in value) + "]"
    return str(value)


def point_key(point: dict) -> str:
    """A trial's identity: its Ray config as canonical JSON (the same in the driver and in a worker)."""
    return json.dumps(point, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------
# Reading a sweep file


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    return parse_experiment(read_yaml(path, kind="sweep file", holds="keys (name, base, grid, seeds, ...)"), path)


def parse_experiment(data: dict, path: Path) -> Experiment:
    file = str(path)
    folder = path.resolve().parent
    for key in data:
        if key not in SWEEP_KEYS:
            raise ConfigError(unknown(key, SWEEP_KEYS, "sweep key"), key=str(key), file=file)
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"must be a non-empty name without '/', got {name!r}", key="name", file=file)
    storage = data.get("storage", f"runs/sweeps/{name}")
    if not isinstance(storage, str):
        raise ConfigError(f"must be a folder path, got {storage!r}", key="storage", file=file)
    cpus, gpus = _resources(data.get("resources", {}), file)
    return Experiment(
        name=name,
        file=path,
        base=_base(data.get("base", {}), folder, file),
        grid=_grid(data.get("grid", {}), file),
        seeds=_seeds(data.get("seeds", [0]), file),
        metric=_choice(data.get("metric", "val_loss"), METRICS, "metric", file),
        cpus=cpus,
        gpus=gpus,
        max_concurrent=_count(data.get("max_concurrent"), "max_concurrent", file, minimum=1, optional=True),
        scheduler=_scheduler(data.get("scheduler"), file),
        plugins=[resolve_plugin_spec(spec, folder) for spec in _string_list(data.get("plugins", []), "plugins", file)],
        max_failures=_count(data.get("max_failures", 0), "max_failures", file, minimum=0),
        skip_unavailable=_bool(data.get("skip_unavailable", False), "skip_unavailable", file),
        # Ray needs an absolute path; relative ones are taken from where the sweep is started, like train.out_dir.
        storage=Path(storage).expanduser().resolve(),
    )


def _base(base, folder: Path, file: str) -> Base:
    if isinstance(base, str):
        return Base(file=_config_file(base, folder, "base", file))
    if not isinstance(base, dict):
        raise ConfigError(f"must be a config file path or a mapping (preset, set, file, or config sections), got {base!r}",
                          key="base", file=file)
    allowed = BASE_KEYS + SECTIONS + ("name", "plugins")
    for key in base:
        if key not in allowed:
            raise ConfigError(unknown(key, allowed, "base key"), key=f"base.{key}", file=file)
    inline = {k: v for k, v in base.items() if k not in BASE_KEYS}
    config_file = None
    if "file" in base:
        if inline:
            raise ConfigError(f"gives both a config file and inline sections ({', '.join(inline)}); put those "
                              "keys under base.set, or in the file", key="base", file=file)
        config_file = _config_file(base["file"], folder, "base.file", file)
    preset = base.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"must be a preset name, got {preset!r}", key="base.preset", file=file)
    overrides = base.get("set", {}) or {}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and "." in k for k in overrides):
        raise ConfigError("must map dotted config keys to values, e.g. {train.max_steps: 300}", key="base.set", file=file)
    return Base(file=config_file, preset=preset, inline=inline, overrides=dict(overrides))


def _config_file(spec, folder: Path, key: str, file: str) -> Path:
    if not isinstance(spec, str):
        raise ConfigError(f"must be a config file path, got {spec!r}", key=key, file=file)
    for candidate in (folder / spec, Path.cwd() / spec):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"config file {spec} not found (looked in {folder} and {Path.cwd()})", key=key, file=file)


def _grid(grid, file: str) -> list[Axis]:
    if not isinstance(grid, dict):
        raise ConfigError("must map config keys to lists of values, e.g. {model.norm: [pre, post]}", key="grid", file=file)
    keys = [str(k) for k in grid]
    axes = []
    for key, values in grid.items():
        where = f"grid.{key}"
        if key in (SEED_KEY, "train.seed"):
            raise ConfigError("seeds have their own key: use `seeds: [0, 1, ...]`", key=where, file=file)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"must be a non-empty list of values, got {values!r}", key=where, file=file)
        if "." not in key:
            _check_group(key, values, where, file)
        axis = Axis(key, tuple(values), short_name(key, keys))
        labels = [axis.label(v) for v in values]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ConfigError(f"values must differ; {', '.join(repeated)} appears more than once", key=where, file=file)
        axes.append(axis)
    return axes


def _check_group(key: str, values: list, where: str, file: str) -> None:
    for value in values:
        if not isinstance(value, dict) or not value or not all(
            isinstance(k, str) and ("." in k or k == "label") for k in value
        ):
            raise ConfigError(
                "a grid key without a dot is a group: each of its values must map dotted config keys to values, "
                f"e.g. {{optim.name: lion, optim.lr: 3.0e-4}} (got {value!r}); a single config key needs its "
                "section, e.g. model.norm", key=where, file=file,
            )


def short_name(key: str, keys: list[str]) -> str:
    """The last part of a dotted key (model.norm -> norm), unless another key ends the same way."""
    last = key.split(".")[-1]
    return last if sum(k.split(".")[-1] == last for k in keys) == 1 else key


def _seeds(seeds, file: str) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"must be a non-empty list of integers, got {seeds!r}", key="seeds", file=file)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"has a seed more than once: {seeds}", key="seeds", file=file)
    return list(seeds)


def _resources(resources, file: str) -> tuple[float, float]:
    if not isinstance(resources, dict):
        raise ConfigError(f"must be a mapping like {{cpu: 1, gpu: 0}}, got {resources!r}", key="resources", file=file)
    for key, value in resources.items():
        if key not in RESOURCE_KEYS:
            raise ConfigError(unknown(key, RESOURCE_KEYS, "resource"), key=f"resources.{key}", file=file)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"must be a number >= 0 (fractions allowed), got {value!r}", key=f"resources.{key}", file=file)
    cpus, gpus = float(resources.get("cpu", 1)), float(resources.get("gpu", 0))
    if cpus == 0 and gpus == 0:
        raise ConfigError("asks for no CPU and no GPU; a trial needs one of them", key="resources", file=file)
    return cpus, gpus


def _scheduler(scheduler, file: str) -> dict | None:
    if scheduler is None:
        return None
    if not isinstance(scheduler, dict) or "name" not in scheduler:
        raise ConfigError(f"must be a mapping with a name, e.g. {{name: asha, grace_period: 100}}, got {scheduler!r}",
                          key="scheduler", file=file)
    name = _choice(scheduler["name"], tuple(SCHEDULERS), "scheduler.name", file)
    options = {}
    for key, value in scheduler.items():
        if key == "name":
            continue
        types = SCHEDULERS[name]
        if key not in types:
            raise ConfigError(unknown(key, tuple(types), f"{name} key"), key=f"scheduler.{key}", file=file)
        if key == "time_attr":
            options[key] = _choice(value, TIME_ATTRS, "scheduler.time_attr", file)
        elif types[key] is int:
            options[key] = _count(value, f"scheduler.{key}", file, minimum=1)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 1:
            raise ConfigError(f"must be a number > 1, got {value!r}", key=f"scheduler.{key}", file=file)
        else:
            options[key] = float(value)
    if "max_t" in options and options.get("grace_period", 1) > options["max_t"]:
        raise ConfigError(f"grace_period {options['grace_period']} is past max_t {options['max_t']}",
                          key="scheduler.grace_period", file=file)
    return {"name": name, **options}


def _choice(value, choices: tuple, key: str, file: str):
    if value not in choices:
        raise ConfigError(unknown(value, choices, "value"), key=key, file=file)
    return value


def _count(value, key: str, file: str, minimum: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}, got {value!r}", key=key, file=file)
    return value


def _bool(value, key: str, file: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", key=key, file=file)
    return value


def _string_list(value, key: str, file: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"must be a list of plugin files or modules, got {value!r}", key=key, file=file)
    return value


def unknown(value, choices, what: str) -> str:
    names = [str(c) for c in choices]
    # A shortened key (grace for grace_period) first; else the closest spelling.
    closest = [n for n in names if n.startswith(str(value))] or difflib.get_close_matches(str(value), names, n=1)
    hint = f" (did you mean {closest[0]!r}?)" if closest else ""
    return f"unknown {what} {value!r}{hint}; known: {', '.join(str(c) for c in choices)}"
