"""`b6lab compare` over runs made by `b6lab train`, and the seed-spread verdict it gives."""

from pathlib import Path

import pytest

from b6lab.cli import main
from b6lab.config import load_config
from b6lab.sweep.folders import RunResult, collect
from b6lab.sweep.stats import seed_spread, summarize_key, verdict_lines
from b6lab.train.trainer import Trainer


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory):
    """Pre-LN and Post-LN, two seeds each, as four real (tiny) `b6lab train` runs."""
    root = tmp_path_factory.mktemp("runs")
    for norm in ("pre", "post"):
        for seed in (0, 1):
            cfg = load_config(preset="tiny", overrides=[
                f"model.norm={norm}", f"train.seed={seed}", "train.max_steps=8", "train.eval_interval=4",
                "train.eval_steps=2", "train.log_interval=4", "logging.progress=false",
            ])
            Trainer(cfg, root / f"{norm}-{seed}", say=lambda _: None).run()
    return root


def test_compare_puts_train_runs_side_by_side(train_runs, tmp_path, capsys):
    folders = [str(train_runs / name) for name in ("pre-0", "pre-1", "post-0", "post-1")]
    assert main(["compare", *folders, "--out", str(tmp_path / "out"), "--markdown", str(tmp_path / "report.md")]) == 0
    out = capsys.readouterr().out
    # The one config key that tells the runs apart becomes the grouping; the seed is not a key.
    assert out.splitlines()[0].split()[:3] == ["run", "norm", "seed"]
    for name in ("pre-0", "pre-1", "post-0", "post-1"):
        assert name in out
    assert "final val loss" in out and "seed spread" in out.lower()
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == 5
    for plot in ("val_loss_vs_tokens.png", "final_val_loss_by_key.png"):
        assert (tmp_path / "out" / plot).stat().st_size > 5_000
    report = (tmp_path / "report.md").read_text()
    assert "| run | norm | seed |" in report
    assert "](out/val_loss_vs_tokens.png)" in report
    assert "model.norm" in report and ("within the seed spread" in report or "beyond the seed spread" in report)


def test_compare_reads_a_folder_of_runs(train_runs, tmp_path):
    runs, keys = collect([train_runs])
    assert keys == ["model.norm"]
    assert sorted(run.name for run in runs) == ["post-0", "post-1", "pre-0", "pre-1"]
    assert all(run.status == "completed" and len(run.curve) == 2 for run in runs)
    assert {run.seed for run in runs} == {0, 1}


def test_compare_of_a_folder_that_holds_no_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a run folder" in err


def runs_with(losses: dict[str, list[float]], status: dict[str, str] | None = None) -> list[RunResult]:
    """Finished runs with the given final losses per value of `norm`, one seed per loss."""
    return [
        RunResult(folder=Path(f"{value}-{seed}"), name=f"{value}-{seed}", config={}, grid={"model.norm": value},
                  seed=seed, status=(status or {}).get(f"{value}-{seed}", "completed"), final_val_loss=loss)
        for value, values in losses.items() for seed, loss in enumerate(values)
    ]


def test_a_difference_smaller_than_the_seed_spread_is_called_so():
    summary = summarize_key(runs_with({"pre": [2.30, 2.34], "post": [2.33, 2.37]}), "model.norm")
    pre, post = summary.values
    assert (pre.verdict, post.verdict) == ("best", "within the seed spread")
    assert pre.mean == pytest.approx(2.32) and pre.std == pytest.approx(0.0283, abs=1e-4)
    assert "within the seed spread" in verdict_lines(summary)[0]


def test_a_difference_larger_than_the_seed_spread_is_called_so():
    summary = summarize_key(runs_with({"pre": [2.300, 2.302], "post": [2.400, 2.404]}), "model.norm")
    assert [v.verdict for v in summary.values] == ["best", "beyond the seed spread"]
    assert "post is worse than pre by 0.1010" in verdict_lines(summary)[0]


def test_with_one_seed_the_verdict_says_the_spread_is_unknown():
    runs = runs_with({"pre": [2.3], "post": [2.4]})
    assert summarize_key(runs, "model.norm").values[1].verdict == "seed spread unknown (needs 2+ seeds)"
    assert seed_spread(runs, ["model.norm"]) is None


def test_diverged_runs_are_left_out_of_the_means_and_reported():
    runs = runs_with({"pre": [2.30, 2.31], "post": [2.35, 9.99]}, status={"post-1": "diverged"})
    summary = summarize_key(runs, "model.norm")
    post = summary.values[1]
    assert post.mean == pytest.approx(2.35) and post.runs == 1 and post.not_counted == {"diverged": 1}
    assert "model.norm=post: 1 diverged (not counted)" in verdict_lines(summary)


def test_the_seed_spread_pools_runs_that_differ_only_in_seed():
    runs = runs_with({"pre": [2.0, 2.2], "post": [3.0, 3.4]})
    # Variances 0.02 and 0.08 -> pooled std sqrt(0.05).
    assert seed_spread(runs, ["model.norm"]) == pytest.approx(0.05**0.5)
