"""Which b6lab code a run used: the git commit of the checkout it was imported from, if any."""

from __future__ import annotations

import subprocess
from pathlib import Path

import b6lab

PACKAGE = Path(b6lab.__file__).resolve().parent


def b6lab_git(package: Path = PACKAGE) -> dict | None:
    """{"commit": sha, "dirty": bool} when the package folder is b6lab/ in a git checkout, else None.

    Dirty means the package's own files differ from the commit (changed, staged or untracked):
    a run's code is then not the commit alone. Checkouts that merely contain an installed copy
    (a virtual environment inside someone's repository) are not b6lab's and give None."""
    try:
        top = _git(package, "rev-parse", "--show-toplevel")
        if top is None or Path(top).resolve() / package.name != package:
            return None
        commit = _git(package, "rev-parse", "HEAD")
        changes = _git(package, "status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):  # no git on this machine, or it hung
        return None
    if commit is None or changes is None:
        return None
    return {"commit": commit, "dirty": bool(changes)}


def _git(folder: Path, *args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() if done.returncode == 0 else None
