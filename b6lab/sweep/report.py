"""The results of runs side by side: one row per run in the terminal, in results.csv, and in a
markdown report, followed by each grid key's mean ± std over seeds and the verdict."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from b6lab.sweep.grid import short_name
from b6lab.sweep.folders import RunResult
from b6lab.sweep.stats import KeySummary, seed_spread, summarize_key, verdict_lines


def sweep_header(exp, trials) -> str:
    """The sweep in one paragraph: its size, what each trial gets, and where it writes."""
    seeds = f"{len(exp.seeds)} seed" + ("s" if len(exp.seeds) > 1 else "")
    shape = " x ".join([f"{len(axis.values)} {axis.short}" for axis in exp.grid] + [seeds])
    per_trial = f"{exp.cpus:g} CPU" + (f" + {exp.gpus:g} GPU" if exp.gpus else "")
    at_once = f"at most {exp.max_concurrent} at a time" if exp.max_concurrent else "as many at a time as fit"
    early = f"; early stopping: {exp.scheduler['name']}" if exp.scheduler else ""
    return (f"{exp.name}: {len(trials)} trials ({shape}), {per_trial} per trial, {at_once}{early}\n"
            f"  folder: {exp.storage}\n")


def trial_rows(trials, exp) -> list[dict]:
    """The dry-run table: what each trial will run, before anything does."""
    shorts = {axis.key: axis.short for axis in exp.grid}
    rows = []
    for t in trials:
        row = {"#": str(t.index), **{shorts[key]: label for key, label in t.grid.items()}, "seed": str(t.seed)}
        row |= {kind: name for kind, name in t.plugins.items() if kind not in row}  # a grid column already says it
        row |= {"params": "?" if t.params is None else f"{t.params / 1e6:.2f}M", "tokens": _count(t.tokens),
                "status": "skip" if t.skip_reason else "run"}
        rows.append(row)
    return rows


def write_results(runs: list[RunResult], keys: list[str], folder: Path, title: str) -> list[Path]:
    """results.csv and the plots, into `folder`."""
    from b6lab.sweep.plots import write_plots

    folder.mkdir(parents=True, exist_ok=True)
    write_csv(runs, keys, folder / "results.csv")
    return [folder / "results.csv", *write_plots(runs, keys, folder, title)]


def result_rows(runs: list[RunResult], keys: list[str], show_names: bool) -> list[dict]:
    """What the table shows, one dict per run, formatted for reading."""
    shorts = {key: short_name(key, keys) for key in keys}
    rows = []
    for run in runs:
        row = {"run": run.name} if show_names else {}
        row |= {shorts[key]: run.grid.get(key, "-") for key in keys}
        row |= {
            "seed": "-" if run.seed is None else str(run.seed),
            "best val": _loss(run.best_val_loss),
            "final val": _loss(run.final_val_loss),
            "tokens": _count(run.tokens),
            "tokens/s": _count(run.tokens_per_sec),
            "status": run.status,
        }
        rows.append(row)
    return rows


def text_table(rows: list[dict]) -> str:
    if not rows:
        return "(no runs)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}
    numeric = {"best val", "final val", "tokens", "tokens/s", "params"}

    def line(cells: dict) -> str:
        return "  ".join(str(cells[c]).rjust(widths[c]) if c in numeric else str(cells[c]).ljust(widths[c])
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


def key_summaries(runs: list[RunResult], keys: list[str]) -> list[KeySummary]:
    return [summarize_key(runs, key, keys) for key in keys]


def summary_text(runs: list[RunResult], keys: list[str], markdown: bool = False) -> str:
    """Each grid key's values as mean ± std over seeds, then the verdict in sentences."""
    if not keys:
        return ""
    summaries = key_summaries(runs, keys)
    blocks = []
    for summary in summaries:
        rows = [{
            summary.key: s.value,
            "final val loss": "-" if s.mean is None else f"{s.mean:.4f}" + (f" ± {s.std:.4f}" if s.std is not None else ""),
            "seeds": str(s.seeds),
            "vs best": "" if s.delta is None or s.verdict == "best" else f"{s.delta:+.4f}",
            "verdict": s.verdict + (f" (±{s.noise:.4f})" if s.noise is not None else ""),
        } for s in summary.values]
        blocks.append(markdown_table(rows) if markdown else text_table(rows))
    spread = seed_spread(runs, keys)
    spread_line = (f"Seed spread (std over seeds of otherwise identical runs, pooled): {spread:.4f}." if spread is not None
                   else "Seed spread: unknown (each configuration ran with one seed).")
    verdicts = [line for summary in summaries for line in verdict_lines(summary)]
    bullet = "- " if markdown else "  "
    return "\n\n".join(blocks + [spread_line, "\n".join(bullet + line for line in verdicts)]).rstrip()


def write_csv(runs: list[RunResult], keys: list[str], path: Path) -> None:
    columns = ["run", *keys, "seed", "status", "best_val_loss", "final_val_loss", "tokens", "tokens_per_sec",
               "steps", "params", "wall_seconds", "reason", "folder"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for run in runs:
            writer.writerow({
                "run": run.name, **{key: run.grid.get(key, "") for key in keys}, "seed": run.seed, "status": run.status,
                "best_val_loss": run.best_val_loss, "final_val_loss": run.final_val_loss, "tokens": run.tokens,
                "tokens_per_sec": run.tokens_per_sec, "steps": run.steps, "params": run.params,
                "wall_seconds": run.wall_seconds, "reason": run.reason or "", "folder": str(run.folder),
            })


def terminal_report(runs: list[RunResult], keys: list[str], show_names: bool) -> str:
    """What `b6lab sweep` and `b6lab compare` print: the table, why runs ended early, and the verdict."""
    parts = [text_table(result_rows(runs, keys, show_names))]
    notes = reasons(runs)
    if notes:
        parts.append("\n".join(f"  {note}" for note in notes))
    if keys:
        parts.append("\n" + summary_text(runs, keys))
    else:
        parts.append("\nThe runs' configs differ only in their seeds, folders and logging: no key to group by.")
    return "\n".join(parts)


def write_markdown(path: Path, title: str, runs: list[RunResult], keys: list[str], show_names: bool,
                   plots: list[Path]) -> None:
    """A report to paste into a paper draft or a pull request: table, plots, and verdict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", markdown_table(result_rows(runs, keys, show_names))]
    notes = reasons(runs)
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes))
    for plot in plots:
        parts.append(f"![{plot.stem.replace('_', ' ')}]({os.path.relpath(plot, path.parent)})")
    if keys:
        parts.append("## By grid key (final val loss, mean ± std over seeds)")
        parts.append(summary_text(runs, keys, markdown=True))
        parts.append("The seed spread is the pooled std of final val loss over seeds of otherwise identical runs. "
                     "A difference is *within the seed spread* when it is smaller than twice its standard error "
                     "from seed noise, 2 × spread × √(1/n₁ + 1/n₂) for n₁, n₂ runs (the ± in the verdict).")
    path.write_text("\n\n".join(parts) + "\n")


def _loss(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _count(value) -> str:
    return "-" if value is None else f"{value:,.0f}"
