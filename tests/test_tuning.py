"""Per-arm tuning (`tune:` in a sweep file): the section and its mistakes, the dry run, and one real
sweep on Ray Tune that tunes each arm's lr with Optuna's TPE on a tuning seed, then judges only the
confirmation runs on the sweep's own seeds."""

import json
import math
from pathlib import Path

import pytest
import yaml

from b6lab.cli import main
from b6lab.errors import ConfigError
from b6lab.sweep.comparison import compare
from b6lab.sweep.experiment import load_experiment
from b6lab.sweep.grid import point_key
from tests import tiny
from tests.tiny import TinyRun

TINY = TinyRun.settings(log_interval=6, **{"train.threads": 1})


def write_sweep(folder: Path, **keys) -> Path:
    return tiny.write_sweep(folder, **{
        "name": "tuned", "base": {"preset": "tiny", "set": TINY}, "grid": {"model.norm": ["pre", "post"]},
        "tune": {"keys": {"optim.lr": [1.0e-4, 1.0e-2, "log"]}, "trials": 2, "seeds": [100]},
        "seeds": [0, 1], "max_concurrent": 2, "storage": str(folder / "sweep")} | keys)


def test_the_tune_section_is_read_into_tuned_keys(tmp_path):
    exp = load_experiment(write_sweep(tmp_path, tune={"keys": {"optim.lr": [1e-4, 1e-2, "log"],
                                                               "model.dropout": [0.0, 0.2],
                                                               "optim.name": {"choices": ["lion", "adamw"]}},
                                                      "algorithm": "random"}))
    lr, dropout, name = exp.tuning.keys
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True) and (dropout.log, dropout.bounds()) == (False, [0.0, 0.2])
    assert name.choices == ("lion", "adamw") and exp.tuning.algorithm == "random"
    assert (exp.tuning.trials, exp.tuning.seeds) == (8, (100,))  # the defaults


@pytest.mark.parametrize("tune, message", [
    ({"keys": {"optim.lr": [1e-2, 1e-4]}}, "tune.keys.optim.lr (in "),
    ({"keys": {"optim.lr": [0, 1e-2, "log"]}}, "0 < low < high"),
    ({"keys": {"optim.lr": [1e-4, 1e-2, "logg"]}}, "[low, high, log]"),
    ({"keys": {"model.norm": {"choices": ["pre"]}}}, "is also a grid key"),
    ({"keys": {"optim.lr": [1e-4, 1e-2]}, "seeds": [1, 100]}, "shares seeds [1]"),
    ({"keys": {"optim.lr": [1e-4, 1e-2]}, "algorithm": "tpe"}, "tune.algorithm"),
    ({"keys": {}}, "tune.keys"),
])
def test_mistakes_in_the_tune_section_are_one_line(tmp_path, capsys, tune, message):
    path = write_sweep(tmp_path, tune=tune)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_experiment(path)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_tuned_range_that_a_config_refuses_fails_before_anything_runs(tmp_path, capsys):
    path = write_sweep(tmp_path, tune={"keys": {"model.dropout": [0.0, 2.0]}})
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.dropout" in err and "tuning norm=pre, model.dropout=2.0" in err


def test_dry_run_says_each_point_is_tuned_first(tmp_path, capsys):
    assert main(["sweep", str(write_sweep(tmp_path)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tuned first, per grid point: 2 settings of optim.lr in [0.0001, 0.01] (log) (optuna, tuning seeds [100])" in out


@pytest.mark.slow
def test_a_tuned_sweep_tunes_each_arm_then_judges_only_the_confirmation_seeds(tmp_path, capsys):
    path = write_sweep(tmp_path)
    assert main(["sweep", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    storage = tmp_path / "sweep"
    record = json.loads((storage / "tuning.json").read_text())
    assert record["complete"] and [arm["name"] for arm in record["arms"]] == ["norm=pre", "norm=post"]
    for arm in record["arms"]:
        assert len(arm["tried"]) == 2 and arm["val_loss"] == min(t["val_loss"] for t in arm["tried"])
        assert 1e-4 <= arm["chosen"]["optim.lr"] <= 1e-2
        assert len(list((storage / "tune" / arm["name"]).glob("*,seed=100"))) == 2  # kept, one per setting
        for seed in (0, 1):  # the confirmation runs: this arm's choice, the sweep's seeds
            config = yaml.safe_load((storage / "trials" / f"{arm['name']},seed={seed}" / "config.yaml").read_text())
            assert config["optim"]["lr"] == arm["chosen"]["optim.lr"] and config["train"]["seed"] == seed
    assert "Tuned per arm (optuna" in out and (storage / "tuning_curve.png").stat().st_size > 5_000
    doc = compare([storage])
    assert {run["seed"] for run in doc["runs"]} == {0, 1} and len(doc["runs"]) == 4  # never the tuning runs


def test_search_is_a_tuned_sweep_without_a_grid(tmp_path, capsys):
    path = write_sweep(tmp_path, grid={}, tune=None, search={"keys": {"optim.lr": [1e-4, 1e-2, "log"]}, "trials": 4,
                                                            "algorithm": "random"})
    text = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({k: v for k, v in text.items() if v is not None}))
    exp = load_experiment(path)
    assert exp.tuning.trials == 4 and exp.grid == [] and exp.tuning.algorithm == "random"
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "4 settings of optim.lr" in capsys.readouterr().out
    path.write_text(yaml.safe_dump(text | {"grid": {"model.norm": ["pre"]}, "tune": None}))
    with pytest.raises(ConfigError, match="search .*goes with neither a grid nor tune"):
        load_experiment(path)


def test_a_tuned_ladder_tunes_each_arm_at_each_rung_at_the_rungs_length(tmp_path, capsys):
    # The best lr moves with width under standard parametrization, so each (arm, rung) gets its own
    # search, and its tuning runs train for the rung's token budget, as its judged trials do.
    from b6lab.sweep.trials import resolve_trials, tuning_configs
    from b6lab.sweep.tuning import arm_name, arms

    path = write_sweep(tmp_path, ladder={"model.d_model": [32, 64], "model.n_heads": [2, 4],
                                         "tokens": [5_120, 10_240]})
    exp = load_experiment(path)
    assert [arm_name(exp, arm) for arm in arms(exp)] == [
        "ladder=d_model=32,n_heads=2,norm=pre", "ladder=d_model=32,n_heads=2,norm=post",
        "ladder=d_model=64,n_heads=4,norm=pre", "ladder=d_model=64,n_heads=4,norm=post"]
    steps = {json.loads(key)["ladder"]["label"]: config["train"]["max_steps"]
             for key, config in tuning_configs(exp).items()}
    per_step = 8 * 64  # the tiny preset's batch x context
    assert steps == {"d_model=32,n_heads=2": 5_120 // per_step, "d_model=64,n_heads=4": 10_240 // per_step}
    assert {t.grid["ladder"]: t.max_steps for t in resolve_trials(exp)} == steps  # the judged trials' lengths
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tuned first, per grid point (each arm at each rung, at the rung's length): 2 settings" in out
    assert "(8 tuning runs first)" in out  # 2 norms x 2 rungs x 2 settings x 1 tuning seed


def test_a_tuned_ladders_tuning_curves_have_a_panel_per_rung(tmp_path):
    from matplotlib.image import imread

    from b6lab.sweep.tuning import RECORD, arm_name, arms, plot_tuning_curves

    exp = load_experiment(write_sweep(tmp_path, ladder={"model.d_model": [32, 64, 128], "tokens_per_param": 1}))
    record = {"algorithm": "random", "trials": 3, "seeds": [100], "keys": ["optim.lr"], "metric": "val_loss",
              "complete": True, "arms": []}
    for index, arm in enumerate(arms(exp)):
        tried = [{"values": {"optim.lr": lr}, "val_loss": 3.0 - index * 0.1 + abs(math.log10(lr) + 2.5)}
                 for lr in (1e-3, 3e-3, 1e-2)]
        record["arms"].append({"key": point_key(arm), "name": arm_name(exp, arm), "chosen": tried[1]["values"],
                               "val_loss": tried[1]["val_loss"], "tried": tried})
    exp.storage.mkdir(parents=True)
    (exp.storage / RECORD).write_text(json.dumps(record))
    height, width, _ = imread(plot_tuning_curves(exp)).shape
    assert (width, height) == ((4.5 * 3 + 0.5) * 120, 4 * 120)  # three rungs side by side, one tuned key


def test_a_grid_search_tries_evenly_spaced_values_the_same_for_every_arm(tmp_path, capsys):
    exp = load_experiment(write_sweep(tmp_path, tune={"keys": {"optim.lr": [1.0e-3, 2.7e-2, "log"],
                                                               "model.dropout": [0.0, 0.2],
                                                               "optim.name": {"choices": ["adamw", "lion"]}},
                                                      "trials": 4, "algorithm": "grid"}))
    lr, dropout, name = exp.tuning.keys
    assert lr.grid(4) == [1e-3, 3e-3, 9e-3, 2.7e-2]  # geometric: a factor of 3 apart
    assert dropout.grid(3) == [0.0, 0.1, 0.2] and name.grid(4) == ["adamw", "lion"]
    assert exp.tuning.settings == 4 * 4 * 2  # every combination
    space = exp.tuning.space()
    assert space["optim.lr"] == {"grid_search": [1e-3, 3e-3, 9e-3, 2.7e-2]}  # Ray Tune's grid, one run each
    assert main(["sweep", str(write_sweep(tmp_path, tune={"keys": {"optim.lr": [1.0e-3, 2.7e-2, "log"]},
                                                          "trials": 4, "algorithm": "grid"})), "--dry-run"]) == 0
    assert "4 settings of optim.lr in [0.001, 0.027] (log) (grid, tuning seeds [100])" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="tune.trials .*is 1 with algorithm grid"):
        load_experiment(write_sweep(tmp_path, tune={"keys": {"optim.lr": [1e-3, 1e-2]}, "trials": 1,
                                                    "algorithm": "grid"}))


@pytest.mark.slow
def test_a_ctrl_c_while_an_arm_is_tuned_chooses_nothing_for_it(tmp_path):
    # Ray Tune returns from a Ctrl-C as from a finished search; the best of the settings run so far
    # is not the arm's choice, and the sweep stops instead of tuning the next arm.
    import signal
    import subprocess
    import sys
    import time

    path = write_sweep(tmp_path, base={"preset": "tiny", "set": TINY | {"train.max_steps": 3000}})
    storage = tmp_path / "sweep"
    driver = subprocess.Popen([sys.executable, "-m", "b6lab.cli", "sweep", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((storage / "tune").glob("norm=pre/*/metrics.jsonl")):  # a tuning run is training
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, out + err
    assert "tuning norm=pre interrupted after 0 of its 2 settings" in out and "--resume` tunes it again" in out
    assert "tuning norm=post" not in out  # the sweep stopped there
    record = storage / "tuning.json"
    assert not record.exists() or json.loads(record.read_text())["arms"] == []
