"""The `b6lab` command line. Each command's work lives in its own module; this file only parses.

A user's mistake (a bad key, an unknown plugin, a missing file) ends in one line on stderr and
exit status 2; `--debug`, before or after the command's name, adds the traceback.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import os
import sys
import traceback
import warnings

from b6lab.errors import UsageError

# Each module has `add_arguments(parser)` and `run(args) -> int`; its docstring's first line is the help.
COMMANDS = {
    "train": "b6lab.commands.train",
    "sweep": "b6lab.commands.sweep",
    "compare": "b6lab.commands.compare",
    "plugins": "b6lab.commands.plugins",
    "bench": "b6lab.commands.bench",
    "generate": "b6lab.commands.generate",
    "eval": "b6lab.commands.eval",
    "export": "b6lab.commands.export",
    "transfer-check": "b6lab.commands.transfer_check",
}


# At exit, Python's last garbage collections walk every object still alive, and torch._dynamo
# (which constructing any torch optimizer imports) leaves some 300,000 of them: a finished command
# would wait on that. Frozen objects are skipped; their memory goes back with the process.
atexit.register(gc.freeze)


def build_parser() -> argparse.ArgumentParser:
    import b6lab

    parser = argparse.ArgumentParser(prog="b6lab", description="Train B6 language models and run experiments over their parts.")
    parser.add_argument("--version", action="version", version=f"b6lab {b6lab.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        sub = commands.add_parser(name, help=summary, description=(module.__doc__ or "").strip())
        module.add_arguments(sub)
        # After the command's name too; SUPPRESS keeps a --debug given before it.
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of every error")
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # DataLoader workers fork after the tokenizer has been used; rust-side threads would warn.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parser = build_parser()  # imports torch: seconds in which a Ctrl-C is still a one-line stop
    except KeyboardInterrupt:
        print("\nb6lab: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    warnings.showwarning = _one_line_warning
    try:
        return args.run(args) or 0
    except UsageError as exc:
        if args.debug:
            traceback.print_exc()
        from b6lab.train.distributed import report_to_launcher

        if not report_to_launcher(f"b6lab {args.command}: error: {exc}"):
            print(f"b6lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nb6lab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        from b6lab.train.distributed import report_crash_to_launcher

        # Under `train --nproc` the launcher says it, or, if another process was killed, says that instead.
        if args.debug or not report_crash_to_launcher(traceback.format_exc()):
            raise
        return 1


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """b6lab's own warnings (a plugin that registers nothing) as one line; others as Python shows them."""
    from b6lab.registry import PluginWarning

    if issubclass(category, PluginWarning):
        print(f"b6lab: warning: {message}", file=file or sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=file or sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
