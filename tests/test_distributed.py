"""Data parallelism: real torchrun processes over gloo on the CPU, compared with one process.

On CPU in fp32 with no dropout, 2 processes x micro-batch 4 see the same sequences per step as
1 x 8 and 1 x 4 x accumulation 2, so their per-step losses must agree to float rounding.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from b6lab import parts
from b6lab.cli import main
from b6lab.config import load_config
from b6lab.data.packing import TrainBatches
from b6lab.train import checkpoint
from b6lab.train.trainer import Trainer
from tests.tiny import TinyRun, write_sweep

STEPS = 16
LENGTH = {"max_steps": STEPS, "eval_interval": 8, "eval_steps": 2, "log_interval": 1}
# No dropout, fp32, one thread: what makes 2 processes' losses equal one process's to rounding.
EXACT = {"model.dropout": 0, "train.precision": "fp32", "train.checkpoint_interval": 2, "train.threads": 1}
SETTINGS = TinyRun.sets(*(f"{key}={value}" for key, value in EXACT.items()), **LENGTH)
TOLERANCE = 1e-4


def records(run: Path, key: str) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line[key] for line in lines if key in line]


def one_process(out_dir: Path, *overrides: str) -> Path:
    cfg = load_config(None, preset="tiny", overrides=[*SETTINGS, f"train.out_dir={out_dir}", *overrides])
    Trainer(cfg, out_dir, say=lambda _: None).run()
    return out_dir


def torchrun(out_dir: Path, *extra: str, nproc: int = 2) -> subprocess.Popen:
    sets = [f"--set={s}" for s in [*SETTINGS, f"train.out_dir={out_dir}", "train.batch_size=4"]]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "b6lab", "train", "--preset", "tiny", *sets, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp") / "run"
    process = torchrun(out_dir)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return out_dir, output


def test_each_rank_serves_its_rows_of_the_global_batch():
    cfg = load_config(None, preset="tiny")
    source = parts.build_source(cfg.data)
    tokenizer = parts.build_tokenizer(cfg.data, source)
    options = dict(seq_len=16, shuffle_buffer=32, seed=0, num_workers=0)
    whole = TrainBatches(source, tokenizer, batch_size=8, **options)
    shares = [TrainBatches(source, tokenizer, batch_size=4, rank=r, ranks=2, **options) for r in (0, 1)]
    for _ in range(6):  # past the first shuffled chunk of 32 blocks
        x, _ = next(whole)
        assert torch.equal(x, torch.cat([next(share)[0] for share in shares]))
    # One position for all ranks: what a checkpoint stores resumes each with its next rows.
    assert shares[0].state_dict() == shares[1].state_dict()


@pytest.mark.slow
def test_two_processes_match_one_process_step_for_step(two_processes, tmp_path):
    out_dir, output = two_processes
    assert "global batch 8 sequences (512 tokens) = micro-batch 4 x accumulation 1 x 2 processes (ddp, gloo)" in output
    assert output.count("b6lab: training tiny") == 1  # only rank 0 prints
    two = records(out_dir, "loss")
    assert len(two) == STEPS  # only rank 0 writes metrics.jsonl
    for overrides in (["train.batch_size=8"], ["train.batch_size=4", "train.grad_accum_steps=2"]):
        run = one_process(tmp_path / "-".join(overrides), *overrides)
        assert records(run, "loss") == pytest.approx(two, abs=TOLERANCE), overrides
        assert records(run, "val_loss") == pytest.approx(records(out_dir, "val_loss"), abs=TOLERANCE), overrides
        assert records(run, "tokens") == records(out_dir, "tokens")


@pytest.mark.slow
def test_fsdp_checkpoints_are_sharded_and_resume_on_another_number_of_processes(tmp_path, capsys):
    # A constant learning rate, so that a run stopped and resumed twice is one run of 16 steps.
    constant = "schedule.name=constant"
    reference = one_process(tmp_path / "one", "train.batch_size=8", constant)
    out_dir = tmp_path / "fsdp"

    def two_fsdp_processes(steps: int, *extra: str) -> str:
        process = torchrun(out_dir, "--set=train.parallel=fsdp", f"--set={constant}", f"--set=train.max_steps={steps}", *extra)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
        return output

    assert "(fsdp, gloo)" in two_fsdp_processes(STEPS // 2)
    assert records(out_dir, "loss") == pytest.approx(records(reference, "loss")[: STEPS // 2], abs=TOLERANCE)
    # Each rank wrote its own shards through torch.distributed.checkpoint, rank 0 the index and the rest.
    written = {p.name for p in (out_dir / "checkpoints" / "last").iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt", "config.yaml", "COMPLETE"} <= written
    assert "model.pt" not in written

    # 2 processes -> 1 (micro-batch 8): DCP reshards into the whole tensors of one process ...
    cfg = load_config(out_dir / "config.yaml", overrides=[f"train.max_steps={3 * STEPS // 4}"])
    trainer = Trainer(cfg, out_dir, resume=True, say=lambda _: None)
    # the same validation set as on 2 processes: eval_steps (2) global batches of 2 x 4 sequences
    assert sum(x.size(0) for x, _, counted in trainer.val_batches if counted) == 2 * 8
    trainer.run()
    assert "model.pt" in {p.name for p in (out_dir / "checkpoints" / "last").iterdir()}
    # ... and 1 -> 2: each process keeps its shard of the one-process checkpoint.
    assert "resuming at step 12" in two_fsdp_processes(STEPS, "--resume")
    assert records(out_dir, "loss") == pytest.approx(records(reference, "loss"), abs=TOLERANCE)
    assert checkpoint.is_sharded(out_dir / "checkpoints" / "last")

    # One process (eval, generate) reads the sharded checkpoint whole: the same weights as the reference's.
    losses = []
    for run in (out_dir, reference):
        capsys.readouterr()
        assert main(["eval", str(run / "checkpoints" / "last"), "--set", "train.batch_size=8", "--max-batches", "4",
                     "--json"]) == 0
        losses.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["loss"])
    assert losses[0] == pytest.approx(losses[1], abs=TOLERANCE)
    # `b6lab eval --set train.eval_steps=N` is the trainer's own validation set, global batches and all
    capsys.readouterr()
    assert main(["eval", str(out_dir / "checkpoints" / "last"), "--set", "train.eval_steps=2", "--json"]) == 0
    own = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["loss"]
    assert own == pytest.approx(records(out_dir, "val_loss")[-1], abs=TOLERANCE)
    assert main(["generate", str(out_dir / "checkpoints" / "last"), "--prompt", "a", "--max-new-tokens", "8"]) == 0


def sweep_file(folder: Path, workers: int) -> Path:
    return write_sweep(folder, name="workers",
                       base={"preset": "tiny", "set": TinyRun.settings(**LENGTH, **EXACT, **{"train.batch_size": 4})},
                       grid={"model.norm": ["pre"]}, seeds=[0], resources={"workers": workers, "cpu": 1},
                       storage=str(folder / "sweep"))


@pytest.mark.slow
def test_a_trial_on_two_ray_train_workers_matches_torchrun(two_processes, tmp_path, capsys):
    assert main(["sweep", str(sweep_file(tmp_path, workers=64))]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after Ray's own start-up warnings
    assert error.startswith("b6lab sweep: error: each trial asks for 64 workers x 1 CPU") and "but Ray has" in error

    assert main(["sweep", str(sweep_file(tmp_path, workers=2))]) == 0
    [metrics] = (tmp_path / "sweep").glob("trials/*/metrics.jsonl")
    assert records(metrics.parent, "loss") == pytest.approx(records(two_processes[0], "loss"), abs=TOLERANCE)
    assert records(metrics.parent, "val_loss") == pytest.approx(records(two_processes[0], "val_loss"), abs=TOLERANCE)


def test_gpu_processes_on_a_machine_without_gpus_is_a_one_line_error(capsys, tiny_overrides):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["train", "--preset", "tiny", "--nproc", "2", "--set", "train.device=cuda",
                 *[f"--set={s}" for s in tiny_overrides]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "train.device" in err and "NCCL" in err and "train.device=cpu" in err


def test_a_mistake_every_process_finds_under_nproc_is_one_line_once(tmp_path, capfd):
    """A refused resume under `b6lab train --nproc 2`: each process refuses it; the launcher says it
    once, exits 2, and no traceback (torchrun's report of a failed process) follows."""
    sets = [f"--set={s}" for s in [*SETTINGS, f"train.out_dir={tmp_path / 'run'}", "train.max_steps=2"]]
    assert main(["train", "--preset", "tiny", *sets]) == 0
    capfd.readouterr()
    code = main(["train", "--preset", "tiny", "--nproc", "2", "--resume", *sets, "--set=model.d_model=32"])
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2, err
    assert len(errors) == 1 and errors[0].startswith("b6lab train: error: model.d_model") and "cannot change when resuming" in errors[0], err
    assert "Traceback" not in err and "ChildFailedError" not in err, err


def test_no_processes_is_a_one_line_error(capsys, tiny_overrides):
    code = main(["train", "--preset", "tiny", "--nproc", "0", *[f"--set={s}" for s in tiny_overrides]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--nproc must be at least 1, got 0" in err


# An attention backend for the multi-worker sweep below: on rank 0, the first time its trial's
# checkpoints/last holds step 4 it hangs (the sweep's driver is then killed), the first time it holds
# step 8 it fails (the trial is then retried). Its own markers say what it has done.
FLAKY_PARTS = '''
import json
import os
import time

import torch
import torch.distributed as dist

import b6lab
from b6lab.plugins.attention import sdpa


def flaky(context, *, marker: str = "", watch: str = ""):
    attend_as_sdpa = sdpa(context)

    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        if torch.is_grad_enabled() and dist.is_initialized() and dist.get_rank() == 0:
            try:
                step = json.loads(open(watch).read())["step"]
            except (OSError, ValueError):
                step = 0
            if step == 4 and not os.path.exists(marker + ".hung"):
                open(marker + ".hung", "w").close()
                time.sleep(600)
            if step == 8 and not os.path.exists(marker + ".failed"):
                open(marker + ".failed", "w").close()
                raise RuntimeError("boom: the flaky attention failed once")
        return attend_as_sdpa(q, k, v, causal=causal, docs=docs, dropout_p=dropout_p, scale=scale)
    return attend


@b6lab.hookimpl
def b6lab_register_attention(register):
    register("flaky", flaky)
'''


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}


@pytest.mark.slow
def test_multi_worker_trials_resume_retry_and_stop_early_under_asha(tmp_path):
    """One sweep of two 2-worker trials under ASHA: the good one (flaky) is interrupted by a SIGKILL of
    the sweep's driver after its step-4 checkpoint, resumed by `--resume`, fails once after its step-8
    checkpoint and is retried from there to the end; the bad one (a learning rate too small to learn)
    is then stopped by ASHA at a rung (step 4 or 8), where the good one's loss is far lower."""
    import ray

    (tmp_path / "flaky_parts.py").write_text(FLAKY_PARTS)
    storage, marker = tmp_path / "sweep", tmp_path / "flaky"
    good = storage / "trials" / "trial=good,seed=0"
    settings = TinyRun.settings(**LENGTH | {"max_steps": 12, "eval_interval": 4, "eval_steps": 1},
                                **EXACT | {"train.checkpoint_interval": 4}, **{"train.batch_size": 4})
    sweep = {
        "name": "workers", "base": {"preset": "tiny", "set": settings},
        "plugins": ["flaky_parts.py"], "seeds": [0], "storage": str(storage),
        "grid": {"trial": [
            {"label": "good", "model.attention": "flaky", "model.marker": str(marker),
             "model.watch": str(good / "checkpoints" / "last" / "COMPLETE")},
            {"label": "bad", "model.attention": "sdpa", "optim.lr": 1e-7},
        ]},
        "resources": {"workers": 2, "cpu": 1}, "max_concurrent": 1, "max_failures": 1,
        "scheduler": {"name": "asha", "grace_period": 4, "reduction_factor": 2},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))  # after Ray's start: its token is in it
    try:
        command = [sys.executable, "-m", "b6lab", "sweep", str(path), "--address", ray.get_runtime_context().gcs_address]
        with open(tmp_path / "first.log", "w") as log:
            driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 180
            while not Path(str(marker) + ".hung").exists():
                assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
                time.sleep(0.2)
            time.sleep(1)  # let Tune write down its state, as it would have long before in a real run
            driver.send_signal(signal.SIGKILL)
            driver.wait()
        resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    finally:
        ray.shutdown()
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output

    log = (good / "train.log").read_text()
    assert "resuming at step 4" in log and "resuming at step 8" in log  # after the kill, after the failure
    assert "retrying trial=good,seed=0 after" in output and "boom: the flaky attention failed once" in output
    assert summary_of(good)["status"] == "completed" and summary_of(good)["steps"] == 12
    evals = [r["step"] for r in map(json.loads, (good / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert evals == [4, 8, 12]  # one record each, though it ran in three worker groups

    bad = summary_of(storage / "trials" / "trial=bad,seed=0")
    assert bad["status"] == "stopped" and "asha" in bad["reason"] and bad["steps"] < 12


def test_the_driver_records_a_multi_worker_trial_tune_stopped(tmp_path):
    from types import SimpleNamespace

    from b6lab.sweep.ray_train import TrainTrialEnds

    ends = TrainTrialEnds({"a": str(tmp_path / "a"), "b": str(tmp_path / "b"), "c": str(tmp_path / "c")}, "asha")
    for name in "abc":
        (tmp_path / name).mkdir()
    (tmp_path / "c" / "summary.json").write_text(json.dumps({"status": "completed", "steps": 12}))
    result = {"max_steps": 12, "val_loss": 5.0, "best_val_loss": 4.9, "tokens": 2048}
    for name, step in (("a", 4), ("b", 12), ("c", 12)):
        ends.on_trial_complete(0, [], SimpleNamespace(last_result=result | {"trial": name, "step": step}))
    a = summary_of(tmp_path / "a")
    assert a["status"] == "stopped" and a["reason"].startswith("stopped at step 4: the asha scheduler")
    assert (a["steps"], a["final_val_loss"], a["best_val_loss"], a["tokens"]) == (4, 5.0, 4.9, 2048)
    assert summary_of(tmp_path / "b")["status"] == "completed"  # stopped at its last report: nothing left to do
    assert summary_of(tmp_path / "c") == {"status": "completed", "steps": 12}  # the workers' own summary stays
