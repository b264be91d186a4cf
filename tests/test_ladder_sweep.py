"""A ladder in a sweep file (`ladder:`): its rungs and budget rule, the trials' lengths, and
`b6lab compare` of a ladder sweep fitting each arm against compute (ladder.py does the fits)."""

import json
from pathlib import Path

import pytest
import yaml

from b6lab.cli import main
from b6lab.errors import ConfigError
from b6lab.sweep.comparison import build, compare
from b6lab.sweep.experiment import load_experiment
from b6lab.sweep.trials import resolve_trials
from tests import tiny
from tests.tiny import TinyRun

# No max_steps: each rung sets the trial's length.
BASE = {"preset": "tiny", "set": TinyRun.settings(max_steps=None, eval_interval=10, **{"data.tokenizer": "byte"})}


def write_sweep(folder: Path, ladder, **keys) -> Path:
    return tiny.write_sweep(folder, **{"name": "lad", "base": BASE, "grid": {"model.norm": ["pre", "post"]},
                                       "ladder": ladder, "seeds": [0], "storage": str(folder / "sweep")} | keys)


def test_rungs_become_a_grid_axis_and_the_budget_sets_each_rungs_steps(tmp_path):
    exp = load_experiment(write_sweep(tmp_path, {"model.d_model": [32, 64], "model.n_heads": [2, 4],
                                                 "tokens_per_param": 0.5}))
    trials = resolve_trials(exp)
    assert len(trials) == 4 and exp.grid[0].key == "ladder"
    assert [t.grid["ladder"] for t in trials] == ["d_model=32,n_heads=2"] * 2 + ["d_model=64,n_heads=4"] * 2
    per_step = 8 * 1 * 64  # the tiny preset's batch x accumulation x context
    for t in trials:
        rung_params = next(u.params for u in trials if u.grid["ladder"] == t.grid["ladder"])
        assert t.max_steps == -(-round(0.5 * rung_params) // per_step)  # the same tokens for both norms
    assert trials[2].max_steps > trials[0].max_steps
    exp = load_experiment(write_sweep(tmp_path, {"model.d_model": [32, 64], "tokens": [20_480, 40_960]}))
    assert [t.max_steps for t in resolve_trials(exp)] == [40, 40, 80, 80]


@pytest.mark.parametrize("ladder, message", [
    ({"model.d_model": [32, 64]}, "exactly one budget rule"),
    ({"model.d_model": [32, 64], "tokens_per_param": 1, "tokens": [1, 2]}, "exactly one budget rule"),
    ({"model.d_model": [32, 64], "model.n_heads": [2, 4, 8], "tokens_per_param": 1}, "different numbers of rungs"),
    ({"model.d_model": [32], "tokens_per_param": 1}, "2 or more"),
    ({"d_model": [32, 64], "tokens_per_param": 1}, "unknown ladder key 'd_model'"),
    ({"model.d_model": [32, 64], "tokens": [100]}, "1 token counts for 2 rungs"),
    ({"model.norm": ["pre", "post"], "tokens_per_param": 1}, "is set by the grid"),
    ({"model.d_model": [32, 64], "tokens_per_param": -1}, "ladder.tokens_per_param"),
])
def test_mistakes_in_a_ladder_are_one_line(tmp_path, capsys, ladder, message):
    path = write_sweep(tmp_path, ladder)
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def write_ladder_sweep(folder: Path, gap_growth: float) -> Path:
    """A finished ladder sweep: norm x 3 rungs x 3 seeds, as `b6lab sweep` leaves it; Post-LN's
    deficit grows by `gap_growth` per rung."""
    trials = []
    rungs = [("d_model=32", 50_000), ("d_model=64", 120_000), ("d_model=128", 400_000)]
    for r, (rung, params) in enumerate(rungs):
        for norm in ("pre", "post"):
            for seed in range(3):
                name = f"ladder={rung},norm={norm},seed={seed}"
                loss = 3.0 - 0.4 * r + 0.01 * seed + (0.05 + gap_growth * r if norm == "post" else 0.0) \
                    + 0.003 * ((seed * 7 + r * 3 + 2 * (norm == "post")) % 5)
                run = folder / "trials" / name
                run.mkdir(parents=True)
                (run / "config.yaml").write_text(yaml.safe_dump({"model": {"norm": norm}, "train": {"seed": seed}}))
                (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "tokens": 20 * params, "val_loss": loss}) + "\n")
                (run / "summary.json").write_text(json.dumps({
                    "status": "completed", "final_val_loss": loss, "best_val_loss": loss, "params": params,
                    "tokens": 20 * params, "steps": 10}))
                trials.append({"name": name, "grid": {"ladder": rung, "model.norm": norm}, "seed": seed,
                               "folder": f"trials/{name}"})
    (folder / "sweep.json").write_text(json.dumps({
        "name": "lad", "grid": [{"key": "ladder", "short": "ladder", "values": [r for r, _ in rungs]},
                                {"key": "model.norm", "short": "norm", "values": ["pre", "post"]}],
        "seeds": [0, 1, 2], "ladder": {"keys": ["model.d_model"], "budget_rule": "tokens_per_param", "budget": 20},
        "trials": trials}))
    return folder


def test_compare_of_a_ladder_sweep_fits_each_arm_and_tests_the_gaps_trend(tmp_path, capsys):
    sweep = write_ladder_sweep(tmp_path / "sweep", gap_growth=0.1)
    result = build([sweep])
    assert result.keys == ["model.norm"]  # the rungs are sizes, not a choice to judge
    assert result.scaling.arms == ["norm=pre", "norm=post"] and len(result.scaling.compute) == 3
    (pair,) = result.scaling.pairs
    assert pair.slope < 0 and pair.p < 0.05  # pre - post falls: Post-LN's deficit grows with scale
    doc = compare([sweep])
    assert doc["ladder"]["arms"] == ["norm=pre", "norm=post"] and doc["ladder"]["pairs"][0]["p"] < 0.05
    assert main(["compare", str(sweep), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "Ladder: final loss against compute, 3 rungs x 2 arms" in out
    assert (tmp_path / "out" / "ladder.png").stat().st_size > 5_000
