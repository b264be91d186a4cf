"""Sweeps and comparisons: a grid of full training runs on Ray Tune, and the tables and plots of their results.

    experiment.py   the sweep file: its keys, read and checked into an Experiment
    grid.py         an Experiment: its base config, grid axes, seeds and points
    trials.py       the grid expanded into trials, each one's config resolved and validated
    tune_runner.py  the Ray Tune side: the trainable every trial runs, Tuner and restore
    progress.py     the compact progress lines a sweep prints while it runs
    folders.py      reading run folders and sweep folders back into results
    comparison.py   which keys runs are grouped by, and the document `b6lab compare --json` prints
    ladder.py       a ladder: each arm's loss against compute, fitted; whether the gap between arms changes with scale
    sequential.py   sequential verdicts: each pair of values decided seed by seed, with an error rate that survives looking
    sequential_sweep.py  a sequential sweep's runs through that analysis; seed_searcher.py, the Ray Tune Searcher that adds seeds
    tuning.py       tune: / search: each grid point tuned on tuning seeds (Optuna or random) before the judged runs
    stats.py        the tests on arrays of outcomes: paired t over seeds, Welch–Hsu, the sign test on
                    divergence, Holm's correction and levels, the verdicts, the interaction test
    verdicts.py     runs laid out by value, cell and seed; each value's summary; the two-way table
    report.py       the results table and the verdicts (terminal, CSV, markdown)
    plots.py        val loss against tokens, final val loss by key, per-block diagnostics by layer

Calling the package, `b6lab.sweep(path)`, runs `b6lab.api.sweep`.
"""

from b6lab import callable_package

callable_package(__name__, "sweep")
