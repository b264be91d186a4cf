"""What a run shows and where its records go: wandb under its own environment, plain progress
lines in a redirected log, --quiet, TensorBoard event files, and the cache folder."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from b6lab.cli import main
from b6lab.config import DataConfig, LoggingConfig, WandbConfig, load_config
from b6lab.errors import ConfigError
from b6lab.parts import cache_dir
from b6lab.progress import Progress, progress_mode
from b6lab.train.records import MetricsFile, read_metrics
from b6lab.train.trackers import RunLog, check_wandb_login, tensorboard_command
from b6lab.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SHORT_RUN = ["--preset", "tiny", "--set", "train.max_steps=8", "--set", "train.eval_interval=4",
             "--set", "train.eval_steps=2", "--set", "train.log_interval=2"]


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """A private HOME and wandb config folder, so that a real key on this machine can't leak in."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_API_KEY", "NETRC", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    return home


# ---------------------------------------------------------------------------------------------
# wandb


@pytest.mark.slow
def test_wandb_mode_offline_from_the_environment_runs_without_a_key(tmp_path, monkeypatch, no_wandb_login):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(preset="tiny", overrides=["logging.wandb.enabled=true", "logging.progress=false",
                                                "train.max_steps=4", "train.eval_interval=2", "train.eval_steps=1"])
    assert cfg.logging.wandb.mode is None and cfg.logging.wandb.project is None  # wandb's own resolution
    summary = Trainer(cfg, tmp_path / "run", say=lambda line: None).run()
    assert summary["status"] == "completed"
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "wandb wrote no offline run in the run folder"


def test_wandb_online_without_a_key_is_one_line_and_exit_2_before_any_data(tmp_path, monkeypatch, capsys,
                                                                          no_wandb_login):
    monkeypatch.setenv("WANDB_MODE", "online")
    out = tmp_path / "run"
    status = main(["train", *SHORT_RUN, "--set", "logging.wandb.enabled=true", "--set", f"train.out_dir={out}"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert "wandb login" in err and "WANDB_MODE=offline" in err and "logging.wandb.mode=offline" in err
    assert not out.exists()  # nothing was built or written


def test_an_explicit_mode_wins_over_wandb_mode(monkeypatch, no_wandb_login):
    monkeypatch.setenv("WANDB_MODE", "online")
    check_wandb_login(WandbConfig(enabled=True, mode="offline"))  # no key needed offline
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(ConfigError, match="no API key"):
        check_wandb_login(WandbConfig(enabled=True, mode="online"))
    monkeypatch.setenv("WANDB_MODE", "sideways")
    with pytest.raises(ConfigError, match="WANDB_MODE='sideways' is not a wandb mode"):
        check_wandb_login(WandbConfig(enabled=True))


def test_a_key_in_the_environment_is_a_login(monkeypatch, no_wandb_login):
    monkeypatch.setenv("WANDB_MODE", "online")
    # The same check, the same environment, without the key: refused; so passing below is the key's doing.
    with pytest.raises(ConfigError, match="wandb is online but has no API key"):
        check_wandb_login(WandbConfig(enabled=True))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # checked for its form only: no network
    assert check_wandb_login(WandbConfig(enabled=True)) is None


# ---------------------------------------------------------------------------------------------
# Progress on the console


def test_plain_lines_carry_the_bars_figures_at_most_every_n_seconds():
    lines = []
    progress = Progress(10, mode="lines", every_seconds=3600, say=lines.append)
    for step in range(1, 11):
        if step % 2 == 0:
            progress.update(0, loss=2.5, lr=3e-4, tok_s=12345.0)
        progress.update(1)
        if step == 4:
            progress.write("step 4: val loss 2.4000")
    progress.close()
    # The first line at once, then none for an hour, except the last step's.
    assert lines[0].startswith("step 2/10 (20%) | loss 2.5000 | lr 3.00e-04 | tokens/s 12,345 | elapsed ")
    assert "ETA " in lines[0]
    assert lines[1:] == ["step 4: val loss 2.4000", lines[2]] and lines[2].startswith("step 10/10 (100%)")
    assert lines[2].endswith("ETA 0:00")


def test_every_log_step_gets_a_line_when_the_interval_is_zero():
    lines = []
    progress = Progress(6, mode="lines", every_seconds=0, say=lines.append)
    for _ in range(3):
        progress.update(2, loss=1.0)
    progress.close()
    assert [line.split(" |")[0] for line in lines] == ["step 2/6 (33%)", "step 4/6 (67%)", "step 6/6 (100%)"]


def test_the_mode_follows_where_stdout_goes(tmp_path):
    with open(tmp_path / "log", "w") as redirected:
        assert progress_mode(True, stream=redirected) == "lines"
        assert progress_mode(False, stream=redirected) == "off"
        assert progress_mode(True, quiet=True, stream=redirected) == "quiet"


@pytest.mark.slow
def test_a_redirected_run_logs_plain_lines_and_tensorboard_events(tmp_path):
    out = tmp_path / "run"
    env = os.environ | {"NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "b6lab.cli", "train", *SHORT_RUN, "--set", "logging.plain_interval_seconds=0",
         "--set", "logging.tensorboard=true", "--set", f"train.out_dir={out}"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert "\r" not in log and "\x1b" not in log  # no bars redrawn, no colour
    steps = [line for line in result.stdout.splitlines() if line.startswith("step ") and "|" in line]
    assert [line.split(" |")[0] for line in steps] == ["step 2/8 (25%)", "step 4/8 (50%)", "step 6/8 (75%)", "step 8/8 (100%)"]
    assert all(f" {figure} " in steps[-1] for figure in ("loss", "lr", "tokens/s", "ETA"))
    assert f"tensorboard --logdir {out}" in result.stdout

    events = read_events(out)
    losses = {step: value for tag, step, value in events if tag == "loss"}
    assert sorted(losses) == [2, 4, 6, 8]
    metrics = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}
    assert losses == pytest.approx(metrics, rel=1e-6)  # float32 in the event file
    assert {step for tag, step, _ in events if tag == "val_loss"} == {4, 8}


@pytest.mark.slow
def test_bench_writes_no_carriage_returns_to_a_log():
    result = subprocess.run([sys.executable, "-m", "b6lab.cli", "bench", "--preset", "tiny", "--steps", "1", "--warmup", "0"],
                            capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tokens/s" in result.stdout and "\r" not in result.stdout + result.stderr


def test_a_quiet_sweep_prints_no_trial_lines(capsys):
    from b6lab.sweep.progress import SweepProgress

    for quiet, expected in ((False, "[0/2 done, 0 running] still running\n"), (True, "")):
        SweepProgress({}, {}, total=2, quiet=quiet)._say([], "still running")
        assert capsys.readouterr().out == expected


def test_quiet_prints_the_start_and_the_result_only(tmp_path, capsys):
    assert main(["train", *SHORT_RUN, "--quiet", "--set", f"train.out_dir={tmp_path / 'run'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("b6lab: training tiny") and lines[1].startswith("b6lab: completed after 8 steps")
    assert lines[2] == f"results: {tmp_path / 'run'}/"  # the result says where it is


def test_quiet_silences_wandbs_run_summary(tmp_path):
    """Real wandb, offline, in its own process (wandb prints from there): without --quiet its
    `wandb:` lines and run summary block appear; with it, none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {
        "HOME": str(tmp_path / "home"), "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    outputs = {}
    for quiet in (False, True):
        result = subprocess.run(
            [sys.executable, "-m", "b6lab.cli", "train", *SHORT_RUN, "--set", "logging.wandb.enabled=true",
             "--set", f"train.out_dir={tmp_path / f'run-{quiet}'}", "--set", "train.threads=1"]
            + ["--quiet"] * quiet, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        outputs[quiet] = result.stdout + result.stderr
        assert list((tmp_path / f"run-{quiet}" / "wandb").glob("offline-run-*"))  # wandb did log
    assert "wandb:" in outputs[False] and "Run summary" in outputs[False]
    assert "wandb" not in outputs[True].replace(str(tmp_path), ""), outputs[True]


def test_quiet_silences_tunes_trials_did_not_complete_line(capfd):
    """Tune logs its ERROR line through this logger (ray.tune.tune's own `logger`): under --quiet it
    is off for the sweep, and back after."""
    import logging

    from ray.tune import tune as tune_module

    from b6lab.sweep.tune_runner import tune_errors_silenced

    assert tune_module.logger.name == "ray.tune.tune"
    level = tune_module.logger.level
    # A handler on stderr as it is now: Ray's own was made when ray was first imported, perhaps
    # inside another test's capture, and writes to that test's stream.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    tune_module.logger.addHandler(handler)
    try:
        for quiet in (False, True):
            capfd.readouterr()
            with tune_errors_silenced(quiet):
                tune_module.logger.error("Trials did not complete: %s", ["norm=post,seed=0"])
            assert ("ERROR" in capfd.readouterr().err) is not quiet
            assert tune_module.logger.level == level
    finally:
        tune_module.logger.removeHandler(handler)
    assert logging.getLogger("ray.tune.tune") is tune_module.logger


# ---------------------------------------------------------------------------------------------
# TensorBoard


def test_event_files_hold_every_scalar_and_one_per_block(tmp_path):
    logging = LoggingConfig(tensorboard=True)
    run_log = RunLog(MetricsFile(tmp_path / "metrics.jsonl"), logging, tmp_path, config={})
    run_log.write({"step": 10, "tokens": 640, "loss": 2.5, "lr": 1e-3, "event": "oom"})
    run_log.write({"step": 20, "tokens": 1280, "block_grad_norm": [0.5, 0.25], "block_residual_rms": [1.0, 2.0]})
    run_log.close({"status": "completed"}, None)
    events = read_events(tmp_path)
    assert ("loss", 10, 2.5) in events and ("tokens", 20, 1280) in events
    assert {(tag, value) for tag, step, value in events if tag.startswith("block_")} == {
        ("block_grad_norm/0", 0.5), ("block_grad_norm/1", 0.25), ("block_residual_rms/0", 1.0), ("block_residual_rms/1", 2.0)}
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2
    assert tensorboard_command([tmp_path]) == f"tensorboard --logdir {tmp_path}"
    assert tensorboard_command([tmp_path / "nothing"]) is None


def read_events(run_dir: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in a run's event files, read as TFRecords with the
    protobuf classes tensorboardX ships, each record's checksums checked."""
    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    def masked(data: bytes) -> int:
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    scalars = []
    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert files, f"no event file in {run_dir / 'tensorboard'}"
    for path in files:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            header = data[offset:offset + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[offset + 8:offset + 12])[0] == masked(header)
            body = data[offset + 12:offset + 12 + length]
            assert struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])[0] == masked(body)
            offset += 16 + length
            event = Event.FromString(body)
            for value in event.summary.value:
                scalars.append((value.tag, event.step, value.simple_value))
    return scalars


# ---------------------------------------------------------------------------------------------
# The cache folder


def test_the_cache_follows_b6lab_cache_then_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("B6LAB_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "b6lab"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: only absolute paths count
    assert cache_dir() == tmp_path / "home" / ".cache" / "b6lab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "b6lab"
    monkeypatch.setenv("B6LAB_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    assert cache_dir(DataConfig(cache_dir=str(tmp_path / "configured"))) == tmp_path / "configured"
