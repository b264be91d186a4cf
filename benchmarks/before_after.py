"""`b6lab bench` of two checkouts of b6lab side by side, alternating, each run in a fresh process.

For "is the change slower?": the same command (`b6lab bench ... --json`) runs with PYTHONPATH set
to each checkout in turn, in an order that rotates from round to round; the table shows each
checkout's median tokens/s over the rounds and the ratio after/before.

    git worktree add /tmp/b6lab-before 89c2600
    python benchmarks/before_after.py /tmp/b6lab-before . --preset cpu-small --set model.vocab_size=50304 \
        --set optim.name=adamw --set train.precision=fp32 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def bench(checkout: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "b6lab.cli", "bench", "--preset", args.preset, "--json",
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for override in args.overrides:
        command += ["--set", override]
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=checkout)
    if done.returncode:
        sys.exit(f"{checkout}: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    figures: dict[str, list[float]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
        for name in order:
            result = bench(getattr(args, name), args)
            figures[name].append(result["tokens_per_sec"])
            print(f"round {round_ + 1} {name:6} {result['tokens_per_sec']:,.0f} tokens/s "
                  f"(step {result.get('step_time_s') or 0:.4f} s, {result.get('precision')})", flush=True)
    before, after = (statistics.median(figures[k]) for k in ("before", "after"))
    print(f"\nmedian over {args.rounds} rounds: before {before:,.0f} tokens/s, after {after:,.0f} tokens/s, "
          f"after/before {after / before:.3f}")


if __name__ == "__main__":
    main()
