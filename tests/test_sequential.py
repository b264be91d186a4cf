"""The sequential verdict's promises, checked by simulation: thousands of sweeps, no training.

Each simulated sweep gives every value of a key `max` seeds; the procedure reads each pair's
path of paired differences seed by seed, exactly as it would while the seeds arrive (its
decision at any look is a function of the path up to there), so looking after every seed is
what is simulated. A seed adds an effect shared by all values (the data order), which pairing
removes.
"""

import math

import numpy as np
import pytest
from scipy import stats

from b6lab.sweep.optimal_boundaries import optimal_test
from b6lab.sweep.sequential import (
    ALPHA, absolute_t, analyse, decide, design, first, fixed_design_effect, simulated_differences, simulated_sweep,
    simulated_z, t_of_z, z_of_t,
)

DRAWS = 4000
# Three standard errors of a rate near alpha estimated from DRAWS sweeps.
MARGIN = 3 * math.sqrt(ALPHA * (1 - ALPHA) / DRAWS)


def sweeps(means, spreads, seeds, rng):
    """(DRAWS, pairs, seeds) paired differences of every pair of values (first minus second)."""
    return simulated_differences(means, spreads, seeds, DRAWS, rng)


def any_worse(paths, count) -> float:
    return float((paths.worse_look < count).any(axis=-1).mean())


def seeds_used(plan, paths) -> np.ndarray:
    return plan.looks[paths.stop_look]


def test_looking_after_every_seed_breaks_a_fixed_n_t_test():
    """Why a sequential method: a 5% paired t-test repeated after each seed from 3 to 12 says
    'worse' in 18% of sweeps with no difference."""
    rng = np.random.default_rng(1)
    differences = sweeps([0, 0], [1, 1], 12, rng)[:, 0]
    p = np.stack([stats.ttest_1samp(differences[:, :n], 0, axis=-1).pvalue for n in range(3, 13)], -1)
    assert (p < ALPHA).any(axis=-1).mean() > 0.15


@pytest.mark.parametrize("start, max", [(3, 12), (3, 20), (2, 8)])
def test_two_values_with_no_difference_are_rarely_called_worse_however_often_looked_at(start, max):
    rng = np.random.default_rng(max)
    plan = design(start, max)
    rate = any_worse(decide(sweeps([0, 0], [1, 3], max, rng), plan), len(plan.looks))
    assert rate <= ALPHA + MARGIN, f"{rate:.3f} of null sweeps said 'worse' looking at seeds {start}..{max}"


@pytest.mark.parametrize("spreads", [[1, 1, 1], [1, 2, 4], [1, 1, 1, 1], [0.5, 1, 2, 4]])
def test_the_family_wise_rate_holds_for_three_and_four_values_with_unequal_spreads(spreads):
    rng = np.random.default_rng(len(spreads) * 10 + int(spreads[-1]))
    plan = design(3, 16, pairs=len(spreads) * (len(spreads) - 1) // 2)
    rate = any_worse(decide(sweeps([0] * len(spreads), spreads, 16, rng), plan), len(plan.looks))
    assert rate <= ALPHA + MARGIN, f"{spreads}: {rate:.3f} of null sweeps had a false 'worse'"


@pytest.mark.parametrize("n_fixed, most", [(10, 0.81), (20, 0.755)])
def test_a_true_difference_is_found_at_80_percent_power_with_fewer_seeds_than_a_fixed_design(n_fixed, most):
    """At the difference a fixed paired t-test (5%) finds with 80% power at n_fixed seeds, with
    max = 2 n_fixed: power >= 80% (less 3 Monte-Carlo errors) and, on average, at most these
    fractions of n_fixed's seeds (simulated with 40,000 sweeps: 0.787 and 0.733).

    The issue's target of <= 70% is met from n_fixed 40 (0.698); below, no test whose error rates
    are the same at every spread can meet it: the fewest seeds any such test needs at exactly 5%
    and 80% is 0.766 n_fixed at n_fixed 10 and 0.710 at 20 (the optimum this design is built
    from, before its level is made exact by simulation; benchmarks/sequential_seeds.py)."""
    rng = np.random.default_rng(n_fixed)
    plan = design(3, 2 * n_fixed)
    effect = fixed_design_effect(n_fixed)
    paths = decide(sweeps([effect, 0], [1, 0], 2 * n_fixed, rng), plan)  # difference: spread 1
    found = float(((paths.worse_look < len(plan.looks)) & (paths.sign > 0)).mean())
    average = float(seeds_used(plan, paths).mean())
    assert found >= 0.8 - 3 * math.sqrt(0.8 * 0.2 / DRAWS), f"n_fixed {n_fixed}: power {found:.3f}"
    assert average <= most * n_fixed, f"n_fixed {n_fixed}: {average:.1f} seeds on average"


def test_with_no_difference_it_stops_early_for_futility():
    """No difference, max 20: about 5.4 seeds on average (0.54 of the fixed design's 10; the SPRT
    of two designs ago took 6.6), nearly every comparison stopped for futility well before max."""
    rng = np.random.default_rng(2)
    plan = design(3, 20)
    paths = decide(sweeps([0, 0], [1, 1], 20, rng), plan)
    used = seeds_used(plan, paths)
    assert used.mean() <= 5.8
    assert (paths.futile_look < len(plan.looks)).mean() > 0.98


def test_a_difference_beyond_the_margin_is_rarely_called_equivalent():
    margin = 0.01
    plan = design(3, 20)
    for difference, spread in [(margin, 0.004), (margin, 0.01), (1.5 * margin, 0.01)]:
        rng = np.random.default_rng(int(spread * 1e4))
        paths = decide(sweeps([difference, 0], [spread, 0], 20, rng), plan, equivalence=margin)
        rate = float((paths.equivalent_look < len(plan.looks)).mean())
        assert rate <= ALPHA + MARGIN, f"difference {difference}, spread {spread}: {rate:.3f} called equivalent"


def test_equal_values_are_shown_equivalent_when_the_spread_is_small_enough():
    rng = np.random.default_rng(4)
    plan = design(3, 20)
    paths = decide(sweeps([0, 0], [0.006, 0], 20, rng), plan, equivalence=0.01)
    count = len(plan.looks)
    assert (paths.equivalent_look < count).mean() > 0.9
    assert (paths.worse_look < count).mean() <= ALPHA + MARGIN


def test_the_boundaries_read_t_on_the_normal_scale_and_the_decisions_ignore_the_spread():
    """z is the normal quantile of |t|'s one-sided p-value: N(0, 1) at every look under no
    difference, whatever the spread, which is why one null simulation calibrates every pair."""
    for df, t in [(2, 4.3), (9, 2.26), (30, 0.5)]:
        z = float(z_of_t(np.array(t), df))
        assert stats.norm.sf(z) == pytest.approx(stats.t.sf(t, df), rel=1e-9)
        assert float(t_of_z(np.array(z), df)) == pytest.approx(t, rel=1e-9)
    looks = np.arange(3, 13)
    z = np.abs(simulated_z(0.0, DRAWS, looks, np.random.default_rng(11)))
    for i in (0, 4, 9):
        assert stats.kstest(z[:, i], stats.halfnorm.cdf).pvalue > 0.001
    plan = design(3, 12)
    differences = sweeps([0.8, 0], [1, 0], 12, np.random.default_rng(12))
    small, large = decide(0.001 * differences, plan), decide(1000 * differences, plan)
    assert (small.worse_look == large.worse_look).all() and (small.futile_look == large.futile_look).all()


def per_seed(values, seeds, rng, means, spread=0.01):
    shared = rng.normal(0, 0.02, seeds)
    return {value: {s: 3.0 + mean + shared[s] + rng.normal(0, spread) for s in range(seeds)}
            for value, mean in zip(values, means)}


def test_analyse_decides_a_clear_difference_before_max_and_asks_only_for_the_seeds_still_needed():
    rng = np.random.default_rng(5)
    results = per_seed(["pre", "post", "peri"], 5, rng, means=[0.0, 0.2, 0.0])
    verdict = analyse(results, start=3, max=12)
    by_pair = {(p.first, p.second): p for p in verdict.pairs}
    assert by_pair["pre", "post"].decision == "worse" and by_pair["pre", "post"].worse == "post"
    assert by_pair["post", "peri"].decision == "worse" and by_pair["post", "peri"].worse == "post"
    assert by_pair["pre", "post"].decided_at <= 5
    assert by_pair["pre", "peri"].decision == "undecided"
    # Only pre and peri are in an undecided comparison; post needs no more seeds.
    if by_pair["pre", "peri"].reason == "needs seeds":
        assert verdict.needs_seeds == ["pre", "peri"]
    else:
        assert by_pair["pre", "peri"].reason == "futile" and verdict.needs_seeds == []


def test_analyse_needs_the_missing_seed_of_the_value_behind():
    rng = np.random.default_rng(6)
    results = per_seed(["a", "b"], 4, rng, means=[0.0, 0.004], spread=0.01)
    results["a"].pop(3)  # a's seed 3 has not finished
    verdict = analyse(results, start=3, max=12)
    assert verdict.pairs[0].seeds == 3
    if verdict.pairs[0].reason == "needs seeds":
        assert verdict.needs_seeds == ["a"]
    assert analyse({"a": {0: 1.0, 1: 1.1}, "b": {0: 1.2, 1: 1.3}}, 3, 12).needs_seeds == ["a", "b"]


def test_the_decision_does_not_depend_on_when_it_is_looked_at():
    """Looked at after every seed or once at the end: the same decision, at the same seed count."""
    rng = np.random.default_rng(7)
    for trial in range(20):
        results = per_seed(["x", "y"], 12, rng, means=[0.0, rng.choice([0.0, 0.01, 0.03])])
        final = analyse(results, 3, 12, equivalence=0.05).pairs[0]
        for n in range(3, 13):
            now = analyse({v: {s: r[s] for s in range(n)} for v, r in results.items()}, 3, 12, equivalence=0.05)
            if now.pairs[0].reason != "needs seeds":
                break
        if final.decision != "undecided" or final.reason == "futile":
            assert (now.pairs[0].decision, now.pairs[0].decided_at) == (final.decision, final.decided_at)
            assert now.pairs[0].seeds == final.decided_at


def test_identical_seeds_and_the_boundaries():
    same = analyse({"a": {s: 1.0 for s in range(12)}, "b": {s: 1.0 for s in range(12)}}, 3, 12)
    assert same.pairs[0].decision == "undecided" and same.pairs[0].reason == "futile"
    shifted = analyse({"a": {s: 1.0 + 0.01 * s for s in range(12)}, "b": {s: 1.1 + 0.01 * s for s in range(12)}}, 3, 12)
    assert shifted.pairs[0].decision == "worse" and shifted.pairs[0].worse == "b"
    plan = design(3, 12, pairs=3)
    finite = np.isfinite(plan.efficacy[0])
    assert (np.diff(plan.efficacy[:, finite], axis=0) > 0).all()  # alpha, alpha/2, alpha/3: each stricter
    assert (plan.futility < plan.efficacy[-1])[:-1].all()  # a pair between the two takes another seed


def test_the_optimal_test_on_its_grid_is_what_simulation_finds():
    """The backward induction's own figures (level, power and mean seeds of its optimum, computed
    on the grid) against 20,000 simulated paths of the boundaries it returns: the grid's
    arithmetic (the likelihood ratio of t, the kernel from one seed to the next) is right."""
    effect = fixed_design_effect(6)
    best = optimal_test(3, 12, effect, ALPHA, 0.8)
    rng = np.random.default_rng(41)
    found = {}
    for name, difference in (("null", 0.0), ("effect", effect)):
        t = absolute_t(difference + rng.standard_normal((20_000, 12)), best.looks)
        futile, worse = first(t <= best.futility_t), first(t >= best.efficacy_t)
        found[name] = (worse <= futile).mean(), best.looks[np.minimum(np.minimum(worse, futile), len(best.looks) - 1)]
    assert found["null"][0] == pytest.approx(best.level, abs=0.005)
    assert found["effect"][0] == pytest.approx(best.power, abs=0.015)
    assert found["effect"][1].mean() == pytest.approx(best.mean_seeds, rel=0.01)
    assert best.mean_seeds < 0.86 * 6  # 0.843 n_fixed: the fewest seeds any such test needs here


def test_a_sweep_that_adds_seeds_only_where_asked_keeps_the_family_wise_rate():
    """The real loop over analyse(), 1,500 null sweeps of 3 values with spreads 1:2:4, max 12."""
    rng = np.random.default_rng(10)
    draws = 1500
    outcomes = [simulated_sweep([0, 0, 0], [1, 2, 4], 3, 12, rng) for _ in range(draws)]
    rate = np.mean([any(p.decision == "worse" for p in verdict.pairs) for verdict, _ in outcomes])
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / draws), f"{rate:.3f} had a false 'worse'"
    assert np.mean([seeds for _, seeds in outcomes]) < 4.5  # of 12 allowed (3.7 in 2,000): futility stops most early


def test_analyse_shows_equivalence_within_the_margin_and_stops_there():
    rng = np.random.default_rng(9)
    results = per_seed(["rope", "alibi"], 12, rng, means=[0.0, 0.0], spread=0.002)
    pair = analyse(results, 3, 12, equivalence=0.01).pairs[0]
    assert pair.decision == "equivalent" and pair.decided_at < 12
    low, high = pair.interval
    assert -0.01 < low < pair.mean_difference < high < 0.01
    assert analyse(results, 3, 12).pairs[0].reason == "futile"  # without a margin: no difference found


@pytest.mark.parametrize("kwargs, words", [
    (dict(start=1, max=12), "seeds.start: 1"),
    (dict(start=3, max=2), "seeds.max: 2"),
    (dict(start=3, max=12, equivalence=-0.01), "equivalence: -0.01"),
    (dict(start=3, max=12, alpha=0.7), "alpha: 0.7"),
])
def test_bad_settings_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        analyse({"a": {0: 1.0}, "b": {0: 1.1}}, **kwargs)


def test_holm_steps_down_once_other_pairs_are_decided():
    """A pair whose evidence passes the boundary at level alpha but not at alpha/3 is "worse" only
    when the key's two other pairs were decided first (Holm), and at neither level alone."""
    plan = design(3, 12, pairs=3)
    rng = np.random.default_rng(8)
    candidates = rng.normal(1.2, 1.0, (DRAWS, 12))
    t = absolute_t(candidates, plan.looks)
    futile = np.where((t <= plan.futility).any(-1), (t <= plan.futility).argmax(-1), t.shape[-1])
    upto = np.arange(t.shape[-1]) <= futile[:, None]
    lenient, strict = ((upto & (t >= plan.efficacy[j])).any(-1) for j in (0, 2))
    between = candidates[lenient & ~strict][0]
    clear = np.linspace(1.0, 1.2, 12)  # a large, steady difference
    count = len(plan.looks)
    alone = decide(np.stack([np.zeros(12), np.zeros(12), between]), plan)  # the others: no difference at all
    assert (alone.worse_look == count).all()
    after_others = decide(np.stack([clear, clear, between]), plan)
    assert (after_others.worse_look < count).all()


@pytest.mark.parametrize("effect_of", [0.0, 1.0])  # no difference; the design effect of a fixed 6-seed test
def test_the_interval_beside_a_verdict_never_contradicts_it_and_covers_the_difference(effect_of):
    """The repeated confidence interval at the deciding look: it excludes 0 exactly when the pair is
    'worse' (in every one of 400 adaptive sweeps), and holds the true difference >= 95% of the time
    (less the Monte-Carlo margin). A pair stopped for futility at 3 seeds of 12 has none: the test
    could not have said "worse" there, so its interval is the whole line (None)."""
    rng = np.random.default_rng(31 + int(effect_of))
    effect = effect_of * fixed_design_effect(6)
    draws, contradictions, covered, shown = 400, 0, 0, 0
    for _ in range(draws):
        verdict, _ = simulated_sweep([effect, 0], [1, 1], 3, 12, rng)
        pair = verdict.pairs[0]
        if pair.interval is None:  # the whole line: it covers, and says nothing against the verdict
            assert pair.decision != "worse" and pair.decided_at == 3
            covered += 1
            continue
        low, high = pair.interval
        shown += 1
        contradictions += (low > 0 or high < 0) != (pair.decision == "worse")
        covered += low <= effect <= high
    assert shown > 0.25 * draws and contradictions == 0  # with no difference most stop at 3 seeds
    assert covered / draws >= 1 - ALPHA - 3 * math.sqrt(ALPHA * (1 - ALPHA) / draws)
