"""List every plugin by kind, with where it comes from and whether it can run here; --check NAME tests one."""

from __future__ import annotations

import argparse
import contextlib

import torch
import yaml

from b6lab.errors import UsageError
from b6lab.train import hardware


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="also load this plugin file or module (as a config's plugins: list does)")
    parser.add_argument("--check", metavar="NAME",
                        help="build the plugin NAME and run its kind's contract checks (b6lab.testing), printing each")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="check (and judge usability) in this precision; auto (default): what training picks here")
    parser.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="an option for --check's plugin (repeatable); the value is read as YAML")


def run(args: argparse.Namespace) -> int:
    from b6lab import registry

    for spec in args.plugins:
        registry.load_plugin_path(spec)
    device, precision = checked_precision(args.precision)
    dtype = hardware.DTYPES[precision]
    if args.check:
        return check(args.check, _options(args.options), device, precision)
    print(f"b6lab plugins, checked for {device.type} in {str(dtype).replace('torch.', '')}:")
    for kind in registry.KINDS:
        print(f"\n{kind}")
        for name, reg in sorted(registry.registrations(kind).items()):
            reason = reg.why_unavailable(device=device, dtype=dtype, head_dim=64)
            usable = "usable" if reason is None else f"not usable here: {reason}"
            options = ", ".join(f"{key} (required)" if key in reg.required else f"{key}={value!r}"
                                for key, value in reg.options.items())
            print(f"  {name:<18} {usable}; from {reg.source}")
            print(f"  {'':<18} {reg.description}" + (f" Options: {options}." if options else ""))
    return 0


def checked_precision(asked: str) -> tuple[torch.device, str]:
    """The device and precision a run with train.device/precision auto (or `asked`) trains in here:
    a dtype mistake must fail the check, not the first bf16 step."""
    device = hardware.resolve_device("auto")
    return device, hardware.resolve_precision(asked, device)


def check(name: str, options: dict, device: torch.device | None = None, precision: str = "fp32") -> int:
    """Run the checks of every kind that has a part called `name`, in `precision` as training runs
    it (attention computing in its dtype, everything under autocast); 1 if one failed."""
    from b6lab import registry, testing
    from b6lab.attention import AttentionContext
    from b6lab.contracts import ContractError
    from b6lab.errors import unknown

    kinds = registry.kinds_of(name)
    if not kinds:
        known = sorted({n for kind in registry.KINDS for n in registry.registrations(kind)})
        raise UsageError(f"{unknown(name, known, 'plugin')} (load a file with --plugin FILE)")
    device = device or torch.device("cpu")
    dtype = hardware.DTYPES[precision]
    mixed = precision != "fp32"
    failed = 0
    print(f"checked on {device.type} in {precision} (--precision to choose):")
    for kind in kinds:
        print(f"{registry.get(kind, name).label}:")
        try:
            # Attention meant to differ from eager (ALiBi, a sliding window) still passes: the
            # difference is reported, not failed.
            extra = {"must_match": False, "context": AttentionContext(device, dtype, head_dim=16)} \
                if kind == "attention" else {}
            # The parts a forward pass runs, under autocast as in training; the others have no dtype.
            forward = mixed and kind in ("attention", "norm", "feedforward")
            with torch.autocast(device.type, dtype=dtype) if forward else contextlib.nullcontext():
                passed = testing.check(kind, name, **extra, **options)
        except ContractError as exc:
            passed, failed = exc.passed, failed + 1
            problem = str(exc)
        else:
            problem = None
        for line in passed:
            print(f"  ok      {line}")
        if problem:
            print(f"  FAILED  {problem}")
    return 1 if failed else 0


def _options(texts: list[str]) -> dict:
    options = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise UsageError(f"--option {text!r} must be KEY=VALUE, e.g. --option window=64")
        options[key.strip()] = yaml.safe_load(value)
    return options
