"""Plots of runs side by side, as PNG files (METRIC: val_loss, or val_bpb when compared on it):

    METRIC_vs_tokens.png        every run's eval curve, coloured by the first key, dashed per seed
    final_METRIC_by_key.png     one panel per key: each run's final value, and mean ± std over seeds
    block_diagnostics.png       each block's gradient norm and residual-stream RMS by layer, in the first
                                and the last record (runs that recorded them; Xiong et al. 2020, Fig. 3)
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (a Ray head node or CI has none)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from b6lab.sweep.grid import short_name  # noqa: E402
from b6lab.sweep.folders import RunResult  # noqa: E402
from b6lab.sweep.verdicts import final_value, label, summarize_key  # noqa: E402

LINESTYLES = ("-", "--", ":", "-.")


def write_plots(runs: list[RunResult], keys: list[str], folder: Path, title: str,
                metric: str = "val_loss") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if any(run.curves.get(metric) for run in runs):
        written.append(plot_curves(runs, keys, folder / f"{metric}_vs_tokens.png", title, metric))
    if keys and any(final_value(run, metric) is not None for run in runs):
        written.append(plot_by_key(runs, keys, folder / f"final_{metric}_by_key.png", title, metric))
    if any(run.diagnostics for run in runs):
        written.append(plot_block_diagnostics(runs, keys, folder / "block_diagnostics.png", title))
    return written


def _colours_and_styles(runs: list[RunResult], keys: list[str]):
    """A colour per value of the first key (per run without keys), a line style per seed."""
    colour_key = keys[0] if keys else None
    value_of = (lambda run: label(run, colour_key)) if colour_key else (lambda run: run.name)
    values = list(dict.fromkeys(value_of(run) for run in runs))
    colours = {value: plt.get_cmap("tab10")(i % 10) for i, value in enumerate(values)}
    seeds = list(dict.fromkeys(run.seed for run in runs))

    def style(run):
        return {"color": colours[value_of(run)], "linestyle": LINESTYLES[seeds.index(run.seed) % len(LINESTYLES)]}

    # One legend entry per colour (and per seed's line style), not one per run.
    handles = [plt.Line2D([], [], color=colours[v], label=str(v)) for v in values]
    if len(seeds) > 1:
        handles += [plt.Line2D([], [], color="grey", linestyle=LINESTYLES[i % len(LINESTYLES)], label=f"seed {s}")
                    for i, s in enumerate(seeds)]
    legend_title = short_name(colour_key, keys) if colour_key else None
    return style, handles, legend_title


def plot_curves(runs: list[RunResult], keys: list[str], path: Path, title: str, metric: str = "val_loss") -> Path:
    style, handles, legend_title = _colours_and_styles(runs, keys)
    name = metric.replace("_", " ")
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in runs:
        if run.curves.get(metric):
            tokens, values = zip(*run.curves[metric])
            ax.plot(tokens, values, **style(run), marker="o", markersize=2.5, alpha=0.8, linewidth=1.2)
    ax.legend(handles=handles, title=legend_title, fontsize="small")
    ax.set_xlabel("tokens")
    ax.set_ylabel(name)
    ax.set_title(f"{title}: {name} against tokens")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_by_key(runs: list[RunResult], keys: list[str], path: Path, title: str, metric: str = "val_loss") -> Path:
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys) + 1, 4.2), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys):
        summary = summarize_key(runs, key, metric)
        for x, value in enumerate(summary.values):
            finals = [final_value(r, metric) for r in runs if label(r, key) == value.value]
            finals = [f for f in finals if f is not None]
            # Spread the points a little sideways so that equal values stay visible.
            offsets = [(i - (len(finals) - 1) / 2) * 0.06 for i in range(len(finals))]
            ax.scatter([x + o for o in offsets], finals, s=14, alpha=0.6, color="tab:blue")
            if value.mean is not None:
                ax.errorbar(x, value.mean, yerr=value.std or 0, fmt="_", color="black", markersize=18, capsize=5)
            if value.not_counted:
                left_out = ", ".join(f"{n} {status}" for status, n in value.not_counted.items())
                ax.annotate(left_out, (x, 0), xycoords=("data", "axes fraction"),
                            xytext=(0, 4), textcoords="offset points", ha="center", fontsize="x-small", color="tab:red")
        long_labels = max(len(v.value) for v in summary.values) > 8
        ax.set_xticks(range(len(summary.values)), [v.value for v in summary.values],
                      rotation=30 if long_labels else 0, ha="right" if long_labels else "center")
        ax.set_xlim(-0.6, len(summary.values) - 0.4)
        ax.set_title(short_name(key, keys))
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(f"final {metric.replace('_', ' ')} (bar: mean ± std over seeds)")
    fig.suptitle(f"{title}: final {metric.replace('_', ' ')} by key")
    fig.tight_layout()
    return _save(fig, path)


def plot_block_diagnostics(runs: list[RunResult], keys: list[str], path: Path, title: str) -> Path:
    """Gradient norm and residual RMS of each block (x: layer), in the first diagnostics record of
    each run (the trainer writes one at step 0, the gradient at the initial weights) and the last: Post-LN's gradients growing toward the last layers at initialisation
    (Xiong et al. 2020, Fig. 3) is the picture a norm study looks for."""
    with_diagnostics = [run for run in runs if run.diagnostics]
    style, handles, legend_title = _colours_and_styles(with_diagnostics, keys)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    rows = (("block_grad_norm", "gradient norm of the block"), ("block_residual_rms", "residual RMS after the block"))
    for column, (which, when) in enumerate(((0, "first record"), (-1, "last record"))):
        steps = sorted({run.diagnostics[which]["step"] for run in with_diagnostics})
        at = "step " + ", ".join(map(str, steps[:4])) + ("…" if len(steps) > 4 else "")
        at += " (initialisation)" * (steps == [0])
        for row, (field, ylabel) in enumerate(rows):
            ax = axes[row][column]
            for run in with_diagnostics:
                values = run.diagnostics[which][field]
                ax.plot(range(1, len(values) + 1), values, **style(run), marker="o", markersize=3, alpha=0.8)
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _plain_log_labels(ax)
            ax.grid(alpha=0.3, which="both")
            if column == 0:
                ax.set_ylabel(ylabel)
            if row == 0:
                ax.set_title(f"{when}: {at}")
            else:
                ax.set_xlabel("layer (block), input side first")
    axes[0][1].legend(handles=handles, title=legend_title, fontsize="small")
    fig.suptitle(f"{title}: per-block diagnostics")
    fig.tight_layout()
    return _save(fig, path)


def _plain_log_labels(ax) -> None:
    """0.02, 0.05, 0.1 on a log axis rather than 2×10⁻², 5×10⁻², 10⁻¹; 2s and 5s only over two decades or less."""
    def minor(y, _):
        low, high = ax.get_ylim()
        mantissa = round(y / 10 ** math.floor(math.log10(y)), 6)
        return f"{y:g}" if high / low <= 100 and mantissa in (2, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _save(fig, path: Path) -> Path:
    """A PNG of 256 colours: a fifth of the size, small enough to commit beside a report."""
    from PIL import Image  # matplotlib's own dependency

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path
