"""Whether the values of a key really differ: the tests, their correction, the verdict, on arrays
(the runs' numbers in real use, thousands of simulated sweeps in tests; verdicts.py lays runs out).

The unit of evidence is the seed, and a comparison is made only where both sides ran. The runs of
one key are laid out as a table `outcome[value, cell, seed]`, a cell being one combination of the
other keys' values: the final metric of a completed run, +inf for a run that diverged, NaN for a
trial that is missing or failed (a crash says nothing about the choice). Then, for every pair of
values:

- **losses**, over the (cell, seed) blocks in which both completed: each seed's mean difference
  over those cells, then the paired t-test over seeds. Marginals over complete cells only, so an
  arm that lost its hard cells (diverged there, or was never run there) cannot look better for
  it. With fewer than 2 seeds in common (the values ran different seeds), Welch's t-test on each
  value's per-seed means over the cells both ran, with Hsu's conservative degrees of freedom
  min(n_a, n_b) - 1 (Welch–Satterthwaite's are too liberal with 2-6 seeds and unequal spreads:
  9.9% false "worse" at 2 vs 6 seeds; tests/test_stats.py);
- **divergence**, an outcome like any other: the exact sign test over the blocks in which one
  diverged and the other completed (McNemar's test). It enters a pair's p-value only where it
  could reach significance (7+ such blocks at 5%), as 2 x min(p_losses, p_divergence)
  (Bonferroni within the pair; deciding by the count of discordant blocks, which does not depend
  on which side diverged, keeps the level);
- Holm's step-down correction (Holm 1979) over all pairs of the key's values: the chance of any
  false "worse" among them is at most alpha (5%). All pairs, not only "each against the best": the
  best is chosen after looking, which makes its comparisons the most extreme ones (Holm over just
  those k-1 reaches 6-9% for 4-8 values). The family is one key; `family="all"` corrects across
  every key of a comparison instead.

The reference each value is compared against is the value that diverged least, then with the
lowest mean: a value that diverges is never `best` on its survivors. Verdicts: `worse` (the
pair's corrected p < alpha, and this value is the worse side), `not distinguishable`,
`inconclusive` (no test possible: fewer than 2 seeds, or no spread), and for the reference `best`
only when every other value is `worse` and it never diverged, else `lowest mean` (or `reference`
where a value that diverged more has the lower mean on its survivors). Intervals are
drawn at the level Holm tested each pair at (the step's alpha/(m - j + 1), halved again where the
divergence test shares the pair), so an interval excludes 0 exactly when the losses decided
`worse`.

The assumptions: the seed-to-seed noise of a seed's mean difference is roughly normal (t-tests are
robust to moderate departures), seeds are independent draws, and the seeds are chosen before the
results are seen: adding seeds after looking and testing again voids the error rate (a sequential
design is the valid way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000  # seeds_needed searches up to this many per value
DIVERGED = np.inf  # an outcome; NaN: no outcome (missing, failed)
REFERENCE = ("best", "lowest mean", "reference")  # the verdicts of the value the others are compared against


# ---------------------------------------------------------------------------------------------
# Holm's correction, and the level each hypothesis was tested at


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


def holm_levels(p: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """The level Holm tests each p-value at (last axis): alpha/(m - j) at step j while every step so
    far rejected, then the first accepting step's level for all the rest. p < level exactly when
    Holm rejects, so intervals at these levels agree with the verdicts."""
    if p.shape[-1] == 0:
        return p.copy()
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, axis=-1)
    family = np.sum(~np.isnan(p), axis=-1, keepdims=True)
    step = alpha / np.maximum(family - np.arange(p.shape[-1]), 1)
    rejected = np.logical_and.accumulate(ranked < step, axis=-1)
    first_accepting = np.take_along_axis(step, np.minimum(rejected.sum(-1, keepdims=True), p.shape[-1] - 1), axis=-1)
    ranked_levels = np.where(rejected, step, first_accepting)
    out = np.empty_like(ranked_levels)
    np.put_along_axis(out, order, ranked_levels, axis=-1)
    return np.where(np.isnan(p), np.nan, out)


# ---------------------------------------------------------------------------------------------
# One pair of values, on arrays (the runs' numbers in real use, thousands of simulated sweeps in tests)


@dataclass
class PairTest:
    """a - b for arrays over the batch (leading axes)."""

    delta: np.ndarray  # mean difference of the losses
    se: np.ndarray  # its standard error; NaN: no test
    df: np.ndarray  # degrees of freedom of its t
    p_losses: np.ndarray  # two-sided, NaN: no test
    paired: np.ndarray  # bool: over common seeds (else Welch–Hsu)
    seeds: np.ndarray  # seeds the losses test used (common seeds, or the smaller side's)
    diverged: tuple[np.ndarray, np.ndarray]  # blocks where a (b) diverged and the other completed
    p_divergence: np.ndarray  # exact sign test over those blocks; NaN where there are none
    divergence_counts: np.ndarray  # bool: the divergence test shares the pair's p
    p: np.ndarray  # the pair's p-value (before Holm)
    a_worse: np.ndarray  # bool: the side the deciding test points to is a

    def interval(self, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The CI of delta at 1 - level (level halved where the divergence test shares the pair)."""
        level = np.where(self.divergence_counts, level / 2, level)
        with np.errstate(invalid="ignore"):
            half = stats.t.ppf(1 - level / 2, np.maximum(self.df, 1)) * self.se
        return self.delta - half, self.delta + half


def _t(delta, se, df):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2 * stats.t.sf(np.abs(delta / se), np.maximum(df, 1))


def _masked_mean_var(x: np.ndarray, mask: np.ndarray):
    """Mean, variance (ddof 1) and count over the last axis where mask holds."""
    n = mask.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(mask, x, 0.0).sum(-1) / n
        var = np.where(mask, (x - mean[..., None]) ** 2, 0.0).sum(-1) / (n - 1)
    return mean, var, n


def seed_means(x: np.ndarray, mask: np.ndarray):
    """(..., cells, seeds) -> each seed's mean over the cells where mask holds, and which seeds have one."""
    count = mask.sum(-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mask, x, 0.0).sum(-2) / count, count > 0


def pair_test(a: np.ndarray, b: np.ndarray, alpha: float = ALPHA) -> PairTest:
    """a, b: (..., cells, seeds) outcomes of two values (float; +inf diverged, NaN none)."""
    done_a, done_b = np.isfinite(a), np.isfinite(b)
    both = done_a & done_b
    with np.errstate(invalid="ignore"):
        difference, common = seed_means(a - b, both)
    d_mean, d_var, n_common = _masked_mean_var(difference, common)
    paired = n_common >= 2
    # Welch–Hsu where the values share fewer than 2 seeds: each value's seeds, over the cells both ran.
    shared_cells = done_a.any(-1, keepdims=True) & done_b.any(-1, keepdims=True)
    mean_a, has_a = seed_means(a, done_a & shared_cells)
    mean_b, has_b = seed_means(b, done_b & shared_cells)
    ma, va, na = _masked_mean_var(mean_a, has_a)
    mb, vb, nb = _masked_mean_var(mean_b, has_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(paired, d_mean, ma - mb)
        se = np.where(paired, np.sqrt(d_var / n_common), np.sqrt(va / na + vb / nb))
        df = np.where(paired, n_common - 1, np.minimum(na, nb) - 1).astype(float)
        scale = np.abs(np.where(np.isfinite(a), a, 0)).max((-1, -2)) + np.abs(np.where(np.isfinite(b), b, 0)).max((-1, -2)) + 1
    testable = (paired | ((na >= 2) & (nb >= 2))) & (se > 1e-12 * scale)
    se = np.where(testable, se, np.nan)
    p_losses = np.where(testable, _t(delta, se, df), np.nan)

    a_diverged = (np.isposinf(a) & done_b).sum((-1, -2))
    b_diverged = (np.isposinf(b) & done_a).sum((-1, -2))
    discordant = a_diverged + b_diverged
    with np.errstate(invalid="ignore"):
        p_divergence = np.where(discordant > 0, np.minimum(
            1.0, 2 * stats.binom.cdf(np.minimum(a_diverged, b_diverged), discordant, 0.5)), np.nan)
    # The divergence test takes half the pair's alpha only where it could use it.
    counts = 4 * 0.5 ** discordant < alpha
    p = np.where(counts, np.minimum(1.0, 2 * np.fmin(p_losses, p_divergence)), p_losses)
    by_divergence = counts & ~(p_losses < p_divergence)
    a_worse = np.where(by_divergence, a_diverged > b_diverged, delta > 0)
    return PairTest(delta=delta, se=se, df=df, p_losses=p_losses, paired=paired,
                    seeds=np.where(paired, n_common, np.minimum(na, nb)), diverged=(a_diverged, b_diverged),
                    p_divergence=p_divergence, divergence_counts=counts, p=p, a_worse=a_worse)


# ---------------------------------------------------------------------------------------------
# Every pair of a key's values, and the verdicts


@dataclass
class KeyTests:
    """Every pair of one key's values, before the correction (comparison.py may pool families)."""

    outcomes: np.ndarray  # (..., k, cells, seeds)
    pairs: list[tuple[int, int]]
    tests: list[PairTest]

    @property
    def p(self) -> np.ndarray:
        """(..., pairs) the raw p-values, the family Holm corrects."""
        batch = self.outcomes.shape[:-3]
        return np.stack([t.p for t in self.tests], axis=-1) if self.tests else np.zeros(batch + (0,))


def key_tests(outcomes: np.ndarray, alpha: float = ALPHA) -> KeyTests:
    k = outcomes.shape[-3]
    pairs = list(combinations(range(k), 2))
    return KeyTests(outcomes, pairs, [pair_test(outcomes[..., i, :, :], outcomes[..., j, :, :], alpha)
                                      for i, j in pairs])


@dataclass
class Judgement:
    """Arrays over `batch` (the leading axes; none for one real key) and k values (last axis)."""

    mean: np.ndarray  # (..., k) over the complete blocks (see balanced_means)
    std: np.ndarray  # (..., k) std over seeds of that mean
    seeds: np.ndarray  # (..., k) seeds in that mean
    diverged: np.ndarray  # (..., k) runs that diverged
    counted: np.ndarray  # (..., k) runs with an outcome (completed or diverged)
    reference: np.ndarray  # (...,) index of the value all are compared against
    delta: np.ndarray  # (..., k) value minus the reference (on the blocks both completed)
    low: np.ndarray  # (..., k) its interval, at the level Holm tested the pair at
    high: np.ndarray
    p: np.ndarray  # (..., k) Holm-corrected p against the reference; NaN: untested
    paired: np.ndarray  # (..., k)
    test_seeds: np.ndarray  # (..., k) seeds the losses test against the reference used
    by_divergence: np.ndarray  # (..., k) bool: the divergence test decided `worse`
    verdict: np.ndarray  # (..., k) str
    comparisons: int  # pairs in the key's family


def balanced_means(outcomes: np.ndarray):
    """Each value's mean ± std over seeds, taken over the (cell, seed) blocks that every value with
    results completed; where no block is complete for all (values ran different seeds), over the
    cells all of them completed in some seed. Returns mean, std, seeds; each (..., k)."""
    done = np.isfinite(outcomes)
    present = done.any((-1, -2), keepdims=True)  # values with no completed run do not restrict the rest
    blocks = np.all(done | ~present, axis=-3, keepdims=True)
    cells = np.all(done.any(-1, keepdims=True) | ~present, axis=-3, keepdims=True)
    use_blocks = blocks.any((-1, -2), keepdims=True)
    mask = np.where(use_blocks, blocks, cells & done) & done
    per_seed, has = seed_means(outcomes, mask)
    mean, var, n = _masked_mean_var(per_seed, has)
    return np.where(n > 0, mean, np.nan), np.where(n >= 2, np.sqrt(np.maximum(var, 0)), np.nan), n


def judge(outcomes: np.ndarray, alpha: float = ALPHA, tests: KeyTests | None = None,
          adjusted: np.ndarray | None = None, levels: np.ndarray | None = None) -> Judgement:
    """Each value against the reference. `adjusted` / `levels` (..., pairs): Holm's p-values and
    levels when the family is wider than this key (comparison.py); by default Holm over its pairs."""
    tests = tests or key_tests(outcomes, alpha)
    k = outcomes.shape[-3]
    batch = outcomes.shape[:-3]
    raw = tests.p
    adjusted = holm(raw) if adjusted is None else adjusted
    levels = holm_levels(raw, alpha) if levels is None else levels
    mean, std, seeds = balanced_means(outcomes)
    diverged = np.isposinf(outcomes).sum((-1, -2))
    counted = (~np.isnan(outcomes)).sum((-1, -2))
    with np.errstate(invalid="ignore", divide="ignore"):
        diverged_share = np.where(counted > 0, diverged / counted, np.inf)
    has_results = ~np.isnan(mean)
    # The reference: among the values that diverged least, the lowest mean.
    least = np.min(np.where(has_results, diverged_share, np.inf), axis=-1, keepdims=True)
    reference = np.argmin(np.where(has_results & (diverged_share == least), mean, np.inf), axis=-1)

    shape = batch + (k,)
    delta, low, high, p = (np.full(shape, np.nan) for _ in range(4))
    paired, by_divergence, worse = (np.zeros(shape, bool) for _ in range(3))
    test_seeds = np.zeros(shape, int)
    for column, ((i, j), test) in enumerate(zip(tests.pairs, tests.tests)):
        lo, hi = test.interval(levels[..., column])
        for value, other, sign in ((i, j, 1), (j, i, -1)):
            against = reference == other
            value_worse = test.a_worse if sign == 1 else ~test.a_worse
            decided = adjusted[..., column] < alpha
            delta[..., value] = np.where(against, sign * test.delta, delta[..., value])
            low[..., value] = np.where(against, lo if sign == 1 else -hi, low[..., value])
            high[..., value] = np.where(against, hi if sign == 1 else -lo, high[..., value])
            p[..., value] = np.where(against, adjusted[..., column], p[..., value])
            paired[..., value] |= against & test.paired
            test_seeds[..., value] = np.where(against, test.seeds, test_seeds[..., value])
            worse[..., value] |= against & decided & value_worse
            by_divergence[..., value] |= against & decided & value_worse & test.divergence_counts & ~(
                test.p_losses < test.p_divergence)
    is_reference = np.arange(k) == reference[..., None]
    others = has_results | (counted > 0)
    others_all_worse = np.all(worse | is_reference | ~others, axis=-1, keepdims=True)
    any_tested = np.any(~np.isnan(p) & ~is_reference, axis=-1, keepdims=True)
    reference_stable = np.take_along_axis(diverged, reference[..., None], axis=-1) == 0
    lowest = np.arange(k) == np.argmin(np.where(has_results, mean, np.inf), axis=-1)[..., None]
    verdict = np.select(
        [is_reference & ~any_tested, is_reference & others_all_worse & reference_stable, is_reference & lowest,
         is_reference, worse, np.isnan(p)],
        ["inconclusive", "best", "lowest mean", "reference", "worse", "inconclusive"],
        "not distinguishable",
    )
    return Judgement(mean=mean, std=std, seeds=seeds, diverged=diverged, counted=counted, reference=reference,
                     delta=np.where(is_reference & has_results, 0.0, delta), low=low, high=high, p=p,
                     paired=paired, test_seeds=test_seeds, by_divergence=by_divergence, verdict=verdict,
                     comparisons=int(np.sum(~np.isnan(raw))) if raw.ndim == 1 else len(tests.pairs))


def seeds_needed(delta: float, spread: float, paired: bool, level: float, power: float = POWER) -> int | None:
    """Seeds per value for a two-sided t-test at `level` to detect `delta` with `power`, where
    `spread` is the std over seeds of the paired differences (paired) or of each value's mean
    (unpaired, equal spread and seeds assumed). None: more than MAX_SEEDS, or no difference seen.
    For planning a new sweep: topping up finished runs to this many and testing again is not
    covered by the error rate."""
    if not delta or not spread or not math.isfinite(spread):
        return None
    n = np.arange(2, MAX_SEEDS + 1)
    df = n - 1 if paired else 2 * n - 2
    noncentrality = abs(delta) / spread * np.sqrt(n if paired else n / 2)
    critical = stats.t.ppf(1 - level / 2, df)
    reached = stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality) >= power
    return int(n[reached.argmax()]) if reached.any() else None


def t_interval(values: np.ndarray, level: float = ALPHA) -> tuple[float, float] | None:
    """The (1 - level) t interval of the mean of `values` (seeds); None with fewer than 2."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return None
    half = stats.t.ppf(1 - level / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


# ---------------------------------------------------------------------------------------------
# Two keys: the interaction


def interaction_tests(grid: np.ndarray, alpha: float = ALPHA) -> list[tuple]:
    """grid: (..., rows, columns, cells, seeds) outcomes. For each pair of rows (i, j) and pair of
    columns (a, b), the paired t-test over seeds of (i - j at a) - (i - j at b), over the cells and
    seeds where all four completed; Holm over the table's contrasts. Returns ((i, j), (a, b), dict of
    arrays: delta, low, high (at Holm's level), p (corrected), seeds)."""
    rows, columns = grid.shape[-4], grid.shape[-3]
    index = [(r, c) for r in combinations(range(rows), 2) for c in combinations(range(columns), 2)]
    found = []
    for (i, j), (a, b) in index:
        with np.errstate(invalid="ignore"):
            four = grid[..., i, a, :, :] - grid[..., i, b, :, :] - grid[..., j, a, :, :] + grid[..., j, b, :, :]
            per_seed, has = seed_means(four, np.isfinite(four))
        mean, var, n = _masked_mean_var(per_seed, has)
        with np.errstate(invalid="ignore", divide="ignore"):
            se = np.where((n >= 2) & (var > 1e-24), np.sqrt(var / n), np.nan)
        found.append((mean, se, n))
    if not found:
        return []
    raw = np.stack([_t(mean, se, n - 1.0) for mean, se, n in found], axis=-1)
    adjusted, levels = holm(raw), holm_levels(raw, alpha)
    out = []
    for column, (pair, (mean, se, n)) in enumerate(zip(index, found)):
        with np.errstate(invalid="ignore"):
            half = stats.t.ppf(1 - levels[..., column] / 2, np.maximum(n - 1, 1)) * se
        out.append((*pair, {"delta": mean, "low": mean - half, "high": mean + half, "p": adjusted[..., column],
                            "seeds": n}))
    return out
