"""Per-arm tuning before a comparison (`tune:` in a sweep file): each grid point (an arm: a value of
the compared keys) gets its own search over the tuned keys, on tuning seeds, with a Ray Tune
search algorithm; then the sweep runs each arm at its chosen setting on the sweep's own seeds, and
only those runs are judged.

    tune:
      keys: {optim.lr: [1.0e-4, 3.0e-3, log]}   # [low, high] uniform, [low, high, log], or {choices: [...]}
      trials: 8                                 # settings tried per arm
      seeds: [100]                              # tuning seeds, never the sweep's own
      algorithm: optuna                         # optuna (TPE) | random

Why the tuning runs are not judged: the chosen setting is the best of several noisy tries, so its
tuning loss is biased low (the winner's curse), and more so for an arm with more room to gain;
fresh seeds measure it without that bias. The tuning runs are kept (storage/tune/<arm>/), and
storage/tuning.json records every setting tried with its loss: the tuning curve.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from b6lab.sweep.grid import SEED_KEY, Experiment, point_key, value_label

ALGORITHMS = ("optuna", "random")
RECORD = "tuning.json"
ARM_KEY = "__arm__"  # a tuning trial's Ray config: its arm's key, and the tuned keys' values


@dataclass(frozen=True)
class TunedKey:
    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def space(self):
        from ray import tune

        if self.choices is not None:
            return tune.choice(list(self.choices))
        return tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)

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
    record = {"algorithm": tuning.algorithm, "trials": tuning.trials, "seeds": list(tuning.seeds),
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
            print(f"tuning {name}: {tuning.trials} settings of {', '.join(k.describe() for k in tuning.keys)}, "
                  f"{tuning.algorithm}, seeds {list(tuning.seeds)}", flush=True)
        space = {k.key: k.space() for k in tuning.keys} | {ARM_KEY: key}
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=exp.metric, mode="min", num_samples=tuning.trials,
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
    if tuning.algorithm == "random":
        return None  # Tune's own BasicVariantGenerator: independent random draws
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
    lines = [f"{what} ({record['algorithm']}, {record['trials']} settings of {', '.join(record['keys'])}, "
             f"tuning seeds {record['seeds']}; {'judged' if exp.grid else 'run again'} only on the sweep's own seeds):"]
    for arm in record["arms"]:
        lines.append(f"  {arm['name']}: " + ", ".join(f"{k}={_short(v)}" for k, v in arm["chosen"].items())
                     + f" (tuning {record['metric']} {arm[record['metric']]:.4f})")
    return lines


def plot_tuning_curves(exp: Experiment) -> Path | None:
    """storage/tuning_curve.png: the metric against each tuned key, one colour per arm, the chosen
    setting circled."""
    path = exp.storage / RECORD
    if not path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = json.loads(path.read_text())
    keys = [k.key for k in exp.tuning.keys]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, tuned in zip(axes[0], exp.tuning.keys):
        for index, arm in enumerate(record["arms"]):
            points = sorted((t["values"][tuned.key], t[record["metric"]]) for t in arm["tried"]
                            if math.isfinite(t[record["metric"]]))
            if not points:
                continue
            colour = f"C{index}"
            ax.plot(*zip(*points), "o-", color=colour, label=arm["name"], alpha=0.8)
            ax.scatter([arm["chosen"][tuned.key]], [arm[record["metric"]]], s=140, facecolors="none",
                       edgecolors=colour, linewidths=2)
        if tuned.log:
            # Labelled at the settings tried: a range under a decade has no major log ticks to label.
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            tried = sorted({t["values"][tuned.key] for arm in record["arms"] for t in arm["tried"]})
            ax.set_xticks(tried, [f"{v:.2g}" for v in tried], rotation=30)
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(tuned.key)
        ax.set_ylabel(f"final {record['metric'].replace('_', ' ')} (mean over tuning seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{exp.name}: per-arm tuning (chosen setting circled)")
    fig.tight_layout()
    out = exp.storage / "tuning_curve.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
