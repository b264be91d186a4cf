"""b6lab: train B6 language models and run controlled experiments over their parts.

The Python API mirrors the commands (b6lab/api.py): `b6lab.train(...)` returns a run's summary,
`b6lab.sweep(path)` a sweep's results rows, `b6lab.compare(paths)` the `compare --json` document,
`b6lab.load(path)` a checkpoint's (model, tokenizer); a user's mistake raises `b6lab.ConfigError`.
`b6lab.train` and `b6lab.sweep` are also the packages of the trainer and of sweeps, made
callable, so `import b6lab.train.trainer` and `b6lab.train(...)` both work. Importing b6lab
imports neither torch nor ray; calling a function does.
"""

from b6lab import startup  # noqa: F401 - first: a Ctrl-C while the command starts is one line (startup.py)

import importlib
import inspect
import sys
import types

import pluggy

from b6lab.errors import ConfigError, UsageError

__version__ = "0.1.0"

__all__ = ["ConfigError", "UsageError", "compare", "hookimpl", "load", "sweep", "train"]

# What a plugin decorates its hook functions with: `@b6lab.hookimpl`.
hookimpl = pluggy.HookimplMarker("b6lab")


def callable_package(name: str, function: str) -> None:
    """Make the package `name` callable as `b6lab.api.<function>`: a subpackage's module object is
    what `b6lab.<subpackage>` holds once anything imports it, so the function must live there."""

    from b6lab import api  # cheap: its functions import what they need when called

    target = getattr(api, function)

    class CallablePackage(types.ModuleType):
        __call__ = staticmethod(target)

    package = sys.modules[name]
    package.__class__ = CallablePackage
    package.__signature__ = inspect.signature(target)  # what help() and IDEs show for the call


def __getattr__(name: str):
    if name in ("train", "sweep"):  # imported on first use: the package is cheap, the API behind it isn't
        return importlib.import_module(f"b6lab.{name}")
    if name in ("compare", "load"):  # b6lab.api is cheap: each function imports torch when called
        from b6lab import api

        return getattr(api, name)
    raise AttributeError(f"module 'b6lab' has no attribute {name!r}")
