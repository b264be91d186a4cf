"""What a sweep folder holds, and reading run folders and sweep folders back into results.

    <storage>/sweep.json         the sweep file's name, its grid and every trial (name, values, seed, folder)
    <storage>/trials/<name>/     each trial's run folder, as `b6lab train` writes it
    <storage>/ray/               Ray Tune's own state, what `--resume` restores
    <storage>/results.csv, *.png the results, written when the sweep ends (and by `b6lab compare`)

A run folder is read from config.yaml, metrics.jsonl and summary.json; a run without a summary
(still running, or killed) is "incomplete".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import b6lab
from b6lab.config_sources import flatten
from b6lab.errors import UsageError
from b6lab.sweep.grid import Experiment
from b6lab.train.records import read_metrics, write_json
from b6lab.train.run_folder import holds_run

SWEEP_RECORD = "sweep.json"
METRICS = ("val_loss", "val_bpb")  # what an eval record holds and runs can be compared on


@dataclass
class RunResult:
    folder: Path
    name: str
    config: dict
    grid: dict[str, str] = field(default_factory=dict)  # grid key -> value label
    seed: int | None = None
    status: str = "incomplete"  # completed | diverged | failed | stopped | skipped | incomplete
    reason: str | None = None
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    tokens: int | None = None
    tokens_per_sec: float | None = None
    steps: int | None = None
    params: int | None = None
    wall_seconds: float | None = None
    best_val_bpb: float | None = None
    final_val_bpb: float | None = None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> (tokens, value) at each eval
    diagnostics: list[dict] = field(default_factory=list)  # the first and the last per-block diagnostics record


# ---------------------------------------------------------------------------------------------
# The sweep's record


def write_sweep_record(exp: Experiment, trials) -> None:
    exp.storage.mkdir(parents=True, exist_ok=True)
    write_json(exp.storage / SWEEP_RECORD, {
        "name": exp.name,
        "file": str(exp.file.resolve()),
        "metric": exp.metric,
        "b6lab_version": b6lab.__version__,
        "grid": [{"key": axis.key, "short": axis.short, "values": [axis.label(v) for v in axis.values]}
                 for axis in exp.grid],
        "seeds": exp.seeds,
        "ladder": None if exp.ladder is None else {"keys": list(exp.ladder.keys), "budget_rule": exp.ladder.budget_rule,
                                                   "budget": exp.ladder.budget},
        "sequential": None if exp.sequential is None else {"start": exp.sequential.start, "max": exp.sequential.max,
                                                           "equivalence": exp.sequential.equivalence},
        "trials": [{"name": t.name, "grid": t.grid, "seed": t.seed, "folder": str(t.run_dir.relative_to(exp.storage)),
                    "config_hash": t.config_hash, "skipped": t.skip_reason} for t in trials],
    })


def read_sweep_record(folder: Path) -> dict | None:
    path = Path(folder) / SWEEP_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def check_same_sweep(exp: Experiment, trials) -> None:
    """--resume must run the sweep that was started: the same trials with the same configs."""
    record = read_sweep_record(exp.storage)
    if record is None:
        raise UsageError(f"nothing to resume: {exp.storage} holds no sweep (no {SWEEP_RECORD}); run it without --resume")
    before = {t["name"]: t["config_hash"] for t in record["trials"]}
    now = {t.name: t.config_hash for t in trials}
    if before != now:
        changed = sorted(set(before) ^ set(now)) or sorted(n for n in now if before[n] != now[n])
        raise UsageError(
            f"{exp.file.name} no longer describes the sweep in {exp.storage} (different trials or configs: "
            f"{', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); resume with the file as it was, "
            "or start a new sweep with another name or storage"
        )


# ---------------------------------------------------------------------------------------------
# Reading results back


def read_run(folder: Path) -> RunResult:
    folder = Path(folder)
    config = {}
    if (folder / "config.yaml").is_file():
        config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    records = read_metrics(folder / "metrics.jsonl")
    evals = [r for r in records if "val_loss" in r]
    train_logs = [r for r in records if "loss" in r]
    diagnostics = [r for r in records if "block_grad_norm" in r and "block_residual_rms" in r]
    run = RunResult(folder=folder, name=folder.name, config=config, seed=config.get("train", {}).get("seed"))
    for metric in METRICS:
        run.curves[metric] = [(r["tokens"], r[metric]) for r in evals if r.get(metric) is not None]
    run.diagnostics = diagnostics[:1] + diagnostics[1:][-1:]
    summary_path = folder / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        run.status, run.reason = summary.get("status", "incomplete"), summary.get("reason")
        for key in ("best_val_loss", "final_val_loss", "best_val_bpb", "final_val_bpb", "tokens", "tokens_per_sec",
                    "steps", "params", "wall_seconds"):
            setattr(run, key, summary.get(key))
    else:  # still running, or killed: what the metrics say so far
        for metric in METRICS:
            values = [value for _, value in run.curves[metric]]
            setattr(run, f"best_{metric}", min(values) if values else None)
            setattr(run, f"final_{metric}", values[-1] if values else None)
        run.steps = max((r["step"] for r in train_logs + evals), default=None)
        run.tokens = max((r["tokens"] for r in train_logs + evals), default=None)
        speeds = [r["tokens_per_sec"] for r in train_logs if r.get("tokens_per_sec")]
        run.tokens_per_sec = sum(speeds) / len(speeds) if speeds else None
    return run


def read_sweep(folder: Path) -> tuple[list[RunResult], list[str]]:
    """The runs of a sweep folder, with their grid values, and the sweep's grid keys."""
    record = read_sweep_record(folder)
    runs = []
    optional = set(record["seeds"][record["sequential"]["start"]:]) if record.get("sequential") else set()
    for trial in record["trials"]:
        run_dir = Path(folder) / trial["folder"]
        if trial["seed"] in optional and not holds_run(run_dir):
            continue  # a seed the sequential sweep did not need
        run = read_run(run_dir) if holds_run(run_dir) else RunResult(folder=run_dir, name=trial["name"], config={})
        if trial.get("skipped") and run.status == "incomplete":
            run.status, run.reason = "skipped", trial["skipped"]
        run.grid, run.seed = dict(trial["grid"]), trial["seed"]
        runs.append(run)
    return runs, [axis["key"] for axis in record["grid"]]


def collect(paths: list[str | Path]) -> tuple[list[RunResult], list[str]]:
    """Runs from run folders, sweep folders, or folders of runs (like runs/), and the sweeps' grid
    keys (every sweep's, in order; none for plain runs). Which keys to group by is comparison.py's."""
    runs: list[RunResult] = []
    grid_keys: list[str] = []
    for path in map(Path, paths):
        if read_sweep_record(path) is not None:
            sweep_runs, keys = read_sweep(path)
            runs += sweep_runs
            grid_keys += [key for key in keys if key not in grid_keys]
        elif holds_run(path):
            runs.append(read_run(path))
        elif path.is_dir() and any(holds_run(child) for child in path.iterdir()):
            runs += [read_run(child) for child in sorted(path.iterdir()) if holds_run(child)]
        elif (path / "results.csv").is_file():
            continue  # what an earlier `b6lab compare` wrote (runs/compare), caught by a glob like runs/*
        else:
            raise UsageError(f"{path} is neither a run folder (config.yaml, metrics.jsonl), a sweep folder "
                             f"({SWEEP_RECORD}), nor a folder of runs")
    return runs, grid_keys


# Keys that differ between runs without making them different experiments: where a run is written,
# how often it logs, evaluates and saves (the last step is always evaluated), and the seed (its own column).
IGNORED = ("name", "train.out_dir", "train.seed", "train.log_interval", "train.eval_interval",
           "train.checkpoint_interval", "plugins", "data.cache_dir", "logging.", "run.")


def differing_keys(runs: list[RunResult]) -> list[str]:
    flats = [flatten(run.config) for run in runs]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    return [key for key in keys if not key.startswith(IGNORED) and len({label_of(f.get(key)) for f in flats}) > 1]


def label_of(value) -> str:
    """A config value as the text a table shows and runs are grouped by."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)
