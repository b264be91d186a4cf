"""A run folder: what makes a folder hold a run, and the lock that gives it one writer at a time.

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

from filelock import FileLock, Timeout

from b6lab.errors import UsageError
from b6lab.train.records import disk_full_line, is_disk_full, naming

LOCK_FILE, OWNER_FILE = "run.lock", "run.owner"


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
