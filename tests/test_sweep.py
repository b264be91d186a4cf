"""`b6lab sweep`: the sweep file and its errors, the grid, and one real Ray Tune sweep on this CPU
that is killed and resumed, with a trial that always fails."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from b6lab import registry
from b6lab.cli import main
from b6lab.errors import ConfigError
from b6lab.sweep import folders
from b6lab.sweep.experiment import load_experiment
from b6lab.sweep.trials import resolve_trials
from tests import tiny
from tests.tiny import TinyRun

TINY = TinyRun.settings(log_interval=3)


def write_sweep(folder: Path, **keys) -> Path:
    return tiny.write_sweep(folder, **{"name": "test", "base": {"preset": "tiny", "set": TINY},
                                       "grid": {"model.norm": ["pre", "post"]}, "seeds": [0],
                                       "storage": str(folder / "sweep")} | keys)


# ---------------------------------------------------------------------------------------------
# The sweep file, its grid, and its errors (no Ray)


def test_an_unknown_sweep_key_is_a_one_line_error_naming_key_file_and_choices(tmp_path, capsys):
    path = write_sweep(tmp_path, gird={"model.norm": ["pre"]})
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "gird" in err and str(path) in err and "did you mean 'grid'" in err and "max_concurrent" in err


def test_a_bad_value_in_the_fifth_grid_point_fails_before_any_trial_starts(tmp_path, capsys):
    # 2 norms x heads [2, 4, 3] x 1 seed: the fifth trial asks for 3 heads of a 64-wide model.
    path = write_sweep(tmp_path, grid={"model.n_heads": [2, 4, 3], "model.norm": ["pre", "post"]})
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("b6lab sweep: error: model.n_heads (in grid of ") and err.count("\n") == 1
    assert "does not divide d_model=64" in err and "trial 5 of 6: n_heads=3,norm=pre,seed=0" in err
    assert not (tmp_path / "sweep").exists()  # nothing was started or written


@pytest.mark.parametrize("keys, message", [
    ({"resources": {"cpu": 1, "tpu": 1}}, "unknown resource 'tpu'"),
    ({"resources": {"cpu": -1}}, "must be a number >= 0"),
    ({"scheduler": {"name": "hyperband"}}, "unknown value 'hyperband'"),
    ({"scheduler": {"name": "asha", "grace": 10}}, "unknown asha key 'grace' (did you mean 'grace_period'?)"),
    ({"grid": {"norm": ["pre", "post"]}}, "a grid key without a dot is a group"),
    ({"grid": {"train.seed": [0, 1]}}, "use `seeds:"),
    ({"grid": {"model.norm": []}}, "non-empty list"),
    ({"seeds": [0, 0]}, "more than once"),
    ({"base": {"file": "x.yaml"}}, "config file x.yaml not found"),
    ({"base": {"file": "x.yaml", "model": {"norm": "pre"}}}, "both a config file and inline sections"),
    ({"base": {"preset": "tiny", "modle": {}}}, "unknown base key 'modle' (did you mean 'model'?)"),
])
def test_mistakes_in_a_sweep_file_are_config_errors(tmp_path, keys, message):
    with pytest.raises(ConfigError) as caught:
        load_experiment(write_sweep(tmp_path, **keys))
    assert message in str(caught.value) and "sweep.yaml" in str(caught.value)


def test_each_trial_is_the_base_with_its_grid_values_seed_and_own_folder(tmp_path):
    exp = load_experiment(write_sweep(tmp_path, grid={"model.norm": ["pre", "post", "sandwich"],
                                                      "optim.lr": [1.0e-3, "3e-3"]}, seeds=[0, 1]))
    trials = resolve_trials(exp)
    assert len(trials) == 3 * 2 * 2
    assert len({t.name for t in trials}) == 12 and trials[0].name == "norm=pre,lr=0.001,seed=0"
    last = trials[-1].config
    assert (last["model"]["norm"], last["optim"]["lr"], last["train"]["seed"]) == ("sandwich", 0.003, 1)
    assert last["train"]["max_steps"] == 12  # from base.set
    assert last["train"]["out_dir"] == str(tmp_path / "sweep" / "trials" / trials[-1].name)
    assert last["logging"]["progress"] is True  # not a terminal: its train.log gets plain progress lines
    assert trials[-1].tokens == 12 * 8 * 64 and trials[-1].params > 100_000


def test_a_group_key_sets_several_config_keys_together(tmp_path):
    exp = load_experiment(write_sweep(tmp_path, grid={"optimizer": [
        {"label": "adamw", "optim.name": "adamw", "optim.lr": 1.0e-3, "optim.weight_decay": 0.1},
        {"optim.name": "lion", "optim.lr": 3.0e-4, "optim.weight_decay": 1.0},
    ]}))
    trials = resolve_trials(exp)
    assert [t.name for t in trials] == ["optimizer=adamw,seed=0", "optimizer=lion_lr=0.0003_weight_decay=1.0,seed=0"]
    assert [(t.config["optim"]["name"], t.config["optim"]["weight_decay"]) for t in trials] == [("adamw", 0.1), ("lion", 1.0)]


def test_dry_run_prints_every_trial_and_starts_nothing(tmp_path, capsys):
    path = write_sweep(tmp_path, grid={"model.norm": ["pre", "post"], "model.attention": ["sdpa", "eager"]}, seeds=[0, 1])
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "test: 8 trials (2 norm x 2 attention x 2 seeds)" in out
    header = next(line for line in out.splitlines() if line.startswith("#"))
    for column in ("norm", "attention", "seed", "optimizer", "params", "tokens"):
        assert column in header
    assert "dry run: nothing started" in out and not (tmp_path / "sweep").exists()


def test_an_unavailable_plugin_fails_the_sweep_unless_skipped(tmp_path, capsys):
    path = write_sweep(tmp_path, grid={"model.attention": ["sdpa", "flash-v3"]})
    if registry.get("attention", "flash-v3").why_unavailable(device="cpu") is None:
        pytest.skip("flash-v3 runs here")
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "cannot run here" in capsys.readouterr().err
    exp = load_experiment(write_sweep(tmp_path, grid={"model.attention": ["sdpa", "flash-v3"]}, skip_unavailable=True))
    assert [t.skip_reason is not None for t in resolve_trials(exp)] == [False, True]


def test_a_data_path_that_matches_nothing_fails_the_dry_run_naming_trial_key_and_path(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("hello world " * 200)
    path = write_sweep(tmp_path, base={"preset": "tiny", "set": TINY | {"data.source": "text", "data.tokenizer": "byte"}},
                       grid={"data.path": ["corpus/a.txt", "corpus/missing-*.jsonl"]})
    for flags in (["--dry-run"], []):
        assert main(["sweep", str(path), *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "trial 2 of 2" in err
        assert "data.path" in err and "missing-*.jsonl" in err and "matches no" in err
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_files_data_path_is_relative_to_the_sweep_file_like_its_plugins(tmp_path, monkeypatch):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("hello world " * 200)
    path = write_sweep(tmp_path / "experiments", grid={"model.norm": ["pre"]},
                       base={"preset": "tiny", "data": {"source": "text", "tokenizer": "byte", "path": "../data/a.txt"}})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # from here ../data/a.txt is tmp_path/data/a.txt too: go one deeper
    (tmp_path / "elsewhere" / "deeper").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere" / "deeper")
    [trial] = resolve_trials(load_experiment(path))
    assert trial.config["data"]["path"] == str(tmp_path / "experiments" / "../data/a.txt")
    # In base.set too, and a list's entries each; an absolute entry stays as it is.
    path = write_sweep(tmp_path / "experiments", base={"preset": "tiny", "set": {
        "data.source": "text", "data.tokenizer": "byte", "data.path": ["../data", str(tmp_path / "data" / "a.txt")]}})
    trials = resolve_trials(load_experiment(path))
    assert trials[0].config["data"]["path"] == [str(tmp_path / "experiments" / "../data"), str(tmp_path / "data" / "a.txt")]


def test_resume_refuses_a_sweep_file_that_changed_and_a_new_sweep_refuses_an_old_folder(tmp_path, capsys):
    exp = load_experiment(write_sweep(tmp_path))
    folders.write_sweep_record(exp, resolve_trials(exp))
    changed = write_sweep(tmp_path, grid={"model.norm": ["pre", "sandwich"]})
    assert main(["sweep", str(changed), "--resume"]) == 2
    assert "no longer describes the sweep" in capsys.readouterr().err
    assert main(["sweep", str(changed)]) == 2
    assert "already holds the sweep test; pass --resume" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A real sweep on Ray Tune

# Attention backends for the test sweep: `broken` always fails in training; `stall` stalls its trial
# at step 8 the first time (just after the step-6 evaluation and checkpoint), so the sweep is killed
# there. Both pass the probe b6lab runs on every backend it builds (8 positions, no gradients).
TEST_PARTS = '''
import os
import time

import torch
import torch.nn.functional as F

import b6lab
from b6lab.attention import attention_mask


def probed(q):
    return not torch.is_grad_enabled() and q.size(-2) <= 8


def broken(context):
    """Fails at its first call in training."""
    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        if probed(q):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(
                q.size(-2), k.size(-2), causal, docs, q.device), scale=scale)
        raise RuntimeError("boom: this attention always fails")
    return attend


def stall(context, *, marker: str = ""):
    """At its 21st call (2 layers at step 0's residual-RMS pass, 2 layers x 6 steps, at the step-6
    eval 2 layers x 1 batch (a CPU evaluates its 4 micro-batches in one forward) and the RMS pass
    again, step 7, then step 8's first layer), the first time ever: leaves `marker` and hangs."""
    calls = 0

    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        nonlocal calls
        calls += 0 if probed(q) else 1
        if calls == 21 and not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(600)
        mask = attention_mask(q.size(-2), k.size(-2), causal, docs, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return attend


@b6lab.hookimpl
def b6lab_register_attention(register):
    register("broken", broken)
    register("stall", stall)
'''


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the module; each sweep joins it with --address (what a cluster user does),
    so that killing a sweep's driver leaves Ray up for the resume."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def sweep_command(path: Path, address: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "b6lab.cli", "sweep", str(path), "--address", address, *flags]


def statuses(storage: Path) -> dict[str, str]:
    found = {}
    for summary in storage.glob("trials/*/summary.json"):
        try:
            found[summary.parent.name] = json.loads(summary.read_text())["status"]
        except (OSError, ValueError, KeyError):
            pass
    return found


@pytest.fixture(scope="module")
def killed_then_resumed(ray_address, tmp_path_factory):
    """Start a sweep of 3 trials, kill its driver with SIGKILL once one trial has completed and
    another has stalled after its step-6 checkpoint, then `--resume` it."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "parts").mkdir()
    (root / "parts" / "test_parts.py").write_text(TEST_PARTS)
    stalled = root / "stalled"
    path = write_sweep(
        root, name="killed",
        plugins=["parts/test_parts.py"],  # relative to the sweep file; loaded in every worker
        grid={"attention": [
            {"label": "sdpa", "model.attention": "sdpa"},
            {"label": "broken", "model.attention": "broken"},
            {"label": "stall", "model.attention": "stall", "model.marker": str(stalled)},
        ]},
        max_concurrent=2,
    )
    storage = root / "sweep"
    with open(root / "first.log", "w") as log:
        driver = subprocess.Popen(sweep_command(path, ray_address), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not ("completed" in statuses(storage).values() and stalled.exists()):
            assert driver.poll() is None and time.monotonic() < deadline, (root / "first.log").read_text()
            time.sleep(0.2)
        time.sleep(1)  # let Ray write down the stalled trial's checkpoint, as it would have long ago in real life
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finished = {name: ((storage / "trials" / name / "metrics.jsonl").stat().st_mtime_ns,
                       (storage / "trials" / name / "train.log").read_text())
                for name, status in statuses(storage).items() if status == "completed"}
    assert list(finished) == ["attention=sdpa,seed=0"]

    resumed = subprocess.run(sweep_command(path, ray_address, "--resume"), capture_output=True, text=True, timeout=300)
    return {"storage": storage, "finished_before_kill": finished, "resumed": resumed}


def test_the_resumed_sweep_ran_every_trial_to_an_end(killed_then_resumed):
    storage, resumed = killed_then_resumed["storage"], killed_then_resumed["resumed"]
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr  # 1: some trials failed (the broken ones)
    assert statuses(storage) == {
        "attention=sdpa,seed=0": "completed", "attention=stall,seed=0": "completed", "attention=broken,seed=0": "failed",
    }


def test_trials_finished_before_the_kill_were_not_run_again(killed_then_resumed):
    storage = killed_then_resumed["storage"]
    for name, (mtime, log) in killed_then_resumed["finished_before_kill"].items():
        assert (storage / "trials" / name / "metrics.jsonl").stat().st_mtime_ns == mtime, name
        assert (storage / "trials" / name / "train.log").read_text() == log, name  # no Trainer started again


def test_a_failing_trial_is_recorded_with_its_reason_and_the_others_go_on(killed_then_resumed):
    storage = killed_then_resumed["storage"]
    summary = json.loads((storage / "trials" / "attention=broken,seed=0" / "summary.json").read_text())
    assert summary["reason"] == "RuntimeError: boom: this attention always fails"
    with open(storage / "results.csv") as f:
        rows = f.read()
    assert rows.count("\n") == 4 and rows.count(",completed,") == 2 and rows.count(",failed,") == 1
    assert "boom: this attention always fails" in killed_then_resumed["resumed"].stdout


def test_the_interrupted_trial_resumed_from_its_tune_checkpoint(killed_then_resumed):
    run_dir = killed_then_resumed["storage"] / "trials" / "attention=stall,seed=0"
    assert "resuming at step 6" in (run_dir / "train.log").read_text()
    evals = [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert evals == [6, 12]  # one uninterrupted record, though it ran in two processes


def test_results_table_csv_and_plots_are_written(killed_then_resumed, tmp_path, capsys):
    storage, out = killed_then_resumed["storage"], killed_then_resumed["resumed"].stdout
    assert "attention  seed  best val  final val" in out and "results:" in out
    for plot in ("val_loss_vs_tokens.png", "final_val_loss_by_key.png"):
        assert (storage / plot).stat().st_size > 5_000
    # `b6lab compare` reads the same folder back, and writes the report.
    assert main(["compare", str(storage), "--markdown", str(tmp_path / "report.md")]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| attention | seed |" in report and "attention=broken,seed=0: failed: RuntimeError: boom" in report
