"""Checkpoints a crashed run resumes from, written so that no crash, full disk or kill loses one.

A checkpoint is a folder (`checkpoints/last`, `checkpoints/best`) holding the weights and the
optimizer state, state.pt (the trainer's state_dict(): scaler, RNG, data position, step and
counters), config.yaml, the tokenizer, and last of all COMPLETE (its step): a folder without that
marker was cut off mid-write. `save` writes one, `Resume.read` and `load` read one back.

The weights and optimizer state are whole or sharded, by who holds them. Whole: model.pt, and the
optimizer's state dict in state.pt (one process, or DDP's rank 0 for all). Sharded, by an FSDP
run of several processes: torch.distributed.checkpoint, each process its own shards
(`__<rank>_0.distcp`), rank 0 the index (`.metadata`) and the rest; DCP reshards them when the
run resumes on another number of processes, and a single process (`b6lab generate`, `eval`,
`export`) reads them whole. (DCP for every run would be one format, but it saves and loads a
CPU-sized model slower: benchmarks/README.md, "Checkpoint formats".)

A save writes `<name>.tmp-PID`, marks it complete, renames the current `<name>` to `<name>.old`,
renames the temporary to `<name>` and only then deletes `<name>.old`: at every instant one of
the three is a complete checkpoint, and `find` takes the newest complete one. `tidy` (at the
start of a run, which holds the folder's lock) puts that one back in place and removes the rest.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from b6lab.config_sources import flatten
from b6lab.errors import ConfigError, DataError, exception_line

TOKENIZER_FILE = "tokenizer.pkl"
MARKER = "COMPLETE"  # written last; holds {"step": N}
SHARDS_INDEX = ".metadata"  # torch.distributed.checkpoint's index of the shard files
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """The disk (or the quota) ran out while a checkpoint was written; the temporary is removed."""


def save(folder: Path, *, state: dict, config: dict, model_state: dict | None = None, shards: dict | None = None,
         extra: dict | None = None, needed_bytes: float = 0) -> None:
    """Write checkpoint `folder`, whole or sharded. Whole: this process alone writes `model_state` (the
    model's state dict) as model.pt, `state` (which then holds the optimizer's) as state.pt. Sharded (an
    FSDP run of several processes): every process calls it with `shards`, its part of the state
    ({"model": ..., "optimizer": ...}, DTensors by parameter name), and writes it; rank 0, once all
    are written, the rest and the marker; an error on any rank is raised on every rank. `extra` maps
    file names to objects pickled beside (the tokenizer, so sampling needs no corpus). DiskFull before
    anything is written when less than `needed_bytes` is free."""
    folder, together = Path(folder), shards is not None
    partial = _by_rank_0(lambda: _new_partial(folder, needed_bytes), together)
    if together:
        _write_shards(partial, folder, shards)
    else:
        with _cleaned_up_on_error(partial, folder):
            _write(partial / "model.pt", lambda f: torch.save(model_state, f))
    _by_rank_0(lambda: _complete(partial, folder, state, config, extra), together)


def _by_rank_0(work, together: bool):
    """`work()` in this process; or, when every process takes part in the save, on rank 0 alone, its
    result (or its error) handed to every rank."""
    if not together:
        return work()
    from b6lab.train import distributed

    return distributed.from_main(work, errors=Exception)


def _write_shards(partial: Path, folder: Path, shards: dict) -> None:
    """Every process writes its shards into `partial` (torch.distributed.checkpoint, collectively)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.save(shards, checkpoint_id=partial)
    except CheckpointException as exc:
        if dist.get_rank() == 0:
            shutil.rmtree(partial, ignore_errors=True)
        errors = [failure[0] for failure in exc.failures.values()]
        full = [e for e in errors if isinstance(e, OSError) and e.errno in DISK_FULL]
        if full:
            raise DiskFull(f"{os.strerror(full[0].errno).lower()} writing {folder}") from None
        raise
    dist.barrier()  # every rank's shards are on disk before the marker says the folder is complete


def _new_partial(folder: Path, needed_bytes: float) -> Path:
    """The empty temporary `<name>.tmp-PID` a save writes into; DiskFull if less than `needed_bytes` is free."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if free < needed_bytes:
        raise DiskFull(f"{free / 2**20:.0f} MB free, checkpoints/{folder.name} needs ~{needed_bytes / 2**20:.0f} MB")
    partial = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    with _cleaned_up_on_error(partial, folder):
        partial.mkdir()
    return partial


@contextlib.contextmanager
def _cleaned_up_on_error(partial: Path, folder: Path):
    """A failed write removes the temporary; a full disk is DiskFull."""
    try:
        yield
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno in DISK_FULL:
            raise DiskFull(f"{os.strerror(exc.errno).lower()} writing {folder}") from None
        raise


def _complete(partial: Path, folder: Path, state: dict, config: dict, extra: dict | None) -> None:
    """Write the rest of the checkpoint into `partial`, the marker last, and swap it in as `folder`."""
    with _cleaned_up_on_error(partial, folder):
        _write(partial / "state.pt", lambda f: torch.save(state, f))
        _write(partial / "config.yaml", lambda f: f.write(yaml.safe_dump(config, sort_keys=False).encode()))
        for name, obj in (extra or {}).items():
            _write(partial / name, lambda f: pickle.dump(obj, f))
        _write(partial / MARKER, lambda f: f.write(json.dumps({"step": state["step"]}).encode()))
    _fsync(partial)
    old = folder.with_name(f"{folder.name}.old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)  # `folder` is complete: this older copy is not needed
        os.replace(folder, old)
    os.replace(partial, folder)
    _fsync(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def _write(path: Path, write) -> None:
    # Through a Python file, so that a full disk surfaces as OSError(ENOSPC), not as torch's RuntimeError.
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_of(folder: Path) -> int | None:
    """The step of a complete checkpoint folder, or None if it is not one."""
    try:
        return json.loads((Path(folder) / MARKER).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _copies(folder: Path) -> list[Path]:
    """`folder` and what a save of it may leave: `.old`, `.tmp-PID` (the folder itself first)."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return []
    others = sorted(p for p in folder.parent.glob(f"{folder.name}.*") if p.suffix in (".old",) or ".tmp-" in p.name)
    return [folder, *others]


def find(folder: Path) -> Path | None:
    """The newest complete checkpoint among `folder` and the copies a crash mid-save left beside it."""
    complete = [(step, -i, p) for i, p in enumerate(_copies(folder)) if (step := step_of(p)) is not None]
    return max(complete)[2] if complete else None


def tidy(folder: Path) -> None:
    """Put the newest complete copy in place as `folder` and remove the rest (partial or older
    temporaries of dead processes). Only for the process that holds the run folder's lock."""
    folder = Path(folder)
    newest = find(folder)
    if newest is not None and newest != folder:
        shutil.rmtree(folder, ignore_errors=True)  # older or incomplete; `newest` stays complete meanwhile
        os.replace(newest, folder)
    for leftover in _copies(folder)[1:]:
        shutil.rmtree(leftover, ignore_errors=True)


def describe(folder: Path) -> str:
    """What is in a checkpoints/ folder, for an error that says why nothing could be resumed."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"there is no {folder}"
    entries = sorted(folder.iterdir())
    if not entries:
        return f"{folder} is empty"
    words = [f"{p.name} (incomplete)" if step_of(p) is None else p.name for p in entries]
    return f"{folder} holds {', '.join(words)}"


def load(folder: Path) -> tuple[dict, dict, dict]:
    """(model state, trainer state, config dict) of a checkpoint folder (the newest complete copy);
    sharded weights are put together whole in this process."""
    found = find(folder)
    if found is None:
        raise DataError(f"no checkpoint in {folder} (expected model.pt, state.pt and {MARKER})")
    return read_weights(found), *read_state(found)


def is_sharded(folder: Path) -> bool:
    """Whether a checkpoint's weights and optimizer state are torch.distributed.checkpoint shards."""
    return (Path(folder) / SHARDS_INDEX).is_file()


def read_state(folder: Path) -> tuple[dict, dict]:
    """(trainer state, config dict) of one complete checkpoint folder."""
    with _readable(folder):
        return torch.load(folder / "state.pt", map_location="cpu", weights_only=False), \
            yaml.safe_load((folder / "config.yaml").read_text())


def read_weights(folder: Path) -> dict:
    """The model's state dict of one complete checkpoint folder, on the CPU, whole."""
    with _readable(folder):
        if not is_sharded(folder):
            return torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        import torch.distributed.checkpoint as dcp

        # DCP loads into tensors it is given: empty ones of the shapes its index records.
        index = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
        weights = {key.removeprefix("model."): torch.empty(entry.size, dtype=entry.properties.dtype)
                   for key, entry in index.items() if key.startswith("model.") and hasattr(entry, "chunks")}
        load_shards({"model": weights}, folder)
        return weights


def load_shards(state_dict: dict, folder: Path) -> None:
    """Fill `state_dict` (tensors, DTensors) in place from a sharded checkpoint, resharding as needed:
    collectively when a process group is up, else in this process alone."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # DCP warns that it loads in one process: here that is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state_dict, checkpoint_id=folder)


@contextlib.contextmanager
def _readable(folder: Path):
    try:
        yield
    except Exception as exc:
        raise DataError(f"checkpoint {folder} is unreadable ({exception_line(exc, 120)})") from exc


def load_tokenizer(folder: Path):
    """The tokenizer pickled beside a checkpoint, or None if it has none."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as exc:
        raise DataError(f"{path} is unreadable ({exception_line(exc, 120)})") from exc


# What a resumed run cannot change: the weights' shapes and meaning, what the tokens are, where the
# data stream stands (its batches, its seed). Everything else (lr, weight decay, max_steps, ...) may.
FIXED_ON_RESUME = ("model.", "data.", "optim.name", "train.batch_size", "train.grad_accum_steps", "train.seed")
CHANGEABLE_ON_RESUME = ("model.dropout", "model.attention", "model.gradient_checkpointing", "data.num_workers",
                        "data.prefetch_factor", "data.cache_dir")


@dataclass(frozen=True)
class Resume:
    """The checkpoint a resumed run continues from: its folder, and the trainer state and config it was
    saved with (its weights and optimizer state are read once the model is built, into its shards)."""

    folder: Path
    state: dict
    config: dict

    @classmethod
    def read(cls, folder: Path) -> "Resume":
        return cls(Path(folder), *read_state(folder))

    @property
    def threads(self) -> int | None:
        """The CPU thread count the run trained with (its config's run.resolved.threads)."""
        return ((self.config.get("run") or {}).get("resolved") or {}).get("threads")

    def check(self, config: dict, say) -> None:
        """A setting of `config` the resumed run cannot honour is an error naming the key; the others
        take effect (and are said)."""
        # As YAML holds them (a tuple is a list there); where the run is written is the folder resumed.
        before, now = (flatten(json.loads(json.dumps(c, default=str))) for c in (self.config, config))
        added = _keys_added_since(before)
        for key in dict.fromkeys([*before, *now]):  # config order: a plugin's name before its options
            if (key.startswith("run.") or key == "train.out_dir" or key.startswith(CHANGEABLE_ON_RESUME)
                    or before.get(key) == now.get(key) or added.get(key, object()) == now.get(key)):
                continue
            if key.startswith(FIXED_ON_RESUME):
                raise ConfigError(
                    f"cannot change when resuming (the checkpoint has {before.get(key)!r}, this run asks for "
                    f"{now.get(key)!r}): the saved weights and data position depend on it; start a new run "
                    "with another train.out_dir to change it", key=key)
            say(f"  resuming with {key} = {now.get(key)!r} (was {before.get(key)!r})")


def _keys_added_since(before: dict) -> dict:
    """The config keys a checkpoint made by an older b6lab lacks, at their defaults: a run that
    leaves a newer key (model.parametrization, say) at its default resumes as it was made."""
    from b6lab.config import RunConfig

    defaults = flatten(json.loads(json.dumps(RunConfig().to_dict(), default=str)))
    return {key: value for key, value in defaults.items() if key not in before}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def size_estimate(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes a checkpoint will take: the weights plus the optimizer's state tensors."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    states = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    return weights + states
