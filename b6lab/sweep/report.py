"""The results of runs side by side: one row per run in the terminal, in results.csv, and in a
markdown report, followed by each key's verdicts (verdicts.py) and the two-way table."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from b6lab.sweep.grid import short_name
from b6lab.sweep.folders import RunResult
from b6lab.sweep.comparison import Comparison, rule, sequential_rule
from b6lab.sweep.verdicts import KeySummary, TwoWay, ValueSummary


def sweep_header(exp, trials) -> str:
    """The sweep in one paragraph: its size, what each trial gets, and where it writes."""
    seeds = f"{len(exp.seeds)} seed" + ("s" if len(exp.seeds) > 1 else "")
    if exp.sequential:
        seeds = f"{exp.sequential.start} to {exp.sequential.max} seeds, sequential"
    shape = " x ".join([f"{len(axis.values)} {axis.short}" for axis in exp.grid] + [seeds])
    per_trial = f"{exp.cpus:g} CPU" + (f" + {exp.gpus:g} GPU" if exp.gpus else "")
    if exp.workers > 1:
        per_trial = f"{exp.workers} workers x {per_trial}"
    at_once = f"at most {exp.max_concurrent} at a time" if exp.max_concurrent else "as many at a time as fit"
    early = f"; early stopping: {exp.scheduler['name']}" if exp.scheduler else ""
    if exp.tuning:
        from b6lab.sweep.tuning import arms

        t = exp.tuning
        which = "tuned first, per grid point" + (" (each arm at each rung, at the rung's length)" if exp.ladder else "")
        runs = len(arms(exp)) * t.settings * len(t.seeds)
        early += (f"\n  {which if exp.grid else 'a search first'}: {t.settings} settings of "
                  f"{', '.join(k.describe() for k in t.keys)} ({t.algorithm}, tuning seeds {list(t.seeds)}), "
                  + ("done: the trials below use each point's choice" if exp.tuned else
                     f"then the trials below at each point's chosen setting ({runs} tuning "
                     f"run{'s' * (runs != 1)} first)"))
    count = f"{len(trials)} trials"
    if exp.sequential:
        count = f"{len(trials) // len(exp.seeds) * exp.sequential.start} trials to start, at most {len(trials)}"
    return (f"{exp.name}: {count} ({shape}), {per_trial} per trial, {at_once}{early}\n"
            f"  folder: {exp.storage}\n")


def trial_rows(trials, exp) -> list[dict]:
    """The dry-run table: what each trial will run, before anything does."""
    shorts = {axis.key: axis.short for axis in exp.grid}
    rows = []
    for t in trials:
        row = {"#": str(t.index), **{shorts[key]: label for key, label in t.grid.items()}, "seed": str(t.seed)}
        row |= {kind: name for kind, name in t.plugins.items() if kind not in row}  # a grid column already says it
        row |= {"params": "?" if t.params is None else f"{t.params / 1e6:.2f}M", "tokens": _count(t.tokens),
                "status": "skip" if t.skip_reason else "run" if t.seed in exp.start_seeds else "if needed"}
        rows.append(row)
    return rows


def write_results(runs: list[RunResult], keys: list[str], folder: Path, title: str, metric: str = "val_loss",
                  plots: bool = True, scaling=None) -> list[Path]:
    """results.csv and (unless `plots` is false) the plots, into `folder`; a ladder's fits as ladder.png."""
    from b6lab.sweep.plots import write_plots

    folder.mkdir(parents=True, exist_ok=True)
    write_csv(runs, keys, folder / "results.csv")
    written = [folder / "results.csv", *(write_plots(runs, keys, folder, title, metric) if plots else [])]
    if plots and scaling is not None:
        written.append(scaling.plot(folder / "ladder.png", f"{title}, final {metric_name(metric)}"))
    return written


def result_rows(runs: list[RunResult], keys: list[str], show_names: bool, metric: str = "val_loss") -> list[dict]:
    """What the table shows, one dict per run, formatted for reading."""
    # optim.name -> optim, not name: the column says which plugin it is.
    shorts = {key: key.rsplit(".", 2)[-2] if key.endswith(".name") else short_name(key, keys) for key in keys}
    unit = "" if metric == "val_loss" else " bpb"
    rows = []
    for run in runs:
        row = {"run": run.name} if show_names else {}
        row |= {shorts[key]: run.grid.get(key, "-") for key in keys}
        row |= {
            "seed": "-" if run.seed is None else str(run.seed),
            f"best val{unit}": _loss(getattr(run, f"best_{metric}")),
            f"final val{unit}": _loss(getattr(run, f"final_{metric}")),
            "tokens": _count(run.tokens),
            "tokens/s": _count(run.tokens_per_sec),
            "status": run.status,
        }
        rows.append(row)
    return rows


NUMERIC = {"best val", "final val", "best val bpb", "final val bpb", "tokens", "tokens/s", "params", "seeds", "runs"}


def text_table(rows: list[dict]) -> str:
    if not rows:
        return "(no runs)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}

    def line(cells: dict) -> str:
        return "  ".join(str(cells[c]).rjust(widths[c]) if c in NUMERIC else str(cells[c]).ljust(widths[c])
                         for c in columns).rstrip()

    header = line({c: c for c in columns})
    return "\n".join([header, "-" * len(header)] + [line(row) for row in rows])


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no runs)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def reasons(runs: list[RunResult]) -> list[str]:
    """Why each run that did not complete stopped."""
    return [f"{run.name}: {run.status}: {run.reason}" for run in runs if run.status != "completed" and run.reason]


def write_csv(runs: list[RunResult], keys: list[str], path: Path) -> None:
    columns = ["run", *keys, "seed", "status", "best_val_loss", "final_val_loss", "best_val_bpb", "final_val_bpb",
               "tokens", "tokens_per_sec", "steps", "params", "wall_seconds", "reason", "folder"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for run in runs:
            writer.writerow({
                "run": run.name, **{key: run.grid.get(key, "") for key in keys}, "seed": run.seed, "status": run.status,
                "best_val_loss": run.best_val_loss, "final_val_loss": run.final_val_loss,
                "best_val_bpb": run.best_val_bpb, "final_val_bpb": run.final_val_bpb, "tokens": run.tokens,
                "tokens_per_sec": run.tokens_per_sec, "steps": run.steps, "params": run.params,
                "wall_seconds": run.wall_seconds, "reason": run.reason or "", "folder": str(run.folder),
            })


def comparison_text(comparison: Comparison, show_names: bool) -> str:
    """What `b6lab compare` prints: the runs, why runs ended early, each key's verdicts, two keys at once."""
    parts = [text_table(result_rows(comparison.runs, comparison.shown_keys, show_names, comparison.metric))]
    notes = reasons(comparison.runs)
    if notes:
        parts.append("\n".join(f"  {note}" for note in notes))
    parts += [f"\nwarning: {warning}" for warning in comparison.warnings]
    if comparison.scaling is not None:
        parts.append("\n" + comparison.scaling.text())
    if comparison.keys:
        parts.append("\n" + verdicts_text(comparison))
    else:
        parts.append("\nThe runs' configs differ only in their seeds, folders and logging: no key to group by.")
    return "\n".join(parts)


def write_markdown(path: Path, title: str, comparison: Comparison, show_names: bool, plots: list[Path]) -> None:
    """A report to paste into a paper draft or a pull request: table, plots, and verdicts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", markdown_table(result_rows(comparison.runs, comparison.shown_keys, show_names,
                                                      comparison.metric))]
    notes = reasons(comparison.runs)
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes))
    parts += [f"**Warning:** {warning}" for warning in comparison.warnings]
    for plot in plots:
        parts.append(f"![{plot.stem.replace('_', ' ')}]({os.path.relpath(plot, path.parent)})")
    if comparison.keys:
        parts.append(f"## By key (final {metric_name(comparison.metric)}, mean ± std over seeds)")
        parts.append(verdicts_text(comparison, markdown=True))
    path.write_text("\n\n".join(parts) + "\n")


# ---------------------------------------------------------------------------------------------
# The verdicts: a table per key, a sentence per difference, and the two-way table


def metric_name(metric: str) -> str:
    return {"val_loss": "val loss", "val_bpb": "val bits per byte"}[metric]


def verdicts_text(comparison: Comparison, markdown: bool = False) -> str:
    table = markdown_table if markdown else text_table
    bullet = "- " if markdown else "  "
    blocks = []
    for summary in comparison.summaries:
        blocks.append(table(key_rows(summary, comparison.metric)))
        sentences = verdict_sentences(summary)
        if sentences:
            blocks.append("\n".join(bullet + sentence for sentence in sentences))
    if comparison.pooled:
        blocks.append(f"Averaged within each seed (not grouped by): {', '.join(comparison.pooled)}.")
    if comparison.interaction is not None:
        blocks.append(two_way_caption(comparison.interaction, comparison.metric) + "\n\n"
                      + table(two_way_rows(comparison.interaction)))
        sentences = interaction_sentences(comparison.interaction)
        if sentences:
            blocks.append("\n".join(bullet + sentence for sentence in sentences))
    blocks.append(sequential_rule(comparison.alpha) if comparison.sequential else
                  rule_sentence(comparison.alpha, comparison.family))
    return "\n\n".join(blocks)


def key_rows(summary: KeySummary, metric: str) -> list[dict]:
    rows = []
    for v in summary.values:
        row = {summary.key: v.value}
        is_reference = v is summary.reference
        if summary.beside:
            row["with"] = ", ".join(f"{key}={value}" for key, value in v.beside.items())
        row |= {
            f"final {metric_name(metric)}": _mean_std(v.mean, v.std),
            "seeds": str(v.seeds),
            "runs": str(v.runs),
            "diverged": f"{v.diverged}/{v.runs + v.diverged}" if v.diverged else "",
            ("vs reference [sequential CI]" if summary.method else "vs reference [Holm CI]"):
                "" if v.delta is None or is_reference else _delta(v),
            "p (Holm)": "" if v.p is None else _p(v.p),
            "verdict": v.verdict,
        }
        rows.append(row)
    for column, shown in (("diverged", any(v.diverged for v in summary.values)), ("p (Holm)", not summary.method)):
        if not shown:
            for row in rows:
                del row[column]
    return rows


def sequential_sentences(summary: KeySummary) -> list[str]:
    """A sequential sweep's verdicts: what was decided, at how many seeds, by which method."""
    reference = summary.reference
    lines = []
    for v in summary.values:
        if reference is None or v is reference:
            continue
        ci = (f"repeated {1 - summary.alpha:.0%} CI at the deciding look {v.ci[0]:+.4f} to {v.ci[1]:+.4f}; " if v.ci
              else "its interval is still unbounded at this seed count; ")
        seeds = f"{v.test_seeds} seeds" + (f", decided at {v.decided_at}" if v.decided_at else "")
        if v.verdict == "worse":
            lines.append(f"{summary.key}: {v.value} is worse than {reference.value} by {v.delta:.4f} ({ci}{seeds})")
        elif v.verdict == "equivalent":
            lines.append(f"{summary.key}: {v.value} is equivalent to {reference.value}, {v.note} ({ci}{seeds})")
        else:
            delta = f": {v.delta:+.4f}" if v.delta is not None else ""
            lines.append(f"{summary.key}: {v.value} vs {reference.value}{delta}: {v.verdict}, {v.note} ({ci}{seeds})")
    lines.append(f"{summary.key}: {summary.method}")
    return lines


def verdict_sentences(summary: KeySummary) -> list[str]:
    """One plain sentence per value against the reference, and the runs left out."""
    if summary.method:
        return sequential_sentences(summary) + _left_out(summary)
    reference = summary.reference
    level = f"{summary.alpha:.0%}"
    holm_over = f"after Holm over {_pairs(summary.family_size)}" + (" of every key" if summary.family == "all" else "")
    lines = []
    for v in summary.values:
        if reference is None or v is reference or (v.mean is None and not v.diverged):
            continue
        head = f"{summary.key}: {v.value} vs {reference.value}" + (f": {v.delta:+.4f}" if v.delta is not None else "")
        if v.verdict == "worse" and v.by_divergence:
            lines.append(f"{summary.key}: {v.value} is worse than {reference.value}: it diverged in {v.diverged} of "
                         f"{v.runs + v.diverged} runs ({reference.value}: {reference.diverged}; exact sign test over "
                         f"the seeds where one diverged, {_p_phrase(v.p)} {holm_over})")
        elif v.verdict == "worse":
            lines.append(f"{summary.key}: {v.value} is worse than {reference.value} by {v.delta:.4f} "
                         f"({_ci_words(v)}; {_test_words(v)}, {_p_phrase(v.p)} {holm_over})")
        elif v.verdict == "not distinguishable" and v.p is not None and v.p < summary.alpha:
            lines.append(f"{head} ({_ci_words(v)}): lower on the seeds both completed ({_p_phrase(v.p)} {holm_over}), "
                         f"but it diverged in {v.diverged} of {v.runs + v.diverged} runs: not judged better")
        elif v.verdict == "not distinguishable":
            ci = f" ({_ci_words(v)})" if v.ci else ""
            lines.append(f"{head}{ci}: not distinguishable at {level} ({_p_phrase(v.p)} {holm_over}){_needed(v)}")
        else:
            lines.append(f"{head}: inconclusive, {v.note}{_needed(v)}")
    if reference is not None and reference.verdict in ("lowest mean", "reference") and len(summary.values) > 1:
        why = ("the lowest mean" if reference.verdict == "lowest mean" else "it diverged least")
        if reference.verdict == "lowest mean" and any(v.diverged for v in summary.values):
            why += " among the values that diverged least"
        lines.append(f"{summary.key}: {reference.value} is the reference ({why}), not `best`: not every other "
                     "value is worse")
    return lines + _left_out(summary)


def _left_out(summary: KeySummary) -> list[str]:
    """The runs that diverged, and those without an outcome."""
    lines = []
    counted = "not averaged into the mean" + ("" if summary.method else ", counted by the sign test")
    for v in summary.values:
        if v.diverged:
            lines.append(f"{summary.key}={v.value}: diverged in {v.diverged} of {v.runs + v.diverged} runs "
                         f"(an outcome: {counted})")
        other = {status: n for status, n in v.not_counted.items() if status != "diverged"}
        if other:
            left_out = ", ".join(f"{n} {status}" for status, n in other.items())
            lines.append(f"{summary.key}={v.value}: {left_out} (not counted)")
    return lines


def two_way_caption(table: TwoWay, metric: str) -> str:
    return (f"{table.rows_key} x {table.columns_key}: final {metric_name(metric)}, mean ± std over seeds "
            f"[{1 - table.alpha:.0%} t interval of the mean] (n seeds); an interaction is a row difference that "
            "changes across columns, tested below")


def two_way_rows(table: TwoWay) -> list[dict]:
    rows = []
    for row in table.rows:
        cells = {f"{table.rows_key} \\ {table.columns_key}": row}
        for column in table.columns:
            cell = table.cells[row, column]
            text = "-" if cell.mean is None else f"{_mean_std(cell.mean, cell.std)} ({cell.seeds})"
            if cell.ci is not None:
                text += f" [{cell.ci[0]:.4f}, {cell.ci[1]:.4f}]"
            if cell.diverged:
                text += f", diverged {cell.diverged}/{cell.runs}"
            cells[column] = text
        rows.append(cells)
    return rows


def interaction_sentences(table: TwoWay) -> list[str]:
    """The difference of differences for each pair of rows and pair of columns."""
    lines = []
    for c in table.interactions:
        (ra, rb), (ca, cb) = c.rows, c.columns
        what = (f"interaction {table.rows_key} x {table.columns_key}: ({ra} - {rb} at {ca}) - ({ra} - {rb} at {cb})")
        if c.verdict == "inconclusive":
            lines.append(f"{what}: inconclusive, needs 2+ seeds that completed in all four cells")
            continue
        lines.append(f"{what} = {c.delta:+.4f} (Holm CI {c.ci[0]:+.4f} to {c.ci[1]:+.4f}; paired t over {c.seeds} "
                     f"seeds, {_p_phrase(c.p)} after Holm over {_pairs(len(table.interactions))}): "
                     + ("the effect of one key depends on the other" if c.verdict == "interaction"
                        else "no interaction shown"))
    return lines


def rule_sentence(alpha: float, family: str = "key") -> str:
    return (f"Verdicts: {rule(family).replace('an alpha', f'a {alpha:.0%}')}. `best` only when every other value is "
            "worse, else the reference is the `lowest mean`; `inconclusive`: fewer than 2 seeds or no spread between "
            "them. Each interval is at the level Holm tested its pair at, so it excludes 0 exactly when the losses "
            "decided `worse`. Adding seeds to these runs after looking and testing again is not covered (docs/sweeps.md).")


def _ci_words(v: ValueSummary) -> str:
    return f"Holm {_percent(v.ci_level)} CI {v.ci[0]:+.4f} to {v.ci[1]:+.4f}"


def _percent(level: float) -> str:
    """95%, 98.3%: a CI level as people write it."""
    return f"{level:.1%}".replace(".0%", "%")


def _test_words(v: ValueSummary) -> str:
    if v.test and v.test.startswith("paired t"):
        return f"paired t over {v.test_seeds} seeds"
    return f"Welch t with Hsu's df, {v.test_seeds}+ seeds each"


def _needed(v: ValueSummary) -> str:
    if v.seeds_needed is not None:
        return (f"; planning a new sweep, about {v.seeds_needed} seeds per value would detect a difference this "
                "size at the spread seen, 80% of the time (topping up these runs and testing again voids the "
                "error rate)")
    if "1 seed" in v.note:
        return "; run 2+ seeds per value to measure the spread"
    return ""



def _delta(v: ValueSummary) -> str:
    text = f"{v.delta:+.4f}" if v.delta is not None else "-"
    if v.ci is None and v.test == "sequential paired t":
        return text + " [unbounded yet]"  # a sequential interval needs a few seeds to be finite
    return text + (f" [{v.ci[0]:+.4f}, {v.ci[1]:+.4f}]" if v.ci is not None else "")


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def _pairs(n: int) -> str:
    return f"{n} pair" + "s" * (n != 1)


def _p_phrase(p: float) -> str:
    return f"p = {p:.3f}" if p >= 0.001 else "p < 0.001"


def _loss(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _count(value) -> str:
    return "-" if value is None else f"{value:,.0f}"
