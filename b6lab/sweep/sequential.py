"""Sequential verdicts: compare a key's values seed by seed, and stop each comparison once it is decided.

A fixed-n t-test is only valid at the seed count chosen in advance; looking after every seed and
stopping when it "passes" makes false verdicts far more common than 5%. This module decides each
pair of values of a key from the seeds run so far, with an error rate that holds however often
the results are looked at, and says which grid points need another seed.

The method, for each pair of values (a, b), on the paired differences a - b over their common
seeds, in seed order, at every seed count n from `start` to `max`:

- the evidence is the scale-invariant likelihood ratio of the t-statistic: the Bayes factor for
  "the mean difference is +-effect spreads" against "it is 0", with the unknown spread integrated
  out under its right-Haar prior, which is the noncentral over the central t density at the
  observed t (Rushton 1950's sequential t-test; Perez-Ortiz, Lardy, de Heide & Grunwald 2024 show
  it is a test martingale under "no difference", whatever the spread). `effect` is the
  standardized difference a fixed paired t-test of max/2 seeds detects with 80% power: `max` is
  the seed budget, "twice what a fixed design needs for the smallest difference that matters";
- Wald's two boundaries on it: "worse" when it reaches the upper one, stop for futility ("no
  difference of that size") when it falls to beta/(1 - alpha) = 0.2/0.95 (Wald 1945). The upper
  one is calibrated exactly, by simulating 100,000 pairs with no difference: the t-statistics'
  path has the same law for every spread, so one simulation holds for every pair. The boundary
  keeps the chance that such a path reaches it before futility, at any seed count up to `max`,
  at the level (less two Monte-Carlo standard errors);
- across the pairs of a key, Holm's step-down over those levels (alpha/m, alpha/(m-1), ...,
  with m pairs): the family-wise chance of any false "worse" stays <= alpha over all looks;
- "equivalent" (when a margin is given): the anytime-valid confidence sequence for the mean
  difference (Lai 1976's normal-mixture t-sequence, level alpha) lies inside (-margin, margin).
  A true difference beyond the margin is called equivalent at most alpha of the time.

The decision is a function of the seed path, evaluated at every seed count up to the seeds
there are, so when the looks happen (as Ray trials finish, in batches, or once at the end)
changes nothing. The assumptions are those of the paired t-test: the paired differences of
per-seed results are normal with one spread per pair, and seeds are independent.
tests/test_sequential.py checks the error rates, power and seeds used by simulation.

No package fits as a dependency: savvi (0.3) has the mixture t-test used here for equivalence,
one observation at a time and without calibrated boundaries or futility; confseq's boundaries
assume a known or bounded spread; expectation needs Python 3.12 (b6lab supports 3.10).

A sweep with `seeds: {start, max}` uses it while it runs (seed_searcher.py: a Ray Tune Searcher
that queues a grid point's next seed only while a comparison it is in is undecided) and when it
is compared (sequential_sweep.py).
"""

from __future__ import annotations

import builtins
import functools
import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8  # of the fixed design whose effect the boundaries are tuned to
FUTILITY = math.log((1 - POWER) / (1 - ALPHA))  # Wald's lower boundary on the log likelihood ratio
CALIBRATION_PATHS = 100_000
CALIBRATION_SEED = 23
GRID = 2001  # points of r = sqrt(n) t / sqrt(n - 1 + t^2) in [0, sqrt(n)] where the ratio is tabulated
METHOD = ("sequential paired t (scale-invariant likelihood ratio, Wald boundaries calibrated by "
          "simulation), Holm across pairs; equivalence: anytime-valid t confidence sequence")


# ---------------------------------------------------------------------------------------------
# The design: boundaries for one (start, max, alpha, number of pairs)


def fixed_design_effect(seeds: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The standardized difference (mean / spread of the paired differences) a two-sided paired
    t-test at `alpha` with `seeds` seeds detects with `power`."""
    df = seeds - 1
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(effect):
        noncentrality = effect * math.sqrt(seeds)
        reached = stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)
        return np.nan_to_num(reached, nan=1.0) - power  # scipy's NaN: far in the tail, where power is 1

    return optimize.brentq(shortfall, 1e-6, 100.0)


def log_likelihood_ratio(t: np.ndarray, n: np.ndarray, effect: float) -> np.ndarray:
    """log of the t-statistic's density at mean difference +-effect spreads (half each) over its
    density at 0, with n seeds: the right-Haar Bayes factor of Perez-Ortiz et al. (2024)."""
    df = n - 1
    noncentrality = effect * np.sqrt(n)
    both = np.logaddexp(stats.nct.logpdf(t, df, noncentrality), stats.nct.logpdf(-t, df, noncentrality))
    return both - math.log(2) - stats.t.logpdf(t, df)


def confidence_multiplier(n: np.ndarray, alpha: float, mixing: float) -> np.ndarray:
    """The anytime-valid confidence sequence mean +- multiplier * s / sqrt(n) at level alpha: the
    t values where the normal-mixture Bayes factor (prior N(0, mixing * spread^2) on the mean)
    reaches 1/alpha (Lai 1976). Solved in closed form; inf where no t reaches it."""
    df = n - 1
    q = 1 + n * mixing
    k = (np.sqrt(q) / alpha) ** (2 / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        squared = np.where(k < q, df * (k - 1) / (1 - k / q), np.inf)
    return np.sqrt(squared)


@dataclass(frozen=True, eq=False)
class Design:
    start: int
    max: int
    alpha: float
    pairs: int
    effect: float  # standardized difference the boundaries are tuned to
    looks: np.ndarray  # seed counts start..max
    table: np.ndarray  # (looks, GRID): log likelihood ratio at r = grid * sqrt(n)
    reject: np.ndarray  # (pairs,): upper boundary at level alpha / j for j = 1..pairs
    equivalence_multiplier: np.ndarray  # (looks,)

    def log_ratio(self, u: np.ndarray) -> np.ndarray:
        """The log likelihood ratio at each look, from u = r^2 / n in [0, 1] (..., looks)."""
        grid = np.linspace(0.0, 1.0, GRID)
        return np.stack([np.interp(np.sqrt(u[..., i]), grid, self.table[i]) for i in range(len(self.looks))], -1)


@functools.lru_cache(maxsize=32)
def design(start: int, max: int, alpha: float = ALPHA, pairs: int = 1) -> Design:
    if not (isinstance(start, (int, np.integer)) and start >= 2):
        raise ValueError(f"seeds.start: {start!r} is not accepted; a whole number >= 2 is (a t-test needs 2 seeds)")
    if not (isinstance(max, (int, np.integer)) and max >= start):
        raise ValueError(f"seeds.max: {max!r} is not accepted; a whole number >= seeds.start ({start}) is")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha: {alpha!r} is not accepted; a level between 0 and 0.5 is")
    looks = np.arange(start, max + 1)
    effect = fixed_design_effect(builtins.max(2, max // 2), alpha)  # `max`: the sweep file's name
    # r = sqrt(n) t / sqrt(n - 1 + t^2) is bounded, and the ratio is smooth in it; the last point
    # stands in for t = infinity (all seeds' differences equal).
    fraction = np.linspace(0.0, 1.0, GRID)
    fraction[-1] = 1 - 1e-9
    n = looks[:, None]
    r = fraction[None, :] * np.sqrt(n)
    t = r * np.sqrt((n - 1) / (n - r**2))
    table = log_likelihood_ratio(t, n, effect)
    table = np.maximum.accumulate(table, axis=1)  # it rises with |t|; this only removes rounding
    # (The table's interpolation error changes only the boundary's shape, not its level: the
    # calibration reads the same table.)
    partial = Design(start, max, alpha, pairs, effect, looks, table, np.empty(0), np.empty(0))
    reject = calibrate(partial, [alpha / j for j in range(1, pairs + 1)])
    # The mixture's width: the one that makes the interval narrowest at max seeds, where
    # equivalence (a narrow interval) is most often shown.
    narrowest = optimize.minimize_scalar(
        lambda g: min(float(confidence_multiplier(np.array(max), alpha, math.exp(g))), 1e9), bounds=(-8, 4),
        method="bounded")
    mixing = narrowest.x
    return Design(start, max, alpha, pairs, effect, looks, table, reject,
                  confidence_multiplier(looks, alpha, math.exp(mixing)))


def calibrate(design: Design, levels: list[float]) -> np.ndarray:
    """Upper boundaries that paths with no difference reach before futility, by `max`, at most at
    each level, less two Monte-Carlo standard errors (so the simulation's error errs on the safe side)."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    highest = []  # per null path: the highest log ratio before futility (-inf: futile at once)
    for _ in range(CALIBRATION_PATHS // 10_000):
        differences = rng.standard_normal((10_000, design.max))
        ratio = design.log_ratio(evidence_u(differences, design.looks))
        futile = first(ratio <= FUTILITY)
        before = np.arange(len(design.looks)) < futile[:, None]
        highest.append(np.where(before, ratio, -np.inf).max(axis=-1))
    highest = np.sort(np.concatenate(highest))[::-1]
    boundaries = []
    for level in levels:
        allowed = level - 2 * math.sqrt(level * (1 - level) / len(highest))
        crossing = int(math.floor(allowed * len(highest)))  # paths allowed to reach the boundary
        boundaries.append(np.nextafter(highest[crossing], np.inf))
    return np.array(boundaries)


# ---------------------------------------------------------------------------------------------
# The procedure on arrays: one key's pairs in real use, thousands of simulated sweeps in tests


def first(condition: np.ndarray) -> np.ndarray:
    """Index along the last axis of the first True; the axis length where there is none."""
    return np.where(condition.any(axis=-1), condition.argmax(axis=-1), condition.shape[-1])


def evidence_u(differences: np.ndarray, looks: np.ndarray) -> np.ndarray:
    """u = (sum x)^2 / (n sum x^2) = t^2 / (n - 1 + t^2) at each look: the t-statistic as a number in
    [0, 1] (0 where every difference is 0: no evidence either way)."""
    total = np.cumsum(differences, axis=-1)[..., looks - 1]
    squares = np.cumsum(differences**2, axis=-1)[..., looks - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = total**2 / (looks * squares)
    return np.clip(np.nan_to_num(u, nan=0.0), 0.0, 1.0)


@dataclass
class Paths:
    """Arrays over (..., pairs); a look index i is the seed count design.looks[i], and an index
    equal to len(design.looks) means "not (yet)"."""

    worse_look: np.ndarray  # the look at which "worse" was decided
    futile_look: np.ndarray  # the look at which the "worse" test stopped for futility
    equivalent_look: np.ndarray  # the look at which equivalence was shown
    stop_look: np.ndarray  # the look from which the pair needs no more seeds
    sign: np.ndarray  # sign of the mean difference at the worse look (+1: the first value is worse)


def decide(differences: np.ndarray, design: Design, equivalence: float | None = None,
           seeds: np.ndarray | None = None) -> Paths:
    """differences: (..., pairs, max) paired differences in seed order, the higher the worse (+1
    means the pair's first value is worse); seeds: (..., pairs) how many of them there are (all by
    default): the path is only read up to there."""
    count = len(design.looks)
    looks = design.looks
    seeds = np.full(differences.shape[:-1], differences.shape[-1]) if seeds is None else np.asarray(seeds)
    seen = looks <= seeds[..., None]  # (..., pairs, looks)
    ratio = np.where(seen, design.log_ratio(evidence_u(differences, looks)), np.nan)
    futile = first(ratio <= FUTILITY)
    # First crossing of each Holm level's boundary before futility: (levels, ..., pairs).
    crossings = np.stack([np.where(first(ratio >= a) < futile, first(ratio >= a), count) for a in design.reject])
    # (a path that falls to the futility boundary first is never "worse" later: the boundaries
    # were calibrated with futility binding)
    pairs = differences.shape[-2]
    rejected = np.zeros(differences.shape[:-1], dtype=bool)
    for _ in range(pairs):  # Holm's step-down: each rejection lets the rest be tested at a larger level
        others = np.minimum(rejected.sum(axis=-1, keepdims=True), pairs - 1)  # r: rejected so far (all: any)
        level = pairs - others - 1  # the index of alpha / (m - r) in design.reject
        worse = np.take_along_axis(crossings, np.broadcast_to(level, rejected.shape)[None], axis=0)[0]
        rejected = worse < count
    totals = np.cumsum(differences, axis=-1)[..., looks - 1]
    sign = np.sign(np.take_along_axis(totals, np.minimum(worse, count - 1)[..., None], -1)[..., 0])

    stop = np.minimum(worse, futile)  # without a margin: decided, or futile
    equivalent = np.full(worse.shape, count)
    if equivalence is not None:
        mean = totals / looks
        squares = np.cumsum(differences**2, axis=-1)[..., looks - 1]
        spread = np.sqrt(np.maximum(squares - looks * mean**2, 0) / (looks - 1))
        half_width = design.equivalence_multiplier * spread / np.sqrt(looks)
        equivalent = first(seen & (np.abs(mean) + half_width < equivalence))
        # Equivalence is out of reach when, at the spread seen, even max seeds' interval around the
        # mean seen would not fit inside the margin. This only guides where seeds go: the error
        # control is the confidence sequence's, which holds at any stopping time.
        out_of_reach = np.abs(mean) + design.equivalence_multiplier[-1] * spread / math.sqrt(design.max) >= equivalence
        both_futile = seen & (np.arange(count) >= futile[..., None]) & out_of_reach
        stop = np.minimum(np.minimum(worse, equivalent), first(both_futile))
    return Paths(worse, futile, equivalent, np.minimum(stop, count - 1), sign)


# ---------------------------------------------------------------------------------------------
# One key's results


@dataclass
class PairDecision:
    first: object  # a value of the key
    second: object
    decision: str  # "worse" | "equivalent" | "undecided"
    worse: object | None  # which of the two is worse (higher metric), when decision == "worse"
    reason: str  # for undecided: "needs seeds" | "futile" | "max reached" | "too few seeds"
    seeds: int  # common seeds compared
    decided_at: int | None  # the seed count of the look that decided it (or stopped it for futility)
    mean_difference: float | None  # first - second, over the common seeds
    interval: tuple[float, float] | None  # anytime-valid (1 - alpha) confidence sequence of it, now
    # (None: too few seeds for a finite one)


@dataclass
class SequentialResult:
    pairs: list[PairDecision]
    needs_seeds: list  # values that an undecided comparison needs another seed of
    start: int
    max: int
    alpha: float
    equivalence: float | None
    effect: float  # the standardized difference the boundaries are tuned to
    method: str = METHOD


def analyse(per_seed: dict, start: int, max: int, equivalence: float | None = None,
            alpha: float = ALPHA) -> SequentialResult:
    """Each pair of values of one key, decided from the seeds so far.

    per_seed: value -> {seed: final metric (lower is better), averaged over the other keys}.
    A pair is compared on the seeds both values have, in seed order, up to `max`."""
    if equivalence is not None and not (isinstance(equivalence, (int, float)) and equivalence > 0):
        raise ValueError(f"equivalence: {equivalence!r} is not accepted; a positive margin (e.g. 0.01) is")
    values = list(per_seed)
    pairs = list(combinations(values, 2))
    plan = design(start, max, alpha, builtins.max(1, len(pairs)))
    if not pairs:  # one value: nothing to compare
        return SequentialResult([], [], start, max, alpha, equivalence, plan.effect)
    common = [sorted(set(per_seed[a]) & set(per_seed[b]))[:max] for a, b in pairs]
    differences = np.zeros((len(pairs), max))
    for row, ((a, b), seeds) in enumerate(zip(pairs, common)):
        differences[row, :len(seeds)] = [per_seed[a][s] - per_seed[b][s] for s in seeds]
    lengths = np.array([len(seeds) for seeds in common], dtype=int)
    path = decide(differences, plan, equivalence, lengths)
    decisions, needs = [], set()
    for row, (a, b) in enumerate(pairs):
        n = int(lengths[row])
        seen = int(np.sum(plan.looks <= n))  # looks so far
        mean = float(np.mean(differences[row, :n])) if n else None
        interval = None
        if seen and math.isfinite(plan.equivalence_multiplier[seen - 1]):
            half = plan.equivalence_multiplier[seen - 1] * np.std(differences[row, :n], ddof=1) / math.sqrt(n)
            interval = (mean - float(half), mean + float(half))
        look = lambda index: int(plan.looks[index])  # noqa: E731
        worse = None
        # The first decision reached is the one kept: the pair got no seeds after it.
        if path.worse_look[row] < seen and path.worse_look[row] <= path.equivalent_look[row]:
            decision, reason, at = "worse", "", look(path.worse_look[row])
            worse = a if path.sign[row] > 0 else b
        elif path.equivalent_look[row] < seen:
            decision, reason, at = "equivalent", "", look(path.equivalent_look[row])
        elif n < start:
            decision, reason, at = "undecided", "too few seeds", None
        elif path.stop_look[row] < seen and look(path.stop_look[row]) < max:
            decision, reason, at = "undecided", "futile", look(path.stop_look[row])
        elif n >= max:
            decision, reason, at = "undecided", "max reached", None
        else:
            decision, reason, at = "undecided", "needs seeds", None
        if reason in ("needs seeds", "too few seeds"):
            needs.update(v for v in (a, b) if len(per_seed[v]) <= n)  # those without the next common seed
        decisions.append(PairDecision(a, b, decision, worse, reason, n, at, mean, interval))
    return SequentialResult(decisions, [v for v in values if v in needs], start, max, alpha, equivalence, plan.effect)
