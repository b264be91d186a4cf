"""Per-arm tuning before a comparison (`tune:` in a sweep file): each grid point (an arm: a value of
the compared keys) gets its own search over the tuned keys, on tuning seeds, with a Ray Tune
search algorithm; then the sweep runs each arm at its chosen setting on the sweep's own seeds, and
only those runs are judged.

    tune:
      keys: {optim.lr: [1.0e-4, 3.0e-3, log]}   # [low, high] uniform, [low, high, log], or {choices: [...]}
      trials: 8                                 # settings tried per arm
      seeds: [100]                              # tuning seeds, never the sweep's own
      algorithm: optuna                         # optuna (TPE) | random | grid (trials evenly spaced values)

Why the tuning runs are not judged: the chosen setting is the best of several noisy tries, so its
tuning loss is biased low (the winner's curse), and more so for an arm with more room to gain;
fresh seeds measure it without that bias. The tuning runs are kept (storage/tune/<arm>/), and
storage/tuning.json records every setting tried with its loss: the tuning curve.

Why `grid`: with a handful of settings per arm, as a ladder needs (every arm is tuned at every
rung), random draws cluster (Optuna's first four log-uniform draws in [1e-3, 3e-2] all fall in
[4e-3, 1.2e-2]), and TPE is random search until its tenth trial. A grid lays `trials` values
evenly (geometrically for a log range) from low to high, the same values for every arm, so every
arm's tuning curve covers the range and arms are compared at the same settings.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from b6lab.sweep.grid import LADDER_KEY, SEED_KEY, Experiment, point_key, value_label

ALGORITHMS = ("optuna", "random", "grid")
RECORD = "tuning.json"
ARM_KEY = "__arm__"  # a tuning trial's Ray config: its arm's key, and the tuned keys' values


@dataclass(frozen=True)
class TunedKey:
    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def space(self, grid_points: int | None = None):
        """Ray Tune's search space for this key: a distribution, or with `grid_points` a grid search."""
        from ray import tune

        if grid_points is not None:
            return tune.grid_search(self.grid(grid_points))
        if self.choices is not None:
            return tune.choice(list(self.choices))
        return tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)

    def grid(self, points: int) -> list:
        """`points` values from low to high, evenly spaced (geometrically for a log range), to 3
        significant figures; every choice for a choice key."""
        if self.choices is not None:
            return list(self.choices)
        if points == 1:
            return [self.low]
        if self.log:
            ratio = (self.high / self.low) ** (1 / (points - 1))
            values = [self.low * ratio**i for i in range(points)]
        else:
            values = [self.low + (self.high - self.low) * i / (points - 1) for i in range(points)]
        return [float(f"{v:.3g}") for v in values]

    def bounds(self) -> list:
        """The values a config must accept for the search to be valid: both ends, or every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key} in {list(self.choices)}"
        return f"{self.key} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class Tuning:
    keys: tuple[TunedKey, ...]
    trials: int
    seeds: tuple[int, ...]
    algorithm: str = "optuna"

    @property
    def settings(self) -> int:
        """Settings tried per arm: `trials`, or on a grid every combination of the keys' values."""
        return math.prod(len(k.grid(self.trials)) for k in self.keys) if self.algorithm == "grid" else self.trials

    def space(self) -> dict:
        return {k.key: k.space(self.trials if self.algorithm == "grid" else None) for k in self.keys}


def arms(exp: Experiment) -> list[dict]:
    """The grid points without a seed: what is tuned separately."""
    points: list[dict] = [{}]
    for axis in exp.grid:
        points = [point | {axis.key: value} for point in points for value in axis.values]
    return points


def arm_name(exp: Experiment, arm: dict) -> str:
    from b6lab.sweep.trials import trial_name

    name = trial_name(exp, arm | {SEED_KEY: "tune"}).removesuffix("seed=tune").removesuffix(",")
    return name or "all"


def read_tuned(exp: Experiment) -> dict[str, dict] | None:
    """arm key -> the chosen overrides, from a finished tuning phase (None: not tuned yet)."""
    path = exp.storage / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return {arm["key"]: arm["chosen"] for arm in record["arms"]} if record.get("complete") else None


# ---------------------------------------------------------------------------------------------
# The worker: one setting of one arm, on every tuning seed


def run_tuning_trial(config: dict, plan: dict) -> None:
    from ray import tune

    from b6lab.config import load_config
    from b6lab.train import hardware
    from b6lab.train.records import read_summary
    from b6lab.train.trainer import Trainer

    arm = plan["arms"][config[ARM_KEY]]
    if os.path.isdir(plan["cwd"]):
        os.chdir(plan["cwd"])
    hardware.share_cores(plan["threads"])
    values = {key: config[key] for key in plan["keys"]}
    setting = ",".join(f"{key.rsplit('.', 1)[-1]}={_short(value)}" for key, value in values.items())
    losses = []
    for seed in plan["seeds"]:
        out_dir = Path(arm["folder"]) / f"{setting},seed={seed}"
        cfg = load_config(data=arm["config"], overrides=values | {"train.seed": seed, "train.out_dir": str(out_dir)})
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "train.log", "a") as log:
            Trainer(cfg, out_dir, say=lambda line: print(line, file=log, flush=True)).run()
        summary = read_summary(out_dir)
        value = summary.get(f"final_{plan['metric']}")
        losses.append(value if summary.get("status") == "completed" and value is not None else math.inf)
    tune.report({plan["metric"]: sum(losses) / len(losses), "losses": losses, "folder": setting})


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else value_label(value)


# ---------------------------------------------------------------------------------------------
# The driver: tune every arm, choose, record


def run_tuning(exp: Experiment, quiet: bool = False) -> dict[str, dict]:
    """Tune each arm (one Ray Tune run per arm, its trials `max_concurrent` at a time); returns and
    records arm key -> the chosen overrides. A finished tuning phase is read back instead."""
    from ray import tune

    from b6lab.sweep.trials import tuning_configs
    from b6lab.train.records import write_json

    done = read_tuned(exp)
    if done is not None:
        print(f"tuning: done before ({exp.storage / RECORD}); the confirmation runs use its choices")
        return done
    tuning = exp.tuning
    configs = tuning_configs(exp)  # arm key -> its resolved config (the tuning seed's), checked
    plan = {"keys": [k.key for k in tuning.keys], "seeds": list(tuning.seeds), "metric": exp.metric,
            "cwd": os.getcwd(), "threads": max(1, int(exp.cpus)),
            "arms": {key: {"config": config, "folder": str(exp.storage / "tune" / arm_name(exp, arm))}
                     for (key, config), arm in zip(configs.items(), arms(exp))}}
    trainable = tune.with_resources(tune.with_parameters(run_tuning_trial, plan=plan),
                                    {"cpu": exp.cpus, "gpu": exp.gpus})
    record = {"algorithm": tuning.algorithm, "trials": tuning.trials, "settings": tuning.settings, "seeds": list(tuning.seeds),
              "keys": [k.describe() for k in tuning.keys], "metric": exp.metric, "arms": [], "complete": False}
    if (exp.storage / RECORD).is_file():  # an interrupted tuning phase: the arms it finished stay chosen
        earlier = json.loads((exp.storage / RECORD).read_text())
        if {k: earlier.get(k) for k in ("algorithm", "trials", "seeds", "keys")} == {
                k: record[k] for k in ("algorithm", "trials", "seeds", "keys")}:
            record["arms"] = earlier["arms"]
    for arm in arms(exp):
        key = point_key(arm)
        name = arm_name(exp, arm)
        if any(done["key"] == key for done in record["arms"]):
            continue
        if not quiet:
            print(f"tuning {name}: {tuning.settings} settings of {', '.join(k.describe() for k in tuning.keys)}, "
                  f"{tuning.algorithm}, seeds {list(tuning.seeds)}", flush=True)
        space = tuning.space() | {ARM_KEY: key}
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=exp.metric, mode="min", num_samples=1 if tuning.algorithm == "grid" else tuning.trials,
                                        search_alg=_search_algorithm(tuning, exp.metric),
                                        max_concurrent_trials=exp.max_concurrent),
            run_config=tune.RunConfig(name=f"tune-{name}", storage_path=str(exp.ray_dir.parent / "ray-tune"), verbose=0),
        )
        results = tuner.fit()
        tried = []
        for result in results:
            if result.metrics and exp.metric in result.metrics:
                tried.append({"values": {k.key: result.config[k.key] for k in tuning.keys},
                              exp.metric: result.metrics[exp.metric], "losses": result.metrics.get("losses")})
        crashed = sum(result.error is not None for result in results)
        if len(tried) + crashed < tuning.settings:
            # Tune returns from a Ctrl-C as from a finished run: the best of the settings run so far
            # would be a choice made on part of the search. Nothing of this arm is recorded.
            print(f"tuning {name} interrupted after {len(tried)} of its {tuning.settings} settings; "
                  f"`b6lab sweep {exp.file} --resume` tunes it again, keeping the arms tuned before it", flush=True)
            raise KeyboardInterrupt
        finite = [t for t in tried if math.isfinite(t[exp.metric])]
        if not finite:
            from b6lab.errors import UsageError

            raise UsageError(f"tuning {name}: none of its {len(tried)} settings completed on the tuning seeds "
                             f"(runs in {exp.storage / 'tune' / name}); narrow tune.keys in {exp.file}")
        chosen = min(finite, key=lambda t: t[exp.metric])
        record["arms"].append({"key": key, "name": name, "chosen": chosen["values"], exp.metric: chosen[exp.metric],
                               "tried": tried})
        print(f"tuned {name}: " + ", ".join(f"{k}={_short(v)}" for k, v in chosen["values"].items())
              + f" ({exp.metric} {chosen[exp.metric]:.4f}, best of {len(tried)})", flush=True)
        write_json(exp.storage / RECORD, record)
    record["complete"] = True
    write_json(exp.storage / RECORD, record)
    return {arm["key"]: arm["chosen"] for arm in record["arms"]}


def _search_algorithm(tuning: Tuning, metric: str):
    if tuning.algorithm in ("random", "grid"):
        return None  # Tune's own BasicVariantGenerator: independent random draws, or the grid's points
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per study otherwise

    return OptunaSearch(metric=metric, mode="min", seed=0)


def tuning_lines(exp: Experiment) -> list[str]:
    """Each arm's chosen setting, for the sweep's report."""
    path = exp.storage / RECORD
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    what = "Tuned per arm" if exp.grid else "Searched"
    lines = [f"{what} ({record['algorithm']}, {record.get('settings', record['trials'])} settings of {', '.join(record['keys'])}, "
             f"tuning seeds {record['seeds']}; {'judged' if exp.grid else 'run again'} only on the sweep's own seeds):"]
    for arm in record["arms"]:
        lines.append(f"  {arm['name']}: " + ", ".join(f"{k}={_short(v)}" for k, v in arm["chosen"].items())
                     + f" (tuning {record['metric']} {arm[record['metric']]:.4f})")
    return lines


def plot_tuning_curves(exp: Experiment) -> Path | None:
    """storage/tuning_curve.png: the metric against each tuned key, one colour per arm, the chosen
    setting circled. On a ladder, a panel per rung (each arm is tuned at each rung, and the best
    setting moves with the model's size), an arm in the same colour in every panel."""
    path = exp.storage / RECORD
    if not path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = json.loads(path.read_text())
    metric = record["metric"]
    panels: dict[str | None, list[tuple[str, dict]]] = {}  # rung label (None: no ladder) -> (arm label, arm)
    colours: dict[str, str] = {}
    for arm in record["arms"]:
        point = json.loads(arm["key"])
        rung = point.pop(LADDER_KEY, None)
        label = ",".join(f"{axis.short}={axis.label(point[axis.key])}" for axis in exp.grid
                         if axis.key in point) if rung is not None else arm["name"]
        label = label or "all"
        panels.setdefault(rung["label"] if isinstance(rung, dict) else None, []).append((label, arm))
        colours.setdefault(label, f"C{len(colours)}")
    tuned_keys = exp.tuning.keys
    fig, axes = plt.subplots(len(tuned_keys), len(panels), figsize=(4.5 * len(panels) + 0.5, 4 * len(tuned_keys)),
                             squeeze=False)
    for row, tuned in enumerate(tuned_keys):
        for ax, (rung, members) in zip(axes[row], panels.items()):
            for label, arm in members:
                points = sorted((t["values"][tuned.key], t[metric]) for t in arm["tried"] if math.isfinite(t[metric]))
                if not points:
                    continue
                ax.plot(*zip(*points), "o-", color=colours[label], label=label, alpha=0.8)
                ax.scatter([arm["chosen"][tuned.key]], [arm[metric]], s=140, facecolors="none",
                           edgecolors=colours[label], linewidths=2)
            if tuned.log:
                _log_axis(ax, sorted({t["values"][tuned.key] for _, arm in members for t in arm["tried"]}))
            if rung is not None:
                ax.set_title(rung, fontsize="medium")
            ax.set_xlabel(tuned.key)
            ax.set_ylabel(f"final {metric.replace('_', ' ')} (mean over tuning seeds)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle(f"{exp.name}: per-arm tuning" + (", at each rung" if len(panels) > 1 else "")
                 + " (chosen setting circled)")
    fig.tight_layout()
    out = exp.storage / "tuning_curve.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _log_axis(ax, tried: list[float]) -> None:
    """A log x axis labelled at the settings tried, where they are few: a range under a decade has
    no major log ticks to label. Many settings would overprint, so those get the usual decades."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    if len(tried) <= 8:
        ax.set_xticks(tried, [f"{v:.2g}" for v in tried], rotation=30)
        ax.xaxis.set_minor_formatter(NullFormatter())
