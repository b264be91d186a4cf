"""The sequential verdict's error rates, power and seeds, simulated: the figures in docs/sweeps.md.

    python benchmarks/sequential_seeds.py [--draws 40000]

Each simulated sweep gives every value `max` seeds of results N(mean, spread) plus a seed effect
shared by all values (which pairing removes); the design reads each pair's paired differences
seed by seed, as it would while the trials finish. n_fixed: the seeds a fixed two-sided paired
t-test at 5% needs for 80% power at the true difference; `max` = 2 n_fixed. Also the fewest
seeds any test can use at exactly 5% and 80% (the grid optimum, before the design's simulated
calibration makes its level exact and its power at least 80%), and a looser bound that needs no
grid (docs/sweeps.md).
"""

import argparse
import time

import numpy as np

from b6lab.sweep.optimal_boundaries import optimal_test
from b6lab.sweep.sequential import (decide, design, fixed_design_effect, fixed_design_power, simulated_differences,
                                    simulated_sweep)


def lower_bound(n_fixed, start=3, power=0.8):
    """Any test at this level: P(worse by n seeds) <= the fixed n-seed test's power, so
    E[N] >= start + sum over n from start to n_fixed - 1 of (power - power_fixed(n))."""
    effect = fixed_design_effect(n_fixed)
    return start + sum(max(0.0, power - fixed_design_power(effect, n)) for n in range(start, n_fixed))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=40_000)
    draws = parser.parse_args().draws
    rng = np.random.default_rng(2026)
    began = time.time()
    print(f"{draws} sweeps per row, start 3")
    for max in (8, 12, 20, 40):
        plan = design(3, max)
        paths = decide(simulated_differences([0, 0], [1, 3], max, draws, rng), plan)
        print(f"no difference, 2 values, max {max}: false 'worse' {np.mean(paths.worse_look < len(plan.looks)):.2%}")
    for spreads in ([1, 1, 1], [1, 2, 4], [1, 1, 1, 1], [0.5, 1, 2, 4]):
        plan = design(3, 16, pairs=len(spreads) * (len(spreads) - 1) // 2)
        paths = decide(simulated_differences([0] * len(spreads), spreads, 16, draws, rng), plan)
        rate = np.mean((paths.worse_look < len(plan.looks)).any(axis=-1))
        print(f"no difference, spreads {spreads}, max 16: family-wise false 'worse' {rate:.2%}")
    for n_fixed in (6, 10, 15, 20, 30, 40):
        plan = design(3, 2 * n_fixed)
        for times in (1.0, 1.5):
            effect = times * fixed_design_effect(n_fixed)
            paths = decide(simulated_differences([effect, 0], [1, 0], 2 * n_fixed, draws, rng), plan)
            found = np.mean((paths.worse_look < len(plan.looks)) & (paths.sign > 0))
            used = plan.looks[paths.stop_look].mean()
            print(f"n_fixed {n_fixed}, {times} x its difference: power {found:.1%}, mean seeds {used:.2f} = "
                  f"{used / n_fixed:.3f} n_fixed")
        paths = decide(simulated_differences([0, 0], [1, 0], 2 * n_fixed, draws, rng), plan)
        used = plan.looks[paths.stop_look].mean()
        futile = np.mean(paths.futile_look < len(plan.looks))
        print(f"n_fixed {n_fixed}, no difference: mean seeds {used / n_fixed:.3f} n_fixed, stopped for futility "
              f"{futile:.1%}")
        best = {ratio: optimal_test(3, ratio * n_fixed, fixed_design_effect(n_fixed), 0.05, 0.8).mean_seeds / n_fixed
                for ratio in (2, 3)}
        print(f"n_fixed {n_fixed}, at its difference, the fewest seeds of any test at exactly 5% and 80% (the grid's "
              f"optimum): {best[2]:.3f} n_fixed with max 2 n_fixed, {best[3]:.3f} with 3 n_fixed; a looser bound "
              f"for any test: {lower_bound(n_fixed) / n_fixed:.3f}")
    plan = design(3, 20)
    for difference, spread in [(0.01, 0.004), (0.01, 0.01)]:
        paths = decide(simulated_differences([difference, 0], [spread, 0], 20, draws, rng), plan, equivalence=0.01)
        print(f"difference = margin 0.01, spread {spread}, max 20: called equivalent "
              f"{np.mean(paths.equivalent_look < len(plan.looks)):.2%}")
    paths = decide(simulated_differences([0, 0], [0.006, 0], 20, draws, rng), plan, equivalence=0.01)
    shown = paths.equivalent_look < len(plan.looks)
    print(f"equal values, spread 0.6 margin, max 20: shown equivalent {shown.mean():.2%}, at "
          f"{plan.looks[paths.equivalent_look[shown]].mean():.1f} seeds")
    loops = draws // 20
    outcomes = [simulated_sweep([0, 0, 0], [1, 2, 4], 3, 12, rng) for _ in range(loops)]
    rate = np.mean([any(p.decision == "worse" for p in verdict.pairs) for verdict, _ in outcomes])
    print(f"the loop, 3 values, no difference, spreads 1:2:4, max 12 ({loops} sweeps): false 'worse' {rate:.1%}, "
          f"{np.mean([seeds for _, seeds in outcomes]):.1f} seeds per value")
    effect = fixed_design_effect(6, 0.05 / 3)
    outcomes = [simulated_sweep([effect, 0, 0], [1, 1, 1], 3, 12, rng) for _ in range(loops)]
    both = np.mean([sum(p.decision == "worse" and p.worse == 0 for p in v.pairs) == 2 for v, _ in outcomes])
    one = np.mean([sum(p.decision == "worse" and p.worse == 0 for p in v.pairs) >= 1 for v, _ in outcomes])
    seeds = np.mean([s for _, s in outcomes], axis=0)
    print(f"the loop, 3 values, one worse by {effect:.2f} spreads (a fixed 6-seed test at 5%/3 finds it 80% of the "
          f"time), max 12 ({loops} sweeps): worse than both others {both:.0%}, than at least one {one:.0%}, seeds "
          f"{', '.join(f'{x:.1f}' for x in seeds)}")
    print(f"({time.time() - began:.0f} s)")


if __name__ == "__main__":
    main()
