"""nanoGPT's CPU Shakespeare recipe, nanoGPT itself against b6lab, alternating, whole processes.

The workload is the one in nanoGPT's README ("I only have a macbook"): a character model of
tinyshakespeare, 4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iterations, AdamW
1e-3 -> 1e-4 with 100 warmup steps, betas (0.9, 0.99), weight decay 0.1, dropout 0. nanoGPT
runs from the unchanged copy in ../shared/anchors/nanogpt with the command written there;
b6lab runs `b6lab train --preset shakespeare-char-cpu` on the same text. Each run is a fresh
process and its wall time is the whole process: imports, data preparation, training,
evaluation, checkpoints. The final validation loss each prints is reported beside it.

    python benchmarks/shakespeare_side_by_side.py --rounds 2
    python benchmarks/shakespeare_side_by_side.py --rounds 1 --b6lab-set train.threads=1

A round runs both, the order alternating from round to round; the table shows the median.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

# The anchors README's command, argument for argument.
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1000", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
                "--wandb_log=False", "--always_save_checkpoint=False"]


def nanogpt_once(python: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="nanogpt-"))
    try:
        for name in ("model.py", "train.py", "configurator.py"):
            shutil.copy(ANCHOR / name, work / name)
        (work / "config").mkdir()
        shutil.copy(ANCHOR / "train_shakespeare_char.py", work / "config")
        data = work / "data" / "shakespeare_char"
        data.mkdir(parents=True)
        shutil.copy(ANCHOR / "prepare_shakespeare_char.py", data / "prepare.py")
        shutil.copy(TEXT, data / "input.txt")
        start = time.perf_counter()
        subprocess.run([python, "data/shakespeare_char/prepare.py"], cwd=work, check=True, capture_output=True)
        done = subprocess.run([python, "train.py", *NANOGPT_ARGS], cwd=work, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", done.stdout)
        return {"wall_s": wall, "final_val_loss": float(evals[-1][2]), "step": int(evals[-1][0])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def b6lab_once(python: str, overrides: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="b6lab-"))
    try:
        command = [python, "-m", "b6lab", "train", "--preset", "shakespeare-char-cpu", "--quiet",
                   "--set", f"data.path={TEXT}", "--set", f"train.out_dir={work / 'run'}"]
        for override in overrides:
            command += ["--set", override]
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - start
        summary = json.loads((work / "run" / "summary.json").read_text())
        return {"wall_s": wall, "final_val_loss": summary["final_val_loss"], "step": summary.get("steps"),
                "train_wall_s": summary.get("wall_seconds")}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--b6lab-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for the b6lab run (repeatable)")
    parser.add_argument("--only", choices=["nanogpt", "b6lab"], help="run one side alone (not a comparison)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"nanogpt": [], "b6lab": []}
    sides = [args.only] if args.only else ["nanogpt", "b6lab"]
    for round_ in range(args.rounds):
        for side in sides if round_ % 2 == 0 else sides[::-1]:
            run = nanogpt_once(sys.executable) if side == "nanogpt" else b6lab_once(sys.executable, args.b6lab_set)
            runs[side].append(run)
            print(f"round {round_ + 1} {side:8s} wall {run['wall_s']:7.1f} s  final val loss {run['final_val_loss']:.4f}"
                  f"  load {os.getloadavg()[0]:.2f}", flush=True)
    print()
    print("| | wall s (median) | final val loss (median) | runs |")
    print("| --- | --- | --- | --- |")
    for side in sides:
        walls = [run["wall_s"] for run in runs[side]]
        losses = [run["final_val_loss"] for run in runs[side]]
        print(f"| {side} | {statistics.median(walls):.1f} | {statistics.median(losses):.4f} | {len(walls)} |")
    if not args.only:
        ratio = statistics.median(r["wall_s"] for r in runs["nanogpt"]) / statistics.median(r["wall_s"] for r in runs["b6lab"])
        print(f"\nb6lab speed / nanoGPT's (wall time ratio): {ratio:.2f}x")
    if args.json_out:
        args.json_out.write_text(json.dumps({"b6lab_set": args.b6lab_set, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
