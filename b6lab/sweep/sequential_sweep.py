"""A sequential sweep's runs through the sequential analysis (sequential.py): which grid points need
another seed while it runs, and each key's verdicts when it is compared.

Each value's result for a seed is its mean over the cells (combinations of the other keys) that
every value run at that seed completed, so the values of a pair are averaged over the same cells.
A diverged run counts as no result here (the sequential test is on losses); it is reported beside,
and the value that diverged is never the reference of the verdicts.
"""

from __future__ import annotations

import numpy as np

from b6lab.sweep.folders import RunResult
from b6lab.sweep.sequential import SequentialResult, analyse
from b6lab.sweep.verdicts import KeySummary, outcome_table

METHOD_WORDS = ("sequential paired t over seeds (group-sequential boundaries on the t statistic after every seed, "
                "those with the fewest seeds at the design's difference: 'worse' and binding futility, calibrated "
                "so that the chance of any false 'worse' among a key's values stays at most {alpha:.0%} however "
                "often it is looked at; Holm across pairs), seeds added "
                "only where a comparison was undecided")


def per_seed_results(runs: list[RunResult], key: str, metric: str) -> dict[str, dict]:
    """value -> {seed: mean final metric over the cells all values run at that seed completed}."""
    table = outcome_table(runs, [key], metric)
    outcomes = table.outcomes  # (values, cells, seeds); +inf diverged, NaN none
    ran = ~np.isnan(outcomes)
    present = ran.any(axis=1, keepdims=True)  # (values, 1, seeds): which values ran that seed
    complete = np.all(np.isfinite(outcomes) | ~present, axis=0, keepdims=True)  # (1, cells, seeds)
    results: dict[str, dict] = {}
    for i, value in enumerate(table.values):
        results[value] = {}
        for s, seed in enumerate(table.seeds):
            cells = complete[0, :, s] & np.isfinite(outcomes[i, :, s])
            if present[i, 0, s] and cells.any():
                results[value][seed] = float(outcomes[i, cells, s].mean())
    return results


def analyse_key(runs: list[RunResult], key: str, metric: str, start: int, max_seeds: int,
                equivalence: float | None) -> SequentialResult:
    return analyse(per_seed_results(runs, key, metric), start, max_seeds, equivalence)


def points_needing_seeds(labels: list[dict[str, str]], seeds: list, finished: dict[tuple[int, int], RunResult],
                         start: int, max_seeds: int, equivalence: float | None, metric: str,
                         handed: list[int] | None = None, pending: set[tuple[int, int]] = frozenset()) -> set[int]:
    """The grid points (indices into `labels`) whose next seed an undecided comparison needs.
    finished: (point, seed index) -> the run read back from its folder; handed: the seeds given to
    each point so far; pending: the (point, seed index) running or queued.

    A value's result at a seed is its mean over cells, so it is read only once none of that value's
    points still has the seed pending (a mean over the cells finished first is not the result the
    comparison will have). And a point's next seed is needed only once an undecided comparison has
    read as many seeds as the point was given, or every seed before it has finished: until then
    another point's seed may decide the comparison, and asking earlier runs seeds it does not need."""
    runs = []
    for (point, seed), run in finished.items():
        run.grid, run.seed = dict(labels[point]), seeds[seed]
        runs.append(run)
    settled = min((seed for _, seed in pending), default=len(seeds))  # every seed below has finished
    wanted: set[int] = set()
    for key in (labels[0] if labels else {}):
        values = {label[key] for label in labels}
        results = per_seed_results(runs, key, metric) if runs else {}
        for point, seed in pending:
            results.get(labels[point][key], {}).pop(seeds[seed], None)
        for value in values:  # a value nothing finished for yet still needs its start seeds
            results.setdefault(value, {})
        verdict = analyse(results, start, max_seeds, equivalence)
        read = {}  # value -> the most seeds an undecided comparison it is in has read
        for pair in verdict.pairs:
            if pair.reason in ("needs seeds", "too few seeds"):
                for value in (pair.first, pair.second):
                    read[value] = max(read.get(value, 0), pair.seeds)
        for i, label in enumerate(labels):
            given = len(seeds) if handed is None else handed[i]
            if label[key] in verdict.needs_seeds and (handed is None or given <= read.get(label[key], 0)
                                                      or given <= settled):
                wanted.add(i)
    return wanted


def sequential_verdicts(summary: KeySummary, runs: list[RunResult], metric: str, start: int, max_seeds: int,
                        equivalence: float | None) -> SequentialResult:
    """Replace the fixed-n tests of `summary` (invalid after optional stopping) by the sequential
    analysis: each value against the reference, `worse`, `equivalent` or `not distinguishable`
    (undecided, with why), with the test's repeated confidence interval of the difference."""
    result = analyse_key(runs, summary.key, metric, start, max_seeds, equivalence)
    reference = summary.reference
    summary.method = (METHOD_WORDS.format(alpha=summary.alpha)
                      + f"; seeds used: {used_seeds(runs)} of at most {max_seeds} per grid point")
    summary.family_size = len(result.pairs)
    worse = set()
    for v in summary.values:
        v.p, v.ci, v.ci_level, v.seeds_needed, v.test = None, None, None, None, "sequential paired t"
        if reference is None or v is reference:
            continue
        pair = next((p for p in result.pairs if {p.first, p.second} == {v.value, reference.value}), None)
        if pair is None:
            continue
        sign = 1 if pair.first == v.value else -1
        v.delta = None if pair.mean_difference is None else sign * pair.mean_difference
        if pair.interval is not None:
            low, high = (sign * pair.interval[0], sign * pair.interval[1])
            v.ci, v.ci_level = (min(low, high), max(low, high)), 1 - summary.alpha
        v.test_seeds = pair.seeds
        v.decided_at = pair.decided_at
        if pair.decision == "worse" and pair.worse == v.value:
            v.verdict = "worse"
            worse.add(v.value)
        elif pair.decision == "equivalent":
            v.verdict, v.note = "equivalent", f"within ±{equivalence:g} of {reference.value}"
        elif pair.decision == "worse":  # the reference is the worse one: it is the reference for stability
            v.verdict, v.note = "not distinguishable", f"lower than {reference.value}, which diverged less"
        else:
            v.verdict = "not distinguishable" if pair.seeds >= start else "inconclusive"
            v.note = {"futile": f"stopped for futility at {pair.decided_at} seeds: the remaining seeds could not "
                                "decide it", "max reached": f"undecided at the most seeds allowed ({max_seeds})",
                      "needs seeds": "undecided: the sweep stopped before it was decided",
                      "too few seeds": f"fewer than {start} common seeds"}[pair.reason]
    if reference is not None:
        others = [v for v in summary.values if v is not reference and (v.mean is not None or v.diverged)]
        all_worse = others and all(v.value in worse for v in others)
        reference.verdict = "best" if all_worse and not reference.diverged else "lowest mean" if all(
            v.mean is None or reference.mean is None or reference.mean <= v.mean for v in others) else "reference"
    return result


def used_seeds(runs: list[RunResult]) -> int:
    """The most seeds any grid point ran."""
    by_point: dict[tuple, set] = {}
    for run in runs:
        by_point.setdefault(tuple(sorted(run.grid.items())), set()).add(run.seed)
    return max((len(seeds) for seeds in by_point.values()), default=0)
