"""A Ctrl-C while the `b6lab` command starts: one line, no traceback.

Python raises KeyboardInterrupt wherever the signal lands; in the first second of `b6lab ...` that
is inside an import (b6lab's own, then pluggy's, torch's), before cli.main's handlers can catch it.
b6lab/__init__.py imports this module first; it installs an excepthook that says `b6lab: interrupted`
for an uncaught KeyboardInterrupt, only when the process is the b6lab command (a program that
imports b6lab keeps Python's own report). Python then ends the process by SIGINT, as it does for
any uncaught Ctrl-C, which a shell reports as exit status 130.
"""

import os
import sys


def _is_the_command() -> bool:
    # `python -m b6lab[.cli]` (torchrun's processes too): sys.argv[0] is "-m" while the package is
    # imported to find the module to run; the installed `b6lab` script: its own path.
    return bool(sys.argv) and (sys.argv[0] == "-m" or os.path.basename(sys.argv[0]) in ("b6lab", "b6lab.exe"))


def _interrupted(kind, value, traceback, python_hook=sys.excepthook):
    if issubclass(kind, KeyboardInterrupt):
        print("\nb6lab: interrupted", file=sys.stderr)
    else:
        python_hook(kind, value, traceback)


if _is_the_command():
    sys.excepthook = _interrupted
