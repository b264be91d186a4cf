"""nanoGPT's CPU Shakespeare recipe, nanoGPT itself against b6lab, alternating, whole processes.

The workload is the one in nanoGPT's README ("I only have a macbook"): a character model of
tinyshakespeare, 4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iterations, AdamW
1e-3 -> 1e-4 with 100 warmup steps, betas (0.9, 0.99), weight decay 0.1, dropout 0. nanoGPT
runs from the unchanged copy in ../shared/anchors/nanogpt with the command written there;
b6lab runs `b6lab train --preset shakespeare-char-cpu` on the same text. Each run is a fresh
process and its wall time is the whole process: imports, data preparation, training,
evaluation, checkpoints. The final validation loss each prints is reported beside it.

    python benchmarks/shakespeare_side_by_side.py --rounds 2
    python benchmarks/shakespeare_side_by_side.py --b6lab "1thread=--set train.eval_steps=20 --set train.threads=1" \
        --b6lab "2procs=--set train.eval_steps=20 --set train.batch_size=6 --nproc 2"

nanoGPT's command evaluates 20 batches of 12 on each split every 250 steps; b6lab's sides default
to the same evaluation budget, 20 batches of 12 (of the validation split only: b6lab logs the
training loss from the steps it trains). The two final val losses printed are therefore each
side's own estimate, not one protocol: nanoGPT's is one draw of 20 random batches in fp32, b6lab's
the first 20 batches of the split in its training precision (bf16 autocast by default). After each
b6lab run, untimed, `b6lab eval` gives its final weights' loss on the whole validation split too.
This script measures speed; shakespeare_quality.py compares the losses like for like (several
seeds, both models scored on the same characters in fp32).

A round runs every side, in an order rotating from round to round; the table shows the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHOR = ROOT.parent / "shared" / "anchors" / "nanogpt"
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

# nanoGPT's command estimates the val loss from 20 batches at each evaluation: the same here.
DEFAULT_B6LAB = "b6lab=--set train.eval_steps=20"

# The anchors README's command, argument for argument.
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1000", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
                "--wandb_log=False", "--always_save_checkpoint=False"]


def copy_nanogpt(work: Path) -> None:
    """Lay out the unchanged anchor in `work` as nanoGPT's own scripts expect (the anchors README)."""
    for name in ("model.py", "train.py", "configurator.py"):
        shutil.copy(ANCHOR / name, work / name)
    (work / "config").mkdir()
    shutil.copy(ANCHOR / "train_shakespeare_char.py", work / "config")
    data = work / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    shutil.copy(ANCHOR / "prepare_shakespeare_char.py", data / "prepare.py")
    shutil.copy(TEXT, data / "input.txt")


def nanogpt_once(python: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="nanogpt-"))
    try:
        copy_nanogpt(work)
        start = time.perf_counter()
        subprocess.run([python, "data/shakespeare_char/prepare.py"], cwd=work, check=True, capture_output=True)
        done = subprocess.run([python, "train.py", *NANOGPT_ARGS], cwd=work, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", done.stdout)
        return {"wall_s": wall, "final_val_loss": float(evals[-1][2]), "step": int(evals[-1][0])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def b6lab_once(python: str, arguments: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="b6lab-"))
    try:
        command = [python, "-m", "b6lab", "train", "--preset", "shakespeare-char-cpu", "--quiet",
                   "--set", f"data.path={TEXT}", "--set", f"train.out_dir={work / 'run'}", *arguments]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        summary = json.loads((work / "run" / "summary.json").read_text())
        # Untimed: the final weights on the whole validation split (nanoGPT's figure, like the run's
        # own with train.eval_steps=20, is an estimate from 20 batches).
        whole = subprocess.run([python, "-m", "b6lab", "eval", str(work / "run" / "checkpoints" / "last"), "--json"],
                               cwd=ROOT, check=True, capture_output=True, text=True, env=env)
        return {"wall_s": wall, "final_val_loss": summary["final_val_loss"], "step": summary.get("steps"),
                "train_wall_s": summary.get("wall_seconds"),
                "whole_split_val_loss": json.loads(whole.stdout.strip().splitlines()[-1])["loss"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--b6lab", action="append", metavar="LABEL=ARGUMENTS",
                        help="a b6lab side: a label, then `b6lab train` arguments added to the preset's "
                             "(repeatable; default: " + DEFAULT_B6LAB + ")")
    parser.add_argument("--no-nanogpt", action="store_true", help="b6lab sides only (not a comparison)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    variants = dict(text.split("=", 1) for text in (args.b6lab or [DEFAULT_B6LAB]))
    sides = ([] if args.no_nanogpt else ["nanogpt"]) + list(variants)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        shift = round_ % len(sides)
        for side in sides[shift:] + sides[:shift]:
            load = os.getloadavg()[0]
            run = nanogpt_once(sys.executable) if side == "nanogpt" else b6lab_once(sys.executable, shlex.split(variants[side]))
            runs[side].append(run)
            whole = f"  whole split {run['whole_split_val_loss']:.4f}" if "whole_split_val_loss" in run else ""
            print(f"round {round_ + 1} {side:12s} wall {run['wall_s']:7.1f} s  final val loss {run['final_val_loss']:.4f}"
                  f"{whole}  (load before {load:.2f})", flush=True)
    print("\n| | arguments | wall s (median) | final val loss, own estimate (median) | whole val split | runs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for side in sides:
        walls = [run["wall_s"] for run in runs[side]]
        losses = [run["final_val_loss"] for run in runs[side]]
        whole = [run["whole_split_val_loss"] for run in runs[side] if "whole_split_val_loss" in run]
        print(f"| {side} | `{variants.get(side, 'the anchors README command')}` | {statistics.median(walls):.1f} "
              f"| {statistics.median(losses):.4f} | {f'{statistics.median(whole):.4f}' if whole else ''} | {len(walls)} |")
    if "nanogpt" in runs:
        reference = statistics.median(r["wall_s"] for r in runs["nanogpt"])
        for side in variants:
            print(f"{side}: {reference / statistics.median(r['wall_s'] for r in runs[side]):.2f}x nanoGPT's speed (wall time)")
    if args.json_out:
        args.json_out.write_text(json.dumps({"variants": variants, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
