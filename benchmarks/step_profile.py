"""Where a CPU training step's time goes: glibc's default malloc against b6lab's kept memory, and
the step's most expensive operations.

Each run is a fresh process that builds the real trainer (same config, data and step as `b6lab
train`), takes --warmup steps, then times --steps more, counting the page faults they take
(getrusage's minor faults). The "default" side leaves glibc's malloc as it is (the trainer's
`hardware.keep_freed_memory` is replaced by a no-op in that process); the "kept" side is b6lab
as it runs. The sides alternate, the order rotating by round. `--profile` prints torch.profiler's
table of one run's timed steps instead (kept memory), by self time.

    python benchmarks/step_profile.py --preset shakespeare-char-cpu --set data.path=../shared/data/tinyshakespeare.txt
    python benchmarks/step_profile.py --preset cpu-small --set model.vocab_size=50304 --set optim.name=adamw \\
        --set train.precision=fp32 --steps 5 --warmup 3
    python benchmarks/step_profile.py --preset cpu-small --set model.vocab_size=50304 --set optim.name=adamw \\
        --set train.precision=fp32 --steps 3 --profile
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    import torch

    from b6lab.bench import throwaway_trainer
    from b6lab.config import load_config
    from b6lab.train import hardware

    if args.malloc == "default":
        hardware.keep_freed_memory = lambda: False
    with throwaway_trainer(load_config(preset=args.preset, overrides=args.overrides)) as run:
        for _ in range(args.warmup):
            run.take_step()
        if args.profile:
            from torch.profiler import profile

            with profile() as prof:
                for _ in range(args.steps):
                    run.take_step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
            return
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(args.steps):
            run.take_step()
        seconds = (time.perf_counter() - start) / args.steps
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"step_ms": 1000 * seconds, "faults_per_step": faults, "peak_rss_mb": peak_mb,
                          "threads": torch.get_num_threads(), "precision": run.plan.precision}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of the timed steps")
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--malloc", choices=["default", "kept"], default="kept", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    def once(malloc: str) -> dict | None:
        command = [sys.executable, __file__, "--child", "--malloc", malloc, "--preset", args.preset,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--rows", str(args.rows)]
        command += [f"--set={override}" for override in args.overrides] + (["--profile"] if args.profile else [])
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            sys.exit(done.stderr)
        if args.profile:
            print(done.stdout)
            return None
        return json.loads(done.stdout.strip().splitlines()[-1])

    if args.profile:
        once("kept")
        return
    runs: dict[str, list[dict]] = {"default": [], "kept": []}
    for round_ in range(args.rounds):
        for malloc in (("default", "kept") if round_ % 2 == 0 else ("kept", "default")):
            result = once(malloc)
            runs[malloc].append(result)
            print(f"round {round_ + 1} {malloc:<8} {result['step_ms']:8.1f} ms a step  "
                  f"{result['faults_per_step']:9.0f} page faults a step  peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    print(f"\n{args.preset} ({runs['kept'][0]['precision']}, {runs['kept'][0]['threads']} threads), median of {args.rounds}:")
    for malloc, results in runs.items():
        median = {key: statistics.median(r[key] for r in results) for key in ("step_ms", "faults_per_step", "peak_rss_mb")}
        print(f"  {malloc:<8} {median['step_ms']:8.1f} ms a step  {median['faults_per_step']:9.0f} page faults a step  "
              f"peak RSS {median['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
