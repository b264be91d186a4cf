"""Grouping runs by each grid key, the spread between seeds, and whether a difference is real.

The seed spread is how much a final val loss moves when only the seed changes: the pooled std
over seeds of runs that are otherwise identical. For each value of a grid key we show the mean
over its runs and the std over seeds (each seed's mean over the other grid keys). A value's
difference from the best value is *within the seed spread* when it is smaller than twice its
standard error from seed noise alone,

    2 * seed_spread * sqrt(1/n_value + 1/n_best)        (n: completed runs with that value)

(a two-sided test at about 95%; the other grid keys cancel out of the difference on a full grid).
Only completed runs count; diverged, failed, stopped and skipped runs are reported beside.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from b6lab.sweep.folders import RunResult


@dataclass
class ValueSummary:
    value: str
    mean: float | None  # mean over seeds of each seed's mean final val loss
    std: float | None  # std over seeds; None with fewer than two seeds
    seeds: int
    runs: int  # completed runs counted
    not_counted: Counter = field(default_factory=Counter)  # status -> runs left out
    delta: float | None = None  # mean minus the best value's mean
    noise: float | None = None  # how far seeds alone could move delta (2 standard errors)
    verdict: str = ""


@dataclass
class KeySummary:
    key: str
    values: list[ValueSummary]


def final_loss(run: RunResult) -> float | None:
    return run.final_val_loss if run.status == "completed" else None


def summarize_key(runs: list[RunResult], key: str, keys: list[str] | None = None) -> KeySummary:
    """Each value of `key`; `keys` (all grid keys, default just `key`) define which runs differ only by seed."""
    values = list(dict.fromkeys(run.grid.get(key, "-") for run in runs))
    summaries = []
    for value in values:
        matching = [run for run in runs if run.grid.get(key, "-") == value]
        per_seed: dict = {}
        for run in matching:
            if final_loss(run) is not None:
                per_seed.setdefault(run.seed, []).append(final_loss(run))
        seed_means = [statistics.fmean(losses) for losses in per_seed.values()]
        summaries.append(ValueSummary(
            value=value,
            mean=statistics.fmean(seed_means) if seed_means else None,
            std=statistics.stdev(seed_means) if len(seed_means) >= 2 else None,
            seeds=len(seed_means),
            runs=sum(len(losses) for losses in per_seed.values()),
            not_counted=Counter(run.status for run in matching if final_loss(run) is None),
        ))
    _judge(summaries, seed_spread(runs, keys or [key]))
    return KeySummary(key, summaries)


def _judge(summaries: list[ValueSummary], spread: float | None) -> None:
    scored = [s for s in summaries if s.mean is not None]
    if len(scored) < 2:
        for s in scored:
            s.verdict = "only value with results"
        return
    best = min(scored, key=lambda s: s.mean)
    for s in scored:
        s.delta = s.mean - best.mean
        if s is best:
            s.verdict = "best"
        elif spread is None:
            s.verdict = "seed spread unknown (needs 2+ seeds)"
        else:
            s.noise = 2 * spread * math.sqrt(1 / s.runs + 1 / best.runs)
            s.verdict = "within the seed spread" if s.delta <= s.noise else "beyond the seed spread"


def seed_spread(runs: list[RunResult], keys: list[str]) -> float | None:
    """The pooled std over seeds of runs that are otherwise identical (same value for every grid key)."""
    configs: dict = {}
    for run in runs:
        if final_loss(run) is not None:
            configs.setdefault(tuple(run.grid.get(k) for k in keys), []).append(final_loss(run))
    variances = [statistics.variance(losses) for losses in configs.values() if len(losses) >= 2]
    return statistics.fmean(variances) ** 0.5 if variances else None


def verdict_lines(summary: KeySummary) -> list[str]:
    """Plain sentences: which value is best, and which differences are within the seed spread."""
    scored = [s for s in summary.values if s.mean is not None]
    lines = []
    if len(scored) >= 2:
        best = next(s for s in scored if s.verdict == "best")
        for s in scored:
            if s is best:
                continue
            if s.verdict == "within the seed spread":
                lines.append(f"{summary.key}: {s.value} vs {best.value}: {s.delta:+.4f}, within the seed spread "
                             f"(seeds alone move it by up to ±{s.noise:.4f}): these runs cannot tell them apart")
            elif s.verdict == "beyond the seed spread":
                lines.append(f"{summary.key}: {s.value} is worse than {best.value} by {s.delta:.4f}, beyond the "
                             f"seed spread (seeds alone move it by up to ±{s.noise:.4f})")
            else:
                lines.append(f"{summary.key}: {s.value} vs {best.value}: {s.delta:+.4f}; with one seed there is no "
                             "spread to judge it against (add seeds)")
    for s in summary.values:
        if s.not_counted:
            left_out = ", ".join(f"{n} {status}" for status, n in s.not_counted.items())
            lines.append(f"{summary.key}={s.value}: {left_out} (not counted)")
    return lines
