"""From runs to verdicts: the runs of a key laid out by value, cell and seed (stats.py's table of
outcomes), each value's summary and verdict, and the two-way table of two keys with its
interaction tests. The statistics themselves, and why they are these, are stats.py's."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from b6lab.sweep.folders import RunResult
from b6lab.sweep.stats import (ALPHA, DIVERGED, Judgement, KeyTests, seed_means, holm_levels, interaction_tests,
                               judge, key_tests, seeds_needed, t_interval)


# ---------------------------------------------------------------------------------------------
# From runs to the table of outcomes


def final_value(run: RunResult, metric: str = "val_loss") -> float | None:
    """The run's final `metric` (val_loss or val_bpb), for completed runs only."""
    value = getattr(run, f"final_{metric}")
    return value if run.status == "completed" and value is not None and math.isfinite(value) else None


def outcome(run: RunResult, metric: str) -> float:
    if run.status == "diverged":
        return DIVERGED
    value = final_value(run, metric)
    return np.nan if value is None else value


def label(run: RunResult, key: str) -> str:
    return run.grid.get(key, "-")


@dataclass
class Table:
    """outcome[value, cell, seed] for one key (or, with two keys, value = (row, column))."""

    values: list
    cells: list[tuple]
    seeds: list
    outcomes: np.ndarray
    missing: int  # (value, cell, seed) blocks with no run at all, where another value of the cell ran that seed
    repeated: int = 0  # runs beyond the first in one block (averaged)


def outcome_table(runs: list[RunResult], keys: list[str], metric: str, blind: list[str] = ()) -> Table:
    """The runs laid out by the values of `keys` (one key, or two for the interaction), the cells of
    the other grid keys (less `blind`: keys that change only with a judged one) and the seeds. Several
    runs in one block (the same seed run twice) are averaged; a diverged one counts where none completed."""
    def value_of(run):
        return tuple(label(run, key) for key in keys) if len(keys) > 1 else label(run, keys[0])

    others = sorted({k for run in runs for k in run.grid} - set(keys) - set(blind))
    values = list(dict.fromkeys(value_of(run) for run in runs))
    cells = list(dict.fromkeys(tuple(label(run, k) for k in others) for run in runs))
    seeds = sorted({run.seed for run in runs}, key=str)
    gathered: dict[tuple, list[float]] = {}
    for run in runs:
        block = (values.index(value_of(run)), cells.index(tuple(label(run, k) for k in others)), seeds.index(run.seed))
        gathered.setdefault(block, []).append(outcome(run, metric))
    table = np.full((len(values), len(cells), len(seeds)), np.nan)
    for block, found in gathered.items():
        finite = [x for x in found if math.isfinite(x)]
        table[block] = np.mean(finite) if finite else (DIVERGED if DIVERGED in found else np.nan)
    ran = np.zeros(table.shape, bool)
    for block in gathered:
        ran[block] = True
    missing = int((~ran & ran.any(axis=0, keepdims=True)).sum())
    return Table(values, cells, seeds, table, missing, sum(len(found) - 1 for found in gathered.values()))


# ---------------------------------------------------------------------------------------------
# The runs of one key


@dataclass
class ValueSummary:
    value: str
    mean: float | None  # mean over seeds of each seed's mean final metric, over the complete blocks
    std: float | None  # std over seeds; None with fewer than two seeds
    seeds: int
    runs: int  # completed runs
    diverged: int = 0  # runs that diverged (an outcome: counted, never averaged)
    not_counted: Counter = field(default_factory=Counter)  # status -> runs without a final value (diverged too)
    beside: dict[str, str] = field(default_factory=dict)  # keys that change with this value -> their label
    delta: float | None = None  # mean minus the reference's mean, on the blocks both completed
    ci: tuple[float, float] | None = None  # CI of delta at the level Holm tested it (ci_level)
    ci_level: float | None = None
    p: float | None = None  # Holm-corrected p against the reference
    test: str | None = None  # "paired t" | "Welch-Hsu t", and "+ sign test" where divergence shares the pair
    test_seeds: int = 0
    by_divergence: bool = False  # worse because it diverged more often, not by its losses
    verdict: str = "inconclusive"
    decided_at: int | None = None  # sequential sweeps: the seed count at which its comparison was decided
    seeds_needed: int | None = None  # per value, for a new fixed design to detect delta at 80% power
    note: str = ""  # why inconclusive


@dataclass
class KeySummary:
    key: str
    values: list[ValueSummary]
    comparisons: int = 0  # pairs in the key's family
    alpha: float = ALPHA
    beside: list[str] = field(default_factory=list)
    missing: int = 0  # trials absent from the grid (compared over complete cells only)
    family: str = "key"  # what Holm corrected over: "key", or "all" keys of the comparison
    family_size: int = 0
    reference_index: int | None = None  # the value the others are compared against
    method: str | None = None  # a sequential sweep's analysis, where it replaced the fixed-n tests

    @property
    def reference(self) -> ValueSummary | None:
        return None if self.reference_index is None else self.values[self.reference_index]


def summarize_key(runs: list[RunResult], key: str, metric: str = "val_loss", alpha: float = ALPHA,
                  beside: list[str] | None = None, tests: KeyTests | None = None,
                  adjusted: np.ndarray | None = None, levels: np.ndarray | None = None,
                  family: str = "key", family_size: int | None = None, table: Table | None = None) -> KeySummary:
    """Each value of `key`: its mean ± std over seeds, and its verdict against the reference.
    comparison.py passes the table and tests it already made (to correct across keys)."""
    table = table or outcome_table(runs, [key], metric, blind=beside or [])
    tests = tests or key_tests(table.outcomes, alpha)
    judged = judge(table.outcomes, alpha, tests, adjusted, levels)
    levels = holm_levels(tests.p, alpha) if levels is None else levels
    summary = KeySummary(key, [], comparisons=judged.comparisons, alpha=alpha, beside=list(beside or []),
                         missing=table.missing, family=family, family_size=family_size or judged.comparisons)
    reference = int(judged.reference)
    summary.reference_index = reference if not np.isnan(judged.mean[reference]) else None
    for i, value in enumerate(table.values):
        group = [run for run in runs if label(run, key) == value]
        mean = judged.mean[i]
        v = ValueSummary(
            value=value, mean=None if np.isnan(mean) else float(mean),
            std=None if np.isnan(judged.std[i]) else float(judged.std[i]), seeds=int(judged.seeds[i]),
            runs=sum(final_value(run, metric) is not None for run in group), diverged=int(judged.diverged[i]),
            not_counted=Counter(run.status for run in group if final_value(run, metric) is None),
            beside={other: label(group[0], other) for other in beside or []}, verdict=str(judged.verdict[i]),
        )
        summary.values.append(v)
        if v.mean is None:
            v.note = f"diverged {v.diverged}/{v.diverged}" if v.diverged and not v.runs else "no completed run"
        if i == reference:
            v.delta = 0.0 if v.mean is not None else None
            if v.verdict == "inconclusive":
                v.note = v.note or ("the only value with results" if len(table.values) < 2 else
                                    "1 seed: no spread to test against" if v.seeds < 2 else
                                    "no other value could be tested against it")
            continue
        if not np.isnan(judged.delta[i]):
            v.delta = float(judged.delta[i])
        if not np.isnan(judged.p[i]):
            v.p = float(judged.p[i])
            pair = tests.pairs.index(tuple(sorted((i, reference))))
            test = tests.tests[pair]
            if not np.isnan(test.p_losses):
                v.ci = (float(judged.low[i]), float(judged.high[i]))
                level = float(levels[..., pair]) / (2 if test.divergence_counts else 1)
                v.ci_level = 1 - level
            v.test = ("paired t" if judged.paired[i] else "Welch-Hsu t") if not np.isnan(test.p_losses) else None
            if test.divergence_counts:
                v.test = f"{v.test} + sign test on divergence" if v.test else "sign test on divergence"
            v.test_seeds = int(judged.test_seeds[i])
            v.by_divergence = bool(judged.by_divergence[i])
        if v.verdict == "inconclusive" and not v.note:
            v.note = ("1 seed: no spread to test against" if v.seeds < 2 or judged.seeds[reference] < 2 else
                      "the seeds gave identical results: no spread to test against")
    _plan_seeds(summary, table, judged)
    return summary


def _plan_seeds(summary: KeySummary, table: Table, judged: Judgement) -> None:
    """For values not told apart: how many seeds a new fixed design would need (at the strictest
    level Holm may test a pair at)."""
    r = int(judged.reference)
    scored = [v for v in summary.values if v.mean is not None]
    level = summary.alpha / max(1, summary.family_size or len(scored) * (len(scored) - 1) // 2)
    # Each value's own seed-to-seed spread (over all its completed runs), for the unpaired case.
    own = [_seed_spread(table.outcomes[i], np.isfinite(table.outcomes[i])) for i in range(len(summary.values))]
    pooled = _pooled([s for s in own if s is not None])
    for i, v in enumerate(summary.values):
        if i == r or v.mean is None or v.verdict == "worse" or v.delta is None:
            continue
        if v.test and v.test.startswith("paired"):
            a, b = table.outcomes[i], table.outcomes[r]
            with np.errstate(invalid="ignore"):
                spread = _seed_spread(a - b, np.isfinite(a) & np.isfinite(b))
            paired = True
        else:
            spread = _pooled([s for s in (own[i], own[r]) if s is not None]) if own[i] and own[r] else pooled
            paired = False
        v.seeds_needed = seeds_needed(v.delta, spread, paired, level) if spread else None


def _seed_spread(outcomes: np.ndarray, mask: np.ndarray) -> float | None:
    """Std over seeds of each seed's mean over the cells where mask holds; None under 2 seeds."""
    means, has = seed_means(outcomes, mask)
    return float(np.std(means[has], ddof=1)) if has.sum() >= 2 else None


def _pooled(spreads: list[float]) -> float | None:
    """Root mean variance."""
    return math.sqrt(sum(s**2 for s in spreads) / len(spreads)) if spreads else None


# ---------------------------------------------------------------------------------------------
# Two keys at once: each combination's mean with its CI, and the interaction


@dataclass
class Cell:
    mean: float | None
    std: float | None
    seeds: int
    ci: tuple[float, float] | None = None  # 95% t interval of the mean over seeds
    diverged: int = 0
    runs: int = 0  # runs with an outcome


@dataclass
class Interaction:
    """(rows[a] - rows[b] at columns[c]) - (rows[a] - rows[b] at columns[d]): the difference of differences."""

    rows: tuple[str, str]
    columns: tuple[str, str]
    delta: float
    ci: tuple[float, float] | None  # at the level Holm tested it
    p: float | None  # Holm-corrected over the table's contrasts
    seeds: int
    verdict: str  # "interaction" | "no interaction shown" | "inconclusive"


@dataclass
class TwoWay:
    """The mean over seeds of each combination of two keys' values, and whether the difference
    between rows changes from one column to the next (the interaction), tested per pair of rows
    and pair of columns by the paired t-test over seeds of the difference of differences, over the
    seeds and cells all four combinations completed, Holm-corrected over the table."""

    rows_key: str
    columns_key: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    interactions: list[Interaction] = field(default_factory=list)
    alpha: float = ALPHA


def two_way(runs: list[RunResult], rows_key: str, columns_key: str, metric: str = "val_loss",
            alpha: float = ALPHA) -> TwoWay:
    table = outcome_table(runs, [rows_key, columns_key], metric)
    rows = list(dict.fromkeys(value[0] for value in table.values))
    columns = list(dict.fromkeys(value[1] for value in table.values))
    nan_block = np.full(table.outcomes.shape[1:], np.nan)
    grid = {(r, c): table.outcomes[table.values.index((r, c))] if (r, c) in table.values else nan_block
            for r in rows for c in columns}
    cells = {}
    for (row, column), block in grid.items():
        per_seed, has = seed_means(block, np.isfinite(block))
        means = per_seed[has]
        cells[row, column] = Cell(
            mean=float(means.mean()) if means.size else None,
            std=float(means.std(ddof=1)) if means.size >= 2 else None, seeds=int(means.size),
            ci=t_interval(means, alpha), diverged=int(np.isposinf(block).sum()), runs=int((~np.isnan(block)).sum()))
    stacked = np.stack([np.stack([grid[r, c] for c in columns]) for r in rows])
    contrasts = interaction_tests(stacked, alpha)
    interactions = []
    for (i, j), (a, b), test in contrasts:
        pair_rows, pair_columns = (rows[i], rows[j]), (columns[a], columns[b])
        if np.isnan(test["p"]):
            interactions.append(Interaction(pair_rows, pair_columns, float(test["delta"]), None, None,
                                            int(test["seeds"]), "inconclusive"))
            continue
        interactions.append(Interaction(pair_rows, pair_columns, float(test["delta"]),
                                        (float(test["low"]), float(test["high"])), float(test["p"]), int(test["seeds"]),
                                        "interaction" if test["p"] < alpha else "no interaction shown"))
    return TwoWay(rows_key, columns_key, rows, columns, cells, interactions, alpha)
