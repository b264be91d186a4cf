"""Threads and precision on this CPU: `b6lab bench` tokens/s for each setting, alternating.

What `train.threads: auto` and `train.precision: auto` choose is only as good as the figures
behind them. For each preset, every combination of the given thread settings and precisions runs
as its own `b6lab bench` process, in an order that rotates from round to round; the table shows
each one's median tokens/s and its ratio to torch's default (`train.threads=null`, what b6lab
did before `auto`).

    python benchmarks/threads.py                                   # tiny, shakespeare-char-cpu, cpu-small
    python benchmarks/threads.py --preset cpu-small --threads null,1,2,auto --rounds 3

Take the figures on a quiet machine: another process on a core makes every multi-threaded
setting wait for it (which is what `auto` looks for at start, and why this script prints the
load beside each run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
PRESETS = {
    "tiny": dict(steps=40, warmup=5, extra=[]),
    "shakespeare-char-cpu": dict(steps=30, warmup=5, extra=[f"data.path={TEXT}"]),
    "cpu-small": dict(steps=8, warmup=2, extra=["model.vocab_size=50304", "optim.name=adamw"]),
}


def bench(preset: str, threads: str, precision: str) -> dict:
    shape = PRESETS[preset]
    command = [sys.executable, "-m", "b6lab", "bench", "--preset", preset, "--json",
               "--steps", str(shape["steps"]), "--warmup", str(shape["warmup"]),
               "--set", f"train.threads={threads}", "--set", f"train.precision={precision}"]
    for override in shape["extra"]:
        command += ["--set", override]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS), help="repeatable; default: all three")
    parser.add_argument("--threads", default="null,1,auto", help="comma-separated train.threads values")
    parser.add_argument("--precision", default="fp32,bf16", help="comma-separated train.precision values")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    settings = [(t, p) for p in args.precision.split(",") for t in args.threads.split(",")]
    results: dict = {}
    for preset in args.preset or list(PRESETS):
        runs: dict = {setting: [] for setting in settings}
        for round_ in range(args.rounds):
            shift = round_ % len(settings)
            for threads, precision in settings[shift:] + settings[:shift]:
                load = os.getloadavg()[0]
                result = bench(preset, threads, precision)
                runs[threads, precision].append(result)
                print(f"{preset} threads={threads} ({result['threads']}) {precision}: "
                      f"{result['tokens_per_sec']:,.0f} tokens/s  (load {load:.2f})", flush=True)
        print(f"\n{preset}: median tokens/s over {args.rounds} rounds\n")
        print("| train.threads (used) | precision | tokens/s | vs torch's default |")
        print("| --- | --- | --- | --- |")
        for threads, precision in settings:
            median = statistics.median(r["tokens_per_sec"] for r in runs[threads, precision])
            used = sorted({r["threads"] for r in runs[threads, precision]})
            default = [r["tokens_per_sec"] for r in runs.get(("null", precision), [])]
            ratio = f"{median / statistics.median(default):.2f}x" if default else ""
            print(f"| {threads} ({', '.join(map(str, used))}) | {precision} | {median:,.0f} | {ratio} |")
        print()
        results[preset] = {f"{t},{p}": v for (t, p), v in runs.items()}
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
