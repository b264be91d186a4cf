"""An experiment as b6lab runs it: the base config, the grid's axes, the seeds, and the points of
the grid (each one a trial's Ray config). Read from a sweep file by experiment.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED_KEY = "seed"  # the name of the seed in a trial's Ray config
LADDER_KEY = "ladder"  # the grid axis of a ladder's rungs (each value sets its keys together)


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


@dataclass(frozen=True)
class Ladder:
    """Every grid point at every rung: `keys` set the model's size; the budget is tokens per
    parameter (one number) or a token count per rung (a list)."""

    keys: tuple[str, ...]
    budget_rule: str  # "tokens_per_param" | "tokens"
    budget: Any

    def tokens(self, rung: int, params: int | None) -> int:
        if self.budget_rule == "tokens":
            return self.budget[rung]
        if params is None:
            raise ValueError("tokens_per_param needs the model's parameter count")
        return round(self.budget * params)


@dataclass(frozen=True)
class Sequential:
    """Seeds added where comparisons are undecided: `start` seeds of every point, at most `max`."""

    start: int
    max: int
    equivalence: float | None = None


@dataclass
class Experiment:
    name: str
    file: Path
    base: Base
    grid: list[Axis]
    seeds: list[int]  # every seed a trial may run (sequential: the first `start` run at once, the rest if needed)
    metric: str = "val_loss"
    cpus: float = 1.0
    gpus: float = 0.0
    workers: int = 1  # >1: each trial is a Ray Train TorchTrainer of this many workers, each with cpus/gpus
    max_concurrent: int | None = None
    scheduler: dict | None = None
    plugins: list[str] = field(default_factory=list)  # absolute paths (or module names)
    max_failures: int = 0
    skip_unavailable: bool = False
    storage: Path = Path()  # absolute: the sweep's folder
    sequential: Sequential | None = None
    tuning: Any = None  # tuning.Tuning: each grid point tuned before it is compared
    tuned: dict[str, dict] | None = None  # arm (point_key of the point without its seed) -> chosen overrides
    ladder: Ladder | None = None  # its rungs are the grid axis LADDER_KEY

    @property
    def start_seeds(self) -> list[int]:
        """The seeds every grid point runs before anything is decided."""
        return self.seeds[: self.sequential.start] if self.sequential else self.seeds

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


def short_name(key: str, keys: list[str]) -> str:
    """The last part of a dotted key (model.norm -> norm), unless another key ends the same way."""
    last = key.split(".")[-1]
    return last if sum(k.split(".")[-1] == last for k in keys) == 1 else key
