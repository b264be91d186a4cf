"""Sequential seeds in a sweep (`seeds: {start, max}`): the sweep file, the dry run, which grid points
the analysis asks seeds for, the verdicts of a sequential sweep, and one real Ray Tune sweep on this
CPU that stops before `max` on a clear difference."""

from pathlib import Path

import pytest

from b6lab.cli import main
from b6lab.errors import ConfigError
from b6lab.sweep.comparison import Comparison, compare
from b6lab.sweep.experiment import load_experiment
from b6lab.sweep.folders import RunResult
from b6lab.sweep.sequential_sweep import per_seed_results, points_needing_seeds
from tests import tiny
from tests.tiny import TinyRun

TINY = TinyRun.settings(max_steps=24, eval_interval=12, log_interval=12, **{"train.threads": 1})


def write_sweep(folder: Path, **keys) -> Path:
    return tiny.write_sweep(folder, **{
        "name": "seq", "base": {"preset": "tiny", "set": TINY}, "grid": {"optim.lr": [3.0e-3, 1.0e-6]},
        "seeds": {"start": 3, "max": 8}, "max_concurrent": 2, "storage": str(folder / "sweep")} | keys)


def test_sequential_seeds_in_a_sweep_file(tmp_path):
    exp = load_experiment(write_sweep(tmp_path))
    assert exp.seeds == list(range(8)) and exp.start_seeds == [0, 1, 2]
    assert (exp.sequential.start, exp.sequential.max, exp.sequential.equivalence) == (3, 8, None)
    exp = load_experiment(write_sweep(tmp_path, seeds={"start": 2, "max": 4, "equivalence": 0.01, "first": 10}))
    assert exp.seeds == [10, 11, 12, 13] and exp.sequential.equivalence == 0.01


@pytest.mark.parametrize("seeds, message", [
    ({"start": 3, "max": 2}, "max 2 is below start 3"),
    ({"start": 1, "max": 5}, "seeds.start"),
    ({"start": 3}, "seeds.max.*is missing"),
    ({"start": 3, "maxx": 8}, "seeds.maxx.*did you mean 'max'"),  # the misspelling, not the key it leaves missing
    ({"start": 3, "max": 5, "equivalence": -1}, "seeds.equivalence"),
    ({"start": 3, "max": 5, "stop": 1}, "stop"),
])
def test_mistakes_in_sequential_seeds_are_one_line(tmp_path, capsys, seeds, message):
    path = write_sweep(tmp_path, seeds=seeds)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_experiment(path)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_dry_run_shows_the_start_and_the_most_trials_it_may_run(tmp_path, capsys):
    assert main(["sweep", str(write_sweep(tmp_path)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 trials to start, at most 16 (2 lr x 3 to 8 seeds, sequential)" in out
    rows = [line for line in out.splitlines() if line.strip().startswith(("1 ", "3 ", "4 ", "16 "))]
    assert rows[0].endswith("run") and rows[1].endswith("run") and rows[2].endswith("if needed")
    assert rows[3].endswith("if needed")


def runs_of(losses: dict[str, list[float]]) -> list[RunResult]:
    return [RunResult(folder=Path(f"{v}-{s}"), name=f"{v}-{s}", config={}, grid={"optim.lr": v}, seed=s,
                      status="completed", final_val_loss=loss)
            for v, seeds in losses.items() for s, loss in enumerate(seeds)]


def test_seeds_go_only_to_the_points_of_undecided_comparisons():
    labels = [{"model.norm": v} for v in ("pre", "post", "sandwich")]
    # After 5 seeds post is decided worse than both; pre against sandwich is still undecided.
    losses = {"pre": [2.02, 1.974, 2.004, 1.994, 1.995], "post": [2.998, 2.98, 2.998, 2.991, 3.033],
              "sandwich": [2.04, 2.004, 2.009, 1.999, 2.005]}
    finished = {}
    for point, value in enumerate(("pre", "post", "sandwich")):
        for seed, loss in enumerate(losses[value]):
            finished[point, seed] = RunResult(folder=Path("x"), name="x", config={}, status="completed",
                                              final_val_loss=loss)
    assert points_needing_seeds(labels, list(range(12)), finished, 3, 12, None, "val_loss") == {0, 2}
    assert points_needing_seeds(labels, list(range(12)), {}, 3, 12, None, "val_loss") == {0, 1, 2}


def test_no_seed_is_asked_for_while_a_comparison_still_waits_for_a_seed_running_elsewhere():
    """Two keys, four points; seed 2 of the last point still running. Each value's result is its
    mean over the cells, so the comparisons wait for it: no point gets seed 3 yet (the norm_depth
    sweep ran 7 trials it did not need before this). Once it has finished and the comparisons are
    still undecided, every point gets its next seed."""
    labels = [{"a": a, "b": b} for a in ("x", "y") for b in ("p", "q")]
    shift = [0.0, 0.03, -0.02]
    noise = [[0.0, 0.02, -0.01, 0.01], [0.01, -0.02, 0.02, 0.0], [-0.01, 0.0, 0.01, -0.02]]

    def run(point, seed):
        value = 2.0 + 0.1 * (labels[point]["a"] == "y") + 0.08 * (labels[point]["b"] == "q")
        return RunResult(folder=Path("x"), name="x", config={}, status="completed",
                         final_val_loss=value + shift[seed] + noise[seed][point])

    finished = {(point, seed): run(point, seed) for point in range(4) for seed in range(3) if (point, seed) != (3, 2)}
    early = points_needing_seeds(labels, list(range(12)), finished, 3, 12, None, "val_loss", [3] * 4, {(3, 2)})
    assert early == set()
    finished[3, 2] = run(3, 2)
    assert points_needing_seeds(labels, list(range(12)), finished, 3, 12, None, "val_loss", [3] * 4, set()) == {0, 1, 2, 3}


def test_per_seed_results_average_the_same_cells_for_every_value():
    runs = [RunResult(folder=Path("x"), name="x", config={}, grid={"a": a, "b": b}, seed=0,
                      status="diverged" if (a, b) == ("y", "q") else "completed", final_val_loss=1.0 + (b == "q"))
            for a in ("x", "y") for b in ("p", "q")]
    # (y, q) diverged: cell q is left out for both values of a, so both are 1.0, not 1.5 against 1.0.
    assert per_seed_results(runs, "a", "val_loss") == {"x": {0: 1.0}, "y": {0: 1.0}}


def test_a_sequential_sweep_is_judged_by_the_sequential_analysis():
    runs = runs_of({"0.003": [4.20, 4.07, 4.02], "1e-06": [5.46, 5.49, 5.45]})
    result = Comparison(runs, ["optim.lr"], sequential={"start": 3, "max": 8, "equivalence": None})
    best, slow = result.summaries[0].values
    assert (best.verdict, slow.verdict) == ("best", "worse") and slow.decided_at == 3 and slow.p is None
    assert result.summaries[0].method.startswith("sequential paired t")
    assert "seeds used: 3 of at most 8" in result.summaries[0].method
    assert any("a sequential sweep" in warning for warning in result.warnings)


@pytest.mark.slow
def test_a_real_sequential_sweep_stops_before_max_on_a_clear_difference(tmp_path, capsys):
    """lr 3e-3 against 1e-6 (which barely trains): decided at the first look, 3 seeds of 8."""
    path = write_sweep(tmp_path)
    assert main(["sweep", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    trials = sorted(p.name for p in (tmp_path / "sweep" / "trials").iterdir())
    assert len(trials) == 6 and all(t.endswith(("seed=0", "seed=1", "seed=2")) for t in trials)
    assert "1e-06 is worse than 0.003" in out and "decided at 3" in out
    doc = compare([tmp_path / "sweep"])
    values = doc["keys"]["optim.lr"]["values"]
    assert doc["sequential"] == {"start": 3, "max": 8, "equivalence": None, "seeds_used": 3}
    assert [v["verdict"] for v in values] == ["best", "worse"] and values[1]["decided_at"] == 3
    assert doc["keys"]["optim.lr"]["method"].startswith("sequential paired t")


@pytest.mark.slow
def test_a_killed_sequential_sweep_resumes_and_runs_each_trial_once(tmp_path):
    """SIGKILL the driver once two trials have finished; `--resume` runs the rest of the start seeds,
    decides as an uninterrupted sweep does, and runs no trial twice."""
    import json
    import signal
    import subprocess
    import sys
    import time

    path = write_sweep(tmp_path, max_concurrent=1)
    storage = tmp_path / "sweep"
    command = [sys.executable, "-m", "b6lab.cli", "sweep", str(path), "--quiet"]

    def finished() -> dict[str, int]:
        found = {}
        for summary in storage.glob("trials/*/summary.json"):
            try:
                if json.loads(summary.read_text())["status"] == "completed":
                    found[summary.parent.name] = summary.stat().st_mtime_ns
            except (OSError, ValueError, KeyError):
                pass
        return found

    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while len(finished()) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    before = finished()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = finished()
    assert len(after) == 6 and all(after[name] == stamp for name, stamp in before.items())  # none run again
    assert "1e-06 is worse than 0.003" in resumed.stdout
