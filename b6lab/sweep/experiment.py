"""The sweep file: what it may say, read and checked into an `Experiment`.

    name: norm_ablation                                  # default: the file's name
    base: {preset: tiny, set: {train.max_steps: 300}}    # or a config file path, or an inline config
    grid:                                                # the cartesian product is run
      model.norm: [pre, post, sandwich]
      optimizer:                                         # a key without a dot: each value sets several keys
        - {optim.name: adamw, optim.lr: 1.0e-3}
        - {optim.name: lion, optim.lr: 3.0e-4, label: lion}
    seeds: [0, 1]                                        # each grid point runs once per seed (train.seed)
    seeds: {start: 3, max: 12, equivalence: 0.01}        # or sequential: more seeds only where undecided
    tune: {keys: {optim.lr: [1.0e-4, 3.0e-3, log]}, trials: 8, seeds: [100], algorithm: optuna}
                                                         # tune each grid point first (tuning.py);
                                                         # algorithm: optuna | random | grid
    search: {keys: ..., trials: 16}                      # no grid: a search, its best run on the seeds
    ladder: {model.d_model: [64, 128], model.n_heads: [2, 4], tokens_per_param: 20}
                                                         # every grid point at every rung (a model size)
    metric: val_loss                                     # minimised: val_loss or val_bpb (bits per byte)
    resources: {cpu: 1, gpu: 0}                          # per trial; fractions allowed
    max_concurrent: 2                                    # default: as many as the resources allow
    scheduler: {name: asha, grace_period: 100}           # optional early stopping on the metric
    plugins: [../plugins/sliding_window.py]              # relative to this file; loaded in every trial
    max_failures: 0                                      # retries of a trial that crashed
    skip_unavailable: false                              # skip grid points whose plugins can't run here
    storage: runs/sweeps/norm_ablation                   # the sweep's folder (default runs/sweeps/<name>)

Every mistake is a ConfigError naming the key and the file: the types are pydantic's to check
(`SweepFile` below, through b6lab/validation.py, as for a run config), the rest is checked here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import ConfigDict, Field

from b6lab import validation
from b6lab.config import SECTIONS
from b6lab.config_sources import read_yaml
from b6lab.errors import ConfigError, unknown
from b6lab.registry import resolve_plugin_spec
from b6lab.sweep.grid import LADDER_KEY, SEED_KEY, Axis, Base, Experiment, Ladder, Sequential, short_name
from b6lab.sweep.tuning import ALGORITHMS, TunedKey, Tuning

BASE_KEYS = ("preset", "set", "file")  # beside the config's own sections, which may sit inline
METRICS = ("val_loss", "val_bpb")  # what every trial reports at each evaluation; minimised
SCHEDULERS = ("asha",)  # each a dataclass below
FORBID = ConfigDict(extra="forbid")  # a key the schema lacks is an error, not ignored
PositiveInt = Annotated[int, Field(ge=1)]


@dataclass
class Resources:
    __pydantic_config__ = FORBID
    cpu: Annotated[float, Field(ge=0)] = 1.0  # per trial; fractions allowed
    gpu: Annotated[float, Field(ge=0)] = 0.0
    workers: PositiveInt = 1  # >1: each trial is a Ray Train TorchTrainer of this many workers, each with cpu/gpu


@dataclass
class Asha:
    """Ray Tune's ASHAScheduler (unset keys: the longest trial for max_t, a tenth of it for grace_period)."""

    __pydantic_config__ = FORBID
    name: Literal["asha"]
    time_attr: Optional[Literal["step", "tokens"]] = None  # training steps or tokens
    grace_period: Optional[PositiveInt] = None
    max_t: Optional[PositiveInt] = None
    reduction_factor: Optional[Annotated[float, Field(gt=1)]] = None
    brackets: Optional[PositiveInt] = None


@dataclass
class SequentialSeeds:
    """`seeds: {start, max}`: every grid point runs seeds 0..start-1; then seeds are added, one at a
    time, only to the grid points of comparisons not yet decided, up to max (sequential.py)."""

    __pydantic_config__ = FORBID
    start: Annotated[int, Field(ge=2)]
    max: PositiveInt
    equivalence: Optional[Annotated[float, Field(gt=0)]] = None  # a difference this small counts as none
    first: Annotated[int, Field(ge=0)] = 0  # the first seed's number


@dataclass
class TuneSection:
    """`tune:`: each grid point searched over `keys` on tuning seeds, then confirmed on the sweep's seeds."""

    __pydantic_config__ = FORBID
    keys: Annotated[dict[str, Union[list, dict]], Field(min_length=1)]
    trials: PositiveInt = 8
    seeds: Annotated[list[int], Field(min_length=1)] = field(default_factory=lambda: [100])
    algorithm: Literal[ALGORITHMS] = "optuna"


@dataclass
class SweepFile:
    """The keys a sweep file may hold and their types, as written (the module's docstring shows each)."""

    __pydantic_config__ = FORBID
    name: Optional[str] = None
    base: Union[str, dict] = field(default_factory=dict)
    grid: dict[str, Annotated[list, Field(min_length=1)]] = field(default_factory=dict)
    seeds: Annotated[list[int], Field(min_length=1)] = field(default_factory=lambda: [0])  # or SequentialSeeds
    metric: Literal[METRICS] = "val_loss"
    resources: Resources = field(default_factory=Resources)
    max_concurrent: Optional[PositiveInt] = None
    scheduler: Optional[Asha] = None
    plugins: list[str] = field(default_factory=list)
    max_failures: Annotated[int, Field(ge=0)] = 0
    skip_unavailable: bool = False
    storage: Optional[str] = None
    tune: Optional[TuneSection] = None
    search: Optional[TuneSection] = None  # a sweep without a grid: one search, its best confirmed on the seeds
    ladder: Optional[dict[str, Any]] = None  # rungs: dotted keys zipped, and a budget rule (_ladder)


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    data = read_yaml(path, kind="sweep file", holds="keys (name, base, grid, seeds, ...)")
    file, folder = str(path), path.resolve().parent
    scheduler = data.get("scheduler")
    if isinstance(scheduler, dict) and scheduler.get("name") not in SCHEDULERS:
        raise ConfigError(unknown(scheduler.get("name"), SCHEDULERS, "value"), key="scheduler.name", file=file)
    sequential = None
    if isinstance(data.get("seeds"), dict):  # checked on its own, so that a mistake names its key
        sequential = validation.build(SequentialSeeds, data["seeds"], lambda key: file, "must be", prefix="seeds.",
                                      names={"": "key of seeds"})
        data = {k: v for k, v in data.items() if k != "seeds"}
    sweep = validation.build(SweepFile, data, lambda key: file, "must be",
                             names={"": "sweep key", "resources": "resource", "scheduler": "asha key"})
    name = path.stem if sweep.name is None else sweep.name
    if not name or "/" in name:
        raise ConfigError(f"must be a non-empty name without '/', got {name!r}", key="name", file=file)
    if sequential and sequential.max < sequential.start:
        raise ConfigError(f"max {sequential.max} is below start {sequential.start}: expected max >= start",
                          key="seeds.max", file=file)
    if sequential and not sweep.grid:
        raise ConfigError("sequential seeds decide comparisons between grid values, and this sweep has no grid",
                          key="seeds", file=file)
    seeds = list(range(sequential.first, sequential.first + sequential.max)) if sequential else sweep.seeds
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"has a seed more than once: {seeds}", key="seeds", file=file)
    if sweep.resources.cpu == 0 and sweep.resources.gpu == 0:
        raise ConfigError("asks for no CPU and no GPU; a trial needs one of them", key="resources", file=file)
    if scheduler and (sweep.scheduler.grace_period or 1) > (sweep.scheduler.max_t or float("inf")):
        raise ConfigError(f"grace_period {sweep.scheduler.grace_period} is past max_t {sweep.scheduler.max_t}",
                          key="scheduler.grace_period", file=file)
    axes = _grid(sweep.grid, file)
    ladder = _ladder(sweep.ladder, axes, file) if sweep.ladder is not None else None
    if ladder:
        axes = [ladder[0], *axes]
    if sweep.search and (sweep.tune or axes):
        raise ConfigError("goes with neither a grid nor tune: (tune: searches each grid point separately)",
                          key="search", file=file)
    tuning = _tuning(sweep, axes, seeds, file) if sweep.tune or sweep.search else None
    # The scheduler's keys as the file gives them (coerced); Tune's or b6lab's defaults for the rest.
    scheduler = {key: getattr(sweep.scheduler, key) for key in scheduler} if scheduler else None
    return Experiment(
        name=name, file=path, base=_base(sweep.base, folder, file), grid=axes, seeds=seeds,
        tuning=tuning,
        ladder=ladder and ladder[1],
        sequential=sequential and Sequential(start=sequential.start, max=sequential.max,
                                             equivalence=sequential.equivalence),
        metric=sweep.metric, cpus=sweep.resources.cpu, gpus=sweep.resources.gpu,
        workers=sweep.resources.workers, max_concurrent=sweep.max_concurrent,
        scheduler=scheduler, plugins=[resolve_plugin_spec(spec, folder) for spec in sweep.plugins],
        max_failures=sweep.max_failures, skip_unavailable=sweep.skip_unavailable,
        # Ray needs an absolute path; relative ones are taken from where the sweep is started, like train.out_dir.
        storage=Path(sweep.storage or f"runs/sweeps/{name}").expanduser().resolve(),
    )


def _base(base: str | dict, folder: Path, file: str) -> Base:
    if isinstance(base, str):
        return Base(file=_config_file(base, folder, "base", file))
    allowed = BASE_KEYS + SECTIONS + ("name", "plugins")
    for key in base:
        if key not in allowed:
            raise ConfigError(unknown(key, allowed, "base key"), key=f"base.{key}", file=file)
    inline = {k: v for k, v in base.items() if k not in BASE_KEYS}
    if "file" in base and inline:
        raise ConfigError(f"gives both a config file and inline sections ({', '.join(inline)}); put those "
                          "keys under base.set, or in the file", key="base", file=file)
    overrides = base.get("set") or {}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and "." in k for k in overrides):
        raise ConfigError("must map dotted config keys to values, e.g. {train.max_steps: 300}", key="base.set", file=file)
    return Base(file=_config_file(base["file"], folder, "base.file", file) if "file" in base else None,
                preset=validation.check(base.get("preset"), Optional[str], "base.preset", file, "must be"),
                inline=inline, overrides=dict(overrides))


def _config_file(spec, folder: Path, key: str, file: str) -> Path:
    spec = validation.check(spec, str, key, file, "must be")
    for candidate in (folder / spec, Path.cwd() / spec):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"config file {spec} not found (looked in {folder} and {Path.cwd()})", key=key, file=file)


def _grid(grid: dict[str, list], file: str) -> list[Axis]:
    axes = []
    for key, values in grid.items():
        where = f"grid.{key}"
        if key in (SEED_KEY, "train.seed"):
            raise ConfigError("seeds have their own key: use `seeds: [0, 1, ...]`", key=where, file=file)
        bad = [v for v in values if not isinstance(v, dict) or not v
               or not all(isinstance(k, str) and ("." in k or k == "label") for k in v)] if "." not in key else []
        if bad:
            raise ConfigError(
                "a grid key without a dot is a group: each of its values must map dotted config keys to values, "
                f"e.g. {{optim.name: lion, optim.lr: 3.0e-4}} (got {bad[0]!r}); a single config key needs its "
                "section, e.g. model.norm", key=where, file=file)
        axis = Axis(key, tuple(values), short_name(key, list(grid)))
        repeated = sorted(label for label, times in Counter(map(axis.label, values)).items() if times > 1)
        if repeated:
            raise ConfigError(f"values must differ; {', '.join(repeated)} appears more than once", key=where, file=file)
        axes.append(axis)
    return axes


def _tuning(sweep: SweepFile, axes: list[Axis], seeds: list[int], file: str) -> Tuning:
    name = "tune" if sweep.tune else "search"
    section = sweep.tune or sweep.search
    grid_keys = {k for axis in axes for value in axis.values for k in axis.overrides(value)}
    keys = []
    for key, spec in section.keys.items():
        where = f"{name}.keys.{key}"
        if "." not in key:
            raise ConfigError("must be a dotted config key, e.g. optim.lr", key=where, file=file)
        if key in grid_keys:
            raise ConfigError("is also a grid key: a key is either compared or tuned, not both", key=where, file=file)
        if isinstance(spec, dict):
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"must be [low, high], [low, high, log] or {{choices: [...]}}, got {spec!r}",
                                  key=where, file=file)
            keys.append(TunedKey(key, choices=tuple(spec["choices"])))
            continue
        numbers = spec[:2]
        log = spec[2:] == ["log"]
        if (len(spec) not in (2, 3) or (len(spec) == 3 and not log)
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers)
                or not numbers[0] < numbers[1] or (log and numbers[0] <= 0)):
            raise ConfigError(f"must be [low, high] with low < high, [low, high, log] with 0 < low < high, or "
                              f"{{choices: [...]}}, got {spec!r}", key=where, file=file)
        keys.append(TunedKey(key, low=float(numbers[0]), high=float(numbers[1]), log=log))
    shared = sorted(set(section.seeds) & set(seeds))
    if shared:
        raise ConfigError(f"shares seeds {shared} with the sweep's seeds: the tuning seeds must be others, or the "
                          "confirmation would reuse the runs the setting was chosen on", key="tune.seeds", file=file)
    if section.algorithm == "grid" and section.trials < 2 and any(k.choices is None for k in keys):
        raise ConfigError("is 1 with algorithm grid: a range needs 2 or more values (low and high at least)",
                          key=f"{name}.trials", file=file)
    if sweep.resources.workers > 1:
        raise ConfigError("tune: with resources.workers > 1 is not supported: tune on one worker per trial",
                          key="tune", file=file)
    return Tuning(tuple(keys), section.trials, tuple(section.seeds), section.algorithm)


BUDGETS = ("tokens_per_param", "tokens")


def _ladder(section: dict, axes: list[Axis], file: str) -> tuple[Axis, Ladder]:
    """The rungs as one grid axis (LADDER_KEY, whose values set their keys together) and the budget rule."""
    if not isinstance(section, dict):
        raise ConfigError(f"must map dotted config keys to lists of values, one per rung, and a budget "
                          f"({' or '.join(BUDGETS)}), got {section!r}", key="ladder", file=file)
    keys = {k: v for k, v in section.items() if k not in BUDGETS}
    for key, values in keys.items():
        if "." not in key:
            raise ConfigError(unknown(key, list(BUDGETS), "ladder key") + "; or a dotted config key with a value per "
                              "rung, e.g. model.d_model: [64, 128, 256]", key=f"ladder.{key}", file=file)
        if not isinstance(values, list) or len(values) < 2:
            raise ConfigError(f"must list a value per rung (2 or more), got {values!r}", key=f"ladder.{key}", file=file)
    if not keys:
        raise ConfigError("gives no rungs: e.g. model.d_model: [64, 128, 256]", key="ladder", file=file)
    lengths = {len(v) for v in keys.values()}
    if len(lengths) > 1:
        raise ConfigError(f"its keys give different numbers of rungs ({', '.join(f'{k}: {len(v)}' for k, v in keys.items())}); "
                          "each key needs one value per rung", key="ladder", file=file)
    rungs = lengths.pop()
    budgets = [b for b in BUDGETS if b in section]
    if len(budgets) != 1:
        raise ConfigError(f"needs exactly one budget rule, {' or '.join(BUDGETS)} (tokens per parameter, or a token "
                          f"count per rung), got {budgets or 'none'}", key="ladder", file=file)
    budget = section[budgets[0]]
    if budgets[0] == "tokens_per_param":
        budget = validation.check(budget, Annotated[float, Field(gt=0)], "ladder.tokens_per_param", file, "must be")
    else:
        budget = validation.check(budget, list[Annotated[int, Field(ge=1)]], "ladder.tokens", file, "must be")
        if len(budget) != rungs:
            raise ConfigError(f"gives {len(budget)} token counts for {rungs} rungs", key="ladder.tokens", file=file)
    grid_keys = {k for axis in axes for value in axis.values for k in axis.overrides(value)}
    for key in keys:
        if key in grid_keys or key == "train.max_steps":
            raise ConfigError("is set by the grid (or the budget) too: a ladder key sets the model's size only",
                              key=f"ladder.{key}", file=file)
    values = tuple({**{k: v[i] for k, v in keys.items()},
                    "label": ",".join(f"{k.rsplit('.', 1)[-1]}={v[i]}" for k, v in keys.items())}
                   for i in range(rungs))
    return Axis(LADDER_KEY, values, LADDER_KEY), Ladder(keys=tuple(keys), budget_rule=budgets[0], budget=budget)
