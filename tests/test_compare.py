"""`b6lab compare` over runs made by `b6lab train`, the verdicts it gives, and its other outputs:
--by and the two-way table, keys shown beside a plugin choice, --json, --metric val_bpb, and the
per-block diagnostics plot."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from b6lab.cli import main
from b6lab.sweep.comparison import Comparison, build, compare
from b6lab.sweep.folders import RunResult, collect
from b6lab.sweep.report import verdict_sentences
from b6lab.sweep.stats import holm
from b6lab.sweep.verdicts import summarize_key
from tests.tiny import TinyRun


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory):
    """Pre-LN and Post-LN, two seeds each, as four real (tiny) `b6lab train` runs."""
    root = tmp_path_factory.mktemp("runs")
    for norm in ("pre", "post"):
        for seed in (0, 1):
            TinyRun.train(root / f"{norm}-{seed}", f"model.norm={norm}", f"train.seed={seed}",
                          max_steps=8, eval_interval=4, eval_steps=2, log_interval=4)
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


def test_what_an_earlier_compare_wrote_is_passed_over(train_runs, tmp_path):
    """`b6lab compare runs/*` a second time: runs/compare (results.csv, plots) is no run and no error."""
    assert main(["compare", str(train_runs / "pre-0"), str(train_runs / "post-0"), "--out", str(tmp_path / "compare"),
                 "--no-plots"]) == 0
    runs, _ = collect([train_runs / "pre-0", train_runs / "post-0", tmp_path / "compare"])
    assert sorted(run.name for run in runs) == ["post-0", "pre-0"]


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
    runs = runs_with({"pre": [2.30, 2.34], "post": [2.33, 2.37]}, first_seed={"post": 2})  # unpaired
    summary = summarize_key(runs, "model.norm")
    pre, post = summary.values
    # The lower mean is not `best`: nothing else is worse than it.
    assert (pre.verdict, post.verdict) == ("lowest mean", "not distinguishable")
    assert pre.mean == pytest.approx(2.32) and pre.std == pytest.approx(0.0283, abs=1e-4)
    assert post.test == "Welch-Hsu t" and post.ci[0] < 0 < post.ci[1] and post.p > 0.05
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
    assert (unpaired.test, unpaired.verdict) == ("Welch-Hsu t", "not distinguishable")


def test_with_one_seed_the_verdict_is_inconclusive():
    runs = runs_with({"pre": [2.3], "post": [2.4]})
    summary = summarize_key(runs, "model.norm")
    assert [v.verdict for v in summary.values] == ["inconclusive", "inconclusive"]
    assert "inconclusive, 1 seed" in verdict_sentences(summary)[0] and "2+ seeds" in verdict_sentences(summary)[0]
    # With the spread measured on a third value, it says how many seeds would settle it.
    runs = runs_with({"pre": [2.3, 2.32], "post": [2.4], "sandwich": [2.6, 2.61]})
    post = summarize_key(runs, "model.norm").values[1]
    assert post.verdict == "inconclusive" and post.seeds_needed is not None


def test_diverged_runs_are_counted_as_an_outcome_not_averaged():
    runs = runs_with({"pre": [2.30, 2.31], "post": [2.35, 9.99]}, status={"post-1": "diverged"})
    summary = summarize_key(runs, "model.norm")
    pre, post = summary.values
    # Means over the seeds both completed (seed 0): the diverged seed cannot flatter either side.
    assert post.mean == pytest.approx(2.35) and pre.mean == pytest.approx(2.30) and pre.seeds == 1
    assert post.runs == 1 and post.diverged == 1 and post.not_counted == {"diverged": 1}
    assert (pre.verdict, post.verdict) == ("inconclusive", "inconclusive")
    assert any("model.norm=post: diverged in 1 of 2 runs" in line for line in verdict_sentences(summary))


def test_a_value_that_diverged_is_never_best_on_its_survivors():
    """post diverged in 2 of 4 seeds; its two survivors are low. The stable pre is the reference:
    post's lucky survivors do not make pre `worse`."""
    runs = runs_with({"pre": [2.30, 2.31, 2.32, 2.30], "post": [2.10, 2.12, 9.9, 9.9]},
                     status={"post-2": "diverged", "post-3": "diverged"})
    summary = summarize_key(runs, "model.norm")
    pre, post = summary.values
    assert (pre.verdict, post.verdict) == ("reference", "not distinguishable")
    assert post.diverged == 2 and post.delta == pytest.approx(-0.195)
    assert "model.norm: pre is the reference (it diverged least)" in " ".join(verdict_sentences(summary))


def test_a_value_that_diverges_in_every_seed_of_many_is_worse():
    runs = runs_with({"pre": [2.30 + 0.01 * s for s in range(8)], "post": [9.9] * 8},
                     status={f"post-{s}": "diverged" for s in range(8)})
    summary = summarize_key(runs, "model.norm")
    pre, post = summary.values
    assert (pre.verdict, post.verdict) == ("best", "worse") and post.by_divergence
    assert post.p == pytest.approx(2 * 2 * 0.5**8)  # sign test over 8 seeds, sharing the pair with the losses' test
    assert "it diverged in 8 of 8 runs" in verdict_sentences(summary)[0]


# ---------------------------------------------------------------------------------------------
# Run folders written by the test: the files `b6lab train` leaves, with chosen numbers


def write_run(folder: Path, config: dict, loss: float, diagnostics: bool = False, status: str = "completed") -> Path:
    """A finished run: config.yaml, metrics.jsonl (two evals, and per-block diagnostics after each
    when asked), summary.json; val_bpb is val_loss / ln 2 as for bytes."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    records = []
    for step, value in ((5, loss + 0.5), (10, loss)):
        records.append({"step": step, "tokens": step * 64, "val_loss": value, "val_bpb": value / 0.6931})
        if diagnostics:
            layers = config["model"]["n_layers"]
            grow = 2.0 if config["model"]["norm"] == "post" else 1.0
            records.append({"step": step, "tokens": step * 64,
                            "block_grad_norm": [0.1 * grow**i / step for i in range(layers)],
                            "block_residual_rms": [1.0 + 0.5 * i for i in range(layers)]})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "summary.json").write_text(json.dumps({
        "status": status, "best_val_loss": loss, "final_val_loss": loss, "best_val_bpb": loss / 0.6931,
        "final_val_bpb": loss / 0.6931, "tokens": 640, "steps": 10}))
    return folder


def config(norm: str, seed: int, optim: dict | None = None, warmup: int = 0, layers: int = 3) -> dict:
    return {"name": "t", "model": {"norm": norm, "n_layers": layers, "d_model": 32},
            "optim": optim or {"name": "lion", "lr": 1e-3, "weight_decay": 0.1},
            "schedule": {"name": "cosine", "warmup_steps": warmup}, "train": {"seed": seed, "out_dir": f"runs/{seed}"}}


ADAMW = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.1, "eps": 1e-8}


@pytest.fixture
def optimizer_runs(tmp_path):
    """Lion and AdamW (whose eps and lr come with it), 3 seeds each, in two folders of runs."""
    for seed in range(3):
        write_run(tmp_path / "lion" / f"s{seed}", config("pre", seed), 2.00 + 0.01 * seed)
        jitter = (0, 4e-3, -4e-3)[seed]  # the seeds must not move both optimizers by exactly the same
        write_run(tmp_path / "adamw" / f"s{seed}", config("pre", seed, ADAMW), 2.10 + 0.01 * seed + jitter)
    return tmp_path


def test_options_that_come_with_a_plugin_are_shown_beside_it_not_judged_again(optimizer_runs):
    result = build([optimizer_runs / "lion", optimizer_runs / "adamw"])
    assert result.keys == ["optim.name"]  # one finding, not three (name, lr, eps)
    assert sorted(result.beside["optim.name"]) == ["optim.eps", "optim.lr"]
    lion, adamw = result.summaries[0].values
    assert adamw.beside == {"optim.lr": "0.003", "optim.eps": "1e-08"} and lion.beside["optim.eps"] == "-"
    assert (lion.verdict, adamw.verdict) == ("best", "worse")


def test_compare_json_is_one_document_with_every_number_of_each_value(optimizer_runs, tmp_path, capsys):
    assert main(["compare", str(optimizer_runs / "lion"), str(optimizer_runs / "adamw"), "--json", "--no-plots",
                 "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout holds the document alone
    assert doc == compare([optimizer_runs / "lion", optimizer_runs / "adamw"])  # the Python API's document
    adamw = doc["keys"]["optim.name"]["values"][1]
    assert adamw["value"] == "adamw" and adamw["n_seeds"] == 3 and adamw["n_runs"] == 3
    assert adamw["delta"] == pytest.approx(0.10) and adamw["mean"] == pytest.approx(2.11)
    assert adamw["ci"][0] < 0.10 < adamw["ci"][1] and adamw["p_corrected"] < 0.05
    assert adamw["verdict"] == "worse" and adamw["test"] == "paired t"
    assert adamw["std"] == pytest.approx(0.00872, abs=1e-5)
    assert doc["keys"]["optim.name"]["values"][0]["verdict"] == "best" and doc["ci_level"] == 0.95
    assert not list((tmp_path / "out").glob("*.png")) and (tmp_path / "out" / "results.csv").exists()
    assert "wrote" in captured.err


def test_metric_val_bpb_compares_the_bits_per_byte(optimizer_runs):
    doc = compare([optimizer_runs / "lion", optimizer_runs / "adamw"], metric="val_bpb")
    lion = doc["keys"]["optim.name"]["values"][0]
    assert doc["metric"] == "val_bpb" and lion["mean"] == pytest.approx(2.01 / 0.6931)


def test_metric_val_bpb_of_runs_without_it_is_a_one_line_error(tmp_path, capsys):
    folder = write_run(tmp_path / "old", config("pre", 0), 2.0)
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if "bpb" not in k}))
    assert main(["compare", str(folder), "--metric", "val_bpb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metric val_bpb: none of these runs recorded it" in err


def test_by_two_keys_prints_the_two_way_table_and_averages_the_rest(tmp_path, capsys):
    for norm, base in (("pre", 2.0), ("post", 2.2)):
        for warmup, penalty in ((0, 0.3 if norm == "post" else 0.0), (30, 0.0)):  # post needs warmup
            for lr in (1e-3, 3e-3):
                for seed in (0, 1):
                    cfg = config(norm, seed, {"name": "lion", "lr": lr, "weight_decay": 0.1}, warmup=warmup)
                    write_run(tmp_path / "runs" / f"{norm}-{warmup}-{lr}-{seed}", cfg, base + penalty + 0.01 * seed)
    assert main(["compare", str(tmp_path / "runs"), "--by", "model.norm,schedule.warmup_steps", "--no-plots",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "model.norm x schedule.warmup_steps" in out
    row = next(line for line in out.splitlines() if line.startswith("post ") and "(2)" in line)
    assert "2.5050 ± 0.0071 (2)" in row and "2.2050 ± 0.0071 (2)" in row  # post: warmup 0, warmup 30
    assert "Averaged within each seed (not grouped by): optim.lr." in out
    doc = compare([tmp_path / "runs"], by="model.norm,schedule.warmup_steps")
    cells = {(c["model.norm"], c["schedule.warmup_steps"]): c for c in doc["interaction"]["cells"]}
    assert cells["post", "0"]["mean"] == pytest.approx(2.505) and cells["pre", "0"]["n_seeds"] == 2


def test_by_an_unknown_key_is_a_one_line_error(optimizer_runs, capsys):
    assert main(["compare", str(optimizer_runs / "lion"), "--by", "model.nrom"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--by model.nrom" in err and "no run has this key" in err


def test_block_diagnostics_are_plotted_by_layer_when_runs_recorded_them(tmp_path):
    for norm in ("pre", "post"):
        for seed in (0, 1):
            write_run(tmp_path / "runs" / f"{norm}-{seed}", config(norm, seed, layers=6), 2.0, diagnostics=True)
    assert main(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "block_diagnostics.png").stat().st_size > 5_000
    runs, _ = collect([tmp_path / "runs"])
    first, last = runs[0].diagnostics
    assert (first["step"], last["step"]) == (5, 10) and len(first["block_grad_norm"]) == 6


def test_no_diagnostics_no_diagnostics_plot(optimizer_runs, tmp_path):
    assert main(["compare", str(optimizer_runs / "lion"), str(optimizer_runs / "adamw"),
                 "--out", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "block_diagnostics.png").exists()
    assert (tmp_path / "out" / "final_val_loss_by_key.png").exists()


def test_the_sweep_report_shows_the_first_two_grid_keys_together():
    runs = [RunResult(folder=Path("x"), name="x", config={}, grid={"a": a, "b": b, "c": "1"}, seed=seed,
                      status="completed", final_val_loss=1.0 + (a == "y") + 0.1 * (b == "q") + 0.01 * seed)
            for a in ("x", "y") for b in ("p", "q") for seed in (0, 1)]
    result = Comparison(runs, ["a", "b", "c"])
    assert (result.interaction.rows_key, result.interaction.columns_key) == ("a", "b")
    assert result.interaction.cells["y", "q"].mean == pytest.approx(2.105)


def write_finished_sweep(folder: Path, optim: dict | None, shift: float) -> Path:
    """A finished sweep of model.norm x 2 seeds, as `b6lab sweep` leaves it (sweep.json, trials/)."""
    trials = []
    for norm in ("pre", "post"):
        for seed in (0, 1):
            name = f"norm={norm},seed={seed}"
            loss = 2.0 + shift + 0.1 * (norm == "post") + 0.01 * seed + 0.003 * seed * (norm == "post")
            write_run(folder / "trials" / name, config(norm, seed, optim), loss)
            trials.append({"name": name, "grid": {"model.norm": norm}, "seed": seed, "folder": f"trials/{name}"})
    (folder / "sweep.json").write_text(json.dumps({
        "name": folder.name, "grid": [{"key": "model.norm", "short": "norm", "values": ["pre", "post"]}],
        "seeds": [0, 1], "trials": trials}))
    return folder


def test_two_sweeps_of_one_grid_give_one_finding_per_choice(tmp_path, capsys):
    lion = write_finished_sweep(tmp_path / "lion", None, 0.0)
    adamw = write_finished_sweep(tmp_path / "adamw", ADAMW, 0.2)
    result = build([lion, adamw])
    assert result.keys == ["model.norm", "optim.name"]  # the grid key, then what differs between the sweeps
    assert sorted(result.beside["optim.name"]) == ["optim.eps", "optim.lr"]
    assert result.interaction.cells["post", "adamw"].seeds == 2
    assert main(["compare", str(lion), str(adamw), "--no-plots", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "optim.lr=0.003, optim.eps=1e-08" in out and "optim.eps  " not in out  # beside, never its own table


def test_compare_json_of_a_sweep_writes_nothing_into_its_folder(tmp_path, monkeypatch, capsys):
    sweep = write_finished_sweep(tmp_path / "sweep", None, 0.0)
    monkeypatch.chdir(tmp_path)  # where runs/compare would go
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["compare", str(sweep), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["keys"]["model.norm"]  # the document, and only that
    assert sorted(p for p in tmp_path.rglob("*")) == before and "wrote" not in captured.err


def test_runs_with_different_tokenizers_are_judged_on_bits_per_byte(tmp_path, capsys):
    """byte vs BPE with the same bits per byte: per token BPE's loss is higher (longer tokens);
    val_loss would call it worse. The comparison warns and judges val_bpb."""
    for tokenizer, tokens_per_byte in (("byte", 1.0), ("bpe", 0.3)):
        for seed in range(3):
            cfg = config("pre", seed) | {"data": {"tokenizer": tokenizer}}
            bpb = 1.20 + 0.01 * seed + (0.002 if tokenizer == "bpe" else -0.002) * (seed - 1)
            folder = write_run(tmp_path / "runs" / f"{tokenizer}-{seed}", cfg, bpb * 0.6931 / tokens_per_byte)
            summary = json.loads((folder / "summary.json").read_text())
            summary["final_val_bpb"] = summary["best_val_bpb"] = bpb
            (folder / "summary.json").write_text(json.dumps(summary))
    doc = compare([tmp_path / "runs"])
    assert doc["metric"] == "val_bpb" and "different tokenizers (bpe, byte)" in doc["warnings"][0]
    assert [v["verdict"] for v in doc["keys"]["data.tokenizer"]["values"]] != ["lowest mean", "worse"]
    assert all(v["verdict"] != "worse" for v in doc["keys"]["data.tokenizer"]["values"])
    assert main(["compare", str(tmp_path / "runs"), "--no-plots", "--out", str(tmp_path / "out")]) == 0
    assert "warning: the runs use different tokenizers" in capsys.readouterr().out


def grid_runs(losses, missing=(), diverged=()) -> list[RunResult]:
    """norm x warmup x seeds with losses[norm][warmup][seed]; `missing`/`diverged`: (norm, warmup, seed)."""
    return [RunResult(folder=Path(f"{n}-{w}-{s}"), name=f"{n}-{w}-{s}", config={},
                      grid={"model.norm": n, "schedule.warmup_steps": w}, seed=s,
                      status="diverged" if (n, w, s) in diverged else "completed", final_val_loss=loss)
            for n, by_warmup in losses.items() for w, seeds in by_warmup.items() for s, loss in enumerate(seeds)
            if (n, w, s) not in missing]


def test_a_missing_trial_is_warned_of_and_the_marginal_uses_complete_cells():
    # Warmup 0 costs 0.3 for both norms; post's warmup-0 seed 0 never ran. Averaging what ran would
    # give post seed 0 the easy cell only (2.0 vs pre's 2.15).
    losses = {"pre": {"0": [2.3, 2.31, 2.29], "100": [2.0, 2.01, 1.99]},
              "post": {"0": [2.3, 2.32, 2.30], "100": [2.0, 2.00, 2.00]}}
    result = Comparison(grid_runs(losses, missing={("post", "0", 0)}), ["model.norm", "schedule.warmup_steps"])
    assert "1 trial of the grid did not run" in result.warnings[0]
    pre, post = result.summaries[0].values
    assert post.delta == pytest.approx((0.02 + 0.0 + 0.01 - 0.01) / 2 - 0.005, abs=0.006)
    assert abs(post.delta) < 0.02 and post.verdict != "best" and pre.verdict != "worse"
    assert "did not run" in report_text(result)


def report_text(result: Comparison) -> str:
    from b6lab.sweep.report import comparison_text

    return comparison_text(result, show_names=True)


def test_the_two_way_table_gives_each_cell_a_ci_and_tests_the_interaction():
    # Post-LN needs warmup (+0.3 without it); Pre-LN does not: a difference of differences of 0.3.
    losses = {"pre": {"0": [2.00, 2.02, 2.01, 2.03], "100": [2.00, 2.01, 2.02, 2.02]},
              "post": {"0": [2.31, 2.30, 2.33, 2.32], "100": [2.01, 2.02, 2.01, 2.03]}}
    result = Comparison(grid_runs(losses), ["model.norm", "schedule.warmup_steps"])
    cell = result.interaction.cells["post", "0"]
    assert cell.ci[0] < cell.mean < cell.ci[1] and cell.seeds == 4
    (contrast,) = result.interaction.interactions
    assert contrast.delta == pytest.approx(-0.3, abs=0.01) and contrast.verdict == "interaction"
    assert contrast.ci[0] < -0.3 < contrast.ci[1] and contrast.p < 0.05
    text = report_text(result)
    assert "interaction model.norm x schedule.warmup_steps: (pre - post at 0) - (pre - post at 100)" in text
    assert "the effect of one key depends on the other" in text
    doc = compare_document(result)
    assert doc["interaction"]["contrasts"][0]["verdict"] == "interaction"


def compare_document(result: Comparison) -> dict:
    from b6lab.sweep.comparison import document

    return document(result)


def test_family_all_corrects_across_keys_and_says_so(capsys, tmp_path):
    losses = {"pre": {"0": [2.30, 2.31, 2.29], "100": [2.0, 2.01, 1.99]},
              "post": {"0": [2.40, 2.42, 2.41], "100": [2.1, 2.12, 2.09]}}
    per_key = Comparison(grid_runs(losses), ["model.norm", "schedule.warmup_steps"])
    together = Comparison(grid_runs(losses), ["model.norm", "schedule.warmup_steps"], family="all")
    assert [s.family_size for s in per_key.summaries] == [1, 1]
    assert [s.family_size for s in together.summaries] == [2, 2]
    # One pair per key: alone each p is its raw p; together, Holm over the two.
    raw = np.array([next(v.p for v in s.values if v.p is not None) for s in per_key.summaries])
    assert [next(v.p for v in s.values if v.p is not None) for s in together.summaries] == pytest.approx(holm(raw))
    assert "every key of the comparison together" in report_text(together)
    assert "each key is its own family" in report_text(per_key)
    with pytest.raises(Exception, match="--family some"):
        Comparison(grid_runs(losses), ["model.norm"], family="some")


def test_the_run_table_shows_the_keys_averaged_over_so_runs_do_not_look_alike(tmp_path, capsys):
    for norm in ("pre", "post"):
        for warmup in (0, 30):
            for seed in (0, 1):
                write_run(tmp_path / "runs" / f"{norm}-{warmup}-{seed}", config(norm, seed, warmup=warmup),
                          2.0 + 0.1 * (norm == "post") + 0.01 * seed + 0.001 * warmup)
    assert main(["compare", str(tmp_path / "runs"), "--by", "model.norm", "--no-plots",
                 "--out", str(tmp_path / "out")]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[:4] == ["run", "norm", "warmup_steps", "seed"]
