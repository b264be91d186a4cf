"""Train one model: with no arguments, the embedded default on this machine's CPU or GPU."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from b6lab import registry
from b6lab.commands.common import add_config_arguments, config_from_args
from b6lab.config import RunConfig, load_config, read_yaml
from b6lab.errors import UsageError
from b6lab.train.run_folder import RunLock, holds_run

if TYPE_CHECKING:
    from b6lab.train.trainer import Trainer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in train.out_dir (default: the newest runs/<name>*) from its last "
                             "checkpoint, with the config it was started with plus any --set")
    parser.add_argument("--quiet", action="store_true",
                        help="print only the start line, warnings and the result (sets logging.quiet=true)")
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="data-parallel over N processes on this machine (one per GPU), launched by torchrun")


def run(args: argparse.Namespace) -> int:
    from b6lab.train import distributed

    if args.quiet:
        args.overrides.append("logging.quiet=true")
    cfg = config_from_args(args)
    if args.nproc is not None:
        return distributed.launch(args.nproc, torchrun_arguments(args), cfg.train.device)
    with distributed.process_group(cfg.train.device):
        return _train(args, cfg)


def _train(args: argparse.Namespace, cfg: RunConfig) -> int:
    from b6lab.train.checkpoint import DiskFull

    try:
        trainer = start_run(cfg, args.overrides, args.resume, note=lambda line: print(f"note: {line}", file=sys.stderr))
    except DiskFull as exc:  # the run folder's lock, config.yaml, the tokenizer cache
        print(f"b6lab train: failed: disk full: {exc}; nothing was trained: free space there, or set "
              "train.out_dir to another disk", file=sys.stderr)
        return 1
    cfg, out_dir = trainer.cfg, trainer.out_dir
    summary = trainer.run()
    if summary["status"] != "completed":
        # One line: what happened and what to do (summary.json and metrics.jsonl are in out_dir).
        print(f"b6lab train: {summary['status']}: {summary['reason']}", file=sys.stderr)
        return 128 + signal.Signals[trainer.stopped_by].value if trainer.stopped_by else 1
    best = summary["best_val_loss"]
    print(f"b6lab: {summary['status']} after {summary['steps']} steps, {summary['tokens']:,} tokens, "
          f"{summary['tokens_per_sec'] or 0:,.0f} tokens/s; best val loss {best:.4f}" if best is not None else
          f"b6lab: {summary['status']} after {summary['steps']} steps")
    if args.quiet:
        print(f"results: {out_dir}/")  # with default names, which runs/<name>-N it went to
    else:
        print(f"results: {out_dir}/ (metrics.jsonl, summary.json, checkpoints/best)")
        if cfg.logging.tensorboard:
            print(f"curves: tensorboard --logdir {out_dir}")
        prompt = shlex.quote(sampling_prompt(cfg.data))
        print(f"sample from it: b6lab generate {out_dir}/checkpoints/best --prompt {prompt}")
    return 0


def start_run(cfg: RunConfig, overrides: Mapping[str, Any] | Sequence[str], resume: bool,
              note: Callable[[str], None]) -> Trainer:
    """The run that `b6lab train` and `b6lab.train` start, ready to `run()`: in a new run folder
    (choose_out_dir), or, with `resume`, in the one to continue, configured as it was started plus
    `overrides` (what `note` is told: the plugins whose source changed since)."""
    from b6lab.train import distributed
    from b6lab.train.trainer import Trainer

    out_dir = distributed.from_main(lambda: choose_out_dir(cfg.train.out_dir, cfg.name, resume))
    distributed.report_run_folder(out_dir)  # for `--nproc`'s line if a process is killed
    if resume and (out_dir / "config.yaml").exists():
        # The run continues as it was configured (the same model, the same data); only what the
        # overrides say changes, e.g. a longer train.max_steps.
        cfg = load_config(out_dir / "config.yaml", overrides=overrides)
        for line in registry.source_changes(read_yaml(out_dir / "config.yaml").get("run", {}).get("plugins")):
            note(line)
    return Trainer(cfg, out_dir, resume=resume)


def sampling_prompt(data_cfg, words: int = 3) -> str:
    """A prompt like the run's data: the first words of its first validation document's first line
    (Shakespeare gives a speaker's name, Python sources a keyword), or "" (a new document) where the
    data is a Hub stream, which would be opened again for one line, or gives nothing."""
    from b6lab import parts
    from b6lab.data.sources import HubDataset

    try:
        source = parts.build_source(data_cfg)
        if isinstance(source, HubDataset):
            return ""
        document = next(iter(source.documents("val")), None) or next(iter(source.documents("train")), "")
    except Exception:  # a hint is never worth failing a finished run over
        return ""
    line = next((line for line in document.splitlines() if line.strip()), "")
    start = " ".join(line.split()[:words])
    return start[:40] + " " if start else ""


def torchrun_arguments(args: argparse.Namespace) -> list[str]:
    """This command's arguments without --nproc: what each process torchrun starts is given."""
    return ([args.config] if args.config else []) + (["--preset", args.preset] if args.preset else []) + \
        [f"--set={override}" for override in args.overrides] + (["--resume"] if args.resume else [])


def choose_out_dir(out_dir: str | None, name: str, resume: bool) -> Path:
    """An explicit out_dir is used as given; by default runs/<name>, then runs/<name>-2, ... so
    that a new run never overwrites an old one, and --resume takes the newest of them. A new
    default folder is claimed by creating it (two runs started together get two folders)."""
    if out_dir:
        folder = Path(out_dir)
        holder = RunLock(folder).holder() if folder.is_dir() else None
        if holder:
            raise UsageError(f"{folder} is in use by another run ({holder}); wait for it to end, or set "
                             "train.out_dir to another folder")
        if holds_run(folder) and not resume:
            raise UsageError(f"{folder} already holds a run; pass --resume to continue it, or set train.out_dir")
        if resume and not holds_run(folder):  # a mistyped out_dir must not quietly become a new run
            raise UsageError(f"nothing to resume in {folder}: it holds no run (no config.yaml, metrics.jsonl or "
                             "checkpoints); check train.out_dir, or leave out --resume to start a new run there")
        return folder
    base = Path("runs") / name
    candidates = (base if n == 1 else base.with_name(f"{name}-{n}") for n in range(1, 10**6))
    if resume:
        existing = None
        for folder in candidates:
            if not folder.exists():
                break
            existing = folder if holds_run(folder) else existing
        if existing is None:
            raise UsageError(f"nothing to resume: no run in {base} (set train.out_dir to the run's folder)")
        return existing
    base.parent.mkdir(parents=True, exist_ok=True)
    for folder in candidates:
        try:
            folder.mkdir()  # atomic: exactly one process creates it
            return folder
        except FileExistsError:
            continue
    raise UsageError(f"no free folder name left for runs/{name}-N")
