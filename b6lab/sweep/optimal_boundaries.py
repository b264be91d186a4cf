"""The sequential t-test's boundaries with the fewest seeds: computed, not chosen from a family.

Among all tests that look after every seed, hold their level whatever the spread, and find a
given standardized difference with a given power, find the one with the fewest seeds on average
at that difference. A test that holds its level for every spread may use the seeds only through
their direction x / |x| (the scale is unknown), and the likelihood ratio of that direction is a
function of the t statistic alone (Cox 1952). The direction's law at the next seed depends on the
past only through the current t, so (n, t) is the whole state, and the optimal test is the
Bayes test of a Lagrangian, found by backward induction over a grid in t (Jennison & Turnbull
2000, ch. 7: optimal group-sequential tests; Eales & Jennison 1992):

    minimise  eps E_effect[seeds] + k P_0(worse) + P_effect(not worse)

with k and eps set so that the level and the power come out as asked. At each state the test
says "worse", stops (futility, binding), or takes one more seed, whichever costs less.

The state is |t| read on the normal scale, z = the normal quantile of its one-sided p-value
(half-normal at every look under no difference), on an even grid where the boundaries lie, and
through c = |sum x| / (sqrt(n) |x|) = |t| / sqrt(n - 1 + t^2) for the arithmetic. "Worse" is
two-sided (either value may be the worse one), so the alternative is the mixture of +effect and
-effect. Under no difference |x| / spread follows chi_n independently of the direction, which is
what makes the step from n to n + 1 seeds a fixed kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

GRID = 401  # points of z in [0, TOP]
TOP = 10.0  # the grid's last z: far beyond any boundary (p = 8e-24)
NODES = 64  # quadrature nodes of |x| / spread and of the next seed's difference (equal probability)

CONTINUE, WORSE, STOP = 0, 1, 2


@dataclass(frozen=True)
class OptimalTest:
    looks: np.ndarray  # seed counts start..max
    efficacy_t: np.ndarray  # "worse" when |t| >= it (inf: not at this look)
    futility_t: np.ndarray  # stop when |t| <= it (-inf: not at this look)
    level: float  # on the grid; the caller calibrates the exact level by simulation
    power: float
    mean_seeds: float  # at the effect


def z_of_t(t: np.ndarray, df) -> np.ndarray:
    """|t| with df degrees of freedom as the normal quantile of its one-sided p-value."""
    return -special.ndtri(special.stdtr(df, -np.abs(t)))


def t_of_z(z: np.ndarray, df) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.where(np.isposinf(z), np.inf, -special.stdtrit(df, special.ndtr(-z)))


def c_of_z(z: np.ndarray, n: int) -> np.ndarray:
    t = t_of_z(z, n - 1)
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(t), 1.0, t / np.sqrt(n - 1 + t**2))


def z_of_c(c: np.ndarray, n: int) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return z_of_t(np.sqrt(n - 1) * c / np.sqrt(np.maximum(1 - c**2, 0)), n - 1)


class Problem:
    """The grid, the likelihood ratios and the no-difference kernels for start..max seeds."""

    def __init__(self, start: int, max: int, effect: float):
        self.looks = np.arange(start, max + 1)
        self.z = np.linspace(0.0, TOP, GRID)
        self.ratio = {n: self._likelihood_ratio(n, effect) for n in self.looks}
        self.kernel = {n: self._kernel(n) for n in self.looks[:-1]}
        # At the first look z is half-normal: each grid point gets the mass of the cell around it.
        self.edges = np.concatenate([[0.0], (self.z[1:] + self.z[:-1]) / 2, [np.inf]])
        self.first = np.diff(2 * stats.norm.cdf(self.edges) - 1)

    def _likelihood_ratio(self, n: int, effect: float) -> np.ndarray:
        """The direction's likelihood ratio, +-effect mixed against none, at each c:
        E[cosh(effect sqrt(n) c R)] exp(-n effect^2 / 2) with R ~ chi_n."""
        radius = np.linspace(1e-9, math.sqrt(n) * (1 + effect) + 14, 3000)
        log_density = stats.chi.logpdf(radius, n) + math.log(radius[1] - radius[0])
        tilt = effect * math.sqrt(n) * c_of_z(self.z, n)[:, None] * radius[None, :]
        log_ratio = special.logsumexp(np.stack([log_density + tilt, log_density - tilt]), axis=(0, 2))
        return np.exp(np.minimum(log_ratio - math.log(2) - n * effect**2 / 2, 600))

    def _kernel(self, n: int) -> np.ndarray:
        """(GRID, GRID): from z at n seeds to z at n + 1 under no difference, the new point split
        linearly between its two neighbours on the grid (beyond TOP: on TOP)."""
        quantiles = (np.arange(NODES) + 0.5) / NODES
        radius = stats.chi.ppf(quantiles, n)[None, :, None]
        step = stats.norm.ppf(quantiles)[None, None, :]
        total = math.sqrt(n) * c_of_z(self.z, n)[:, None, None] * radius + step
        after = np.abs(total) / (np.sqrt(radius**2 + step**2) * math.sqrt(n + 1))
        fine = np.linspace(0.0, 1.0, 20_001)  # z of c, tabulated: stdtr on every node would be slow
        after_z = np.interp(after, fine, np.minimum(z_of_c(fine, n + 1), 2 * TOP))
        position = np.clip(after_z / TOP, 0, 1).reshape(GRID, -1) * (GRID - 1)
        low = np.minimum(np.floor(position).astype(int), GRID - 2)
        upper = position - low
        rows = np.arange(GRID)[:, None] * GRID
        kernel = np.bincount((rows + low).ravel(), (1 - upper).ravel(), GRID * GRID)
        kernel += np.bincount((rows + low + 1).ravel(), upper.ravel(), GRID * GRID)
        return kernel.reshape(GRID, GRID) / position.shape[1]

    def actions(self, k: float, eps: float) -> dict:
        """The Bayes test's action at each look and grid point (costs in units of the no-difference
        measure: the effect's measure is the likelihood ratio times it)."""
        actions, risk = {}, None
        for n in self.looks[::-1]:
            ratio = self.ratio[n]
            go_on = np.full(GRID, np.inf) if risk is None else eps * ratio + self.kernel[n] @ risk
            costs = np.stack([go_on, np.full(GRID, k), ratio])
            actions[n] = costs.argmin(axis=0)
            risk = costs.min(axis=0)
        return actions

    def outcome(self, actions: dict) -> tuple[float, float, float]:
        """(level, power at the effect, mean seeds at the effect)."""
        mass, level, power, seeds = self.first, 0.0, 0.0, float(self.looks[0])
        for n in self.looks:
            worse, going = actions[n] == WORSE, actions[n] == CONTINUE
            level += mass[worse].sum()
            power += (mass * self.ratio[n])[worse].sum()
            mass = np.where(going, mass, 0.0)
            if n < self.looks[-1]:
                seeds += (mass * self.ratio[n]).sum()
                mass = mass @ self.kernel[n]
        return level, power, seeds


def optimal_test(start: int, max: int, effect: float, level: float, power: float) -> OptimalTest:
    """The test with the fewest seeds at `effect` among those at `level` with `power` there; where
    even no early stopping falls short of `power`, the most powerful one."""
    problem = Problem(start, max, effect)

    def at_level(log_eps: float):
        eps = math.exp(log_eps)

        def excess(log_k):  # a larger penalty on "worse": a lower level
            return problem.outcome(problem.actions(math.exp(log_k), eps))[0] - level

        log_k = optimize.brentq(excess, -20.0, 700.0, xtol=1e-4) if excess(-20.0) > 0 > excess(700.0) else 700.0
        actions = problem.actions(math.exp(log_k), eps)
        return actions, problem.outcome(actions)

    shortfall = lambda log_eps: at_level(log_eps)[1][1] - power  # noqa: E731  (a dearer seed: less power)
    low, high = -700.0, 20.0
    if shortfall(low) <= 0:
        log_eps = low
    elif shortfall(high) >= 0:
        log_eps = high
    else:
        log_eps = optimize.brentq(shortfall, low, high, xtol=1e-5)
    actions, (reached, found, seeds) = at_level(log_eps)
    if reached < level / 2:
        # Only at a tiny `max` with an effect so large that the likelihood ratio is flat over most
        # of the grid (it levels off as |t| grows at 1-3 degrees of freedom): no Lagrangian test
        # is near the level there. Pocock's flat boundary instead, without futility; the caller
        # sets its level by simulation.
        count = len(problem.looks)
        return OptimalTest(problem.looks, t_of_z(np.ones(count), problem.looks - 1), np.full(count, -np.inf),
                           reached, found, seeds)
    efficacy, futility = [], []
    edges = problem.edges  # edges[i]: between z[i - 1] and z[i]
    for n in problem.looks:
        # The regions are intervals in z (the likelihood ratio rises with it): read their ends
        # from the top and from the bottom.
        act = actions[n]
        above = np.flatnonzero(act[::-1] != WORSE)
        below = np.flatnonzero(act != STOP)
        top = GRID - (above[0] if len(above) else GRID)  # first index of the top run of WORSE
        bottom = (below[0] if len(below) else GRID) - 1  # last index of the bottom run of STOP
        # The boundary lies between two grid points: take the middle.
        efficacy.append(t_of_z(edges[top], n - 1) if top < GRID else np.inf)
        futility.append(t_of_z(edges[bottom + 1], n - 1) if bottom >= 0 else -np.inf)
    return OptimalTest(problem.looks, np.array(efficacy), np.array(futility), reached, found, seeds)
