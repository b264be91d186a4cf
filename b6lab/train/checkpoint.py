"""Checkpoints a crashed run resumes from, written so that a crash mid-write loses nothing.

A checkpoint is a folder (`checkpoints/last`, `checkpoints/best`) holding model.pt, state.pt
(optimizer, scaler, RNG, data position, step and counters) and config.yaml. It is written to a
temporary folder first and swapped in by renames; if a crash leaves only `<name>.old`, that
folder is the checkpoint.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from b6lab.errors import DataError


TOKENIZER_FILE = "tokenizer.pkl"


def save(folder: Path, *, model_state: dict, state: dict, config: dict, extra: dict | None = None) -> None:
    """`extra` maps file names to objects pickled beside (the tokenizer, so sampling needs no corpus)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f"{folder.name}.old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    torch.save(model_state, partial / "model.pt")
    torch.save(state, partial / "state.pt")
    (partial / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name, obj in (extra or {}).items():
        with open(partial / name, "wb") as f:
            pickle.dump(obj, f)
    _fsync_folder(partial)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(partial, folder)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def find(folder: Path) -> Path | None:
    """The checkpoint folder to load: `folder`, or the `.old` copy a crash mid-swap left behind."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(f"{folder.name}.old")):
        if (candidate / "model.pt").exists() and (candidate / "state.pt").exists():
            return candidate
    return None


def load(folder: Path, map_location="cpu") -> tuple[dict, dict, dict]:
    """(model state, trainer state, config dict) of a checkpoint folder."""
    found = find(folder)
    if found is None:
        raise DataError(f"no checkpoint in {folder} (expected model.pt and state.pt)")
    try:
        model_state = torch.load(found / "model.pt", map_location=map_location, weights_only=True)
        state = torch.load(found / "state.pt", map_location=map_location, weights_only=False)
        config = yaml.safe_load((found / "config.yaml").read_text())
    except Exception as exc:
        raise DataError(f"checkpoint {found} is unreadable ({type(exc).__name__}: {exc})") from exc
    return model_state, state, config


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
