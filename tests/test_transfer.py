"""b6lab transfer-check: the optimum-per-width fit and its drift on synthetic losses (no training),
their intervals' coverage by simulation, the command's one-line mistakes, and a small real run."""

import json
import math

import numpy as np
import pytest

from b6lab import transfer
from b6lab.cli import main

WIDTHS = (32, 64, 128)
LRS = 1e-3 * 2.0 ** np.arange(-3, 4)


def synthetic(drift, rng, noise=0.004, seeds=1, curvature=0.05, base_lr=1e-3):
    """Losses 2 + curvature * (ln lr - ln lr*)^2 + noise, with ln lr* = ln base_lr + drift * ln(width / 32)."""
    runs, truth = {}, {}
    for width in WIDTHS:
        optimum = math.log(base_lr) + drift * math.log(width / WIDTHS[0])
        lrs = np.repeat(LRS, seeds)
        losses = 2 + curvature * (np.log(lrs) - optimum) ** 2 + rng.normal(0, noise, len(lrs))
        runs[width], truth[width] = (list(lrs), list(losses)), optimum
    return runs, truth


@pytest.mark.parametrize("drift", [0.0, -0.5, -1.0])
def test_the_fit_recovers_a_known_optimum_and_drift(drift):
    runs, truth = synthetic(drift, np.random.default_rng(0), seeds=3)
    fit = transfer.fit_optima(runs)
    for optimum in fit.optima:
        assert optimum.log_lr == pytest.approx(truth[optimum.width], abs=0.15)
        assert optimum.low < optimum.lr < optimum.high  # whether they cover the truth: the simulation below
    assert fit.drift.slope == pytest.approx(drift, abs=0.1)
    assert fit.drift.low < fit.drift.slope < fit.drift.high
    if drift == 0.0:
        assert fit.df == 3 * 3 * 5 - 9  # 5 lrs around each best, 3 seeds, 3 parameters per width


def test_the_intervals_cover_the_truth_at_their_level():
    """95% intervals, 400 simulated sweeps of one seed (df = 15 - 9 = 6): each width's and the drift's coverage."""
    rng = np.random.default_rng(1)
    covered_width, covered_drift, n = 0, 0, 400
    for _ in range(n):
        runs, truth = synthetic(-0.5, rng)
        fit = transfer.fit_optima(runs)
        covered_width += sum(o.low < math.exp(truth[o.width]) < o.high for o in fit.optima)
        covered_drift += fit.drift.low < -0.5 < fit.drift.high
    assert 0.92 <= covered_width / (3 * n) <= 0.98
    assert 0.92 <= covered_drift / n <= 0.98


def test_an_optimum_at_the_grids_edge_says_so_and_a_concave_one_has_none():
    rng = np.random.default_rng(2)
    runs, _ = synthetic(-1.0, rng, base_lr=1e-3 * 2**3)  # width 32's optimum at the largest lr, the others inside
    edge = transfer.fit_optima(runs).optima[0]
    assert not edge.bracketed and "edge" in edge.note
    assert transfer.fit_optima(runs).drift.widths == [64, 128]  # an extrapolated optimum does not decide the drift
    concave = {w: (list(LRS), list(2 - 0.05 * np.log(LRS / 1e-3) ** 2)) for w in WIDTHS[:2]}
    fit = transfer.fit_optima(concave)
    assert all(o.lr is None and "convex" in o.note for o in fit.optima)
    assert fit.drift.slope is None


def test_diverged_runs_are_left_out_of_the_fit():
    runs, truth = synthetic(0.0, np.random.default_rng(3))
    lrs, losses = runs[32]
    losses[-1] = math.inf  # the largest lr diverged
    fit = transfer.fit_optima(runs)
    assert max(fit.optima[0].fitted_lrs) < lrs[-1]
    assert fit.optima[0].log_lr == pytest.approx(truth[32], abs=0.2)


def test_the_tables_show_each_optimum_and_the_drift():
    runs, _ = synthetic(-0.5, np.random.default_rng(4))
    text = transfer.markdown_tables({"standard": transfer.fit_optima(runs)}, {"standard": {"logits": 0.9}})
    assert "| standard | 64 |" in text and "drift" in text and "falls with width" in text and "+0.90" in text


@pytest.mark.parametrize("argv, words", [
    (["--widths", "32"], "--widths"),
    (["--widths", "32,48"], "head size"),
    (["--lrs", "1e-3,2e-3"], "--lrs"),
    (["--parametrizations", "standard,mu"], "unknown parametrization plugin 'mu'"),
    (["--steps", "0"], "--steps"),
])
def test_a_bad_option_is_one_line_and_exit_2(capsys, tmp_path, argv, words):
    assert main(["transfer-check", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


@pytest.mark.slow
def test_transfer_check_end_to_end_at_the_smallest_size(tmp_path, capsys):
    out = tmp_path / "check"
    status = main(["transfer-check", "--preset", "tiny", "--widths", "32,64", "--lrs", "5e-4,1e-3,2e-3,4e-3,8e-3",
                   "--steps", "15", "--coord-steps", "2", "--set", "train.eval_steps=1",
                   "--set", "train.threads=1", "--out", str(out)])  # one thread: losses equal to the bit
    assert status == 0
    document = json.loads((out / "transfer.json").read_text())
    assert set(document["fits"]) == {"standard", "mup"}
    for name in ("standard", "mup"):
        assert [o["width"] for o in document["fits"][name]["optima"]] == [32, 64]
        assert set(document["coordinate_check"]["rms"][name]) == {"32", "64"}
        assert all(len(v["lrs"]) == 5 for v in document["runs"][name].values())
    # At the base width mup is standard to the bit: the same losses.
    assert document["runs"]["mup"]["32"] == document["runs"]["standard"]["32"]
    for name in ("transfer.md", "transfer_lr.png", "transfer_coords.png"):
        assert (out / name).stat().st_size > 0
    assert "| mup | 64 |" in capsys.readouterr().out
