"""`b6lab compare` over runs made by `b6lab train`, the verdicts it gives, and its other outputs:
--by and the two-way table, keys shown beside a plugin choice, --json, --metric val_bpb, and the
per-block diagnostics plot."""

import json
from pathlib import Path

import pytest
import yaml

from b6lab.cli import main
from b6lab.config import load_config
from b6lab.sweep.comparison import Comparison, build, compare
from b6lab.sweep.folders import RunResult, collect
from b6lab.sweep.report import verdict_sentences
from b6lab.sweep.stats import summarize_key
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
    assert "final val loss" in out and "Holm" in out
    assert out.count("best") >= 2 and "model.norm" in out
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == 5
    for plot in ("val_loss_vs_tokens.png", "final_val_loss_by_key.png"):
        assert (tmp_path / "out" / plot).stat().st_size > 5_000
    report = (tmp_path / "report.md").read_text()
    assert "| run | norm | seed |" in report
    assert "](out/val_loss_vs_tokens.png)" in report
    assert "| model.norm |" in report and "| verdict |" in report
    assert ("| worse |" in report) or ("| not distinguishable |" in report)


def test_compare_reads_a_folder_of_runs(train_runs, tmp_path):
    runs, grid_keys = collect([train_runs])
    assert grid_keys == []  # plain runs: no grid
    assert sorted(run.name for run in runs) == ["post-0", "post-1", "pre-0", "pre-1"]
    assert all(run.status == "completed" and len(run.curves["val_loss"]) == 2 for run in runs)
    assert {run.seed for run in runs} == {0, 1}
    assert build([train_runs]).keys == ["model.norm"]  # the one config key that differs


def test_compare_of_a_folder_that_holds_no_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a run folder" in err


def runs_with(losses: dict[str, list[float]], status: dict[str, str] | None = None,
              first_seed: dict[str, int] | None = None) -> list[RunResult]:
    """Finished runs with the given final losses per value of `norm`, one seed per loss."""
    return [
        RunResult(folder=Path(f"{value}-{seed}"), name=f"{value}-{seed}", config={}, grid={"model.norm": value},
                  seed=seed, status=(status or {}).get(f"{value}-{seed}", "completed"), final_val_loss=loss)
        for value, values in losses.items()
        for seed, loss in enumerate(values, start=(first_seed or {}).get(value, 0))
    ]


def test_a_difference_smaller_than_the_seed_spread_is_not_distinguishable():
    summary = summarize_key(runs_with({"pre": [2.30, 2.34], "post": [2.33, 2.37]}, first_seed={"post": 2}), "model.norm")
    pre, post = summary.values
    assert (pre.verdict, post.verdict) == ("best", "not distinguishable")
    assert pre.mean == pytest.approx(2.32) and pre.std == pytest.approx(0.0283, abs=1e-4)
    assert post.test == "Welch t" and post.ci[0] < 0 < post.ci[1] and post.p > 0.05
    assert post.seeds_needed and post.seeds_needed > 2  # how many seeds would tell them apart
    sentence = verdict_sentences(summary)[0]
    assert "not distinguishable at 5%" in sentence and f"about {post.seeds_needed} seeds per value" in sentence


def test_a_difference_larger_than_the_seed_spread_is_worse():
    summary = summarize_key(runs_with({"pre": [2.300, 2.302, 2.299], "post": [2.400, 2.404, 2.401]}), "model.norm")
    assert [v.verdict for v in summary.values] == ["best", "worse"]
    post = summary.values[1]
    assert post.test == "paired t" and post.p < 0.05 and 0.09 < post.ci[0] < post.delta < post.ci[1] < 0.11
    assert "post is worse than pre by 0.1013" in verdict_sentences(summary)[0]


def test_runs_that_share_seeds_are_paired_and_the_seed_effect_cancels():
    # Each seed moves both values the same way (their data order): paired, the 0.01 difference is
    # clear; the same numbers with different seeds (Welch) are not enough.
    pre, post = [2.30, 2.40, 2.50], [2.31, 2.411, 2.509]
    paired = summarize_key(runs_with({"pre": pre, "post": post}), "model.norm").values[1]
    unpaired = summarize_key(runs_with({"pre": pre, "post": post}, first_seed={"post": 3}), "model.norm").values[1]
    assert (paired.test, paired.verdict) == ("paired t", "worse")
    assert (unpaired.test, unpaired.verdict) == ("Welch t", "not distinguishable")


def test_with_one_seed_the_verdict_is_inconclusive():
    runs = runs_with({"pre": [2.3], "post": [2.4]})
    summary = summarize_key(runs, "model.norm")
    assert [v.verdict for v in summary.values] == ["inconclusive", "inconclusive"]
    assert "inconclusive, 1 seed" in verdict_sentences(summary)[0] and "2+ seeds" in verdict_sentences(summary)[0]
    # With the spread measured on a third value, it says how many seeds would settle it.
    runs = runs_with({"pre": [2.3, 2.32], "post": [2.4], "sandwich": [2.6, 2.61]})
    post = summarize_key(runs, "model.norm").values[1]
    assert post.verdict == "inconclusive" and post.seeds_needed is not None


def test_diverged_runs_are_left_out_of_the_means_and_reported():
    runs = runs_with({"pre": [2.30, 2.31], "post": [2.35, 9.99]}, status={"post-1": "diverged"})
    summary = summarize_key(runs, "model.norm")
    post = summary.values[1]
    assert post.mean == pytest.approx(2.35) and post.runs == 1 and post.not_counted == {"diverged": 1}
    assert post.verdict == "inconclusive"
    assert "model.norm=post: 1 diverged (not counted)" in verdict_sentences(summary)
