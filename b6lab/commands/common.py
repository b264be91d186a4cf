"""Arguments several commands share: a config file, --preset and --set."""

from __future__ import annotations

import argparse

from b6lab.config import RunConfig, load_config
from b6lab.presets import PRESETS


def add_config_arguments(parser: argparse.ArgumentParser, config_required: bool = False) -> None:
    parser.add_argument("config", nargs=None if config_required else "?", help="a run config (YAML)")
    parser.add_argument("--preset", help=f"start from a named preset: {', '.join(PRESETS)}")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config key (repeatable); the value is read as YAML, e.g. optim.betas=[0.9,0.99]",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, preset=args.preset, overrides=args.overrides)
