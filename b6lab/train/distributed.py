"""Data parallelism on torch.distributed: `torchrun -m b6lab train` and `b6lab train --nproc N`.

torchrun starts N copies of `b6lab train` and tells each its RANK, WORLD_SIZE and LOCAL_RANK;
this module joins them into a process group (gloo on CPUs, NCCL on GPUs, one GPU per process),
wraps the model with DDP or FSDP2's `fully_shard`, and holds the few collectives the trainer
needs. Run without torchrun, nothing here creates a process group and every helper is a no-op,
so one process trains exactly as it always did.

Data: every process walks the same shuffled stream of global batches (micro-batch x processes
sequences) and keeps its own rows of each (packing.TrainBatches' `rank`/`ranks`), so N processes
with micro-batch B see, step for step, the sequences one process with micro-batch N*B sees, and
the stream's position is one and the same on every rank (a checkpoint's one position resumes
them all, on any number of processes whose micro-batches add up to the same global batch).
Validation is the same sequences whatever N: each rank evaluates every N-th batch of them and
the losses are summed across ranks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from b6lab.data.packing import rebatch
from b6lab.errors import ConfigError, UsageError
from b6lab.train import checkpoint


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one process that prints and writes the run folder."""
        return self.rank == 0


def current() -> Ranks:
    """This process's place in the process group (torchrun's, or Ray Train's); (0, 1) alone."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Ranks()


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _check_cuda(device: str, processes: int) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("asks for CUDA (NCCL) but torch sees no GPU; on a CPU use train.device=cpu or auto "
                          "(the processes then talk over gloo)", key="train.device")
    if device.startswith("cuda:") and processes > 1:
        raise ConfigError(f"is {device}, but each of the {processes} processes takes the GPU of its local rank; "
                          "use train.device=cuda or auto", key="train.device")
    if processes > torch.cuda.device_count():
        raise UsageError(f"{processes} processes on this machine need {processes} GPUs, it has "
                         f"{torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()} or fewer")


@contextlib.contextmanager
def process_group(device: str):
    """Under torchrun: join the process group for the run, and silence stdout on ranks other than 0.

    Outside torchrun (or when Ray Train has already made the group) it does nothing."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield current()
        return
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    cuda = _wants_cuda(device)
    if cuda:
        _check_cuda(device, local_size)
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device("cuda", local_rank) if cuda else None)
    ranks = current()
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet if not ranks.is_main else sys.stdout):
            yield ranks
    finally:
        dist.destroy_process_group()


def launch(nproc: int, train_args: list[str], device: str) -> int:
    """`b6lab train --nproc N`: torchrun's launcher, on this machine, with the same arguments."""
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    if launched_by_torchrun():
        raise UsageError("--nproc launches torchrun; under torchrun leave it out (torchrun's --nproc-per-node says how many)")
    if _wants_cuda(device):
        _check_cuda(device, nproc)
    elif nproc > (os.cpu_count() or 1):
        # Allowed (the results are the same, only slower): a 2-core laptop can still check a run
        # that will go to 8 GPUs.
        warnings.warn(f"{nproc} processes on {os.cpu_count()} CPU cores: they will share cores", stacklevel=2)
    env = dict(os.environ)
    # torchrun would set one thread per process; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = [sys.executable, "-c", "import sys; from b6lab.train.distributed import torchrun; sys.exit(torchrun(sys.argv[1:]))",
               f"--nproc-per-node={nproc}", "-m", "b6lab", "train", *train_args]
    with tempfile.TemporaryDirectory(prefix="b6lab-launch-") as errors:
        code = subprocess.call(command, env={**env, LAUNCH_ERRORS: errors})
        reports = {path.name: path.read_text() for path in Path(errors).iterdir()}

    def by_rank(prefix: str) -> list[str]:
        names = sorted((name for name in reports if name.startswith(prefix)), key=lambda name: int(name[len(prefix):]))
        return [reports[name] for name in names]

    killed = _killed_rank(json.loads(reports.get(FAILURES, "[]")))
    if killed and not by_rank(MISTAKE):
        # The others' errors (a peer's connection reset inside backward) only follow from it: unsaid.
        print(f"b6lab train: failed: {killed}; the other processes were stopped; "
              f"{_where_to_resume(reports.get(RUN_FOLDER))}", file=sys.stderr)
        return code
    # A mistake every process found is said once (the processes leave it to this launcher), and alone: a
    # process that crashed meanwhile (its peer gone, having stopped for it) only followed from it. Else
    # each different crash's traceback, once.
    for message in dict.fromkeys(by_rank(MISTAKE) or by_rank(CRASH)):
        print(message, file=sys.stderr, end="" if message.endswith("\n") else "\n")
    return code


def _killed_rank(failures: list[dict]) -> str | None:
    """`rank 1 (process 4242) was killed by SIGKILL`: the process a signal ended, if one did. torchrun
    stops the others with SIGTERM once one has failed, and their errors (a peer gone) only follow from
    it: a SIGTERM is the cause only if no process failed otherwise."""
    killed = [f for f in failures if f["exitcode"] < 0 and f["exitcode"] != -signal.SIGTERM]
    if not killed and failures and all(f["exitcode"] == -signal.SIGTERM for f in failures):
        killed = failures
    if not killed:
        return None  # a process ended with an error of its own: that is what is said
    first = min(killed, key=lambda f: f["rank"])
    return f"rank {first['rank']} (process {first['pid']}) was killed by {signal.Signals(-first['exitcode']).name}"


def _where_to_resume(run_folder: str | None) -> str:
    last = checkpoint.find(Path(run_folder) / "checkpoints" / "last") if run_folder else None
    if last is None:
        return "no checkpoint was saved" + (f" in {run_folder}" if run_folder else "")
    return (f"run the same command with --resume to continue from {Path(run_folder) / 'checkpoints' / 'last'} "
            f"(step {checkpoint.step_of(last)})")


# Set by `launch` for the processes it starts: the folder where each leaves what the launcher says
# for them, in files named by what they hold: a user mistake's line (MISTAKE + rank), a crash's
# traceback (CRASH + rank), the run folder (rank 0), and torchrun's record of which processes failed.
LAUNCH_ERRORS = "B6LAB_LAUNCH_ERRORS"
MISTAKE, CRASH, RUN_FOLDER, FAILURES = "mistake-", "crash-", "run_folder", "failures.json"


def _to_launcher(name: str, text: str) -> bool:
    folder = os.environ.get(LAUNCH_ERRORS)
    if not folder or not os.path.isdir(folder):
        return False
    (Path(folder) / name).write_text(text)
    return True


def report_to_launcher(message: str) -> bool:
    """Under `b6lab train --nproc`, leave a user mistake's line to the launcher (which says it once,
    not once per process); False elsewhere: the caller prints it."""
    return _to_launcher(MISTAKE + os.environ.get("RANK", "0"), message)


def report_crash_to_launcher(traceback_text: str) -> bool:
    """Under `b6lab train --nproc`, leave a crash's traceback to the launcher: it is said unless a
    process was killed, which the crash then only followed from (a peer gone mid-collective)."""
    return _to_launcher(CRASH + os.environ.get("RANK", "0"), traceback_text)


def report_run_folder(folder: Path) -> None:
    """Rank 0's run folder, for the launcher's line on where a killed run resumes from."""
    if current().is_main:
        _to_launcher(RUN_FOLDER, str(folder))


def torchrun(argv: list[str]) -> int:
    """torchrun on this machine, as `launch` runs it: the same agent and processes, with its exit
    code the processes' own (2 for a user mistake), and without torchrun's report of a failed process
    (a traceback of the launcher itself, under what the process already said)."""
    import logging

    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run.run(run.parse_args(["--standalone", *argv]))
    except ChildFailedError as exc:
        _to_launcher(FAILURES, json.dumps([{"rank": rank, "pid": f.pid, "exitcode": f.exitcode}
                                           for rank, f in exc.failures.items()]))
        killed = [rank for rank, f in exc.failures.items() if f.exitcode < 0 and f.exitcode != -signal.SIGTERM]
        first = exc.failures[min(killed or exc.failures)]  # the killed rank, else the lowest rank that failed
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode  # killed by a signal: 128 + its number
    return 0


def from_main(compute, errors: type[BaseException] | tuple = UsageError):
    """`compute()` on rank 0, its result (or its error of the kinds `errors`) on every rank: choices such
    as the run folder, the temporary folder of a sharded checkpoint."""
    ranks = current()
    if ranks.world_size == 1:
        return compute()
    box = [None]
    if ranks.is_main:
        try:
            box[0] = ("ok", compute())
        except errors as exc:
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def main_first(build):
    """`build()` on rank 0, then on the others: work that caches its result (training a BPE vocabulary)."""
    ranks = current()
    if ranks.world_size == 1:
        return build()
    result = build() if ranks.is_main else None
    dist.barrier()
    return result if ranks.is_main else build()


def wrap(model: torch.nn.Module, parallel: str, device: torch.device) -> torch.nn.Module:
    """The module to train through: DDP around the model, or the model sharded in place by FSDP2
    (each block, then the root; so this must come before the optimizer is built). Alone: the model."""
    if current().world_size == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    # No buffer broadcast: the buffers are derived from the config, and evaluation (ranks with
    # different numbers of batches) must not start collectives.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def gradient_sync(module: torch.nn.Module, sync: bool):
    """Accumulation: gradients are all-reduced only after the last micro-batch of a step."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(module, "no_sync"):  # DDP
        return module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        return _fsdp_no_sync(module)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def mean_over_ranks(total: torch.Tensor, count: int) -> float:
    """sum(total) / sum(count) over all ranks: a logged figure of the whole global batch."""
    if current().world_size == 1:
        return (total / count).item()
    both = sum_tensor_over_ranks(torch.stack([total.detach().float(), torch.tensor(float(count), device=total.device)]))
    return (both[0] / both[1]).item()


def all_finite(tensors) -> bool:
    """Whether every element of `tensors` is finite. FSDP2 parameters (DTensors) are checked shard by
    shard and the answers combined, so that all ranks agree; DDP replicas are equal, so each rank's
    own answer is everyone's (and a crashed run's main process can check alone)."""
    sharded = any(hasattr(t, "to_local") for t in tensors)
    local = torch.stack([torch.isfinite(t.to_local() if hasattr(t, "to_local") else t).all() for t in tensors]).all()
    if not sharded or current().world_size == 1:
        return bool(local)
    flag = local.float().reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def full_value(value: torch.Tensor) -> float:
    """A float of a tensor that may be an FSDP2 DTensor (the gradient norm)."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)


def validation_share(batches: list, parallel: str, merged: int = 1) -> list[tuple]:
    """This rank's share of the validation micro-batches: every N-th, `merged` of them per forward, as
    (x, y, counted). Merged after sharing, so that every rank has some. FSDP2 runs its forward
    collectively, so a rank with one batch fewer repeats one, uncounted."""
    ranks = current()
    mine = batches[ranks.rank::ranks.world_size]
    if merged > 1 and mine:
        mine = rebatch(mine, len(mine[0][0]) * merged)
    share = [(x, y, True) for x, y in mine]
    most_per_rank = -(-len(batches) // ranks.world_size)
    longest = -(-most_per_rank // merged)  # forwards of the rank with the most batches
    if parallel == "fsdp" and ranks.world_size > 1:
        share += [(batches[0][0], batches[0][1], False)] * (longest - len(share))
    return share


def describe(ranks: Ranks, parallel: str, micro_batch: int, accumulation: int, seq_len: int) -> str:
    global_batch = micro_batch * accumulation * ranks.world_size
    backend = dist.get_backend() if ranks.world_size > 1 else "one process"
    return (f"global batch {global_batch} sequences ({global_batch * seq_len:,} tokens) = micro-batch {micro_batch} x "
            f"accumulation {accumulation} x {ranks.world_size} processes ({parallel}, {backend})")


def resumed_micro_batch(state: dict) -> int:
    """The micro-batch a resumed run takes: the checkpoint's global batch shared by this run's processes,
    so the data stream goes on exactly where it stopped whatever the number of processes."""
    global_batch, world_size = state["batch_size"] * state.get("world_size", 1), current().world_size
    if global_batch % world_size:
        raise UsageError(f"the checkpoint's global batch of {global_batch} sequences does not split over "
                         f"{world_size} processes; resume on a number of processes that divides it")
    return global_batch // world_size


def sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """This rank's part of the model and optimizer state, keyed by parameter name (DTensor shards
    under FSDP2, whole tensors otherwise): what torch.distributed.checkpoint saves and loads into."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def load_checkpoint_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, resume: checkpoint.Resume,
                          parallel: str) -> None:
    """The weights and optimizer state of the checkpoint `resume` into this run's model, whatever the
    number of processes of the run that wrote it: sharded ones are resharded by
    torch.distributed.checkpoint, a whole one is loaded by every rank (under FSDP2 each keeps its
    shard of it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if checkpoint.is_sharded(resume.folder):
        shards = sharded_state(model, optimizer)
        checkpoint.load_shards(shards, resume.folder)
        set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
    elif parallel == "fsdp" and current().world_size > 1:
        set_state_dict(model, optimizer, model_state_dict=checkpoint.read_weights(resume.folder),
                       optim_state_dict=_keyed_by_name(resume.state["optimizer"], model, optimizer),
                       options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(checkpoint.read_weights(resume.folder))
        optimizer.load_state_dict(resume.state["optimizer"])


def _keyed_by_name(optimizer_state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """An optimizer's state_dict (parameters numbered in the order of its groups) keyed by parameter
    name instead, as torch.distributed.checkpoint's state_dict API takes it."""
    names = {param: name for name, param in model.named_parameters()}
    order = [names[param] for group in optimizer.param_groups for param in group["params"]]
    return {"state": {order[number]: value for number, value in optimizer_state["state"].items()},
            "param_groups": [group | {"params": [order[number] for number in group["params"]]}
                             for group in optimizer_state["param_groups"]]}


def saves_alone(parallel: str) -> bool:
    """Whether rank 0 writes checkpoints alone (else every rank writes its shards, FSDP2 over
    several processes: after a crash the other ranks may be gone, and nothing can be saved)."""
    return parallel != "fsdp" or current().world_size == 1


def sum_tensor_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """`values` summed element-wise over all processes (validation sums); alone, `values` itself."""
    if current().world_size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values


def sum_over_ranks(value: float) -> float:
    """A figure summed over all processes (throughput in total); alone, the figure itself."""
    if current().world_size == 1:
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces only tensors on the GPU
    return sum_tensor_over_ranks(torch.tensor([float(value)], dtype=torch.float64, device=device)).item()
