"""Sequential verdicts: compare a key's values seed by seed, and stop each comparison once it is decided.

A fixed-n t-test is only valid at the seed count chosen in advance; looking after every seed and
stopping when it "passes" makes false verdicts far more common than 5%. This module decides each
pair of values of a key from the seeds run so far, with an error rate that holds however often
the results are looked at, and says which grid points need another seed.

The method, for each pair of values (a, b), on the paired differences a - b over their common
seeds, in seed order, at every seed count n from `start` to `max`: a group-sequential paired
t-test looking after every seed (Jennison & Turnbull 2000, ch. 11), which says "worse" when |t|
reaches an upper boundary and stops for futility (binding: never "worse" afterwards) when |t|
falls below a lower one. The boundaries are not picked from a family: they are the test with the
fewest seeds on average at the design effect among all tests at the level with 80% power there
whose error rates are the same at every spread, computed by backward induction over t
(optimal_boundaries.py). `effect` is the standardized difference a fixed paired t-test of max/2
seeds detects with 80% power (`max` is the seed budget, "twice what a fixed design needs for the
smallest difference that matters"; with m pairs, the test's at alpha/m, as a fixed design with
Bonferroni would be).

- The optimum's "worse" boundary, on the normal scale of |t| (z, the normal quantile of its
  one-sided p-value: N(0, 1) at every look under no difference), is scaled by simulating 100,000
  paths with no difference (the t path's law is the same for every spread, so one simulation
  holds for every pair): they reach it before futility at most at the level, less two
  Monte-Carlo standard errors. 40,000 paths at the design effect check the power (at least 80%,
  plus two errors; the grid is asked for more where it falls short);
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

from b6lab.sweep.optimal_boundaries import optimal_test, t_of_z, z_of_t

ALPHA = 0.05
POWER = 0.8  # at the design effect: the power the boundaries are built to have
NULL_PATHS = 100_000  # simulated paths with no difference: the "worse" boundaries' level
ALTERNATIVE_PATHS = 40_000  # at the design effect: the check of that power
CALIBRATION_SEED = 23
METHOD = ("group-sequential paired t after every seed (the boundaries with the fewest seeds at the design effect, "
          "by backward induction on the t statistic, with binding futility, their level set by simulation), Holm "
          "across pairs; equivalence: anytime-valid t confidence sequence")


# ---------------------------------------------------------------------------------------------
# The design: boundaries for one (start, max, alpha, number of pairs)


MAX_OVER_FIXED = 2  # `max` is about twice the seeds a fixed design needs: the design effect is that of max / 2
GRID_POWER_MARGIN = 0.01  # the grid's optimum is asked this much more power: simulated, it finds 0.004-0.012 less


def fixed_design_power(effect: float, seeds: int, alpha: float = ALPHA) -> float:
    """The chance a two-sided paired t-test at `alpha` with `seeds` seeds finds a standardized
    difference `effect` (mean / spread of the paired differences)."""
    df = seeds - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = effect * math.sqrt(seeds)
    reached = stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)
    return float(np.nan_to_num(reached, nan=1.0))  # scipy's NaN: far in the tail, where power is 1


def fixed_design_effect(seeds: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The standardized difference a two-sided paired t-test at `alpha` with `seeds` seeds detects
    with `power`."""
    return optimize.brentq(lambda effect: fixed_design_power(effect, seeds, alpha) - power, 1e-6, 1e4)


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
    effect: float  # the standardized difference the boundaries are optimal at, found with POWER
    looks: np.ndarray  # seed counts start..max
    efficacy: np.ndarray  # (pairs, looks): "worse" when |t| >= it, at level alpha / j for j = 1..pairs (inf: never)
    futility: np.ndarray  # (looks,): stop for futility when |t| <= it (-inf: never), binding
    power: float  # simulated, at the design effect and level alpha / pairs
    equivalence_multiplier: np.ndarray  # (looks,)


def simulated_z(effect: float, paths: int, looks: np.ndarray, rng) -> np.ndarray:
    """(paths, looks) z of paired differences N(effect, 1), signed by the mean's sign."""
    differences = effect + rng.standard_normal((paths, int(looks[-1])))
    sign = np.sign(np.cumsum(differences, axis=-1)[:, looks - 1])
    return sign * z_of_t(absolute_t(differences, looks), looks - 1)


@functools.lru_cache(maxsize=32)
def design(start: int, max: int, alpha: float = ALPHA, pairs: int = 1) -> Design:
    if not (isinstance(start, (int, np.integer)) and start >= 2):
        raise ValueError(f"seeds.start: {start!r} is not accepted; a whole number >= 2 is (a t-test needs 2 seeds)")
    if not (isinstance(max, (int, np.integer)) and max >= start):
        raise ValueError(f"seeds.max: {max!r} is not accepted; a whole number >= seeds.start ({start}) is")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha: {alpha!r} is not accepted; a level between 0 and 0.5 is")
    looks = np.arange(start, max + 1)
    df = looks - 1
    levels = np.array([alpha / j for j in range(1, pairs + 1)])
    effect = fixed_design_effect(builtins.max(2, int(max / MAX_OVER_FIXED)), alpha / pairs)  # `max`: the file's name
    rng = np.random.default_rng(CALIBRATION_SEED)
    null = np.abs(simulated_z(0.0, NULL_PATHS, looks, rng))
    alternative = simulated_z(effect, ALTERNATIVE_PATHS, looks, rng)  # signed: "worse" the right way round
    wanted = POWER + 2 * math.sqrt(POWER * (1 - POWER) / ALTERNATIVE_PATHS)  # in simulation, plus two errors
    asked = wanted + GRID_POWER_MARGIN
    for _ in range(2):  # where the grid's optimum falls short in simulation, ask it for the difference once more
        optimal = optimal_test(start, max, effect, levels[-1], builtins.min(asked, 0.999))
        # The optimum's "worse" boundary, on the z scale, is the shape; one scale per Holm level is
        # set by simulation, which makes each level exact (the grid's is approximate) and keeps
        # the levels nested (a pair "worse" at alpha / j is "worse" at every larger level).
        shape = z_of_t(optimal.efficacy_t, df)
        futility_z = np.where(np.isfinite(optimal.futility_t), z_of_t(optimal.futility_t, df), -np.inf)
        null_futile, alternative_futile = first(null <= futility_z), first(np.abs(alternative) <= futility_z)
        scale = np.array([calibrated_scale(null / shape, null_futile, level) for level in levels])
        power = float(np.mean(highest_before(alternative / shape, alternative_futile) >= scale[-1]))
        if power >= wanted or optimal.power < asked - 1e-3:  # enough, or no more to be had
            break
        asked += wanted - power
    efficacy_t = t_of_z(scale[:, None] * shape[None, :], df)
    # The mixture's width: the one that makes the interval narrowest at max seeds, where
    # equivalence (a narrow interval) is most often shown.
    narrowest = optimize.minimize_scalar(
        lambda g: min(float(confidence_multiplier(np.array(max), alpha, math.exp(g))), 1e9), bounds=(-8, 4),
        method="bounded")
    return Design(start, max, alpha, pairs, effect, looks, efficacy_t, optimal.futility_t, power,
                  confidence_multiplier(looks, alpha, math.exp(narrowest.x)))


def highest_before(ratio: np.ndarray, futile: np.ndarray) -> np.ndarray:
    """Per path: the highest z / shape up to and including the look it stops for futility (a path
    at both boundaries at once is "worse": efficacy is read first)."""
    upto = np.arange(ratio.shape[-1]) <= futile[:, None]
    return np.where(upto, ratio, -np.inf).max(axis=-1)


def calibrated_scale(null_ratio: np.ndarray, futile: np.ndarray, level: float) -> float:
    """The scale of the "worse" shape that null paths reach before futility at most at `level`,
    less two Monte-Carlo standard errors (so the simulation's error errs on the safe side)."""
    highest = np.sort(highest_before(null_ratio, futile))[::-1]
    allowed = level - 2 * math.sqrt(level * (1 - level) / len(highest))
    return float(np.nextafter(highest[int(math.floor(allowed * len(highest)))], np.inf))


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


def absolute_t(differences: np.ndarray, looks: np.ndarray) -> np.ndarray:
    """|t| of the paired differences at each look (inf where they are all equal and not 0, 0 where all 0)."""
    u = evidence_u(differences, looks)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((looks - 1) * u / (1 - u))


@dataclass
class Paths:
    """Arrays over (..., pairs); a look index i is the seed count design.looks[i], and an index
    equal to len(design.looks) means "not (yet)"."""

    worse_look: np.ndarray  # the look at which "worse" was decided
    futile_look: np.ndarray  # the look at which the "worse" test stopped for futility
    equivalent_look: np.ndarray  # the look at which equivalence was shown
    stop_look: np.ndarray  # the look from which the pair needs no more seeds
    sign: np.ndarray  # sign of the mean difference at the worse look (+1: the first value is worse)
    level: np.ndarray  # the Holm level each pair is tested at: an index into design.efficacy


def decide(differences: np.ndarray, design: Design, equivalence: float | None = None,
           seeds: np.ndarray | None = None) -> Paths:
    """differences: (..., pairs, max) paired differences in seed order, the higher the worse (+1
    means the pair's first value is worse); seeds: (..., pairs) how many of them there are (all by
    default): the path is only read up to there."""
    count = len(design.looks)
    looks = design.looks
    seeds = np.full(differences.shape[:-1], differences.shape[-1]) if seeds is None else np.asarray(seeds)
    seen = looks <= seeds[..., None]  # (..., pairs, looks)
    t = np.where(seen, absolute_t(differences, looks), np.nan)
    futile = first(t <= design.futility)
    # First crossing of each Holm level's boundary, up to the futility stop: (levels, ..., pairs).
    # (a path that stops for futility is never "worse" later: the boundaries were calibrated with
    # futility binding)
    crossings = np.stack([np.where(first(t >= b) <= futile, first(t >= b), count) for b in design.efficacy])
    pairs = differences.shape[-2]
    rejected = np.zeros(differences.shape[:-1], dtype=bool)
    for _ in range(pairs):  # Holm's step-down: each rejection lets the rest be tested at a larger level
        others = np.minimum(rejected.sum(axis=-1, keepdims=True), pairs - 1)  # r: rejected so far (all: any)
        level = pairs - others - 1  # the index of alpha / (m - r) in design.efficacy
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
    return Paths(worse, futile, equivalent, np.minimum(stop, count - 1), sign, np.broadcast_to(level, worse.shape))


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
    interval: tuple[float, float] | None  # the interval the verdict rests on (repeated_interval);
    # None: too few seeds for a finite one


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
        if decision == "equivalent":  # shown by the confidence sequence: that is its interval
            read = path.equivalent_look[row]
            interval = _interval(differences[row, :look(read)], plan.equivalence_multiplier[read])
        elif seen:  # the repeated interval at the look that decided (or stopped) it, else the last
            read = {"worse": path.worse_look[row], "futile": path.stop_look[row]}.get(
                decision if decision == "worse" else reason, seen - 1)
            interval = _interval(differences[row, :look(read)], plan.efficacy[path.level[row], read])
        else:
            interval = None
        if reason in ("needs seeds", "too few seeds"):
            needs.update(v for v in (a, b) if len(per_seed[v]) <= n)  # those without the next common seed
        decisions.append(PairDecision(a, b, decision, worse, reason, n, at, mean, interval))
    return SequentialResult(decisions, [v for v in values if v in needs], start, max, alpha, equivalence, plan.effect)


def _interval(differences: np.ndarray, multiplier: float) -> tuple[float, float] | None:
    """mean +- multiplier * s / sqrt(n) of the paired differences; None where it is not finite.

    With the efficacy boundary of the look (at the pair's Holm level) as the multiplier, this is
    the repeated confidence interval of the group-sequential test (Jennison & Turnbull 2000, ch. 9):
    it excludes 0 exactly when that look's |t| crossed the boundary, so it never contradicts the
    verdict beside it. Its coverage is the design's level at no difference; elsewhere it is
    approximate, since the boundaries were calibrated with futility binding and under the null."""
    n = len(differences)
    if n < 2 or not math.isfinite(multiplier):
        return None
    mean = float(np.mean(differences))
    half = float(multiplier * np.std(differences, ddof=1) / math.sqrt(n))
    return (mean - half, mean + half)


def simulated_differences(means, spreads, seeds: int, draws: int, rng) -> np.ndarray:
    """(draws, pairs, seeds) paired differences (first minus second) of every pair of values, each
    value's result at a seed N(means[v], spreads[v]) plus a seed effect N(0, 2^2) shared by all
    values (which pairing removes). For the simulations in tests/test_sequential.py and
    benchmarks/sequential_seeds.py."""
    means, spreads = np.asarray(means, float), np.asarray(spreads, float)
    results = means[:, None] + spreads[:, None] * rng.standard_normal((draws, len(means), seeds))
    results += 2.0 * rng.standard_normal((draws, 1, seeds))
    return np.stack([results[:, a] - results[:, b] for a, b in combinations(range(len(means)), 2)], axis=1)


def simulated_sweep(means, spreads, start: int, max: int, rng) -> tuple[SequentialResult, list[int]]:
    """A sweep of one key on simulated results, as `b6lab sweep` runs it: `start` seeds of every
    value, then one more seed of each value that analyse() asks for, until none is asked for.
    Value v's result at a seed is N(means[v], spreads[v]) plus a seed effect N(0, 1) shared by all
    values (which pairing removes). Returns the last verdict and each value's seeds. For the
    simulations in tests/test_sequential.py and benchmarks/sequential_seeds.py."""
    results = np.asarray(means)[:, None] + np.asarray(spreads)[:, None] * rng.standard_normal((len(means), max))
    results += rng.standard_normal(max)
    seeds = [start] * len(means)
    while True:
        verdict = analyse({v: {s: results[v, s] for s in range(seeds[v])} for v in range(len(means))}, start, max)
        if not verdict.needs_seeds:
            return verdict, seeds
        for value in verdict.needs_seeds:
            seeds[value] += 1
