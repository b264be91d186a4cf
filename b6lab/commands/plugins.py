"""List every plugin by kind, with where it comes from and whether it can run here."""

from __future__ import annotations

import argparse

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="also load this plugin file or module (as a config's plugins: list does)")


def run(args: argparse.Namespace) -> int:
    from b6lab import registry

    for spec in args.plugins:
        registry.load_plugin_path(spec)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"b6lab plugins, checked for {device.type} in {str(dtype).replace('torch.', '')}:")
    for kind in registry.KINDS:
        print(f"\n{kind}")
        for name, reg in sorted(registry.registrations(kind).items()):
            reason = reg.why_unavailable(device=device, dtype=dtype, head_dim=64)
            usable = "usable" if reason is None else f"not usable here: {reason}"
            options = ", ".join(f"{key}={value!r}" for key, value in reg.options.items())
            print(f"  {name:<14} {usable}; from {reg.source}")
            print(f"  {'':<14} {reg.description}" + (f" Options: {options}." if options else ""))
    return 0
