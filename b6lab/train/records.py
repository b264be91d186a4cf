"""What a run writes: metrics.jsonl and summary.json, and reading them back.

Every metric goes to metrics.jsonl (one JSON object per line); wandb and TensorBoard, when
enabled, get the same records (trackers.py). On resume the lines after the checkpoint's step
are dropped, so the file reads as one uninterrupted run. How the run ended is an `Outcome`,
summary.json's status and reason.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from b6lab.errors import DataError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class Outcome:
    """How a run ended, as summary.json says it. Decided where the run ends (a stop, or the error
    that ends it: a Diverged, a sweep's StoppedEarly carry theirs), never read back from words."""

    status: str  # completed, failed, diverged, or stopped (by a sweep's scheduler)
    reason: str | None = None  # the user's line; None when completed
    step: int | None = None  # where: the step of a stop, the first non-finite step of a divergence
    say_where_to_continue: bool = False  # the reason goes on to name the checkpoints left, and what to do


def is_disk_full(exc: BaseException) -> bool:
    """A write that failed for space (the disk or the quota ran out), whatever was being written."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def disk_full_line(exc: OSError, folder: Path) -> str:
    """`no space left on device writing FILE (N MB free in FOLDER)`: what every full-disk stop says.
    FOLDER is the file's own when it is known (a cache may be on another disk than the run)."""
    written = f" writing {exc.filename}" if exc.filename else ""
    folder = Path(exc.filename).parent if exc.filename else Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MB free in {folder}"
    except OSError:
        free = f"in {folder}"
    return f"{os.strerror(exc.errno).lower()}{written} ({free})"


def disk_full(exc: BaseException, folder: Path, step: int) -> Outcome:
    """The outcome of a run the disk (or the quota) ended at `step`: failed, with the line every
    full-disk stop says. `exc` is the OSError of a write, or checkpoint.DiskFull (its own line)."""
    said = disk_full_line(exc, folder) if is_disk_full(exc) else exc
    return Outcome("failed", f"disk full: {said} at step {step}", step, say_where_to_continue=True)


@contextlib.contextmanager
def naming(path: Path):
    """An OSError from a write that the OS did not name (a failed write() or flush) gets `path`, so
    that the line a full disk ends the run with says which file it was."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


class MetricsFile:
    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = [line for line in _lines_to_keep(self.path) if json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        self._file = open(self.path, "a", buffering=1)

    def write(self, record: dict) -> None:
        with naming(self.path):
            self._file.write(json.dumps(_jsonable(record)) + "\n")

    def close(self) -> None:
        with naming(self.path):
            self._file.close()


def _lines_to_keep(path: Path) -> list[str]:
    """The lines of a metrics.jsonl a resumed run keeps: a last line cut off by a crash is dropped;
    an unreadable line before it means the file was damaged otherwise, which is the user's to see."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            record["step"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                return lines[:-1]
            raise DataError(f"{path}, line {number}, is not a metrics record ({line[:40]!r}); "
                            "repair or remove that line, then resume again") from None
    return lines


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line cut off by a crash is skipped."""
    records = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def read_summary(run_dir: Path) -> dict:
    """A run's summary.json, or {} while it has none (still running, or killed) or it is unreadable."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    partial = Path(f"{path}.tmp-{os.getpid()}")
    try:
        with naming(path):
            partial.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    except OSError:
        partial.unlink(missing_ok=True)  # the old file, if any, stays whole
        raise
    os.replace(partial, path)


def _jsonable(record: dict) -> dict:
    # NaN/inf are not JSON; a diverged loss is written as null with the status saying why.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
