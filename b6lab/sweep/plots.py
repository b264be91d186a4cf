"""Plots of runs side by side, as PNG files (METRIC: val_loss, or val_bpb when compared on it):

    METRIC_vs_tokens.png        each combination of the keys' values: its mean eval curve over seeds with
                                the 95% t interval of that mean as a band (and each seed's run, faint);
                                colour: the first key's value, line style: the second's, marker: the third's
    final_METRIC_by_key.png     one panel per key: each run's final value (marker and colour: the value of
                                another key), and each value's mean over seeds with its 95% t interval
    block_diagnostics.png       each block's gradient norm and residual-stream RMS by layer, in the first
                                and the last record (runs that recorded them; Xiong et al. 2020, Fig. 3)

The intervals are Student t intervals of a mean over seeds (mean ± t(0.975, n-1) · s/√n): each
seed's run independent, its outcome roughly normal; with 2 seeds t has 1 degree of freedom and
the interval is wide, as it should be.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (a Ray head node or CI has none)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

from b6lab.sweep.grid import short_name  # noqa: E402
from b6lab.sweep.folders import RunResult  # noqa: E402
from b6lab.sweep.stats import t_interval  # noqa: E402
from b6lab.sweep.verdicts import final_value, label, summarize_key  # noqa: E402

LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
BAND = "band: 95% t interval of the mean over seeds"


def write_plots(runs: list[RunResult], keys: list[str], folder: Path, title: str,
                metric: str = "val_loss") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if any(run.curves.get(metric) for run in runs):
        written.append(_save(curves_figure(runs, keys, title, metric), folder / f"{metric}_vs_tokens.png"))
    if keys and any(final_value(run, metric) is not None for run in runs):
        written.append(_save(by_key_figure(runs, keys, title, metric), folder / f"final_{metric}_by_key.png"))
    if any(run.diagnostics for run in runs):
        written.append(_save(block_diagnostics_figure(runs, keys, title), folder / "block_diagnostics.png"))
    return written


class Styles:
    """What tells the runs apart: colour for the first key's values, line style for the second's,
    marker for the third's (runs without keys: a colour per run). A group is one combination of
    the keys' values, the seeds of one setting."""

    def __init__(self, runs: list[RunResult], keys: list[str]):
        self.keys = keys[:3] if keys else []
        self.values = [list(dict.fromkeys(label(run, key) for run in runs)) for key in self.keys]

    def group(self, run: RunResult) -> tuple:
        return tuple(label(run, key) for key in self.keys) if self.keys else (run.name,)

    def name(self, group: tuple) -> str:
        if not self.keys:
            return group[0]
        return ", ".join(f"{short_name(key, self.keys)}={value}" for key, value in zip(self.keys, group))

    def of(self, group: tuple, groups: list[tuple]) -> dict:
        colours = self.values[0] if self.keys else [g[0] for g in groups]
        style = {"color": plt.get_cmap("tab10")(colours.index(group[0]) % 10)}
        if len(self.keys) > 1:
            style["linestyle"] = LINESTYLES[self.values[1].index(group[1]) % len(LINESTYLES)]
        if len(self.keys) > 2:
            style["marker"] = MARKERS[self.values[2].index(group[2]) % len(MARKERS)]
        return style


def curves_figure(runs: list[RunResult], keys: list[str], title: str, metric: str = "val_loss"):
    styles = Styles([run for run in runs if run.curves.get(metric)], keys)
    name = metric.replace("_", " ")
    by_group: dict[tuple, list[RunResult]] = {}
    for run in runs:
        if run.curves.get(metric):
            by_group.setdefault(styles.group(run), []).append(run)
    groups = list(by_group)
    fig, ax = plt.subplots(figsize=(10.5, 5))
    several_seeds = False
    for group, members in by_group.items():
        style = {"marker": "o"} | styles.of(group, groups)
        for run in members:
            tokens, values = zip(*run.curves[metric])
            if len(members) > 1:  # each seed faint, so that an outlier seed is still seen
                ax.plot(tokens, values, **style, markersize=1.5, alpha=0.25, linewidth=0.6)
        if len(members) == 1:
            tokens, values = zip(*members[0].curves[metric])
            ax.plot(tokens, values, **style, markersize=2.5, alpha=0.9, linewidth=1.3, label=styles.name(group))
            continue
        several_seeds = True
        tokens, mean, low, high = _mean_curve(members, metric)
        ax.plot(tokens, mean, **style, markersize=2.5, linewidth=1.8,
                label=f"{styles.name(group)} (mean of {len(members)} seeds)")
        ax.fill_between(tokens, low, high, color=style["color"], alpha=0.15, linewidth=0)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xlabel("tokens")
    ax.set_ylabel(name)
    ax.set_title(f"{title}: {name} against tokens" + (f"\n(line: mean over seeds; {BAND})" if several_seeds else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _mean_curve(runs: list[RunResult], metric: str):
    """At each token count every run of the group evaluated at: the mean over its seeds and the 95% t interval."""
    curves = [dict(run.curves[metric]) for run in runs]
    tokens = sorted(set.intersection(*(set(curve) for curve in curves)))
    mean, low, high = [], [], []
    for t in tokens:
        values = np.array([curve[t] for curve in curves], dtype=float)
        interval = t_interval(values) if np.isfinite(values).all() else None
        mean.append(values.mean())
        low.append(interval[0] if interval else values.mean())
        high.append(interval[1] if interval else values.mean())
    return tokens, mean, low, high


def by_key_figure(runs: list[RunResult], keys: list[str], title: str, metric: str = "val_loss"):
    fig, axes = plt.subplots(1, len(keys), figsize=(3.8 * len(keys) + 1.5, 4.4), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys):
        # Each point's marker and colour give the value of another key, which may matter more.
        other = next((k for k in keys if k != key), None)
        others = list(dict.fromkeys(label(run, other) for run in runs)) if other else []
        summary = summarize_key(runs, key, metric)
        for x, value in enumerate(summary.values):
            members = [r for r in runs if label(r, key) == value.value and final_value(r, metric) is not None]
            # Spread the points a little sideways so that equal values stay visible.
            offsets = [(i - (len(members) - 1) / 2) * 0.06 for i in range(len(members))]
            for run, offset in zip(members, offsets):
                which = others.index(label(run, other)) if other else 0
                ax.scatter(x + offset, final_value(run, metric), s=18, alpha=0.7, marker=MARKERS[which % len(MARKERS)],
                           color=plt.get_cmap("tab10")(which % 10))
            if value.mean is not None:
                ax.errorbar(x, value.mean, yerr=_half_width(value.std, value.seeds), fmt="_", color="black",
                            markersize=18, capsize=5)
            if value.not_counted:
                left_out = ", ".join(f"{n} {status}" for status, n in value.not_counted.items())
                ax.annotate(left_out, (x, 0), xycoords=("data", "axes fraction"),
                            xytext=(0, 4), textcoords="offset points", ha="center", fontsize="x-small", color="tab:red")
        if other:
            ax.legend(handles=[plt.Line2D([], [], linestyle="", marker=MARKERS[i % len(MARKERS)],
                                          color=plt.get_cmap("tab10")(i % 10), label=v) for i, v in enumerate(others)],
                      title=short_name(other, keys), fontsize="x-small", title_fontsize="x-small")
        long_labels = max(len(v.value) for v in summary.values) > 8
        ax.set_xticks(range(len(summary.values)), [v.value for v in summary.values],
                      rotation=30 if long_labels else 0, ha="right" if long_labels else "center")
        ax.set_xlim(-0.6, len(summary.values) - 0.4)
        ax.set_title(short_name(key, keys))
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(f"final {metric.replace('_', ' ')}\n(bar: mean over seeds, 95% t interval of the mean)")
    fig.suptitle(f"{title}: final {metric.replace('_', ' ')} by key")
    fig.tight_layout()
    return fig


def _half_width(std: float | None, seeds: int) -> float:
    """Half the 95% t interval of a mean of `seeds` values of spread `std`; 0 where there is no spread to use."""
    from scipy import stats

    if std is None or seeds < 2:
        return 0.0
    return float(stats.t.ppf(0.975, seeds - 1) * std / math.sqrt(seeds))


def block_diagnostics_figure(runs: list[RunResult], keys: list[str], title: str):
    """Gradient norm and residual RMS of each block (x: layer), in the first diagnostics record of
    each run (the trainer writes one at step 0, the gradient at the initial weights) and the last: Post-LN's gradients growing toward the last layers at initialisation
    (Xiong et al. 2020, Fig. 3) is the picture a norm study looks for."""
    with_diagnostics = [run for run in runs if run.diagnostics]
    styles = Styles(with_diagnostics, keys)
    groups = list(dict.fromkeys(styles.group(run) for run in with_diagnostics))
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
                group = styles.group(run)
                first_of_group = run is next(r for r in with_diagnostics if styles.group(r) == group)
                ax.plot(range(1, len(values) + 1), values, **({"marker": "o"} | styles.of(group, groups)), markersize=3,
                        alpha=0.8, label=styles.name(group) if first_of_group else None)
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
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 0.95))
    fig.suptitle(f"{title}: per-block diagnostics")
    fig.tight_layout()
    return fig


def _plain_log_labels(ax) -> None:
    """0.02, 0.05, 0.1 on a log axis rather than 2×10⁻², 5×10⁻², 10⁻¹; 2s and 5s only over two decades
    or less. Within less than a decade there may be no power of ten, 2 or 5 inside at all (0.21 to
    0.45, say): there a few evenly spaced plain ticks instead, so that no panel is left unlabelled."""
    low, high = ax.get_ylim()
    if high / low < 10:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        return

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
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")  # "tight": legends beside the axes too
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path
