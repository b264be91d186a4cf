"""Whether the values of a key really differ: the test, its correction across values, the verdict.

The unit of evidence is the seed. For each value of a key, each seed's final metric is averaged
over the runs of that seed (the other keys' values), so a seed gives one number per value. Then:

- every pair of values with 2+ seeds each is tested, two-sided: with the paired t-test over seeds
  when both values ran the same seeds (runs of one seed share their data order, and pairing
  removes that shared part of the noise), else with Welch's t-test (Welch 1947: unequal variances,
  Welch–Satterthwaite degrees of freedom);
- the p-values of all pairs of the key are corrected together with Holm's step-down method
  (Holm 1979), which keeps the chance of any false "worse" among them at alpha (5%).
  All pairs, not only "each value against the best": the best is chosen after looking, which
  makes its comparisons the most extreme ones, and Holm over just those k-1 lets the family-wise
  error reach 6-9% for 4-8 values (tests/test_stats.py simulates both);
- each value is then `worse` than the best (lowest mean) when their corrected p < alpha, else
  `not distinguishable`; `inconclusive` when either has fewer than 2 seeds or the seeds spread
  by nothing at all (no test is possible), with the number of seeds per value that would detect
  the observed difference at the observed spread with 80% power.

The assumptions: the seed-to-seed noise of a value's mean is roughly normal (t-tests are robust
to moderate departures), and seeds are independent draws. Only completed runs count; diverged,
failed, stopped and skipped runs are reported beside.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from scipy import stats

from b6lab.sweep.folders import RunResult

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000  # seeds_needed searches up to this many per value


# ---------------------------------------------------------------------------------------------
# The procedure, on arrays: the runs' numbers in real use, thousands of simulated sweeps in tests


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values along the last axis; NaN (no test) is left out of the family.

    (scipy has Benjamini–Hochberg but not Holm; Holm is these few lines.)"""
    order = np.argsort(p, axis=-1)  # NaNs sort last
    ranked = np.take_along_axis(p, order, axis=-1)
    family = np.sum(~np.isnan(p), axis=-1, keepdims=True)
    stepped = np.fmax.accumulate(ranked * (family - np.arange(p.shape[-1])), axis=-1)
    adjusted = np.where(np.isnan(ranked), np.nan, np.minimum(stepped, 1.0))
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out


def pair_test(a: np.ndarray, b: np.ndarray, paired: bool, alpha: float = ALPHA):
    """a - b over the last axis (seeds): mean difference, its (1 - alpha) CI, and the two-sided p-value.

    Paired t when `paired` (the same seeds in the same order), else Welch's t. Where the seeds
    spread by nothing (standard error 0) there is no test: p and the CI are NaN."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # zero spread: scipy warns, we mark it NaN below
        if paired:
            result = stats.ttest_rel(a, b, axis=-1)
            se = np.std(a - b, axis=-1, ddof=1) / math.sqrt(a.shape[-1])
        else:
            result = stats.ttest_ind(a, b, equal_var=False, axis=-1)
            se = np.sqrt(np.var(a, axis=-1, ddof=1) / a.shape[-1] + np.var(b, axis=-1, ddof=1) / b.shape[-1])
        low, high = result.confidence_interval(1 - alpha)
    delta = a.mean(axis=-1) - b.mean(axis=-1)
    scale = np.abs(a).max(axis=-1) + np.abs(b).max(axis=-1) + 1.0
    degenerate = ~(se > 1e-12 * scale)
    nan = np.where(degenerate, np.nan, 1.0)
    return delta, low * nan, high * nan, result.pvalue * nan


@dataclass
class Judgement:
    """Arrays over `batch` (the leading axes; none for one real key) and k values (last axis)."""

    mean: np.ndarray  # (..., k)
    best: np.ndarray  # (...,) index of the lowest mean
    delta: np.ndarray  # (..., k) mean minus the best's mean
    low: np.ndarray  # (..., k) CI of delta
    high: np.ndarray
    p: np.ndarray  # (..., k) Holm-corrected p against the best; NaN: untested
    paired: np.ndarray  # (..., k) whether the comparison with the best was paired
    verdict: np.ndarray  # (..., k) str
    comparisons: int  # pairs in the Holm family


def judge(arms: list[np.ndarray], seeds: list[tuple] | None = None, alpha: float = ALPHA) -> Judgement:
    """Each value against the best, corrected over all pairs. arms[i]: (..., n_i) per-seed means of
    value i, the seeds in the order seeds[i]; values whose seed tuples are equal are compared paired."""
    k = len(arms)
    batch = np.broadcast_shapes(*(arm.shape[:-1] for arm in arms))
    arms = [np.broadcast_to(arm, batch + arm.shape[-1:]).astype(float) for arm in arms]
    mean = np.stack([arm.mean(axis=-1) if arm.shape[-1] else np.full(batch, np.nan) for arm in arms], axis=-1)
    scored = [arm.shape[-1] >= 1 for arm in arms]
    testable = [arm.shape[-1] >= 2 for arm in arms]
    best = np.argmin(np.where(np.isnan(mean), np.inf, mean), axis=-1)

    low, high, p = (np.full(batch + (k, k), np.nan) for _ in range(3))
    paired = np.zeros((k, k), dtype=bool)
    pairs = [(i, j) for i, j in combinations(range(k), 2) if testable[i] and testable[j]]
    for i, j in pairs:
        paired[i, j] = paired[j, i] = seeds is not None and seeds[i] == seeds[j]
        _, lo, hi, pv = pair_test(arms[i], arms[j], paired[i, j], alpha)
        low[..., i, j], high[..., i, j], p[..., i, j] = lo, hi, pv
        low[..., j, i], high[..., j, i], p[..., j, i] = -hi, -lo, pv
    if pairs:
        rows, cols = np.array(pairs).T
        adjusted = holm(p[..., rows, cols])
        p[..., rows, cols] = adjusted
        p[..., cols, rows] = adjusted

    def against_best(matrix):
        index = np.broadcast_to(best[..., None, None], batch + (k, 1))
        return np.take_along_axis(matrix, index, axis=-1)[..., 0]

    p_best = against_best(p)
    is_best = np.arange(k) == best[..., None]
    verdict = np.select(
        [is_best & np.array(testable) & (sum(scored) >= 2), is_best, np.isnan(p_best), p_best < alpha],
        ["best", "inconclusive", "inconclusive", "worse"],
        "not distinguishable",
    )
    return Judgement(
        mean=mean, best=best, delta=mean - np.take_along_axis(mean, best[..., None], axis=-1),
        low=against_best(low), high=against_best(high), p=p_best,
        paired=against_best(np.broadcast_to(paired, batch + (k, k))), verdict=verdict, comparisons=len(pairs),
    )


def seeds_needed(delta: float, spread: float, paired: bool, level: float, power: float = POWER) -> int | None:
    """Seeds per value for a two-sided t-test at `level` to detect `delta` with `power`, where
    `spread` is the std over seeds of the paired differences (paired) or of each value's mean
    (unpaired, equal spread and seeds assumed). None: more than MAX_SEEDS, or no difference seen."""
    if not delta or not spread or not math.isfinite(spread):
        return None
    n = np.arange(2, MAX_SEEDS + 1)
    df = n - 1 if paired else 2 * n - 2
    noncentrality = abs(delta) / spread * np.sqrt(n if paired else n / 2)
    critical = stats.t.ppf(1 - level / 2, df)
    reached = stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality) >= power
    return int(n[reached.argmax()]) if reached.any() else None


# ---------------------------------------------------------------------------------------------
# The runs of one key


@dataclass
class ValueSummary:
    value: str
    mean: float | None  # mean over seeds of each seed's mean final metric
    std: float | None  # std over seeds; None with fewer than two seeds
    seeds: int
    runs: int  # completed runs counted
    not_counted: Counter = field(default_factory=Counter)  # status -> runs left out
    beside: dict[str, str] = field(default_factory=dict)  # keys that change with this value -> their label
    delta: float | None = None  # mean minus the best value's mean
    ci: tuple[float, float] | None = None  # (1 - alpha) CI of delta
    p: float | None = None  # Holm-corrected p against the best
    test: str | None = None  # "paired t" | "Welch t"
    verdict: str = "inconclusive"
    seeds_needed: int | None = None  # per value, to detect delta at 80% power (not distinguishable, inconclusive)
    note: str = ""  # why inconclusive


@dataclass
class KeySummary:
    key: str
    values: list[ValueSummary]
    comparisons: int = 0  # pairs in the Holm family
    alpha: float = ALPHA
    beside: list[str] = field(default_factory=list)


def final_value(run: RunResult, metric: str = "val_loss") -> float | None:
    """The run's final `metric` (val_loss or val_bpb), for completed runs only."""
    value = getattr(run, f"final_{metric}")
    return value if run.status == "completed" and value is not None and math.isfinite(value) else None


def label(run: RunResult, key: str) -> str:
    return run.grid.get(key, "-")


def per_seed(runs: list[RunResult], metric: str) -> dict:
    """seed -> the mean final metric of that seed's completed runs (over the keys not grouped by)."""
    values: dict = {}
    for run in runs:
        if final_value(run, metric) is not None:
            values.setdefault(run.seed, []).append(final_value(run, metric))
    return {seed: float(np.mean(v)) for seed, v in sorted(values.items(), key=lambda item: str(item[0]))}


def summarize_key(runs: list[RunResult], key: str, metric: str = "val_loss", alpha: float = ALPHA,
                  beside: list[str] | None = None) -> KeySummary:
    """Each value of `key`: mean ± std over seeds, and its verdict against the best value."""
    values = list(dict.fromkeys(label(run, key) for run in runs))
    groups = {value: [run for run in runs if label(run, key) == value] for value in values}
    seed_means = {value: per_seed(group, metric) for value, group in groups.items()}
    summaries = []
    for value, group in groups.items():
        means = list(seed_means[value].values())
        summaries.append(ValueSummary(
            value=value,
            mean=float(np.mean(means)) if means else None,
            std=float(np.std(means, ddof=1)) if len(means) >= 2 else None,
            seeds=len(means),
            runs=sum(final_value(run, metric) is not None for run in group),
            not_counted=Counter(run.status for run in group if final_value(run, metric) is None),
            beside={other: label(group[0], other) for other in beside or []},
        ))
    summary = KeySummary(key, summaries, alpha=alpha, beside=list(beside or []))
    _judge(summary, seed_means)
    return summary


def _judge(summary: KeySummary, seed_means: dict[str, dict]) -> None:
    values = summary.values
    judged = judge([np.array(list(seed_means[v.value].values())) for v in values],
                   [tuple(seed_means[v.value]) for v in values], summary.alpha)
    summary.comparisons = judged.comparisons
    scored = [v for v in values if v.mean is not None]
    best = values[int(judged.best)]
    # The strictest level Holm may test at: that of a family of every pair of values with results.
    level = summary.alpha / max(1, len(scored) * (len(scored) - 1) // 2)
    pooled_spread = _pooled_std([v for v in scored if v.std is not None])
    for i, v in enumerate(values):
        v.verdict = str(judged.verdict[i])
        if v.mean is None:
            v.note = "no completed run"
            continue
        if v is best:
            v.delta = 0.0
            if len(scored) < 2:
                v.note = "the only value with results"
            elif v.seeds < 2:
                v.note = "1 seed: no spread to test against"
            continue
        v.delta = float(judged.delta[i])
        paired = bool(judged.paired[i])
        if not math.isnan(judged.p[i]):
            v.ci, v.p = (float(judged.low[i]), float(judged.high[i])), float(judged.p[i])
            v.test = "paired t" if paired else "Welch t"
        if v.verdict == "worse":
            continue
        if v.seeds < 2 or best.seeds < 2:
            v.note = ("1 seed" if v.seeds < 2 else f"the best, {best.value}, has 1 seed") + ": no spread to test against"
            spread = pooled_spread
        elif v.test is None:
            v.note = "the seeds gave identical results: no spread to test against"
            spread = None
        elif paired:
            spread = float(np.std(np.subtract(list(seed_means[v.value].values()),
                                              list(seed_means[best.value].values())), ddof=1))
        else:
            spread = _pooled_std([v, best])
        v.seeds_needed = seeds_needed(v.delta, spread, paired, level) if spread else None


def _pooled_std(values: list[ValueSummary]) -> float | None:
    """Root mean variance over seeds of the values given (each with 2+ seeds)."""
    variances = [v.std**2 for v in values if v.std is not None]
    return math.sqrt(sum(variances) / len(variances)) if variances else None


# ---------------------------------------------------------------------------------------------
# Two keys at once


@dataclass
class Cell:
    mean: float | None
    std: float | None
    seeds: int


@dataclass
class TwoWay:
    """The mean over seeds of each combination of two keys' values: an interaction shows as a
    difference between rows that changes from one column to the next."""

    rows_key: str
    columns_key: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]


def two_way(runs: list[RunResult], rows_key: str, columns_key: str, metric: str = "val_loss") -> TwoWay:
    rows = list(dict.fromkeys(label(run, rows_key) for run in runs))
    columns = list(dict.fromkeys(label(run, columns_key) for run in runs))
    cells = {}
    for row in rows:
        for column in columns:
            group = [run for run in runs if label(run, rows_key) == row and label(run, columns_key) == column]
            means = list(per_seed(group, metric).values())
            cells[row, column] = Cell(mean=float(np.mean(means)) if means else None,
                                      std=float(np.std(means, ddof=1)) if len(means) >= 2 else None,
                                      seeds=len(means))
    return TwoWay(rows_key, columns_key, rows, columns, cells)
