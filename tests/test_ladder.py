"""Ladders, checked by simulation without any training: losses drawn from a known scaling law.

A simulated ladder is an array loss[..., seeds, rungs]: L = E + A·C^-alpha at each rung's compute,
plus a seed effect shared by all of a seed's rungs (its data order), plus noise per run. The fits
must recover the law inside their intervals at about the nominal rate; the interaction test must
say "the gap changes with scale" at most 5% of the time when it does not (within Monte-Carlo
error) and nearly always when it does; the crossover and the 10x extrapolation's intervals must
cover the truth at about 95% when the gap is linear in log compute.
"""

import json
import math

import numpy as np
import pytest
from scipy import optimize, stats

from b6lab.sweep.ladder import (ALPHA, LadderResult, expanded_tail, fit_curves, fit_ladder, gap_trend, ladder_figure,
                                lay_out, predict, resample_seeds)
from b6lab.sweep.stats import holm

DRAWS = 4000
MARGIN = 3 * math.sqrt(ALPHA * (1 - ALPHA) / DRAWS)  # three standard errors of a rate near 5%
COMPUTE = np.geomspace(1e15, 1e15 * 4 ** 5, 6)  # six rungs, 4x apart: d_model doubling at fixed tokens/param
X = np.log10(COMPUTE)
LAW = {"E": 1.8, "A": 3e3, "alpha": 0.25}


def law(compute, E=LAW["E"], A=LAW["A"], alpha=LAW["alpha"]):
    return E + A * np.asarray(compute) ** -alpha


def ladders(rng, draws, seeds, gap=0.0, seed_effect=0.02, noise=0.01, shared=True, compute=COMPUTE):
    """(draws, seeds, rungs) for arms a and b: b follows the law, a = b + gap (an array over rungs).
    shared: both arms' seeds share the seed effect (same data order), else each has its own."""
    rungs = len(compute)
    effect = seed_effect * rng.normal(size=(draws, seeds, 1))
    b = law(compute) + effect + noise * rng.normal(size=(draws, seeds, rungs))
    effect_a = effect if shared else seed_effect * rng.normal(size=(draws, seeds, 1))
    a = law(compute) + np.asarray(gap) + effect_a + noise * rng.normal(size=(draws, seeds, rungs))
    return a, b


def as_results(arms: dict[str, np.ndarray], compute=COMPUTE, seeds=None) -> dict:
    """{arm: (seeds, rungs) array} -> results[arm][seed][compute] = loss, for fit_ladder."""
    return {arm: {(seeds[arm][s] if seeds else s): {float(c): float(loss[s, r]) for r, c in enumerate(compute)}
                  for s in range(loss.shape[0])} for arm, loss in arms.items()}


# ---------------------------------------------------------------------------------------------
# The fits


def test_power_law_fit_recovers_noiseless_laws_exactly():
    laws = [(1.8, 3e3, 0.25), (0.5, 50.0, 0.1), (2.5, 1e6, 0.45), (0.0, 20.0, 0.05)]
    loss = np.stack([law(COMPUTE, *one) for one in laws])[:, None, :]  # (laws, 1 seed, rungs)
    fit = fit_curves(X, loss, "power law")
    A = fit["A_ref"] * 10 ** (fit["alpha"] * X[0])
    np.testing.assert_allclose(fit["E"], [one[0] for one in laws], atol=1e-6)
    np.testing.assert_allclose(fit["alpha"], [one[2] for one in laws], rtol=1e-5)
    np.testing.assert_allclose(A, [one[1] for one in laws], rtol=1e-4)


def test_power_law_fit_matches_scipy_curve_fit_on_noisy_losses():
    rng = np.random.default_rng(3)
    for _ in range(5):
        y = law(COMPUTE) + 0.01 * rng.normal(size=COMPUTE.size)
        ours = fit_curves(X, y[None], "power law")

        def model(x, E, A_ref, alpha):
            return E + A_ref * 10.0 ** (-alpha * (x - X[0]))

        (E, A_ref, alpha), _ = optimize.curve_fit(model, X, y, p0=[1.5, 0.5, 0.3],
                                                  bounds=([0, 0, 0.01], [np.inf, np.inf, 2.0]))
        sse_ours = float(((predict("power law", ours, X[0], X) - y) ** 2).sum())
        sse_scipy = float(((model(X, E, A_ref, alpha) - y) ** 2).sum())
        assert sse_ours <= sse_scipy * (1 + 1e-6) + 1e-15
        np.testing.assert_allclose([ours["E"], ours["alpha"]], [E, alpha], rtol=1e-3)


def test_bootstrap_intervals_cover_the_true_law_at_about_the_nominal_rate():
    """100 ladders of 8 seeds, B = 400: the expanded percentile intervals of alpha, E and the loss
    at 10x the largest rung each cover the truth ~95% of the time (measured 94-95% at 150 ladders
    and B = 1000; plain percentiles gave 88-91%). Bounds: 95% within 3 Monte-Carlo errors (6.5%)."""
    rng = np.random.default_rng(0)
    ladders_, seeds, replicates = 100, 8, 400
    loss = law(COMPUTE) + 0.02 * rng.normal(size=(ladders_, seeds, 1)) + 0.01 * rng.normal(
        size=(ladders_, seeds, COMPUTE.size))
    # Each simulated ladder is one "arm": resample_seeds draws whole seeds for each.
    draws = fit_curves(X, resample_seeds(loss, replicates, rng), "power law")
    far = np.array([X[-1] + 1])
    truths = {"alpha": LAW["alpha"], "E": LAW["E"], "loss at 10x": float(law(10 ** far[0]))}
    estimates = {"alpha": draws["alpha"], "E": draws["E"],
                 "loss at 10x": predict("power law", draws, X[0], far)[..., 0]}
    tail = expanded_tail(ALPHA, seeds)
    margin = 3 * math.sqrt(0.95 * 0.05 / ladders_)
    for name, values in estimates.items():
        low, high = np.percentile(values, [100 * tail, 100 * (1 - tail)], axis=0)
        coverage = np.mean((low <= truths[name]) & (truths[name] <= high))
        assert 0.95 - margin <= coverage, f"{name}: {coverage:.2f} of intervals covered the truth"


def test_fit_ladder_says_which_form_it_fitted():
    rng = np.random.default_rng(1)
    few = COMPUTE[:3]
    a, b = ladders(rng, 1, 4, compute=few)
    result = fit_ladder(as_results({"a": a[0], "b": b[0]}, compute=few), bootstrap=200)
    assert [fit.form for fit in result.fits] == ["log-linear", "log-linear"]
    assert set(result.fits[0].params) == {"a", "b"}
    a, b = ladders(rng, 1, 4)
    result = fit_ladder(as_results({"a": a[0], "b": b[0]}), bootstrap=200)
    assert [fit.form for fit in result.fits] == ["power law", "power law"]
    E, low, high = result.fits[1].params["E"]
    assert low <= E <= high


def test_two_seeds_give_no_bootstrap_interval_and_the_table_says_why():
    """Two seeds have three distinct resamples: percentiles of those are not an interval."""
    rng = np.random.default_rng(2)
    a, b = ladders(rng, 1, 2)
    result = fit_ladder(as_results({"a": a[0], "b": b[0]}), bootstrap=200)
    estimate, low, high = result.fits[0].params["alpha"]
    assert math.isfinite(estimate) and math.isnan(low) and math.isnan(high)
    assert json.loads(json.dumps(result.to_dict()))["fits"][0]["params"]["alpha"][1:] == [None, None]
    assert "with 2 seed(s) the bootstrap intervals are too narrow" in result.text()
    assert math.isfinite(result.pairs[0].slope_low)  # the t intervals over seeds still stand


def test_log_linear_fit_recovers_its_line():
    loss = (3.0 - 0.2 * X[:3])[None, None, :]
    fit = fit_curves(X[:3], loss, "log-linear")
    np.testing.assert_allclose([fit["a"][0], fit["b"][0]], [3.0, -0.2], atol=1e-9)


# ---------------------------------------------------------------------------------------------
# The interaction: does the gap change with scale?


@pytest.mark.parametrize("seeds", [3, 5, 10])
@pytest.mark.parametrize("shared", [True, False], ids=["seed-effect-shared", "seed-effect-own"])
def test_interaction_keeps_its_false_positive_rate_when_the_gap_is_constant(seeds, shared):
    rng = np.random.default_rng(seeds + 10 * shared)
    a, b = ladders(rng, DRAWS, seeds, gap=0.05, shared=shared)
    p = gap_trend(X, a, b, X[-1] + 1)["p"]
    assert np.mean(p < ALPHA) <= ALPHA + MARGIN


def test_interaction_holds_its_rate_with_noise_correlated_and_unequal_across_rungs():
    """Each seed's own random tilt (its runs drift together across rungs) and noise 3x larger at the
    largest rungs: a regression over all runs as if independent would reject far too often; the
    slope test over seeds does not."""
    rng = np.random.default_rng(7)
    a, b = ladders(rng, DRAWS, 4, gap=-0.03, noise=0.0)
    tilt = 0.02 * rng.normal(size=(2, DRAWS, 4, 1)) * (X - X.mean())
    unequal = np.linspace(0.005, 0.015, X.size) * rng.normal(size=(2, DRAWS, 4, X.size))
    a, b = a + tilt[0] + unequal[0], b + tilt[1] + unequal[1]
    p = gap_trend(X, a, b, X[-1] + 1)["p"]
    assert np.mean(p < ALPHA) <= ALPHA + MARGIN
    # The pseudo-replicated alternative, every (seed, rung) gap as an independent point: ~42% false.
    pooled = [stats.linregress(np.tile(X, 4), gap.ravel()).pvalue for gap in (a - b)[:500]]
    assert np.mean(np.array(pooled) < ALPHA) > 0.2


def test_interaction_on_arms_that_ran_different_seeds_is_welch_and_holds_its_rate():
    rng = np.random.default_rng(8)
    a, b = ladders(rng, DRAWS, 5, gap=0.02, shared=False)
    nan = np.full_like(a, np.nan)
    trend = gap_trend(X, np.concatenate([a, nan], 1), np.concatenate([nan, b], 1), X[-1] + 1)
    assert not trend["paired"].any()
    assert np.mean(trend["p"] < ALPHA) <= ALPHA + MARGIN


def test_three_arms_with_holm_keep_the_family_wise_rate():
    rng = np.random.default_rng(9)
    effect = 0.02 * rng.normal(size=(DRAWS, 4, 1))
    arms = [law(COMPUTE) + gap + effect + 0.01 * rng.normal(size=(DRAWS, 4, X.size)) for gap in (0.0, 0.03, -0.02)]
    p = np.stack([gap_trend(X, arms[i], arms[j], X[-1] + 1)["p"] for i, j in ((0, 1), (0, 2), (1, 2))], -1)
    assert np.mean((holm(p) < ALPHA).any(-1)) <= ALPHA + MARGIN
    assert np.mean((p < ALPHA).any(-1)) > ALPHA + MARGIN  # uncorrected, the family's rate is exceeded


def test_interaction_finds_a_gap_that_grows_with_scale():
    """a's gap over b grows by 0.02 per 10x compute (0.054 across the ladder), seed noise 0.01 per run."""
    rng = np.random.default_rng(11)
    a, b = ladders(rng, 1000, 5, gap=0.02 * (X - X[0]))
    trend = gap_trend(X, a, b, X[-1] + 1)
    assert np.mean(trend["p"] < ALPHA) > 0.95
    assert abs(np.mean(trend["slope"]) - 0.02) < 0.001


# ---------------------------------------------------------------------------------------------
# The crossover and the 10x extrapolation


def test_crossover_is_found_where_constructed_and_its_interval_covers_it():
    """a is worse at the small rungs and better at the large ones: the gap crosses 0 at 10^16.5 FLOPs."""
    rng = np.random.default_rng(12)
    crossing = 16.5
    a, b = ladders(rng, DRAWS, 5, gap=-0.03 * (X - crossing))
    trend = gap_trend(X, a, b, X[-1] + 1)
    bounded = np.isfinite(trend["cross_low"])
    assert bounded.mean() > 0.99  # the slope is clear, so Fieller's interval is bounded
    assert abs(np.median(trend["cross"]) - crossing) < 0.02
    covered = (trend["cross_low"] <= crossing) & (crossing <= trend["cross_high"])
    assert abs(covered.mean() - 0.95) <= MARGIN

    result = fit_ladder(as_results({"a": a[0], "b": b[0]}), bootstrap=200)
    pair = result.pairs[0]
    assert pair.crossover_where == "within the ladder"
    assert pair.crossover_low <= 10 ** crossing <= pair.crossover_high
    assert "within the ladder" in result.text() and "the gap flips with scale (+ to -)" in result.text()


def test_a_crossover_past_what_a_float_holds_is_reported_as_none():
    """A gap of -0.05 that closes by 1e-9 per 10x compute reaches 0 only at 10^50000000 FLOPs."""
    rng = np.random.default_rng(23)
    _, b = ladders(rng, 1, 3)
    a = b[0] - 0.05 + 1e-9 * (X - X[0])
    result = fit_ladder(as_results({"a": a, "b": b[0]}), bootstrap=50)
    assert result.pairs[0].crossover is None
    assert result.pairs[0].crossover_where == "beyond the largest rung (an extrapolation)"
    json.dumps(result.to_dict())


def test_crossover_interval_is_unbounded_when_the_gap_has_no_trend():
    rng = np.random.default_rng(13)
    a, b = ladders(rng, 1, 4, gap=0.05)
    result = fit_ladder(as_results({"a": a[0], "b": b[0]}), bootstrap=200)
    pair = result.pairs[0]
    if pair.p >= ALPHA:  # (the 5% of draws where the slope looks real would give a bounded one)
        assert pair.crossover_low is None and pair.crossover_high is None
        assert "interval unbounded" in result.text()


@pytest.mark.parametrize("shared", [True, False], ids=["seed-effect-shared", "seed-effect-own"])
def test_extrapolated_gap_covers_the_truth_at_the_nominal_rate(shared):
    """The gap linear in log10 C (the model the extrapolation assumes): its t interval at 10x the
    largest rung covers the true gap there 95% of the time."""
    rng = np.random.default_rng(14 + shared)
    slope, x_far = 0.015, X[-1] + 1
    a, b = ladders(rng, DRAWS, 4, gap=0.01 + slope * (X - X[0]), shared=shared)
    trend = gap_trend(X, a, b, x_far)
    truth = 0.01 + slope * (x_far - X[0])
    covered = (trend["far_low"] <= truth) & (truth <= trend["far_high"])
    assert abs(covered.mean() - 0.95) <= MARGIN


# ---------------------------------------------------------------------------------------------
# The API: results in; JSON, a table and a plot out


def _three_arm_result(seed=20, bootstrap=300) -> LadderResult:
    rng = np.random.default_rng(seed)
    effect = 0.02 * rng.normal(size=(5, 1))
    arms = {name: law(COMPUTE, E=E) + effect + 0.01 * rng.normal(size=(5, X.size))
            for name, E in (("pre", 1.8), ("post", 1.75), ("sandwich", 1.9))}
    return fit_ladder(as_results(arms), bootstrap=bootstrap)


def test_fit_ladder_document_and_table():
    result = _three_arm_result()
    document = json.loads(json.dumps(result.to_dict()))  # plain JSON: no NaN, no numpy types
    assert document["arms"] == ["pre", "post", "sandwich"]
    assert len(document["pairs"]) == 3 and len(document["pairs"][0]["gaps"]) == X.size
    assert document["extrapolated_to"] == pytest.approx(10 * COMPUTE[-1])
    raw = np.array([pair.p_raw for pair in result.pairs])
    np.testing.assert_allclose([pair.p for pair in result.pairs], holm(raw))
    for pair in result.pairs:  # Holm's level: the interval excludes 0 exactly when the corrected p < alpha
        assert (pair.slope_low > 0 or pair.slope_high < 0) == (pair.p < ALPHA)
        assert pair.paired and pair.seeds == 5
    # The gaps are constant, +0.05, -0.1 and -0.15 (seed noise per rung ~0.006): every rung's
    # interval has the gap's sign.
    for pair, sign in zip(result.pairs, (1, -1, -1)):
        assert all(sign * gap["low"] > 0 and sign * gap["high"] > 0 for gap in pair.gaps)
    text = result.text()
    assert "Holm over 3 pairs" in text and "extrapolat" in text
    assert text.count("\n| pre - post |") == 1
    table_rows = [line for line in text.splitlines() if line.startswith("| 1e+15 |")]
    assert len(table_rows) == 2  # the means table and the gap-per-rung table


def test_runs_that_diverged_are_left_out_and_counted():
    rng = np.random.default_rng(21)
    a, b = ladders(rng, 1, 4, gap=0.02)
    results = as_results({"a": a[0], "b": b[0]})
    results["a"][0][float(COMPUTE[-1])] = math.inf
    result = fit_ladder(results, bootstrap=200)
    assert result.fits[0].diverged == 1 and result.fits[1].diverged == 0
    assert result.fits[0].means[-1][3] == 3  # three seeds left at the largest rung
    assert "1 runs diverged, left out" in result.text()


def test_arms_on_different_seeds_are_compared_unpaired():
    rng = np.random.default_rng(22)
    a, b = ladders(rng, 1, 4, gap=0.02, shared=False)
    results = as_results({"a": a[0], "b": b[0]}, seeds={"a": [0, 1, 2, 3], "b": [10, 11, 12, 13]})
    result = fit_ladder(results, bootstrap=200)
    pair = result.pairs[0]
    assert not pair.paired and not pair.gaps[0]["paired"]
    assert math.isfinite(pair.p)


@pytest.mark.parametrize("results, message", [
    ({}, "nothing to fit"),
    ({"a": {0: {0.0: 3.0, 1e15: 2.0}}}, "compute 0.0 is not a positive number"),
    ({"a": {0: {1e15: 3.0}}, "b": {0: {1e15: 3.1}}}, "needs 2 or more"),
    ({"a": {0: {1e15: 3.0, 4e15: "nan?"}}},
     "the loss of arm 'a', seed 0 at compute 4e\\+15 is 'nan\\?'; expected a number"),
])
def test_bad_ladders_fail_with_one_clear_line(results, message):
    with pytest.raises(ValueError, match=message):
        lay_out(results)


def test_plot_writes_a_png_with_a_fit_and_an_extrapolation_per_arm(tmp_path):
    result = _three_arm_result(bootstrap=100)
    figure = ladder_figure(result, "norm ladder")
    gids = sorted(line.get_gid() for line in figure.axes[0].get_lines() if line.get_gid())
    assert gids == sorted(f"{kind}:{arm}" for arm in result.arms for kind in ("fit", "extrapolation"))
    dashed = [line for line in figure.axes[0].get_lines() if (line.get_gid() or "").startswith("extrapolation")]
    assert all(line.get_linestyle() == "--" for line in dashed)
    assert figure.axes[0].get_xscale() == "log"
    path = result.plot(tmp_path / "ladder.png", "norm ladder")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
