"""The comparison plots, read back from their figures: every key's values can be told apart, every
run is labelled, intervals are the 95% t intervals of the mean over seeds, and every panel of the
per-block diagnostics has tick labels."""

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from scipy import stats

from b6lab.sweep import plots
from b6lab.sweep.folders import RunResult

NORMS, WARMUPS, SEEDS = ("pre", "post"), ("0", "30"), (0, 1, 2)
KEYS = ["model.norm", "schedule.warmup_steps"]


def final(norm: str, warmup: str, seed: int) -> float:
    return 2.0 + 0.3 * (norm == "post") * (warmup == "0") + 0.01 * seed * (1 + (warmup == "30"))


def runs(diagnostics=None) -> list[RunResult]:
    made = []
    for norm in NORMS:
        for warmup in WARMUPS:
            for seed in SEEDS:
                loss = final(norm, warmup, seed)
                made.append(RunResult(
                    folder=Path(f"/runs/{norm}-{warmup}-{seed}"), name=f"{norm}-{warmup}-{seed}", config={},
                    grid={"model.norm": norm, "schedule.warmup_steps": warmup}, seed=seed, status="completed",
                    final_val_loss=loss, curves={"val_loss": [(64, loss + 1.0), (128, loss + 0.4), (192, loss)]},
                    diagnostics=diagnostics(norm, seed) if diagnostics else []))
    return made


def test_curves_tell_both_keys_apart_label_every_setting_and_band_the_mean_over_seeds():
    fig = plots.curves_figure(runs(), KEYS, "t")
    ax = fig.axes[0]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == [f"norm={n}, warmup_steps={w} (mean of 3 seeds)" for n in NORMS for w in WARMUPS]
    means = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    styles = {(line.get_color(), line.get_linestyle()) for line in means.values()}
    assert len(styles) == 4  # colour by norm, line style by warmup: four settings, four looks
    # The mean line and its band: the 95% t interval of the mean over the 3 seeds, at every eval.
    mean_line = means["norm=pre, warmup_steps=30 (mean of 3 seeds)"]
    values = np.array([final("pre", "30", s) for s in SEEDS])
    assert mean_line.get_ydata()[-1] == pytest.approx(values.mean())
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 4
    tops = [band.get_paths()[0].vertices[:, 1].max() for band in bands]
    assert any(top == pytest.approx(values.mean() + 1.0 + half) for top in tops)
    assert "95% t interval of the mean over seeds" in ax.get_title()


def test_final_values_by_key_mark_the_other_key_and_show_the_95_percent_t_interval():
    fig = plots.by_key_figure(runs(), KEYS, "t")
    norm_panel, warmup_panel = fig.axes
    assert [t.get_text() for t in norm_panel.get_legend().get_texts()] == list(WARMUPS)  # the other key
    assert [t.get_text() for t in warmup_panel.get_legend().get_texts()] == list(NORMS)
    assert len({tuple(c.get_paths()[0].vertices.ravel()) for c in norm_panel.collections[:12]}) >= 2  # two markers
    assert "95% t interval of the mean" in norm_panel.get_ylabel()
    # The bar of warmup_steps=30: mean over seeds (each seed's mean over the norms), ± t(0.975, 2) s / sqrt 3.
    per_seed = np.array([np.mean([final(n, "30", s) for n in NORMS]) for s in SEEDS])
    half = stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / math.sqrt(3)
    caps = [line.get_ydata()[0] for line in warmup_panel.get_lines() if line.get_marker() == "_"
            and line.get_xdata()[0] == 1]
    assert sorted(caps)[0] == pytest.approx(per_seed.mean() - half) and sorted(caps)[-1] == pytest.approx(per_seed.mean() + half)


@pytest.mark.parametrize("spread", [1.02, 1.6, 30.0, 3000.0])
def test_every_block_diagnostics_panel_has_tick_labels(spread):
    """Log axes over less than a decade (1.02, 1.6) have no power of ten inside: they still get labels."""
    def diagnostics(norm, seed):
        record = {"block_grad_norm": [0.3 * spread ** (i / 3) for i in range(4)],
                  "block_residual_rms": [0.21 + 0.01 * i for i in range(4)]}
        return [record | {"step": 0}, record | {"step": 10}]

    fig = plots.block_diagnostics_figure(runs(diagnostics), KEYS, "t")
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_ylim()
        shown = [(tick.get_loc(), tick.label1.get_text()) for tick in ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
                 if low <= tick.get_loc() <= high and tick.label1.get_text()]
        assert len(shown) >= 2, (ax.get_title(), ax.get_ylim())
        for location, text in shown:  # a label says its tick's value
            assert float(text) == pytest.approx(location, rel=1e-6)
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == [f"norm={n}, warmup_steps={w}" for n in NORMS for w in WARMUPS]
