"""Ladders: every arm at every model size, and whether the gap between arms holds as the model grows.

A one-scale ablation answers "which is better here", not "which is better at the size I care
about": DataDecide (Magnusson et al. 2025) found the ranking at one small scale predicts the
winner at a larger one only about 80% of the time. A ladder runs every arm (a value of the
compared key) at several rungs (model sizes, each with its own token budget) on the same seeds,
and this module says, from the final losses alone, how each arm scales and whether the gap between
two arms grows, shrinks or flips with compute.

The input is `results[arm][seed][compute] = final loss`, compute in FLOPs (6·N·D or measured, as
the caller gives it). A run that diverged (inf) or is missing is left out and counted.

**Per arm: loss against compute.** With 4 or more rungs, the saturating power law of Kaplan et al.
(2020) with the irreducible term of Hoffmann et al. (2022),

    L(C) = E + A · C^-alpha,        E >= 0, A >= 0, 0.01 <= alpha <= 2,

by least squares on the rungs' mean losses over seeds; with 2-3 rungs (three points cannot pin
three parameters) the log-linear L = a + b · log10 C, and the result says which (`form`). The
power law is linear in (E, A) once alpha is fixed, so the fit profiles alpha out (separable least
squares, Golub & Pereyra 1973): closed-form (E, A) on a grid of alpha, then golden-section search
around the best grid point. It gives scipy's `curve_fit` answer (tests/test_ladder.py checks) but
runs a thousand bootstrap refits of every arm as one array operation, where curve_fit would loop.

**Seed-bootstrap intervals.** One seed's runs share their data order, so their losses across
rungs are correlated: the bootstrap resamples whole seeds (each seed's losses at every rung stay
together), B = 1000 times, refits, and reports percentile intervals of the parameters and of the
predictions. When arms ran the same seeds they draw the same seeds in every replicate, so a
difference between their curves is resampled paired. Plain percentile intervals are too narrow
with few seeds (85-89% at 6-8 seeds, measured): the bootstrap's spread is (n - 1)/n of the true
one and it has normal, not t, tails. The intervals are Hesterberg's (2015) expanded percentile
intervals, which correct both (93-95% from 6 seeds; 84-91% at 4, where the interval rests on the
bootstrap's extremes). The fitted curves describe; the tests below do not rest on them.

**Per pair of arms: the gap and its trend, with the seed as the unit.**

- the gap at each rung: a - b, the paired t-test over the seeds both ran there (Welch's with Hsu's
  degrees of freedom where they share fewer than 2), i.e. `stats.pair_test`, 95% interval;
- whether the gap changes with scale (the arm x log-compute interaction): each seed's gap at the
  rungs both arms ran, its least-squares slope against log10 C (the change in gap per 10x
  compute), then the t-test over seeds of those slopes (`stats.pair_test` again; Welch–Hsu on each
  arm's per-seed slopes where the arms share fewer than 2 seeds). Why this test: under "the gap
  does not depend on scale" every seed's slope has mean 0 whatever the noise does within a seed,
  correlated across rungs (shared data order) or larger at some rungs than others, so the t-test
  over independent seeds is valid at n - 1 degrees of freedom. A regression over all
  (rung, seed) runs treated as independent would be pseudo-replication: its p-values are too
  small when a seed's runs move together. The test has power against a gap with a linear trend in
  log C, not one that rises and falls back. With more than two arms the slopes' p-values are
  corrected with Holm over the pairs and each slope's interval is drawn at Holm's level for it, so
  an interval excludes 0 exactly when the corrected test rejects (as `stats.judge` does);
- the crossover: where the gap's mean line in log10 C reaches 0, with Fieller's interval for that
  ratio (Fieller 1954; the exact interval for -intercept/slope under normal seed noise). It is
  bounded only when the slope is clearly nonzero at the 5% level; otherwise it is reported as
  unbounded (no crossover can be placed). Its position is labelled: within the ladder, or beyond
  it (an extrapolation);
- the gap extrapolated to 10x the largest rung's compute, from each seed's line, with its t
  interval over seeds: an extrapolation, valid only if the gap stays linear in log C past the
  last rung. Beside it, the difference of the two fitted curves there with its bootstrap interval.

Assumptions: seeds are independent and chosen before looking; a seed's per-rung noise may be
correlated and unequal across rungs (the slope test does not care), but the per-seed slopes'
mean is roughly normal (t-tests are robust to moderate departures); every arm at a rung got the
same compute; the rungs were chosen before looking. Its error rates, checked by simulation in
tests/test_ladder.py: the interaction test's false "the gap changes" rate stays at 5% (paired and
not, seed effects shared and not, 3 arms with Holm); the crossover and the 10x gap's intervals
cover the truth at about 95% when the gap is linear in log C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from b6lab.sweep.stats import ALPHA, holm, holm_levels, pair_test, t_interval

POWER_LAW_MIN_RUNGS = 4  # three points cannot pin E, A and alpha
EXPONENT_RANGE = (0.01, 2.0)  # bounds on alpha: language-model exponents are ~0.05-0.5
EXPONENT_GRID = np.geomspace(*EXPONENT_RANGE, 48)
GOLDEN_STEPS = 25  # the bracket shrinks by 0.618 per step: 25 steps pin alpha to ~1e-6 of itself
BOOTSTRAP = 1000
BOOTSTRAP_MIN_SEEDS = 6  # the expanded percentile intervals reach ~95% from here (tests/test_ladder.py)
EXTRAPOLATE = 10.0  # the gap is extrapolated to this multiple of the largest rung's compute
BAND_POINTS = 60  # points of the plotted band across the ladder; a third as many beyond it


# ---------------------------------------------------------------------------------------------
# The fits, on arrays: y (..., rungs) losses at log10 compute x (rungs,); weight 0 where missing


def _power_law_at(exponent, x, y, weight):
    """Least-squares E >= 0, A >= 0 of y = E + A·10^(-exponent·x) for each exponent (..., ) and its SSE."""
    z = 10.0 ** (-exponent[..., None] * x)
    sw, sz, szz = weight.sum(-1), (weight * z).sum(-1), (weight * z * z).sum(-1)
    sy, szy = (weight * y).sum(-1), (weight * z * y).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        amplitude = (sw * szy - sz * sy) / (sw * szz - sz ** 2)
        floor = (sy - amplitude * sz) / sw
        flat = ~(amplitude > 0)  # loss not falling with compute: the best bounded fit is a constant
        floor, amplitude = np.where(flat, sy / sw, floor), np.where(flat, 0.0, amplitude)
        below_zero = floor < 0  # E >= 0: the loss cannot fall below zero
        floor, amplitude = np.where(below_zero, 0.0, floor), np.where(below_zero, szy / szz, amplitude)
    sse = (weight * (y - floor[..., None] - amplitude[..., None] * z) ** 2).sum(-1)
    return floor, amplitude, sse


def fit_power_law(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> dict[str, np.ndarray]:
    """L = E + A·10^(-alpha·x) over the last axis (x: log10 compute minus the smallest rung's, so A is
    the reducible loss at the smallest rung). Returns E, A_ref, alpha, each (...,)."""
    y = np.where(weight > 0, y, 0.0)
    batch = y.shape[:-1]
    grid = np.broadcast_to(EXPONENT_GRID, batch + EXPONENT_GRID.shape)
    sse = _power_law_at(grid, x, y[..., None, :], weight[..., None, :])[2]
    best = np.nanargmin(np.where(np.isfinite(sse), sse, np.inf), axis=-1)
    low = EXPONENT_GRID[np.maximum(best - 1, 0)]
    high = EXPONENT_GRID[np.minimum(best + 1, EXPONENT_GRID.size - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(GOLDEN_STEPS):  # the profile SSE is smooth and, within one grid cell, unimodal
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        left_better = _power_law_at(left, x, y, weight)[2] <= _power_law_at(right, x, y, weight)[2]
        low, high = np.where(left_better, low, left), np.where(left_better, right, high)
    exponent = (low + high) / 2
    floor, amplitude, _ = _power_law_at(exponent, x, y, weight)
    return {"E": floor, "A_ref": amplitude, "alpha": exponent}


def fit_log_linear(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> dict[str, np.ndarray]:
    """L = a + b·x by least squares over the last axis (x: log10 compute). Returns a, b."""
    slope, intercept = _line(x, np.where(weight > 0, y, 0.0), weight > 0)
    return {"a": intercept, "b": slope}


def _line(x, y, mask):
    """Least-squares slope and intercept (at x = 0) of y on x over the last axis where mask holds;
    NaN with fewer than 2 distinct x."""
    n = mask.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_mean = np.where(mask, x, 0.0).sum(-1) / n
        y_mean = np.where(mask, y, 0.0).sum(-1) / n
        dx = np.where(mask, x - x_mean[..., None], 0.0)
        sxx = (dx ** 2).sum(-1)
        slope = np.where(sxx > 1e-12, (dx * np.where(mask, y, 0.0)).sum(-1) / sxx, np.nan)
    return slope, y_mean - slope * x_mean


def predict(form: str, params: dict[str, np.ndarray], x_ref: float, x: np.ndarray) -> np.ndarray:
    """The fitted loss at log10 compute x (points,): (..., points)."""
    if form == "power law":
        z = 10.0 ** (-params["alpha"][..., None] * (x - x_ref))
        return params["E"][..., None] + params["A_ref"][..., None] * z
    return params["a"][..., None] + params["b"][..., None] * x


def fit_curves(log_compute: np.ndarray, loss: np.ndarray, form: str) -> dict[str, np.ndarray]:
    """Fit each (..., seeds, rungs) ladder's per-rung mean over seeds with `form`."""
    has = np.isfinite(loss)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(has, loss, 0.0).sum(-2) / has.sum(-2)
    weight = np.isfinite(mean).astype(float)
    if form == "power law":
        return fit_power_law(log_compute - log_compute[0], mean, weight)
    return fit_log_linear(log_compute, mean, weight)


def resample_seeds(loss: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(arms, seeds, rungs) -> (draws, arms, seeds, rungs): each arm's seeds drawn with replacement,
    whole seeds (all rungs of a seed together); arms with the same seeds draw the same ones."""
    arms, seeds, _ = loss.shape
    position = rng.random((draws, seeds))  # shared by all arms: the same seeds when arms share them
    out = np.full((draws,) + loss.shape, np.nan)
    for arm in range(arms):
        own = np.flatnonzero(np.isfinite(loss[arm]).any(-1))
        if own.size:
            picked = own[np.minimum((position[:, :own.size] * own.size).astype(int), own.size - 1)]
            out[:, arm, :own.size] = loss[arm][picked]
    return out


# ---------------------------------------------------------------------------------------------
# A pair of arms: the gap at each rung, its trend in log compute, the crossover, the extrapolation


def _seed_lines(x, a, b):
    """Each seed's least-squares line of each arm's loss against log10 compute, as (slope per 10x,
    value at log10 C = 0) pairs of (..., seeds) arrays, one per arm: over the rungs both arms ran
    for that seed, so that a - b is the seed's gap line; over each arm's own rungs where fewer than
    2 seeds have 2 or more rungs in common (the arms ran different seeds: nothing to pair)."""
    common = np.isfinite(a) & np.isfinite(b)
    pairable = (common.sum(-1) >= 2).sum(-1) >= 2
    lines = []
    for own in (a, b):
        mask = np.where(pairable[..., None, None], common, np.isfinite(own))
        lines.append(_line(x, own, mask))
    return lines


def gap_trend(log_compute: np.ndarray, a: np.ndarray, b: np.ndarray, x_far: float, alpha: float = ALPHA) -> dict:
    """a, b: (..., seeds, rungs) losses of two arms (NaN: missing). Returns arrays (...,): slope (the
    gap's change per 10x compute), se, df, p, paired, seeds; the gap at x_far (far, far_low,
    far_high: its 1 - alpha t interval); the crossover's log10 compute (cross, cross_low, cross_high:
    Fieller's 1 - alpha interval, NaN where unbounded)."""
    centre = float(log_compute.mean())
    (slope_a, at0_a), (slope_b, at0_b) = _seed_lines(log_compute, a, b)
    with np.errstate(invalid="ignore"):
        slope = pair_test(slope_a[..., None, :], slope_b[..., None, :], alpha)
        far = pair_test((at0_a + slope_a * x_far)[..., None, :], (at0_b + slope_b * x_far)[..., None, :], alpha)
        mid_a, mid_b = at0_a + slope_a * centre, at0_b + slope_b * centre
    far_low, far_high = far.interval(np.full(far.delta.shape, alpha))
    cross, cross_low, cross_high = _fieller_crossover(mid_a, slope_a, mid_b, slope_b, slope.paired, alpha)
    return {"slope": slope.delta, "se": slope.se, "df": slope.df, "p": slope.p, "paired": slope.paired,
            "seeds": slope.seeds, "far": far.delta, "far_low": far_low, "far_high": far_high,
            "cross": centre + cross, "cross_low": centre + cross_low, "cross_high": centre + cross_high}


def _fieller_crossover(mid_a, slope_a, mid_b, slope_b, paired, alpha):
    """theta = -gap(centre) / slope, where the gap's line reaches 0, and Fieller's interval: the theta
    for which |m0 + theta·m1| <= t·se(m0 + theta·m1), a quadratic in theta, bounded when the slope is
    clearly nonzero. Paired: from each seed's differences; else each arm's covariance over its own
    seeds (df min(n_a, n_b) - 1, as the Welch–Hsu test)."""
    def moments(mid, slope, mask):
        n = mask.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            m0 = np.where(mask, mid, 0).sum(-1) / n
            m1 = np.where(mask, slope, 0).sum(-1) / n
            d0, d1 = np.where(mask, mid - m0[..., None], 0), np.where(mask, slope - m1[..., None], 0)
            scale = 1 / (n * (n - 1))  # covariance of the means
            return m0, m1, (d0 * d0).sum(-1) * scale, (d0 * d1).sum(-1) * scale, (d1 * d1).sum(-1) * scale, n

    both = np.isfinite(mid_a) & np.isfinite(mid_b) & np.isfinite(slope_a) & np.isfinite(slope_b)
    pm0, pm1, pv00, pv01, pv11, pn = moments(mid_a - mid_b, slope_a - slope_b, both)
    a_stats = moments(mid_a, slope_a, np.isfinite(mid_a) & np.isfinite(slope_a))
    b_stats = moments(mid_b, slope_b, np.isfinite(mid_b) & np.isfinite(slope_b))
    wm0, wm1 = a_stats[0] - b_stats[0], a_stats[1] - b_stats[1]
    wv00, wv01, wv11 = (a_stats[i] + b_stats[i] for i in (2, 3, 4))
    m0, m1 = np.where(paired, pm0, wm0), np.where(paired, pm1, wm1)
    v00, v01, v11 = np.where(paired, pv00, wv00), np.where(paired, pv01, wv01), np.where(paired, pv11, wv11)
    df = np.where(paired, pn - 1, np.minimum(a_stats[5], b_stats[5]) - 1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t2 = scipy_stats.t.ppf(1 - alpha / 2, np.maximum(df, 1)) ** 2
        theta = -m0 / m1
        quad_a, quad_b, quad_c = m1 ** 2 - t2 * v11, 2 * (m0 * m1 - t2 * v01), m0 ** 2 - t2 * v00
        root = np.sqrt(quad_b ** 2 - 4 * quad_a * quad_c)
        bounded = (quad_a > 0) & (df >= 1)
        low = np.where(bounded, (-quad_b - root) / (2 * quad_a), np.nan)
        high = np.where(bounded, (-quad_b + root) / (2 * quad_a), np.nan)
    return np.where(np.isfinite(theta), theta, np.nan), low, high


# ---------------------------------------------------------------------------------------------
# The ladder: results in, a result with a JSON document, a table and a plot out


@dataclass
class ArmFit:
    arm: str
    form: str  # "power law" or "log-linear"
    rungs: int  # rungs with a result
    seeds: int
    params: dict[str, tuple[float, float, float]]  # name -> (estimate, low, high); A in loss·FLOPs^alpha
    at_rungs: list[tuple[float, float, float]]  # the fitted loss at each rung, with its interval
    at_far: tuple[float, float, float]  # the fitted loss at EXTRAPOLATE x the largest rung: an extrapolation
    means: list[tuple[float, float, float, int]]  # each rung's mean over seeds, its t interval, seeds
    # The fit and its interval at each of LadderResult.band_compute: what the plot draws.
    band: tuple[list[float], list[float], list[float]] = field(repr=False, default=None)
    diverged: int = 0  # runs left out: diverged (inf) or without a number


@dataclass
class PairGap:
    a: str
    b: str
    gaps: list[dict]  # per rung: delta (a - b), low, high (95% t), seeds, paired
    slope: float  # change of the gap a - b per 10x compute
    slope_low: float  # at Holm's level for this pair
    slope_high: float
    slope_level: float
    p: float  # Holm-corrected over the pairs
    p_raw: float
    paired: bool
    seeds: int
    crossover: float | None  # compute where the gap's line reaches 0
    crossover_low: float | None  # Fieller's 95% interval; None: unbounded
    crossover_high: float | None
    crossover_where: str  # within the ladder, beyond the largest rung, below the smallest rung, none
    far_gap: tuple[float, float, float]  # the gap's line at EXTRAPOLATE x the largest rung, 95% t interval
    far_curves_gap: tuple[float, float, float]  # the fitted curves' difference there, bootstrap interval


@dataclass
class LadderResult:
    arms: list[str]
    seeds: list
    compute: list[float]  # the rungs
    far_compute: float  # EXTRAPOLATE x the largest rung
    fits: list[ArmFit]
    pairs: list[PairGap]
    bootstrap: int
    alpha: float
    band_compute: list[float] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict:
        def clean(value):
            if isinstance(value, float):
                return value if math.isfinite(value) else None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        fits = [{k: v for k, v in vars(fit).items() if k != "band"} for fit in self.fits]
        return clean({"arms": self.arms, "seeds": [str(s) for s in self.seeds], "compute": self.compute,
                      "extrapolated_to": self.far_compute, "bootstrap": self.bootstrap, "alpha": self.alpha,
                      "fits": fits, "pairs": [vars(pair) for pair in self.pairs]})

    def text(self) -> str:
        return ladder_text(self)

    def plot(self, path: Path, title: str = "ladder") -> Path:
        return plot_ladder(self, path, title)


def lay_out(results: dict) -> tuple[list[str], list, np.ndarray, np.ndarray]:
    """results[arm][seed][compute] = loss -> arms, seeds, compute (rungs,), loss (arms, seeds, rungs)."""
    if not isinstance(results, dict) or not results:
        raise ValueError("ladder: results must map each arm to {seed: {compute: loss}}; got nothing to fit")
    arms = [str(arm) for arm in results]
    seeds = list(dict.fromkeys(seed for by_seed in results.values() for seed in by_seed))
    compute = sorted({float(c) for by_seed in results.values() for run in by_seed.values() for c in run})
    bad = [c for c in compute if not (math.isfinite(c) and c > 0)]
    if bad:
        raise ValueError(f"ladder: compute {bad[0]!r} is not a positive number of FLOPs (e.g. 6·N·D = 1.2e15)")
    if len(compute) < 2:
        raise ValueError(f"ladder: {len(compute)} rung ({compute}) - a trend across scale needs 2 or more")
    loss = np.full((len(arms), len(seeds), len(compute)), np.nan)
    for i, by_seed in enumerate(results.values()):
        for j, seed in enumerate(seeds):
            for c, value in by_seed.get(seed, {}).items():
                try:
                    loss[i, j, compute.index(float(c))] = np.nan if value is None else float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"ladder: the loss of arm {arms[i]!r}, seed {seed!r} at compute {float(c):g} is "
                                     f"{value!r}; expected a number (inf: diverged, None: missing)") from None
    return arms, seeds, np.array(compute), loss


def fit_ladder(results: dict, bootstrap: int = BOOTSTRAP, alpha: float = ALPHA, extrapolate: float = EXTRAPOLATE,
               seed: int = 0) -> LadderResult:
    """results[arm][seed][compute] = final loss (inf or None: diverged or missing, left out)."""
    arms, seeds, compute, loss = lay_out(results)
    diverged = (~np.isfinite(loss) & ~np.isnan(loss)).sum((-1, -2))
    loss = np.where(np.isfinite(loss), loss, np.nan)
    x = np.log10(compute)
    x_far = x[-1] + math.log10(extrapolate)
    # The band's points: the ladder, then the extrapolation, both ending at the largest rung.
    band_x = np.concatenate([np.linspace(x[0], x[-1], BAND_POINTS), np.linspace(x[-1], x_far, BAND_POINTS // 3)])
    replicates = resample_seeds(loss, bootstrap, np.random.default_rng(seed))
    fits, far_draws = [], []
    for i, arm in enumerate(arms):
        rungs = int(np.isfinite(loss[i]).any(0).sum())
        form = "power law" if rungs >= POWER_LAW_MIN_RUNGS else "log-linear"
        point = fit_curves(x, loss[i], form)
        draws = fit_curves(x, replicates[:, i], form)
        curve, curve_draws = predict(form, point, x[0], band_x), predict(form, draws, x[0], band_x)
        at_rungs, at_rungs_draws = predict(form, point, x[0], x), predict(form, draws, x[0], x)
        far, far_draw = predict(form, point, x[0], np.array([x_far])), predict(form, draws, x[0], np.array([x_far]))
        far_draws.append(far_draw[:, 0])
        if form == "power law":  # A in the caller's units: the reducible loss at C = 1 FLOP
            point = {"E": point["E"], "A": point["A_ref"] * 10 ** (point["alpha"] * x[0]), "alpha": point["alpha"]}
            draws = {"E": draws["E"], "A": draws["A_ref"] * 10 ** (draws["alpha"] * x[0]), "alpha": draws["alpha"]}
        n_seeds = int(np.isfinite(loss[i]).any(-1).sum())
        fits.append(ArmFit(
            arm=arm, form=form, rungs=rungs, seeds=n_seeds, diverged=int(diverged[i]),
            params={name: _with_interval(point[name], draws[name], alpha, n_seeds) for name in point},
            at_rungs=[_with_interval(at_rungs[r], at_rungs_draws[:, r], alpha, n_seeds) for r in range(len(x))],
            at_far=_with_interval(far[0], far_draw[:, 0], alpha, n_seeds),
            means=[_mean_with_t(loss[i, :, r], alpha) for r in range(len(x))],
            band=(curve.tolist(), *_percentiles(curve_draws, alpha, n_seeds))))

    pairs = []
    for i, j in combinations(range(len(arms)), 2):
        trend = gap_trend(x, loss[i], loss[j], x_far, alpha)
        gaps = []
        for r in range(len(x)):
            test = pair_test(loss[i, :, r][None], loss[j, :, r][None], alpha)
            low, high = test.interval(np.array(alpha))
            gaps.append({"compute": float(compute[r]), "delta": float(test.delta), "low": float(low),
                         "high": float(high), "seeds": int(test.seeds), "paired": bool(test.paired)})
        both = min(fits[i].seeds, fits[j].seeds)
        curves_far = _with_interval(fits[i].at_far[0] - fits[j].at_far[0], far_draws[i] - far_draws[j], alpha, both)
        pairs.append((i, j, trend, gaps, curves_far))
    raw = np.array([float(trend["p"]) for _, _, trend, _, _ in pairs])
    adjusted, levels = (holm(raw), holm_levels(raw, alpha)) if raw.size else (raw, raw)
    pair_gaps = []
    for column, (i, j, trend, gaps, curves_far) in enumerate(pairs):
        half = scipy_stats.t.ppf(1 - levels[column] / 2, max(float(trend["df"]), 1)) * float(trend["se"])
        cross, low, high = (float(trend[k]) for k in ("cross", "cross_low", "cross_high"))
        pair_gaps.append(PairGap(
            a=arms[i], b=arms[j], gaps=gaps, slope=float(trend["slope"]),
            slope_low=float(trend["slope"]) - half, slope_high=float(trend["slope"]) + half,
            slope_level=float(levels[column]), p=float(adjusted[column]), p_raw=float(raw[column]),
            paired=bool(trend["paired"]), seeds=int(trend["seeds"]),
            crossover=_flops(cross), crossover_low=_flops(low), crossover_high=_flops(high),
            crossover_where=_where(cross, x),
            far_gap=(float(trend["far"]), float(trend["far_low"]), float(trend["far_high"])),
            far_curves_gap=curves_far))
    return LadderResult(arms=arms, seeds=seeds, compute=compute.tolist(), far_compute=float(10 ** x_far), fits=fits,
                        pairs=pair_gaps, bootstrap=bootstrap, alpha=alpha, band_compute=(10 ** band_x).tolist())


def expanded_tail(alpha: float, seeds: int) -> float:
    """The tail share of Hesterberg's (2015) expanded percentile interval: the bootstrap over n seeds
    spreads (n - 1)/n as wide as the truth and knows nothing of t's heavier tails, so plain 2.5%
    percentiles cover ~85% at 4-8 seeds; taking the percentiles at Phi(-sqrt(n/(n-1))·t_{n-1})
    instead brings them to ~93-95% from 6 seeds (tests/test_ladder.py)."""
    return float(scipy_stats.norm.cdf(-math.sqrt(seeds / (seeds - 1)) * scipy_stats.t.ppf(1 - alpha / 2, seeds - 1)))


def _percentiles(draws, alpha, seeds):
    """Expanded percentile interval over the bootstrap axis (first); NaN with fewer than 3 seeds
    (2 seeds have 3 distinct resamples: no interval to speak of)."""
    if seeds < 3:
        nan = np.full(draws.shape[1:], np.nan)
        return nan.tolist(), nan.tolist()
    tail = expanded_tail(alpha, seeds)
    low, high = np.nanpercentile(draws, [100 * tail, 100 * (1 - tail)], axis=0)
    return low.tolist(), high.tolist()


def _with_interval(estimate, draws, alpha, seeds) -> tuple[float, float, float]:
    low, high = _percentiles(np.asarray(draws)[:, None], alpha, seeds)
    return float(estimate), float(low[0]), float(high[0])


def _mean_with_t(values, alpha) -> tuple[float, float, float, int]:
    values = values[np.isfinite(values)]
    interval = t_interval(values, alpha) or (math.nan, math.nan)
    return (float(values.mean()) if values.size else math.nan, *interval, int(values.size))


def _flops(log10_compute: float) -> float | None:
    """10^x, or None where there is none (NaN) or it is past what a float holds (a near-flat gap's line
    may reach 0 only at 10^400 FLOPs)."""
    return 10.0 ** log10_compute if math.isfinite(log10_compute) and abs(log10_compute) < 300 else None


def _where(cross: float, x: np.ndarray) -> str:
    if not math.isfinite(cross):
        return "none"
    if cross < x[0]:
        return "below the smallest rung"
    return "within the ladder" if cross <= x[-1] else "beyond the largest rung (an extrapolation)"


# ---------------------------------------------------------------------------------------------
# The table a person pastes into a paper, and the plot


def _number(value: float, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _interval(estimate, low, high, signed: bool = False) -> str:
    shown = _number(estimate, signed)
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return shown
    return f"{shown} [{_number(low, signed)}, {_number(high, signed)}]"


def ladder_text(result: LadderResult) -> str:
    level = f"{100 * (1 - result.alpha):g}%"
    lines = [f"Ladder: final loss against compute, {len(result.compute)} rungs x {len(result.arms)} arms, "
             f"{len(result.seeds)} seeds; mean over seeds [{level} t interval] (seeds)", ""]
    lines += ["| compute (FLOPs) | " + " | ".join(result.arms) + " |", "|---" * (len(result.arms) + 1) + "|"]
    for r, compute in enumerate(result.compute):
        cells = [f"{_interval(*fit.means[r][:3])} ({fit.means[r][3]})" for fit in result.fits]
        lines.append(f"| {compute:.3g} | " + " | ".join(cells) + " |")

    lines += ["", f"Fits per arm, {level} seed-bootstrap intervals (expanded percentile, B = {result.bootstrap}); "
              f"power law L = E + A·C^-alpha with {POWER_LAW_MIN_RUNGS}+ rungs, else log-linear "
              f"L = a + b·log10 C", "",
              f"| arm | fit | parameters | loss at {result.far_compute:.3g} (extrapolation) |", "|---|---|---|---|"]
    for fit in result.fits:
        params = ", ".join(f"{name} = {_interval(*value)}" for name, value in fit.params.items())
        left_out = f"; {fit.diverged} runs diverged, left out" if fit.diverged else ""
        lines.append(f"| {fit.arm} | {fit.form}, {fit.rungs} rungs, {fit.seeds} seed(s){left_out} | {params} | "
                     f"{_interval(*fit.at_far)} |")
    if any(fit.diverged for fit in result.fits):
        lines.append("(an arm that diverged at some rungs is fitted on its survivors, which flatters it)")
    fewest = min(fit.seeds for fit in result.fits)
    if fewest < BOOTSTRAP_MIN_SEEDS:
        lines.append(f"(with {fewest} seed(s) the bootstrap intervals are too narrow, covering 84-91% at 4 seeds, "
                     f"and none are given below 3: the t intervals below are the ones to trust)")
    if not result.pairs:
        return "\n".join(lines)

    lines += ["", f"Gap at each rung (a - b; paired t over seeds, Welch–Hsu where the arms share fewer than 2; "
              f"{level} interval)", ""]
    lines += ["| compute (FLOPs) | " + " | ".join(f"{p.a} - {p.b}" for p in result.pairs) + " |",
              "|---" * (len(result.pairs) + 1) + "|"]
    for r, compute in enumerate(result.compute):
        cells = []
        for pair in result.pairs:
            gap = pair.gaps[r]
            cells.append(f"{_interval(gap['delta'], gap['low'], gap['high'], signed=True)} ({gap['seeds']})")
        lines.append(f"| {compute:.3g} | " + " | ".join(cells) + " |")

    family = f"Holm over {len(result.pairs)} pairs" if len(result.pairs) > 1 else "one pair"
    lines += ["", f"Does the gap change with scale? Each seed's slope of the gap against log10 compute, t-test "
              f"over seeds ({family}; interval at Holm's level). Crossover: where the gap's line reaches 0, "
              f"Fieller's {level} interval. At {result.far_compute:.3g} FLOPs ({EXTRAPOLATE:g}x the largest rung): "
              f"an extrapolation, valid only if the trend holds past the ladder"
              + ("; with 2 rungs each seed's trend is a line through two points, and a crossover outside them is "
                 "a guess" if len(result.compute) == 2 else ""), "",
              "| a - b | gap change per 10x compute | p | verdict | crossover (FLOPs) | gap at "
              f"{result.far_compute:.3g}, extrapolated [t {level}] | fitted curves' gap there [bootstrap] |",
              "|---|---|---|---|---|---|---|"]
    for pair in result.pairs:
        if not math.isfinite(pair.p):
            verdict = "untested (fewer than 2 seeds with 2 rungs)"
        elif pair.p < result.alpha and pair.crossover_where == "within the ladder":
            verdict = f"the gap flips with scale ({'-' if pair.slope > 0 else '+'} to {'+' if pair.slope > 0 else '-'})"
        elif pair.p < result.alpha:
            grows = (pair.slope > 0) == (np.nanmean([g["delta"] for g in pair.gaps]) > 0)
            verdict = "the gap grows with scale" if grows else "the gap shrinks with scale"
        else:
            verdict = "no change shown"
        if pair.crossover is None:
            crossover = "none"
        elif pair.crossover_low is None:
            crossover = f"{pair.crossover:.3g}, {pair.crossover_where}; interval unbounded (trend not clear)"
        else:
            crossover = (f"{pair.crossover:.3g} [{pair.crossover_low:.3g}, {pair.crossover_high:.3g}], "
                         f"{pair.crossover_where}")
        lines.append(f"| {pair.a} - {pair.b} | {_interval(pair.slope, pair.slope_low, pair.slope_high, True)} | "
                     f"{_number(pair.p)} | {verdict} | {crossover} | {_interval(*pair.far_gap, signed=True)} | "
                     f"{_interval(*pair.far_curves_gap, signed=True)} |")
    return "\n".join(lines)


def ladder_figure(result: LadderResult, title: str = "ladder"):
    """Loss against compute (log x) per arm: the rungs' means with t bars, each fit (solid) with its
    bootstrap band, and the fit's extrapolation to EXTRAPOLATE x the largest rung (dashed)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, as plots.py
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    band = np.array(result.band_compute)
    inside = np.arange(band.size) < BAND_POINTS  # the ladder's part of the band, then the extrapolation's
    for i, fit in enumerate(result.fits):
        colour = plt.get_cmap("tab10")(i % 10)
        mean, low, high, _ = (np.array(column, dtype=float) for column in zip(*fit.means))
        ax.errorbar(result.compute, mean, yerr=[mean - np.where(np.isnan(low), mean, low),
                                                np.where(np.isnan(high), mean, high) - mean],
                    fmt="o", color=colour, capsize=3, markersize=4, label=f"{fit.arm} (mean ± t {fit.seeds} seeds)")
        curve, curve_low, curve_high = (np.array(column, dtype=float) for column in fit.band)
        ax.plot(band[inside], curve[inside], color=colour, gid=f"fit:{fit.arm}", label=f"{fit.arm}: {fit.form} fit")
        ax.plot(band[~inside], curve[~inside], color=colour, linestyle="--", gid=f"extrapolation:{fit.arm}")
        ax.fill_between(band, curve_low, curve_high, color=colour, alpha=0.15, linewidth=0)
    ax.axvline(result.compute[-1], color="grey", linewidth=0.8, linestyle=":")
    ax.annotate("extrapolation →", (result.compute[-1], 1), xycoords=("data", "axes fraction"), xytext=(4, -12),
                textcoords="offset points", fontsize="x-small", color="grey")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())  # within a decade the minor labels run into each other
    ax.set_xlabel("compute (FLOPs)")
    ax.set_ylabel("final loss")
    banded = any(np.isfinite(np.array(fit.band[1], dtype=float)).any() for fit in result.fits)
    bands = f" (bands: {100 * (1 - result.alpha):g}% seed bootstrap)" if banded else \
        " (no bootstrap bands: under 3 seeds to resample)"
    ax.set_title(f"{title}: loss against compute{bands}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_ladder(result: LadderResult, path: Path, title: str = "ladder") -> Path:
    from b6lab.sweep.plots import _save  # the 256-colour PNG every b6lab plot is written as

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(ladder_figure(result, title), path)
