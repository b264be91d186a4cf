"""A run folder: what makes a folder hold a run, the lock that gives it one writer at a time, and
`RunFolder`, the folder as a run holds it from its start to its summary.json.

The lock is advisory (flock, through `filelock`): held by the process that trains into the
folder for the run's whole life, released by the kernel if that process dies, so a killed run
never leaves a folder locked. Its holder writes its PID beside it, for the message a second
run gets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from b6lab.errors import UsageError
from b6lab.train.records import Outcome, disk_full, disk_full_line, is_disk_full, naming, write_json

LOCK_FILE, OWNER_FILE = "run.lock", "run.owner"
CHECKPOINTS = ("last", "best")  # checkpoints/last (resumable, the newest), checkpoints/best (lowest val loss)


def holds_run(folder: Path) -> bool:
    """Whether a folder holds (part of) a run: anything a run writes there."""
    folder = Path(folder)
    return any((folder / name).is_file() for name in ("config.yaml", "metrics.jsonl", "summary.json")) or (
        folder / "checkpoints"
    ).is_dir()


class RunLock:
    """`with RunLock(folder):` or acquire()/release(); a second holder gets a one-line UsageError."""

    def __init__(self, folder: Path, elsewhere: str = "set train.out_dir to another folder"):
        self.folder, self.elsewhere = Path(folder), elsewhere
        self._lock = FileLock(self.folder / LOCK_FILE, timeout=0)

    def acquire(self) -> "RunLock":
        with self._writable():
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                self._lock.acquire()
            except Timeout:
                raise UsageError(f"{self.folder} is in use by another run ({self._owner()}); wait for it to end, "
                                 f"or {self.elsewhere}") from None
            command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
            try:
                with naming(self.folder / OWNER_FILE):
                    (self.folder / OWNER_FILE).write_text(f"process {os.getpid()} on {socket.gethostname()} since "
                                                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {command}\n")
            except OSError:
                self.release()
                self.forget_if_unused()  # a new folder that could not be started leaves nothing
                raise
        return self

    @contextlib.contextmanager
    def _writable(self):
        """The first writes of a run: a folder that cannot be written is said in one line. Read-only (or
        not this user's) is a UsageError (exit 2); a full disk is checkpoint.DiskFull, as at any later write."""
        try:
            yield
        except OSError as exc:
            if is_disk_full(exc):
                from b6lab.train.checkpoint import DiskFull  # torch: only when it is needed

                raise DiskFull(disk_full_line(exc, self._existing_parent())) from None
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                what = "is on a read-only file system" if exc.errno == errno.EROFS else "cannot be written by this user"
                raise UsageError(f"{self._existing_parent()} {what} (writing {exc.filename or self.folder}: "
                                 f"{exc.strerror}); {self.elsewhere}") from None
            raise

    def _existing_parent(self) -> Path:
        folder = self.folder
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return folder

    def holder(self) -> str | None:
        """Who holds the folder now (a live run), or None: the lock tried and let go at once."""
        if not (self.folder / LOCK_FILE).exists():
            return None
        with self._writable():  # opening the lock file writes to it: a read-only folder is said here
            try:
                self._lock.acquire()
            except Timeout:
                return self._owner()
        self._lock.release()
        return None

    def release(self) -> None:
        if self._lock.is_locked:
            (self.folder / OWNER_FILE).unlink(missing_ok=True)
            self._lock.release()

    def forget_if_unused(self) -> None:
        """After a run that failed before writing anything: remove the lock files and, if nothing
        else is there, the folder (so a mistake leaves no empty run folder, nor takes a default name)."""
        if holds_run(self.folder):
            return
        for name in (LOCK_FILE, OWNER_FILE):
            (self.folder / name).unlink(missing_ok=True)
        try:
            self.folder.rmdir()  # only if empty: whatever else is there stays
        except OSError:
            pass

    def _owner(self) -> str:
        try:
            return (self.folder / OWNER_FILE).read_text().strip()
        except OSError:
            return "a process that has not yet said which"

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class RunFolder:
    """A run's folder for the run's life: `with RunFolder(path) as folder:` (the Trainer enters it
    in its set-up and leaves it in close()). Entering, the main process takes the lock and puts back
    what a crash mid-save left (the newest complete checkpoints, no partial summary.json); every
    process then knows which checkpoints the folder holds (`saved`: name -> step, kept up to date
    by the saves). Leaving releases the lock, and removes a folder the run wrote nothing into.
    `finish` writes summary.json, whose reason says where the run can be continued from."""

    def __init__(self, path: Path, main: bool = True):
        self.path, self.checkpoints = Path(path), Path(path) / "checkpoints"
        self.lock = RunLock(self.path) if main else None  # only the main process writes the folder
        self.saved: dict[str, int] = {}

    def __enter__(self) -> "RunFolder":
        from b6lab.train import checkpoint  # torch: only once a run starts (the sweep driver imports holds_run)

        if self.lock:
            self.lock.acquire()
            try:
                for name in CHECKPOINTS:
                    checkpoint.tidy(self.checkpoints / name)  # the newest complete copy wins
                for partial in self.path.glob("*.tmp-*"):  # summary.json cut off by a crash
                    partial.unlink()
            except BaseException:
                self.__exit__()
                raise
        self.saved = {name: step for name in CHECKPOINTS if (step := checkpoint.step_of(self.checkpoints / name)) is not None}
        return self

    def __exit__(self, *exc) -> None:
        if self.lock:
            self.lock.release()
            self.lock.forget_if_unused()  # a run that failed before writing anything leaves no folder

    def resume(self, say: Callable[[str], None]):
        """checkpoint.Resume of checkpoints/last, which a resumed run continues from; None (said) in a
        folder that holds no run yet."""
        from b6lab.train import checkpoint

        found = checkpoint.find(self.checkpoints / "last")
        if found is None and holds_run(self.path):
            raise UsageError(f"cannot resume {self.path}: no complete checkpoint to continue from "
                             f"({checkpoint.describe(self.checkpoints)}); its files are left as they are; "
                             "start a new run with another train.out_dir")
        if found is None:
            say(f"nothing to resume in {self.path}: starting a new run there")
            return None
        return checkpoint.Resume.read(found)

    def reason(self, outcome: Outcome) -> str | None:
        """summary.json's reason (the user's line): the outcome's, then where to continue if it asks."""
        if not outcome.say_where_to_continue:
            return outcome.reason
        return f"{outcome.reason}; {self._where_to_continue(outcome.status)}"

    def _where_to_continue(self, status: str) -> str:
        """Which checkpoints survive, and what to do with them: only ones that exist are named."""
        if not self.saved:
            return "no checkpoint was saved"
        held = " and ".join(f"{self.checkpoints / name} (step {step})" for name, step in sorted(self.saved.items()))
        if status == "diverged":
            verb = "holds" if len(self.saved) == 1 else "hold"
            then = ("resume from checkpoints/last with a lower optim.lr (`b6lab train --resume --set optim.lr=...`) "
                    "or sample with `b6lab generate`") if "last" in self.saved else "sample with `b6lab generate`"
            return f"{held} {verb} the weights from before: {then}"
        if "last" in self.saved:
            return f"`b6lab train --resume` continues from {self.checkpoints / 'last'} (step {self.saved['last']})"
        return f"{held} is kept, but there is no checkpoints/last to resume from"

    def finish(self, summary: dict, close_logs: Callable[[], None]) -> None:
        """The run's last writes: its logs closed (`close_logs`: metrics.jsonl, TensorBoard, wandb),
        then summary.json. The disk may run out here too (or still be full): a run that had completed
        is then failed for it, and a summary.json that cannot be written is said in the reason (the
        line the user sees)."""

        def ended_by(full: OSError) -> None:
            if summary["status"] == "completed":
                outcome = disk_full(full, self.path, summary["steps"])
                summary.update(status=outcome.status, reason=self.reason(outcome))

        try:
            close_logs()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            ended_by(exc)
        try:
            write_json(self.path / "summary.json", summary)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            ended_by(exc)
            summary["reason"] += f"; {self.path / 'summary.json'} could not be written (no space left for it)"
