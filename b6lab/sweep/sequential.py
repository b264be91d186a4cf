"""Sequential verdicts: compare a key's values seed by seed, and stop each comparison once it is decided.

A fixed-n t-test is only valid at the seed count chosen in advance; looking after every seed and
stopping when it "passes" makes false verdicts far more common than 5%. This module decides each
pair of values of a key from the seeds run so far, with an error rate that holds however often
the results are looked at, and says which grid points need another seed.

The method, for each pair of values (a, b), on the paired differences a - b over their common
seeds, in seed order, at every seed count n from `start` to `max`, reads the t statistic on the
normal scale, z = the normal quantile of |t|'s one-sided p-value (N(0, 1) at every n under no
difference; Jennison & Turnbull 2000, ch. 11, group-sequential t-tests), with tau = n / max:

- "worse" when z >= c tau^(0.35 - 1/2), Wang & Tsiatis's (1987) power family, strict at the
  first looks (2-3 degrees of freedom) and near Pocock's flat boundary later;
- stop for futility (binding: never "worse" afterwards) when z <= 0.8 effect sqrt(n) - a: z has
  fallen more than a below 80% of where the design effect would have it. `effect` is the
  standardized difference a fixed paired t-test of max/2 seeds detects with 80% power (`max` is
  the seed budget, "twice what a fixed design needs for the smallest difference that matters";
  with m pairs, the test's at alpha/m, as a fixed design with Bonferroni);
  a is set so that the design effect is still found 80% of the time. Where the boundaries meet
  (max 8: at 5 seeds; 12: 9; 20: 18; 40: not before max) every comparison is decided: the
  design ends there;
- c is calibrated by simulating 100,000 paths with no difference (the t path's law is the same
  for every spread, so one simulation holds for every pair): they reach "worse" before futility
  at most at the level, less two Monte-Carlo standard errors; a by simulating 40,000 at the
  design effect. The shape (0.35, 0.8) is the one of 100-odd searched with the fewest seeds at
  the design effect (docs/sweeps.md has the search and its numbers);
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
from scipy import optimize, special, stats

ALPHA = 0.05
POWER = 0.8  # at the design effect: the power the futility boundary is set to keep
NULL_PATHS = 100_000  # simulated paths with no difference: the "worse" boundaries' level
ALTERNATIVE_PATHS = 40_000  # at the design effect: the futility boundary's power
CALIBRATION_SEED = 23
METHOD = ("group-sequential paired t after every seed (Wang-Tsiatis efficacy and binding futility boundaries "
          "on the t statistic, calibrated by simulation), Holm across pairs; equivalence: anytime-valid t "
          "confidence sequence")


# ---------------------------------------------------------------------------------------------
# The design: boundaries for one (start, max, alpha, number of pairs)


@dataclass(frozen=True)
class Shape:
    """The boundaries' shape, on z, the normal quantile of the one-sided p-value of |t| at n seeds
    (exactly N(0, 1) at every look under no difference, about theta sqrt(n) + N(0, 1) at a
    standardized difference theta), with tau = n / max:

    - "worse" when z >= c tau^(efficacy - 1/2), from `first_efficacy` seeds on (Wang & Tsiatis
      1987: efficacy 0 is O'Brien-Fleming's shape, 1/2 Pocock's); c is calibrated to the level;
    - stop for futility when z <= slope * effect * sqrt(n) - a tau^(-curve): z has fallen behind
      where the design effect would have it (slope 1: its mean) by more than a, the more so early;
      a is set so that the design effect is found with probability POWER;
    - the design effect: the difference a fixed paired t-test of max / ratio seeds finds with POWER.
    """

    efficacy: float = 0.35
    slope: float = 0.8
    curve: float = 0.0
    first_efficacy: int = 0
    ratio: float = 2.0
    tilt: float = 0.0


SHAPE = Shape()


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


def z_of_t(t: np.ndarray, df) -> np.ndarray:
    """|t| with df degrees of freedom as the normal quantile of its one-sided p-value."""
    return -special.ndtri(special.stdtr(df, -np.abs(t)))


def t_of_z(z: np.ndarray, df) -> np.ndarray:
    return -special.stdtrit(df, special.ndtr(-z))


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
    shape: Shape
    effect: float  # the standardized difference the futility boundary keeps POWER at
    looks: np.ndarray  # seed counts start..max
    efficacy: np.ndarray  # (pairs, looks): "worse" when |t| >= it, at level alpha / j for j = 1..pairs (NaN: never)
    futility: np.ndarray  # (looks,): stop for futility when |t| <= it (NaN: never), binding
    power: float  # simulated, at the design effect and level alpha / pairs
    equivalence_multiplier: np.ndarray  # (looks,)


def simulated_z(effect: float, paths: int, looks: np.ndarray, rng) -> np.ndarray:
    """(paths, looks) z of paired differences N(effect, 1), signed by the mean's sign."""
    differences = effect + rng.standard_normal((paths, int(looks[-1])))
    sign = np.sign(np.cumsum(differences, axis=-1)[:, looks - 1])
    return sign * z_of_t(absolute_t(differences, looks), looks - 1)


@functools.lru_cache(maxsize=32)
def design(start: int, max: int, alpha: float = ALPHA, pairs: int = 1, shape: Shape = SHAPE) -> Design:
    if not (isinstance(start, (int, np.integer)) and start >= 2):
        raise ValueError(f"seeds.start: {start!r} is not accepted; a whole number >= 2 is (a t-test needs 2 seeds)")
    if not (isinstance(max, (int, np.integer)) and max >= start):
        raise ValueError(f"seeds.max: {max!r} is not accepted; a whole number >= seeds.start ({start}) is")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha: {alpha!r} is not accepted; a level between 0 and 0.5 is")
    looks = np.arange(start, max + 1)
    levels = np.array([alpha / j for j in range(1, pairs + 1)])
    effect = fixed_design_effect(builtins.max(2, int(max / shape.ratio)), alpha / pairs)  # `max`: the file's name
    rng = np.random.default_rng(CALIBRATION_SEED)
    boundaries = Boundaries(looks, effect, shape, np.abs(simulated_z(0.0, NULL_PATHS, looks, rng)),
                            simulated_z(effect, ALTERNATIVE_PATHS, looks, rng))
    offset = boundaries.offset_for_power(POWER, levels[-1])
    scale = boundaries.scales(offset, levels)
    df = looks - 1
    futility_z = boundaries.futility_z(offset)
    efficacy_t = t_of_z(scale[:, None] * boundaries.efficacy_z[None, :] + boundaries.tilt, df)
    futility_t = np.where(futility_z > 0, t_of_z(np.maximum(futility_z, 0), df), np.nan)
    # The mixture's width: the one that makes the interval narrowest at max seeds, where
    # equivalence (a narrow interval) is most often shown.
    narrowest = optimize.minimize_scalar(
        lambda g: min(float(confidence_multiplier(np.array(max), alpha, math.exp(g))), 1e9), bounds=(-8, 4),
        method="bounded")
    return Design(start, max, alpha, pairs, shape, effect, looks, efficacy_t, futility_t,
                  boundaries.power(offset, scale[-1]), confidence_multiplier(looks, alpha, math.exp(narrowest.x)))


class Boundaries:
    """The boundaries of one shape read on simulated z paths: null (|z|, no difference) and
    alternative (signed z at the design effect)."""

    def __init__(self, looks, effect, shape: Shape, null, alternative):
        self.looks, self.effect, self.shape = looks, effect, shape
        fraction = looks / looks[-1]
        self.efficacy_z = np.where(looks >= shape.first_efficacy, fraction ** (shape.efficacy - 0.5), np.nan)
        self.tilt = shape.tilt * effect * np.sqrt(looks)
        self.null, self.alternative = null, alternative
        with np.errstate(invalid="ignore"):
            self.null_ratio = np.nan_to_num((null - self.tilt) / self.efficacy_z, nan=-np.inf)
            self.alternative_ratio = np.nan_to_num((alternative - self.tilt) / self.efficacy_z, nan=-np.inf)
            self.alternative_either = np.nan_to_num((np.abs(alternative) - self.tilt) / self.efficacy_z, nan=-np.inf)

    def futility_z(self, offset: float) -> np.ndarray:
        fraction = self.looks / self.looks[-1]
        return self.shape.slope * self.effect * np.sqrt(self.looks) - offset * fraction ** (-self.shape.curve)

    def highest(self, ratio, z, offset):
        """Per path: the highest z / efficacy shape up to and including the look it stops for futility
        (a path at both boundaries at once is "worse": efficacy is read first)."""
        futile = first(np.abs(z) <= self.futility_z(offset))
        upto = np.arange(len(self.looks)) <= futile[:, None]
        return np.where(upto, ratio, -np.inf).max(axis=-1), futile

    def scales(self, offset: float, levels) -> np.ndarray:
        """The efficacy scale c per level: null paths reach it before futility at most at the level,
        less two Monte-Carlo standard errors (so the simulation's error errs on the safe side)."""
        highest = np.sort(self.highest(self.null_ratio, self.null, offset)[0])[::-1]
        scales = []
        for level in levels:
            allowed = level - 2 * math.sqrt(level * (1 - level) / len(highest))
            crossing = int(math.floor(allowed * len(highest)))  # paths allowed to reach the boundary
            scales.append(np.nextafter(highest[crossing], np.inf))
        return np.array(scales)

    def power(self, offset: float, scale: float) -> float:
        return float(np.mean(self.highest(self.alternative_ratio, self.alternative, offset)[0] >= scale))

    def seeds(self, offset: float, scale: float) -> float:
        """Mean seeds at the design effect."""
        futile = first(np.abs(self.alternative) <= self.futility_z(offset))
        worse = first(self.alternative_either >= scale)
        return float(self.looks[np.minimum(np.minimum(worse, futile), len(self.looks) - 1)].mean())

    def offset_for_power(self, power: float, level: float) -> float:
        """The futility offset a at which the design effect is found with `power` (plus two
        Monte-Carlo standard errors), at `level`; no futility (inf) when even that falls short."""
        target = power + 2 * math.sqrt(power * (1 - power) / len(self.alternative))
        found = lambda offset: self.power(offset, self.scales(offset, [level])[0])  # noqa: E731
        low, high = -10.0, 10.0 + self.shape.slope * self.effect * math.sqrt(self.looks[-1])
        if found(high) < target:
            return math.inf
        for _ in range(16):  # a larger offset: less futility, more power
            middle = (low + high) / 2
            low, high = (middle, high) if found(middle) < target else (low, middle)
        return high


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
