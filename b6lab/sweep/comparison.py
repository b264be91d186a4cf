"""Runs compared: which keys they are grouped by, each key's statistics, and the JSON document
`b6lab compare --json` prints and `b6lab.compare` returns.

One finding per choice. The keys judged are the ones a user chose: `--by`, else the sweeps' grid
keys, else (plain runs) the config keys that differ. A key that changes only together with a
judged key (`optim.eps` present only with `optim.name=adamw`, or a learning rate that always comes
with one optimizer) is shown beside that key instead of being judged again: the runs cannot tell
the two apart, so it is one difference, not two findings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from b6lab.config_sources import flatten
from b6lab.errors import UsageError
from b6lab.sweep import folders
from b6lab.sweep.folders import METRICS, RunResult
from b6lab.sweep.grid import LADDER_KEY
from b6lab.sweep.stats import ALPHA, holm, holm_levels, key_tests
from b6lab.sweep.verdicts import KeySummary, TwoWay, outcome_table, summarize_key, two_way

FAMILIES = ("key", "all")
RULE = ("each value against the reference (the value that diverged least, then the lowest mean) of its key: "
        "two-sided paired t-test over the seeds and cells both values completed (Welch's with Hsu's conservative "
        "degrees of freedom where they share fewer than 2 seeds), and an exact sign test on divergence where it "
        "could decide; p-values corrected with Holm over every pair of values of {family}, so a false 'worse' among "
        "them has at most an alpha chance")
FAMILY_WORDS = {"key": "the key (each key is its own family: with several keys, the chance of a false 'worse' "
                       "somewhere grows; --family all corrects across them)",
                "all": "every key of the comparison together"}


def rule(family: str = "key") -> str:
    return RULE.format(family=FAMILY_WORDS[family])


def sequential_rule(alpha: float) -> str:
    return (f"Verdicts: each value against the reference of its key by the sequential analysis (each key's "
            f"method), which holds a {alpha:.0%} chance of any false 'worse' among a key's values however often the sweep looked; "
            "each interval is the test's repeated confidence interval at the look that decided it, so it excludes 0 "
            "exactly when `worse` was decided; `equivalent`: its anytime-valid interval lies inside the sweep's "
            "margin; `best` only when every other value is worse (docs/sweeps.md, sequential seeds).")


@dataclass
class Comparison:
    runs: list[RunResult]
    keys: list[str]  # the keys judged, in order; the first two make the two-way table
    metric: str = "val_loss"
    beside: dict[str, list[str]] = field(default_factory=dict)  # judged key -> keys that change only with it
    pooled: list[str] = field(default_factory=list)  # keys that differ but were not grouped by (with --by)
    alpha: float = ALPHA
    family: str = "key"  # what Holm corrects over: each key's pairs, or all keys' pairs together
    warnings: list[str] = field(default_factory=list)  # what the reader must know before the verdicts
    sequential: dict | None = None  # a sequential sweep's {start, max, equivalence}: its analysis decides
    ladder: bool = False  # a ladder sweep: its rungs (LADDER_KEY) are model sizes, fitted per arm (ladder.py)
    summaries: list[KeySummary] = field(init=False)
    interaction: TwoWay | None = field(init=False)
    scaling: object = field(init=False, default=None)  # ladder.LadderResult of a ladder sweep

    @property
    def shown_keys(self) -> list[str]:
        """The run table's columns: the judged keys, a ladder's rungs, then those averaged over
        (else two runs that differ only there would look alike)."""
        return self.keys + [LADDER_KEY] * self.ladder + [key for key in self.pooled if key not in self.keys]

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise UsageError(f"--family {self.family}: expected one of {', '.join(FAMILIES)}")
        tables = [outcome_table(self.runs, [key], self.metric, blind=self.beside.get(key, [])) for key in self.keys]
        tests = [key_tests(table.outcomes, self.alpha) for table in tables]
        raw = [t.p for t in tests]
        if self.family == "all" and raw:
            pooled = np.concatenate(raw)
            sizes = np.cumsum([0] + [len(p) for p in raw])
            adjusted, levels = holm(pooled), holm_levels(pooled, self.alpha)
            cut = [(adjusted[a:b], levels[a:b]) for a, b in zip(sizes[:-1], sizes[1:])]
            size = int(np.sum(~np.isnan(pooled)))
        else:
            cut, size = [(None, None)] * len(raw), None
        self.summaries = [summarize_key(self.runs, key, self.metric, self.alpha, self.beside.get(key), test, adjusted,
                                        levels, self.family, size, table)
                          for key, table, test, (adjusted, levels) in zip(self.keys, tables, tests, cut)]
        if self.sequential:
            from b6lab.sweep.sequential_sweep import sequential_verdicts

            for summary in self.summaries:
                sequential_verdicts(summary, self.runs, self.metric, self.sequential["start"], self.sequential["max"],
                                    self.sequential.get("equivalence"))
            self.warnings.append("a sequential sweep: each key is judged by the sequential analysis (a fixed-n t-test "
                                 "after seeds were added where undecided would not hold its error rate)"
                                 + ("; the two-way table's interaction tests are fixed-n, so descriptive here"
                                    if len(self.keys) >= 2 else ""))
        twice = max((table.repeated for table in tables), default=0)
        if twice:
            self.warnings.append(f"{twice} run{'s' * (twice != 1)} share{'s' * (twice == 1)} every judged value, "
                                 "cell and seed with another run (the same config run twice?): averaged as one")
        missing = 0 if self.sequential else max((table.missing for table in tables), default=0)
        if missing:
            self.warnings.append(f"{missing} trial{'s' * (missing != 1)} of the grid did not run (no run folder for "
                                 "that combination and seed): each comparison uses only the cells and seeds both "
                                 "of its values completed")
        self.interaction = two_way(self.runs, *self.keys[:2], self.metric, self.alpha) if len(self.keys) >= 2 else None
        if self.ladder:
            self.scaling = fit_scaling(self.runs, self.keys, self.metric)


def fit_scaling(runs: list[RunResult], keys: list[str], metric: str):
    """Each arm (a combination of the judged keys' values) at each rung: its final metric against
    training compute C = 6·N·D (N parameters, D tokens trained), fitted and compared (ladder.py)."""
    from b6lab.sweep.ladder import fit_ladder

    # One compute per rung, the mean over its runs: arms differ a little in parameters (Post-LN's
    # extra norm) and train on the same tokens, and are compared at the rung, not at their own C.
    flops: dict[str, list[float]] = {}
    for run in runs:
        if run.params and run.tokens:
            flops.setdefault(run.grid.get(LADDER_KEY), []).append(6.0 * run.params * run.tokens)
    results: dict = {}
    for run in runs:
        rung = run.grid.get(LADDER_KEY)
        if rung not in flops:
            continue
        arm = ",".join(f"{key.rsplit('.', 1)[-1]}={run.grid.get(key, '-')}" for key in keys) or "all"
        loss = getattr(run, f"final_{metric}") if run.status == "completed" else (
            math.inf if run.status == "diverged" else None)
        results.setdefault(arm, {}).setdefault(run.seed, {})[sum(flops[rung]) / len(flops[rung])] = loss
    try:
        return fit_ladder(results) if results else None
    except ValueError as exc:  # a ladder it cannot fit (one rung with results, say): one line
        raise UsageError(str(exc)) from None


def compare(paths: list[str | Path], *, by: str | list[str] | None = None, metric: str = "val_loss",
            family: str = "key") -> dict:
    """The comparison of the runs in `paths` (run, sweep, or runs folders) as a JSON-ready dict."""
    return document(build(paths, by=by, metric=metric, family=family))


def build(paths: list[str | Path], *, by: str | list[str] | None = None, metric: str = "val_loss",
          family: str = "key") -> Comparison:
    if metric not in METRICS:
        raise UsageError(f"metric {metric!r}: runs record {' and '.join(METRICS)}; compare on one of those")
    if not paths:
        raise UsageError("nothing to compare: give run folders, sweep folders, or folders of runs")
    runs, grid_keys = folders.collect(paths)
    if metric != "val_loss" and all(getattr(run, f"final_{metric}") is None for run in runs):
        raise UsageError(f"--metric {metric}: none of these runs recorded it (runs from before b6lab did); "
                         "compare them on val_loss")
    metric, warnings = metric_across_tokenizers(runs, metric)
    by = [key.strip() for key in by.split(",") if key.strip()] if isinstance(by, str) else list(by or [])
    if by:
        keys, beside, pooled = group(runs, by, judge_the_rest=False)
    elif len(paths) == 1 and grid_keys:  # one sweep: its grid is the design
        keys, beside, pooled = grid_keys, {}, []
    else:
        keys, beside, pooled = group(runs, grid_keys, judge_the_rest=True)
    record = folders.read_sweep_record(Path(paths[0])) if len(paths) == 1 else None
    sequential = record.get("sequential") if record else None
    ladder = LADDER_KEY in keys
    keys = [key for key in keys if key != LADDER_KEY]  # rungs are sizes, not a choice to judge
    if sequential and family != "key":
        raise UsageError("--family all: a sequential sweep's analysis corrects within each key, as it decided "
                         "where to add seeds; compare it with --family key")
    return Comparison(runs, keys, metric, beside, pooled, family=family, warnings=warnings, sequential=sequential,
                      ladder=ladder)


def tokenizer_of(run: RunResult) -> str | None:
    """The tokenizer a run's losses are per token of: its name and vocabulary size."""
    data, model = run.config.get("data") or {}, run.config.get("model") or {}
    if not data.get("tokenizer"):
        return None
    return f"{data['tokenizer']}" + (f" ({model['vocab_size']} tokens)" if model.get("vocab_size") else "")


def metric_across_tokenizers(runs: list[RunResult], metric: str) -> tuple[str, list[str]]:
    """val_loss is nats per token: where the runs' tokenizers differ a token is not one unit, and
    the tokenizer with longer tokens looks worse. Judge bits per byte there instead."""
    tokenizers = sorted({t for t in map(tokenizer_of, runs) if t})
    if metric != "val_loss" or len(tokenizers) < 2:
        return metric, []
    differ = f"the runs use different tokenizers ({', '.join(tokenizers)}): val_loss is per token, and their tokens differ"
    if all(run.final_val_bpb is not None for run in runs if run.status == "completed"):
        return "val_bpb", [f"{differ}; judged on val_bpb (bits per byte of the same text) instead"]
    return metric, [f"{differ}, and some runs recorded no val_bpb: these val_loss verdicts compare different units"]


def group(runs: list[RunResult], chosen: list[str], judge_the_rest: bool) -> tuple[list[str], dict, list[str]]:
    """The keys judged, the keys beside each, and the keys averaged over. Sets each run's labels."""
    flats = [flatten(run.config) for run in runs]
    for key in chosen:
        if not any(key in run.grid or key in flat for run, flat in zip(runs, flats)):
            differing = ", ".join(folders.differing_keys(runs)) or "none (they differ only by seed)"
            raise UsageError(f"--by {key}: no run has this key; keys that differ between these runs: {differing}")
    with_config = [run for run in runs if run.config]
    candidates = [key for key in folders.differing_keys(with_config) if key not in chosen]
    for run, flat in zip(runs, flats):
        for key in chosen + candidates:
            if key not in run.grid and (run.config or key in chosen):
                run.grid[key] = folders.label_of(flat.get(key))
    # A key with more values first: a key that only changes with another must land beside it,
    # never the other way round; among equals a plugin's name before its options.
    choices = plugin_choice_keys()
    candidates.sort(key=lambda key: (-len({run.grid[key] for run in with_config}), key not in choices))
    keys, beside, pooled = list(chosen), {}, []
    for key in candidates:
        owner = next((judged for judged in keys if _determines(with_config, judged, key)), None)
        if owner is not None:
            beside.setdefault(owner, []).append(key)
        elif judge_the_rest:
            keys.append(key)
        else:
            pooled.append(key)
    return keys, beside, pooled


def plugin_choice_keys() -> set[str]:
    """model.norm, optim.name, ...: the config keys that name a plugin (each section's plugin_keys)."""
    from b6lab import config

    return {key for key, _, _ in config.plugin_choices(config.RunConfig())}


def _determines(runs: list[RunResult], key: str, other: str) -> bool:
    """Whether `other`'s value follows from `key`'s in every run (so the runs can't separate them)."""
    seen: dict[str, str] = {}
    return all(seen.setdefault(run.grid.get(key, "-"), run.grid[other]) == run.grid[other] for run in runs)


# ---------------------------------------------------------------------------------------------
# The JSON document


def document(comparison: Comparison) -> dict:
    from b6lab.sweep.sequential_sweep import used_seeds  # imported where used, as in Comparison above

    metric = comparison.metric
    doc = {
        "metric": metric,
        "alpha": comparison.alpha,
        "family": comparison.family,
        "sequential": comparison.sequential and {**comparison.sequential, "seeds_used": used_seeds(comparison.runs)},
        "ci_level": 1 - comparison.alpha,  # of the two-way cells; each difference's own level is beside it
        "rule": sequential_rule(comparison.alpha) if comparison.sequential else rule(comparison.family),
        "warnings": comparison.warnings,
        "keys": {summary.key: _key_document(summary) for summary in comparison.summaries},
        "pooled": comparison.pooled,
        "ladder": comparison.scaling.to_dict() if comparison.scaling is not None else None,
        "interaction": None,
        "runs": [{
            "name": run.name, "folder": str(run.folder),
            "grid": {key: run.grid.get(key, "-") for key in comparison.keys},
            "seed": run.seed, "status": run.status, "reason": run.reason,
            **{f"{when}_{m}": _number(getattr(run, f"{when}_{m}")) for m in METRICS for when in ("final", "best")},
            "tokens": run.tokens, "steps": run.steps, "params": run.params,
        } for run in comparison.runs],
    }
    table = comparison.interaction
    if table is not None:
        doc["interaction"] = {
            "keys": [table.rows_key, table.columns_key],
            "cells": [{table.rows_key: row, table.columns_key: column, "mean": _number(cell.mean),
                       "std": _number(cell.std), "n_seeds": cell.seeds, "ci": _interval(cell.ci),
                       "diverged": cell.diverged, "n_runs": cell.runs}
                      for (row, column), cell in table.cells.items()],
            "contrasts": [{"rows": list(c.rows), "columns": list(c.columns), "delta": _number(c.delta),
                           "ci": _interval(c.ci), "p_corrected": _number(c.p), "n_seeds": c.seeds,
                           "verdict": c.verdict} for c in table.interactions],
        }
    return doc


def _key_document(summary: KeySummary) -> dict:
    return {
        "comparisons": summary.comparisons,
        "family": summary.family,
        "family_size": summary.family_size,
        "missing_trials": summary.missing,
        "method": summary.method,
        "beside": summary.beside,
        "values": [{
            "value": v.value, "mean": _number(v.mean), "std": _number(v.std), "n_seeds": v.seeds, "n_runs": v.runs,
            "diverged": v.diverged, "not_counted": dict(v.not_counted), "with": v.beside, "delta": _number(v.delta),
            "ci": _interval(v.ci), "ci_level": _number(v.ci_level),
            "p_corrected": _number(v.p), "test": v.test, "test_seeds": v.test_seeds, "by_divergence": v.by_divergence,
            "verdict": v.verdict, "decided_at": v.decided_at, "seeds_needed": v.seeds_needed, "note": v.note,
        } for v in summary.values],
    }


def _interval(ci) -> list | None:
    return None if ci is None else [_number(ci[0]), _number(ci[1])]


def _number(value) -> float | None:
    """JSON has no NaN or infinity: those are null."""
    return None if value is None or value != value or value in (float("inf"), float("-inf")) else float(value)
