"""Faults a run must survive, done for real: signals to `b6lab train` processes, crashes mid-save,
a full disk, divergence, two writers, corrupt files and bad values (docs/faults.md lists them all).

Every resumed run is compared with one uninterrupted run of the same config (dropout on,
log_interval > 1, fp32): its training and validation losses to 1e-6.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from b6lab.cli import main
from b6lab.commands.train import choose_out_dir
from b6lab.errors import ConfigError, DataError, UsageError
from b6lab.train import checkpoint
from b6lab.train.records import MetricsFile, read_metrics
from b6lab.train.trainer import Trainer
from tests.fault_hook import inject
from tests.tiny import TinyRun

# Every fault run: 12 steps, a checkpoint every 2, in fp32 on one thread, with dropout on so that a
# resume must restore the random state too.
LENGTH = {"max_steps": 12, "eval_interval": 4, "eval_steps": 1, "log_interval": 3}
FAULT_RUN = ("train.checkpoint_interval=2", "model.dropout=0.1", "train.precision=fp32", "train.threads=1")
SETTINGS = TinyRun.sets(*FAULT_RUN, **LENGTH)  # as `--set` texts, for the runs started from the command line


def config(*overrides):
    return TinyRun.config(*FAULT_RUN, *overrides, **LENGTH)


def train_in_process(out, *overrides, fault_injector=None, **options):
    return TinyRun.train(out, *FAULT_RUN, *overrides, fault_injector=fault_injector, **LENGTH, **options)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every stopped-and-resumed one must equal."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train_in_process(out)
    return out


def records(out):
    return [{k: v for k, v in r.items() if k in ("step", "tokens", "loss", "val_loss", "event")}
            for r in read_metrics(out / "metrics.jsonl") if "loss" in r or "val_loss" in r]


def assert_same_run(out, straight):
    got, want = records(out), records(straight)
    assert [(r["step"], r["tokens"]) for r in got] == [(r["step"], r["tokens"]) for r in want]
    for a, b in zip(got, want):
        for key in ("loss", "val_loss"):
            if key in b:
                assert a[key] == pytest.approx(b[key], abs=1e-6), (a, b)
    summary, expected = (json.loads((o / "summary.json").read_text()) for o in (out, straight))
    assert summary["status"] == "completed" and summary["steps"] == expected["steps"]
    assert summary["best_val_loss"] == pytest.approx(expected["best_val_loss"], abs=1e-6)


def cli(*args, **options):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "b6lab.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **options)


def train_cli(out, *extra):
    return cli("train", "--preset", "tiny", *[a for s in [*SETTINGS, f"train.out_dir={out}", *extra] for a in ("--set", s)])


def wait_for_step(out, step, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(r.get("step", 0) >= step for r in read_metrics(out / "metrics.jsonl")):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {out / 'metrics.jsonl'}")


# ---------------------------------------------------------------------------------------------
# Signals to real processes, then --resume


@pytest.mark.slow
@pytest.mark.parametrize("sig, at_step", [(signal.SIGTERM, 3), (signal.SIGINT, 7), (signal.SIGKILL, 5)])
def test_a_signal_then_resume_gives_the_uninterrupted_run(tmp_path, straight, sig, at_step):
    out = tmp_path / "run"
    process = train_cli(out)
    wait_for_step(out, at_step, process)
    # a second run on the same folder meanwhile: one line naming the process that holds it
    with pytest.raises(UsageError, match=f"in use by another run \\(process {process.pid} "):
        Trainer(config(), out, resume=True, say=lambda m: None)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    if sig != signal.SIGKILL:
        assert process.returncode == 128 + sig.value
        assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("b6lab train: failed: stopped by")
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "failed" and summary["checkpoints"]["last"] == summary["steps"] >= at_step
    resumed = cli("train", "--resume", "--set", f"train.out_dir={out}")
    stdout, stderr = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, stderr
    assert_same_run(out, straight)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name not in ("last", "best")]


@pytest.mark.parametrize("delay", [0.05, 0.1, 0.3])
def test_ctrl_c_during_start_up_is_one_line_or_none(tmp_path, delay):
    """A real SIGINT while the command imports b6lab, pluggy, torch (before cli.main's handlers can run)
    or builds the data: exit 130 (by SIGINT, as the shell shows it, or returned), no traceback, no run folder.
    (Before Python has reached b6lab at all, ~20 ms here, its own start-up is out of b6lab's reach.)"""
    process = train_cli(tmp_path / "run")
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (130, -signal.SIGINT) and "Traceback" not in stderr, stderr
    assert stderr.strip() in ("", "b6lab: interrupted", "b6lab train: interrupted"), stderr
    assert not (tmp_path / "run").exists()


def rank_processes(launcher) -> dict[int, int]:
    """RANK -> PID of the processes `b6lab train --nproc` started (its torchrun agent's children)."""
    found = {}
    for agent in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
        for pid in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
            environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
            found[int(environ["RANK"])] = int(pid)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_rank_killed_under_nproc_is_one_line_and_resumes_exactly(tmp_path, parallel):
    """A real SIGKILL to rank 1 of `b6lab train --nproc 2` (gloo): the launcher says which rank, by which
    signal, and where --resume continues; rank 0's error (a peer gone inside backward) is not shown.
    The resumed run's losses are the uninterrupted run's."""
    def two_processes(out, *extra):
        return cli("train", "--preset", "tiny", "--nproc", "2", *extra, *[a for s in [
            *SETTINGS, f"train.out_dir={out}", f"train.parallel={parallel}", "train.batch_size=4"] for a in ("--set", s)])

    straight = two_processes(tmp_path / "straight")
    _, stderr = straight.communicate(timeout=300)
    assert straight.returncode == 0, stderr

    out = tmp_path / "run"
    process = two_processes(out)
    wait_for_step(out, 5, process)
    ranks = rank_processes(process)
    assert sorted(ranks) == [0, 1], "the run ended before a rank could be killed"
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    lines = stderr.strip().splitlines()
    assert process.returncode == 128 + signal.SIGKILL and len(lines) == 1 and "Traceback" not in stderr, stderr
    last = checkpoint.step_of(out / "checkpoints" / "last")
    assert lines[0] == (f"b6lab train: failed: rank 1 (process {ranks[1]}) was killed by SIGKILL; the other processes "
                        f"were stopped; run the same command with --resume to continue from {out / 'checkpoints' / 'last'} "
                        f"(step {last})")
    assert last >= 4  # checkpoints every 2 steps, and the loss at step 6 was logged
    resumed = two_processes(out, "--resume")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert_same_run(out, tmp_path / "straight")


def test_ctrl_c_in_the_middle_of_a_step_saves_the_steps_start(tmp_path, straight):
    """An interrupt that abandons a step (the second Ctrl-C) saves the data position and RNG of the
    step's start, and the partial window of training losses: the resumed run is exact."""

    def interrupt(step, micro_batch):
        if step == 7:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_in_process(out, fault_injector=interrupt)
    assert json.loads((out / "summary.json").read_text())["checkpoints"]["last"] == 7
    Trainer(config(), out, resume=True, say=lambda m: None).run()
    assert_same_run(out, straight)


def test_out_of_memory_retreat_trains_on_the_sequences_already_drawn(tmp_path, straight):
    def oom_at_step_2(step, micro_batch):
        if step == 2 and micro_batch == 8:
            raise torch.OutOfMemoryError("injected")

    out = tmp_path / "run"
    summary = train_in_process(out, "model.dropout=0.0", fault_injector=oom_at_step_2)
    plain = train_in_process(tmp_path / "plain", "model.dropout=0.0")
    assert summary["tokens"] == plain["tokens"]
    got, want = records(out), records(tmp_path / "plain")
    assert [r["loss"] for r in got if "loss" in r] == pytest.approx([r["loss"] for r in want if "loss" in r], abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Checkpoints: a crash at any point of a save, a full disk, divergence


def fake_save(folder, step):
    checkpoint.save(folder, model_state={"w": torch.full((2,), float(step))}, state={"step": step}, config={"step": step})


def test_every_crash_point_of_a_save_leaves_the_newest_complete_checkpoint(tmp_path):
    last = tmp_path / "last"
    fake_save(last, 4)
    # the new one written but not yet swapped in (the old one already renamed aside, or not)
    shutil.copytree(last, tmp_path / "last.tmp-999999")
    (tmp_path / "last.tmp-999999" / checkpoint.MARKER).write_text('{"step": 6}')
    os.replace(last, tmp_path / "last.old")
    assert checkpoint.find(last) == tmp_path / "last.tmp-999999"
    checkpoint.tidy(last)
    assert checkpoint.step_of(last) == 6 and sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # a temporary cut off before its marker is never read, and is removed at the next start
    (tmp_path / "last.tmp-999998").mkdir()
    (tmp_path / "last.tmp-999998" / "model.pt").write_bytes(b"partial")
    assert checkpoint.find(last) == last
    checkpoint.tidy(last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # a crash after the swap's first rename: only `.old` is complete
    fake_save(last, 8)
    os.replace(last, tmp_path / "last.old")
    assert checkpoint.find(last) == tmp_path / "last.old"


def test_resume_without_a_usable_checkpoint_says_what_it_found(tmp_path, straight):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    shutil.rmtree(out / "checkpoints" / "last")
    (out / "checkpoints" / "last.tmp-999999").mkdir()
    metrics = (out / "metrics.jsonl").read_text()
    with pytest.raises(UsageError, match=r"cannot resume .*no complete checkpoint.*holds best"):
        Trainer(config(), out, resume=True, say=lambda m: None)
    assert (out / "metrics.jsonl").read_text() == metrics and checkpoint.step_of(out / "checkpoints" / "best")
    # a folder with no run in it may start
    assert Trainer(config(), tmp_path / "fresh", resume=True, say=lambda m: None).step == 0


def test_disk_full_at_the_write_ends_the_run_with_last_intact(tmp_path, monkeypatch):
    write, calls = checkpoint._write, []

    def full_disk_from_the_third_checkpoint(path, data):
        calls.append(path)
        if path.name == "state.pt" and len([c for c in calls if c.name == "state.pt"]) >= 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(path, data)

    monkeypatch.setattr(checkpoint, "_write", full_disk_from_the_third_checkpoint)
    out = tmp_path / "run"
    summary = train_in_process(out)
    assert summary["status"] == "failed" and summary["reason"].startswith("disk full")
    assert "checkpoints/last (step 4)" in summary["reason"] and summary["checkpoints"]["last"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "last"]
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_a_run_that_saved_nothing_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_write", lambda path, data: (_ for _ in ()).throw(OSError(errno.EDQUOT, "quota")))
    summary = train_in_process(tmp_path / "run")
    assert summary["status"] == "failed" and summary["reason"].endswith("no checkpoint was saved")
    assert not list((tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.slow
def test_a_real_full_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2600k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        process = train_cli(disk / "run")
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 1 and "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1].startswith("b6lab train: failed: disk full")
        summary = json.loads((disk / "run" / "summary.json").read_text())
        assert summary["checkpoints"]["last"] >= 2 and checkpoint.find(disk / "run" / "checkpoints" / "last")
        assert not list((disk / "run" / "checkpoints").glob("*.tmp-*"))
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB tmpfs (root only), unmounted after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


def fill(disk):
    """Write to `disk` until it has no space left, for real: the next new page anyone needs fails."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return disk / "filler"


def test_a_disk_that_stays_full_leaves_summary_json_unwritten_and_says_so(small_disk, straight):
    """The disk fills after step 2's checkpoint, for good: the next checkpoint cannot be written, nor
    then summary.json; the reason (the user's line) says both, `last` and the lines before are kept.
    Freed, the run resumes exactly."""
    out = small_disk / "run"

    def full_after_step_2(step, micro_batch):
        if step == 2 and not (small_disk / "filler").exists():
            fill(small_disk)

    summary = train_in_process(out, fault_injector=full_after_step_2)
    assert summary["status"] == "failed" and summary["reason"].startswith("disk full: ")
    assert "continues from" in summary["reason"] and "(step 2)" in summary["reason"]
    assert summary["reason"].endswith("summary.json could not be written (no space left for it)")
    assert not (out / "summary.json").exists() and not list(out.glob("*.tmp-*"))
    assert checkpoint.step_of(out / "checkpoints" / "last") == 2 and not list((out / "checkpoints").glob("*.tmp-*"))
    assert records(out)[:1] == records(straight)[:1]  # step 3's line was written before the disk filled, or cut
    (small_disk / "filler").unlink()
    train_in_process(out, resume=True)
    assert_same_run(out, straight)


@pytest.mark.parametrize("tensorboard", [False, True])
def test_disk_full_at_a_record_write_ends_the_run_as_at_a_checkpoint(small_disk, capfd, tensorboard):
    """No checkpoint until the end, a line every step: metrics.jsonl (or TensorBoard's event file,
    written on a thread of tensorboardX's) is the write that meets the full disk. The run ends with
    one reason naming the file, no traceback from any thread; the lines before stay."""
    out = small_disk / "run"

    def full_after_step_2(step, micro_batch):
        if step == 2 and not (small_disk / "filler").exists():
            fill(small_disk)

    summary = train_in_process(out, "train.max_steps=60", "train.log_interval=1", "train.eval_interval=100",
                               "train.checkpoint_interval=100", f"logging.tensorboard={str(tensorboard).lower()}",
                               fault_injector=full_after_step_2)
    assert summary["status"] == "failed" and summary["steps"] < 60
    written = [str(out / "metrics.jsonl")] + [str(p) for p in (out / "tensorboard").glob("events.*")]
    assert any(summary["reason"].startswith(f"disk full: no space left on device writing {path} (") for path in written)
    assert "Traceback" not in capfd.readouterr().err
    assert "MB free in" in summary["reason"] and "no checkpoint was saved" in summary["reason"]
    lines = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert lines == list(range(1, len(lines) + 1)) and len(lines) >= summary["steps"] - 1


def test_a_full_disk_at_the_tokenizer_cache_is_the_same_line(small_disk, tmp_path):
    """The BPE tokenizer's cache on a full disk (data.cache_dir): one line naming the cache file and
    that disk's free space, exit 1; no half-written cache file, no run folder left."""
    fill(small_disk)
    process = train_cli(tmp_path / "run", "data.tokenizer=bpe", "data.bpe_vocab_size=300", "data.bpe_train_mb=0.05",
                        f"data.cache_dir={small_disk / 'cache'}")
    _, stderr = process.communicate(timeout=240)
    lines = stderr.strip().splitlines()
    assert process.returncode == 1 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"b6lab train: failed: disk full: no space left on device writing {small_disk / 'cache'}")
    assert f"(0.0 MB free in {small_disk / 'cache'}" in lines[0]
    assert not list(small_disk.rglob("*.tmp")) and not (tmp_path / "run").exists()


def test_a_run_on_a_full_disk_says_the_folder_and_its_free_space(small_disk):
    fill(small_disk)
    process = train_cli(small_disk / "run")
    _, stderr = process.communicate(timeout=240)
    lines = stderr.strip().splitlines()
    assert process.returncode == 1 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("b6lab train: failed: disk full: no space left on device writing ")
    assert f"(0.0 MB free in {small_disk}" in lines[0] and "nothing was trained" in lines[0]
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no half-made run folder left


def test_a_read_only_run_folder_is_one_line_naming_it(tmp_path, straight):
    """A read-only mount (root ignores chmod): a new run and a --resume are both told, exit 2, and the run's files stay."""
    folder = tmp_path / "ro"
    shutil.copytree(straight, folder)
    (folder / "run.lock").unlink(missing_ok=True)
    empty = tmp_path / "ro-empty"
    empty.mkdir()
    mounted = []
    try:
        for path in (folder, empty):
            if subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode or \
                    subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True).returncode:
                pytest.skip("cannot make a read-only bind mount here (needs root)")
            mounted.append(path)
        before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        for out, extra in ((empty, ()), (folder, ("--resume",))):
            process = cli("train", *extra, "--set", f"train.out_dir={out}", "--set", "logging.progress=false")
            _, stderr = process.communicate(timeout=240)
            lines = stderr.strip().splitlines()
            assert process.returncode == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
            assert lines[0].startswith(f"b6lab train: error: {out} is on a read-only file system")
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    finally:
        for path in mounted:
            subprocess.run(["umount", str(path)])


def test_divergence_keeps_finite_checkpoints_from_before_it(tmp_path):
    holder = {}

    def poison(step, micro_batch):
        if step == 5:
            holder["trainer"].model.tok_emb.weight.data.fill_(float("nan"))

    out = tmp_path / "run"
    trainer = inject(Trainer(config("model.dropout=0.0"), out, say=lambda m: None), poison)
    holder["trainer"] = trainer
    summary = trainer.run()
    # step 6's loss is the first NaN: found at its log, before its checkpoint would have been written
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 6
    assert summary["checkpoints"] == {"last": 4, "best": 4}
    assert "checkpoints/last (step 4)" in summary["reason"] and "--resume" in summary["reason"]
    for name in ("last", "best"):
        weights, _, _ = checkpoint.load(out / "checkpoints" / name)
        assert all(torch.isfinite(t).all() for t in weights.values())


# ---------------------------------------------------------------------------------------------
# Resuming with other settings


def test_resume_with_a_setting_that_cannot_change_names_the_key(tmp_path, straight):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    for setting, key in (("model.d_model=128", "model.d_model"), ("train.batch_size=2", "train.batch_size"),
                         ("data.tokenizer=bpe", "data.tokenizer")):
        with pytest.raises(ConfigError, match=f"^{key}: cannot change when resuming"):
            Trainer(config(setting), out, resume=True, say=lambda m: None)


def test_resume_with_a_new_lr_and_weight_decay_applies_both(tmp_path, straight):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    said = []
    trainer = Trainer(config("train.max_steps=14", "optim.lr=1e-4", "optim.weight_decay=0.5"), out, resume=True,
                      say=said.append)
    assert [group["weight_decay"] for group in trainer.optimizer.param_groups] == [0.5, 0.0]
    assert trainer.base_lrs[0] == 1e-4 and any("optim.weight_decay = 0.5" in line for line in said)
    assert trainer.run()["steps"] == 14


# ---------------------------------------------------------------------------------------------
# Two runs, one folder


def test_default_folders_are_claimed_atomically(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert [str(choose_out_dir(None, "demo", resume=False)) for _ in range(3)] == ["runs/demo", "runs/demo-2", "runs/demo-3"]


def test_a_new_run_on_a_folder_in_use_is_told_it_is_in_use_not_to_resume(tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("")  # a run is going on in it
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from b6lab.train.run_folder import RunLock; "
                               "lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"busy is in use by another run \\(process {holder.pid} "):
            choose_out_dir(str(folder), "demo", resume=False)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(UsageError, match="already holds a run; pass --resume"):  # once it is gone
        choose_out_dir(str(folder), "demo", resume=False)


def test_a_run_stopped_by_a_mistake_leaves_no_folder_and_takes_no_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, "train", "--preset", "tiny", "--set", "optim.lr=-1")  # found while building the optimizer
    assert not (tmp_path / "runs" / "tiny").exists()
    assert str(choose_out_dir(None, "tiny", resume=False)) == "runs/tiny"


def test_resuming_names_only_the_settings_that_changed(tmp_path):
    train_in_process(tmp_path / "run", "train.max_steps=4")
    said = []
    Trainer(config("train.max_steps=6"), tmp_path / "run", resume=True, say=said.append).run()
    assert [line.strip() for line in said if "resuming with" in line] == ["resuming with train.max_steps = 6 (was 4)"]
    said.clear()
    summary = Trainer(config("train.max_steps=6"), tmp_path / "run", resume=True, say=said.append).run()
    assert summary["steps"] == 6 and any("nothing to train: the run is at step 6 and train.max_steps is 6" in line
                                         for line in said)


# ---------------------------------------------------------------------------------------------
# User mistakes: one line, exit 2


def one_line_error(capsys, *argv):
    status = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("setting, message", [
    # Checked when the config is read (the optimizers' Annotated limits), so the line says where the value came from.
    ("optim.lr=-1e-3", "optim.lr (in --set optim.lr): must be a number > 0, got -0.001"),
    ("optim.betas=[1.5,0.9]", "optim.betas (in --set optim.betas): must be two numbers in [0, 1)"),
    ("optim.weight_decay=-1", "optim.weight_decay (in --set optim.weight_decay): must be a number >= 0"),
])
def test_bad_optimizer_values(capsys, tmp_path, setting, message):
    err = one_line_error(capsys, "train", "--preset", "tiny", "--set", setting, "--set", f"train.out_dir={tmp_path / 'r'}")
    assert message in err
    assert not (tmp_path / "r").exists()  # nothing left behind


def test_bad_yaml_is_one_line_with_its_place(capsys, tmp_path):
    (tmp_path / "run.yaml").write_text("model: {norm: post\n")
    err = one_line_error(capsys, "train", str(tmp_path / "run.yaml"))
    assert f"(in {tmp_path / 'run.yaml'}): not valid YAML at line 2, column 1: expected ',' or '}}'" in err


def test_bad_optimizer_values_fail_a_sweeps_pre_check(tmp_path):
    from b6lab.sweep.experiment import load_experiment
    from b6lab.sweep.trials import resolve_trials

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nbase: {preset: tiny}\ngrid: {optim.lr: [1e-3, -1e-3]}\n")
    with pytest.raises(ConfigError, match="optim.lr.*must be a number > 0"):
        resolve_trials(load_experiment(sweep))


@pytest.mark.parametrize("args, message", [
    (["--top-k", "-3"], "--top-k must be >= 0, got -3"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must be >= 0"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
])
def test_bad_generate_arguments(capsys, straight, args, message):
    assert message in one_line_error(capsys, "generate", str(straight), "--prompt", "a", *args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_generate_on_cuda_without_cuda(capsys, straight):
    assert "no CUDA device" in one_line_error(capsys, "generate", str(straight), "--prompt", "a", "--device", "cuda")


@pytest.mark.parametrize("damaged, message", [("tokenizer.pkl", "tokenizer.pkl is unreadable"),
                                              ("model.pt", "is unreadable")])
def test_damaged_checkpoint_files(capsys, tmp_path, straight, damaged, message):
    folder = tmp_path / "best"
    shutil.copytree(straight / "checkpoints" / "best", folder)
    data = (folder / damaged).read_bytes()
    (folder / damaged).write_bytes(data[: len(data) // 2] if damaged == "tokenizer.pkl" else b"garbage" * 100)
    assert message in one_line_error(capsys, "generate", str(folder), "--prompt", "a")


def test_a_torn_last_metrics_line_is_dropped_on_resume_and_a_damaged_one_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n{"step": 3, "lo')
    MetricsFile(path, resume_step=2).close()
    assert read_metrics(path) == [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}]
    path.write_text('{"step": 1, "loss": 5.0}\nnot json\n{"step": 3, "loss": 3.0}\n')
    with pytest.raises(DataError, match="metrics.jsonl, line 2, is not a metrics record"):
        MetricsFile(path, resume_step=3)


# ---------------------------------------------------------------------------------------------
# Sweeps


def test_the_resume_table_shows_finished_trials_as_finished(tmp_path, straight):
    from types import SimpleNamespace

    from b6lab.commands.sweep import _status_on_resume

    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)
    (killed / "summary.json").unlink()
    trials = [SimpleNamespace(run_dir=straight), SimpleNamespace(run_dir=killed), SimpleNamespace(run_dir=tmp_path / "new")]
    assert [_status_on_resume(t, "run", retry_failed=False) for t in trials] == ["completed", "resume", "run"]


@pytest.mark.slow
def test_a_killed_sweep_driver_leaves_no_ray_process_after_resume(tmp_path):
    import psutil

    (tmp_path / "sweep.yaml").write_text(
        "name: killed\nbase: {preset: tiny, set: {train.max_steps: 30, train.eval_interval: 10, train.log_interval: 5}}\n"
        "grid: {model.norm: [pre]}\nseeds: [0]\nresources: {cpu: 1, gpu: 0}\n")
    storage = tmp_path / "runs" / "sweeps" / "killed"
    driver = cli("sweep", "sweep.yaml", cwd=tmp_path)
    trial = storage / "trials" / "norm=pre,seed=0"
    wait_for_step(trial, 5, driver, timeout=400)
    session = json.loads((storage / "ray_session.json").read_text())["session_dir"].rsplit("/", 1)[-1]
    driver.kill()
    driver.communicate()

    def left():  # every process with a file of the session open (Ray's agents rename themselves)
        found = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if any(session in part for part in process.info["cmdline"] or []) or any(
                        session in f.path for f in process.open_files()):
                    found.append(process)
            except psutil.Error:
                pass
        return found

    time.sleep(3)
    orphans = left()  # here: ray::DashboardAgent and ray::RuntimeEnvAgent, re-parented to init
    resumed = cli("sweep", "sweep.yaml", "--resume", cwd=tmp_path)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    assert not [p for p in orphans if p.is_running()] and not left()
    assert not (storage / "ray_session.json").exists()
    assert json.loads((trial / "summary.json").read_text())["status"] == "completed"
