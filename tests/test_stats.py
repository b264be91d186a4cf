"""The verdict's promise, checked by simulation: thousands of sweeps drawn without any training.

Under the global null (no value differs) a sweep with any "worse" verdict is a false positive;
its rate over the simulated sweeps must stay at alpha (5%) within the Monte-Carlo error. With a
real difference the verdict must find it as often as the power calculation says.
"""

import math

import numpy as np
import pytest
from scipy import stats

from b6lab.sweep.stats import ALPHA, holm, judge, pair_test, seeds_needed

DRAWS = 4000
# Three standard errors of a rate near alpha estimated from DRAWS sweeps.
MARGIN = 3 * math.sqrt(ALPHA * (1 - ALPHA) / DRAWS)


def null_sweeps(values: int, seeds: int, paired: bool, rng, spreads=None) -> tuple[list[np.ndarray], list[tuple]]:
    """DRAWS sweeps of `values` x `seeds`: per-seed means, all values with the same true mean.
    Paired sweeps share the seeds (and a seed effect as large as the noise: the data order);
    unpaired ones give every value its own seeds."""
    spreads = np.ones(values) if spreads is None else np.asarray(spreads, dtype=float)
    noise = rng.normal(size=(DRAWS, values, seeds)) * spreads[:, None]
    if paired:
        noise += 2.0 * rng.normal(size=(DRAWS, 1, seeds))
        seed_ids = [tuple(range(seeds))] * values
    else:
        seed_ids = [tuple(range(i * seeds, (i + 1) * seeds)) for i in range(values)]
    return [noise[:, i] for i in range(values)], seed_ids


def false_positive_rate(arms, seed_ids) -> float:
    return float((judge(arms, seed_ids).verdict == "worse").any(axis=-1).mean())


@pytest.mark.parametrize("values, seeds", [(2, 2), (4, 2), (2, 10), (3, 2), (4, 10), (6, 5), (8, 3)])
@pytest.mark.parametrize("paired", [True, False], ids=["paired", "welch"])
def test_the_family_wise_false_positive_rate_holds_under_the_global_null(values, seeds, paired):
    rng = np.random.default_rng(1000 * values + seeds + paired)
    rate = false_positive_rate(*null_sweeps(values, seeds, paired, rng))
    assert rate <= ALPHA + MARGIN, f"{values} values x {seeds} seeds: {rate:.3f} of null sweeps said 'worse'"


def test_welch_holds_it_when_the_values_spread_differently():
    rng = np.random.default_rng(7)
    for values, seeds in [(2, 2), (4, 5)]:
        arms, seed_ids = null_sweeps(values, seeds, paired=False, rng=rng, spreads=np.linspace(1, 4, values))
        assert false_positive_rate(arms, seed_ids) <= ALPHA + MARGIN


def test_holm_over_only_the_comparisons_with_the_best_would_not_hold_it():
    """Why every pair is in the family: the best is picked after looking, so its k-1 comparisons
    are the most extreme ones; Holm over just those breaks the 5% promise for 6 values."""
    rng = np.random.default_rng(11)
    arms, _ = null_sweeps(6, 5, paired=True, rng=rng)
    data = np.stack(arms, axis=1)  # (draws, values, seeds)
    best = data.mean(axis=-1).argmin(axis=-1)
    with np.errstate(invalid="ignore"):
        p = np.stack([stats.ttest_rel(data[:, i], data[np.arange(DRAWS), best], axis=-1).pvalue
                      for i in range(6)], axis=-1)
    p[np.arange(DRAWS), best] = np.nan  # the best against itself: not a comparison
    naive = float((holm(p) < ALPHA).any(axis=-1).mean())
    assert naive > ALPHA + MARGIN  # about 9%
    assert false_positive_rate(arms, [tuple(range(5))] * 6) <= ALPHA + MARGIN


def test_a_large_difference_is_found_with_five_seeds():
    """2 values x 5 seeds, a difference of 2.5 seed spreads: found in > 80% of sweeps, and as
    often as the noncentral t says for this design."""
    rng = np.random.default_rng(3)
    arms, seed_ids = null_sweeps(2, 5, paired=False, rng=rng)
    arms[1] = arms[1] + 2.5
    verdict = judge(arms, seed_ids).verdict
    power = float((verdict[:, 1] == "worse").mean())
    critical = stats.t.ppf(1 - ALPHA / 2, df=8)
    expected = stats.nct.sf(critical, 8, 2.5 / math.sqrt(2 / 5))  # about 0.93 (pooled t; Welch a little less)
    assert power > 0.8 and abs(power - expected) < 0.03
    assert (verdict[:, 0] == "best").mean() > 0.99


def test_seeds_needed_gives_the_power_it_promises():
    """Run as many seeds as seeds_needed asks for a difference of one spread: ~80% of sweeps find it."""
    rng = np.random.default_rng(5)
    for paired in (True, False):
        n = seeds_needed(delta=1.0, spread=1.0, paired=paired, level=ALPHA)
        assert n is not None and 5 <= n <= 30
        if paired:
            differences = rng.normal(1.0, 1.0, size=(DRAWS, n))
            arms, seed_ids = [differences, np.zeros((DRAWS, n))], [tuple(range(n))] * 2
        else:
            arms, seed_ids = [rng.normal(1.0, 1.0, (DRAWS, n)), rng.normal(0, 1.0, (DRAWS, n))], None
        power = float((judge(arms, seed_ids).verdict[:, 0] == "worse").mean())
        assert power >= 0.8 - 2 * MARGIN, f"paired={paired}: {n} seeds found it in {power:.2f}"
    assert seeds_needed(delta=0.0, spread=1.0, paired=True, level=ALPHA) is None
    assert seeds_needed(delta=1e-6, spread=1.0, paired=True, level=ALPHA) is None  # beyond MAX_SEEDS


def test_the_confidence_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(9)
    for paired in (True, False):
        a, b = rng.normal(0.3, 1.0, (DRAWS, 4)), rng.normal(0.0, 1.0, (DRAWS, 4))
        delta, low, high, _ = pair_test(a, b, paired)
        covered = float(((low <= 0.3) & (0.3 <= high)).mean())
        # Exact for the paired t; Welch's is a little conservative with so few seeds (about 96%).
        assert 0.95 - 3 * math.sqrt(0.05 * 0.95 / DRAWS) <= covered <= 0.97
        assert np.allclose(delta, a.mean(-1) - b.mean(-1))


def test_one_seed_or_no_spread_is_inconclusive_not_a_verdict():
    one_seed = judge([np.array([2.30]), np.array([2.40, 2.41])], [(0,), (0, 1)])
    assert list(one_seed.verdict) == ["inconclusive", "inconclusive"]  # the best itself has no spread
    identical = judge([np.array([2.3, 2.3]), np.array([2.4, 2.4])], [(0, 1), (0, 1)])
    assert list(identical.verdict) == ["best", "inconclusive"] and np.isnan(identical.p[1])
    lone = judge([np.array([2.3, 2.4]), np.array([])], [(0, 1), ()])
    assert list(lone.verdict) == ["inconclusive", "inconclusive"]


def test_holm_matches_its_definition_and_leaves_untested_pairs_out():
    p = np.array([0.01, 0.04, np.nan, 0.03])
    # Sorted 0.01, 0.03, 0.04 over a family of 3: 0.03, 0.06, then max(0.06, 0.04) = 0.06.
    assert np.allclose(holm(p), [0.03, 0.06, np.nan, 0.06], equal_nan=True)
    assert np.allclose(holm(np.array([[0.5, 0.9]])), [[1.0, 1.0]])  # never above 1, never below an earlier step
