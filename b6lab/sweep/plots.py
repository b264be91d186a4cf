"""Two plots of runs side by side, as PNG files:

    val_loss_vs_tokens.png      every run's eval curve, coloured by the first grid key, dashed per seed
    final_val_loss_by_key.png   one panel per grid key: each run's final val loss, and mean ± std over seeds
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (a Ray head node or CI has none)
import matplotlib.pyplot as plt  # noqa: E402

from b6lab.sweep.grid import short_name  # noqa: E402
from b6lab.sweep.folders import RunResult  # noqa: E402
from b6lab.sweep.stats import final_loss, summarize_key  # noqa: E402

LINESTYLES = ("-", "--", ":", "-.")


def write_plots(runs: list[RunResult], keys: list[str], folder: Path, title: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if any(run.curve for run in runs):
        written.append(plot_curves(runs, keys, folder / "val_loss_vs_tokens.png", title))
    if keys and any(final_loss(run) is not None for run in runs):
        written.append(plot_by_key(runs, keys, folder / "final_val_loss_by_key.png", title))
    return written


def plot_curves(runs: list[RunResult], keys: list[str], path: Path, title: str) -> Path:
    colour_key = keys[0] if keys else None
    values = list(dict.fromkeys(run.grid.get(colour_key, run.name) if colour_key else run.name for run in runs))
    colours = {value: plt.get_cmap("tab10")(i % 10) for i, value in enumerate(values)}
    seeds = list(dict.fromkeys(run.seed for run in runs))
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in runs:
        if not run.curve:
            continue
        value = run.grid.get(colour_key, run.name) if colour_key else run.name
        tokens, losses = zip(*run.curve)
        ax.plot(tokens, losses, color=colours[value], linestyle=LINESTYLES[seeds.index(run.seed) % len(LINESTYLES)],
                marker="o", markersize=2.5, alpha=0.8, linewidth=1.2)
    # One legend entry per colour (and per seed's line style), not one per run.
    handles = [plt.Line2D([], [], color=colours[v], label=str(v)) for v in values]
    if len(seeds) > 1:
        handles += [plt.Line2D([], [], color="grey", linestyle=LINESTYLES[i % len(LINESTYLES)], label=f"seed {s}")
                    for i, s in enumerate(seeds)]
    ax.legend(handles=handles, title=short_name(colour_key, keys) if colour_key else None, fontsize="small")
    ax.set_xlabel("tokens")
    ax.set_ylabel("val loss")
    ax.set_title(f"{title}: val loss against tokens")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_by_key(runs: list[RunResult], keys: list[str], path: Path, title: str) -> Path:
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys) + 1, 4.2), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys):
        summary = summarize_key(runs, key, keys)
        for x, value in enumerate(summary.values):
            losses = [final_loss(r) for r in runs if r.grid.get(key, "-") == value.value and final_loss(r) is not None]
            # Spread the points a little sideways so that equal losses stay visible.
            offsets = [(i - (len(losses) - 1) / 2) * 0.06 for i in range(len(losses))]
            ax.scatter([x + o for o in offsets], losses, s=14, alpha=0.6, color="tab:blue")
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
    axes[0][0].set_ylabel("final val loss (bar: mean ± std over seeds)")
    fig.suptitle(f"{title}: final val loss by grid key")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """A PNG of 256 colours: a fifth of the size, small enough to commit beside a report."""
    from PIL import Image  # matplotlib's own dependency

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path
