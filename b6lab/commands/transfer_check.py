"""Check whether the best learning rate transfers across widths: an lr sweep per width and parametrization.

For each parametrization asked (default: standard and mup) and each width, every lr is trained
once per seed, as a Ray Tune sweep of real `b6lab train` runs (b6lab sweep's machinery: its
folder holds every trial; --resume continues it). Then, per parametrization: the optimum per width
(a parabola in ln lr, delta-method interval), its drift (the slope of ln lr* against ln width,
with its interval) and a coordinate check (each layer's activation RMS after a few steps, against
width). Widening keeps the head size: model.n_heads grows with model.d_model (and model.d_ff
keeps its ratio). mup's base width is the smallest width, where it equals standard to the bit.
b6lab/transfer.py says how each figure is computed and what it assumes.

  b6lab transfer-check                                   the tiny preset, widths 32,64,128, 7 lrs (CPU: minutes)
  b6lab transfer-check CONFIG --widths 256,512,1024 --steps 2000 --gpus-per-trial 1

Writes into --out (default runs/transfer/<name>): transfer.json (every figure), transfer.md (the
tables), transfer_lr.png (loss against lr per width, with the fits), transfer_coords.png (RMS
against width), and the sweep's folder sweep/.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

from b6lab.commands.common import add_config_arguments
from b6lab.errors import UsageError

PARAMETRIZATIONS = ("standard", "mup")
DEFAULT_WIDTHS = (32, 64, 128)
# Default lrs: optim.lr x 2^k. Leaning up: a short run's best lr tends to sit above a config's
# long-run lr (the tiny preset's lion 3e-4 is best near 3e-3 at width 32 in 150 steps, measured).
LR_STEPS = range(-1, 6)
DEFAULT_STEPS = 150


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_arguments(parser)
    parser.add_argument("--parametrizations", default=",".join(PARAMETRIZATIONS),
                        help="comma-separated model.parametrization plugins to check (default: standard,mup)")
    parser.add_argument("--widths", default=",".join(map(str, DEFAULT_WIDTHS)),
                        help="comma-separated model.d_model values, 2 or more (default: 32,64,128)")
    parser.add_argument("--lrs", help="comma-separated optim.lr values, 5 or more (default: optim.lr x 2^-1 ... 2^5)")
    parser.add_argument("--seeds", default="0", help="comma-separated train.seed values (default: 0)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"train.max_steps of every run (default {DEFAULT_STEPS})")
    parser.add_argument("--head-dim", type=int, help="the head size kept at every width (default: the config's)")
    parser.add_argument("--coord-steps", type=int, default=5, help="steps before the coordinate check measures (default 5)")
    parser.add_argument("--coord-lr", type=float, help="the coordinate check's lr (default: the config's optim.lr)")
    parser.add_argument("--window", type=int, default=2, help="lrs fitted on each side of the best one (default 2)")
    parser.add_argument("--out", help="the output folder (default runs/transfer/<config name>)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="Ray resources per trial (default 0)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: as the resources allow)")
    parser.add_argument("--resume", action="store_true", help="continue the sweep in --out; finished trials stay")


def _numbers(text: str, kind, option: str, accepted: str, at_least: int, positive: bool = True) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if len(values) < at_least or len(set(values)) < len(values) or (positive and any(v <= 0 for v in values)):
        raise UsageError(f"{option} {text!r}: expected {at_least} or more distinct {accepted}, comma-separated")
    return sorted(values)


def run(args: argparse.Namespace) -> int:
    from b6lab import registry
    from b6lab.config import dump_config, load_config

    if not args.config and not args.preset:
        args.preset = "tiny"
    base = load_config(args.config, preset=args.preset, overrides=args.overrides)
    names = [n.strip() for n in args.parametrizations.split(",") if n.strip()]
    known = registry.registrations("parametrization")
    for name in names:
        if name not in known:
            raise UsageError(f"--parametrizations: unknown parametrization plugin {name!r}; known: {', '.join(sorted(known))}")
    if not names or len(set(names)) < len(names):
        raise UsageError(f"--parametrizations {args.parametrizations!r}: expected distinct names, e.g. standard,mup")
    widths = _numbers(args.widths, int, "--widths", "positive whole numbers", 2)
    if not args.lrs and not base.optim.options.get("lr"):
        raise UsageError(f"optim.name={base.optim.name} has no lr option to centre the lrs on: give --lrs")
    lrs = _numbers(args.lrs, float, "--lrs", "positive numbers", 5) if args.lrs else \
        [base.optim.options["lr"] * 2.0**k for k in LR_STEPS]
    seeds = _numbers(args.seeds, int, "--seeds", "whole numbers", 1, positive=False)
    for option, value, least in (("--steps", args.steps, 1), ("--coord-steps", args.coord_steps, 1), ("--window", args.window, 1)):
        if value < least:
            raise UsageError(f"{option} {value}: expected a whole number >= {least}")
    head_dim = args.head_dim or base.model.head_dim
    bad = [w for w in widths if w % head_dim or (w // head_dim) % (base.model.n_heads // base.model.kv_heads)]
    if bad or head_dim % 2:
        raise UsageError(f"--widths {args.widths}: every width must be a multiple of the head size {head_dim} (even, "
                         f"--head-dim to choose another), with heads that the key/value heads divide; {bad or head_dim} is not")

    out = Path(args.out or f"runs/transfer/{base.name}").expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    dump_config(base, out / "base.yaml")
    sweep_file = out / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(_sweep(base, out, names, widths, lrs, seeds, head_dim, args), sort_keys=False))

    from b6lab.commands.sweep import run_sweep

    status, storage = run_sweep(str(sweep_file), resume=args.resume)  # its per-trial lines are the progress
    if status == 130:
        print("interrupted: the same transfer-check command with --resume continues it")
        return status
    runs = _collect(storage)
    return _report(base, out, names, widths, runs, head_dim, args)


def _width_keys(base, width: int, head_dim: int) -> dict:
    """The keys that make the base `width` wide: as many more heads as the width grows (and key/value
    heads in proportion), and d_ff (when the config sets it) in its ratio to d_model."""
    keys = {"model.d_model": width, "model.n_heads": width // head_dim}
    if base.model.n_kv_heads:
        keys["model.n_kv_heads"] = width // head_dim // (base.model.n_heads // base.model.kv_heads)
    if base.model.d_ff:
        keys["model.d_ff"] = round(base.model.d_ff * width / base.model.d_model)
    return keys


def _parametrization_keys(name: str, widths: list[int]) -> dict:
    keys = {"model.parametrization": name}
    if name == "mup":
        keys["model.mup_base_width"] = min(widths)
    return keys


def _sweep(base, out: Path, names, widths, lrs, seeds, head_dim, args) -> dict:
    """The sweep file: parametrization x width x lr, on every seed, each run evaluated at its end."""
    steps = args.steps
    return {
        "name": f"transfer-{base.name}",
        "base": {"file": str(out / "base.yaml"), "set": {
            "train.max_steps": steps, "train.eval_interval": steps, "train.checkpoint_interval": steps,
            "logging.progress": False, "logging.quiet": True}},
        "grid": {
            "parametrization": [{**_parametrization_keys(name, widths), "label": name} for name in names],
            "width": [{**_width_keys(base, w, head_dim), "label": f"w{w}"} for w in widths],
            "optim.lr": [float(f"{lr:.6g}") for lr in lrs],
        },
        "seeds": seeds,
        "resources": {"cpu": 1, "gpu": args.gpus_per_trial},
        **({"max_concurrent": args.max_concurrent} if args.max_concurrent else {}),
        "storage": str(out / "sweep"),
    }


def _collect(storage: Path) -> dict:
    """runs[parametrization][width] = (lrs, final val losses): a diverged run's loss is inf (left
    out of the fit, but it marks the grid's edge); failed or unfinished runs are left out."""
    from b6lab.sweep.folders import read_sweep

    found, _ = read_sweep(storage)
    runs: dict = {}
    for run in found:
        if run.status not in ("completed", "diverged"):
            continue
        model = run.config["model"]
        loss = run.final_val_loss if run.status == "completed" and run.final_val_loss is not None else math.inf
        lrs, losses = runs.setdefault(model["parametrization"], {}).setdefault(model["d_model"], ([], []))
        lrs.append(run.config["optim"]["lr"])
        losses.append(loss)
    for by_width in runs.values():  # in lr order, whatever order the trials ran in
        for width, (lrs, losses) in by_width.items():
            pairs = sorted(zip(lrs, losses), key=lambda pair: pair[0])
            by_width[width] = ([lr for lr, _ in pairs], [loss for _, loss in pairs])
    return runs


def _report(base, out: Path, names, widths, runs, head_dim, args) -> int:
    from b6lab import parts, transfer
    from b6lab.config import load_config

    missing = [name for name in names if len(runs.get(name, {})) < 2]
    if missing:
        print(f"transfer-check: {missing[0]} has finished runs at fewer than two widths; nothing to fit")
        return 1
    fits = {name: transfer.fit_optima(runs[name], window=args.window) for name in names}

    coord_lr = args.coord_lr or base.optim.options["lr"]
    print(f"\ncoordinate check: {args.coord_steps} steps at lr {coord_lr:g} (constant), widths {', '.join(map(str, widths))}")
    source = parts.build_source(base.data)
    tokenizer = parts.build_tokenizer(base.data, source)
    rms: dict = {}
    for name in names:
        for width in widths:
            sets = {**_width_keys(base, width, head_dim), **_parametrization_keys(name, widths), "optim.lr": coord_lr}
            cfg = load_config(out / "base.yaml", overrides=[f"{k}={json.dumps(v)}" for k, v in sets.items()])
            rms.setdefault(name, {})[width] = transfer.coordinate_check(cfg, source, tokenizer, args.coord_steps)
    slopes = {name: transfer.rms_slopes(rms[name]) for name in names}

    tables = transfer.markdown_tables(fits, slopes)
    document = {
        "base": str(out / "base.yaml"), "widths": widths, "head_dim": head_dim, "steps": args.steps, "seeds": args.seeds,
        "window": args.window, "interval": "delta method on a joint least-squares fit, pooled residual variance, t quantile",
        "fits": {name: fit.to_dict() for name, fit in fits.items()},
        "runs": {name: {str(w): {"lrs": lrs, "final_val_loss": [None if not math.isfinite(v) else v for v in losses]}
                        for w, (lrs, losses) in by_width.items()} for name, by_width in runs.items()},
        "coordinate_check": {"steps": args.coord_steps, "lr": coord_lr,
                             "rms": {name: {str(w): layers for w, layers in by.items()} for name, by in rms.items()},
                             "slopes": slopes},
    }
    (out / "transfer.json").write_text(json.dumps(document, indent=2))
    (out / "transfer.md").write_text(f"# transfer-check: {base.name}\n\n{tables}\n")
    transfer.plot_lr_curves({name: runs[name] for name in names}, fits, out / "transfer_lr.png")
    transfer.plot_coordinates(rms, out / "transfer_coords.png")
    print("\n" + tables)
    written = [out / name for name in ("transfer.json", "transfer.md", "transfer_lr.png", "transfer_coords.png")]
    print(f"\nresults: {', '.join(map(str, written))}")
    return 0
