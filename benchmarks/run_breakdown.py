"""Where a whole `b6lab train` run's time goes, against the time its own step rate predicts.

A real run (the same Trainer `b6lab train` builds, in a fresh process) with wall-clock timers
around the Trainer's phases — set-up (tokenizer, model, data stream), the training steps, the
evaluations, the per-block diagnostics, the checkpoints, the metric and progress logging — and
the process's own start (imports) measured from the interpreter's start. Then `b6lab bench` of
the same config in another fresh process: its step rate predicts how long the run's tokens
should take, and the whole process is compared with that (issue 25: the target is <= 1.1x).

    python benchmarks/run_breakdown.py --preset shakespeare-char-cpu --set data.path=../shared/data/tinyshakespeare.txt
    python benchmarks/run_breakdown.py --preset tiny --json-out benchmarks/results/breakdown_tiny.json

The phases are timed by wrapping the Trainer's methods in this script (no change to b6lab); a
phase nested in another (a checkpoint written at an evaluation) is counted once, in the inner one.
Timing is void on a machine where anything else runs: alternate it with the reference, or run it
in a quiet window, and name the CPU (printed with the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PHASES = {  # Trainer method -> the phase its time belongs to
    "take_step": "steps",
    "evaluate": "evaluations",
    "_residual_rms": "diagnostics",
    "_log_block_diagnostics": "diagnostics",
    "_save": "checkpoints",
    "_log": "logging",
}


def child(args) -> None:
    """The timed run, inside its own process: prints one JSON line."""
    started = float(os.environ["B6LAB_BREAKDOWN_T0"])  # before the interpreter started
    from b6lab.config import load_config
    from b6lab.train.trainer import Trainer  # torch and the rest: the start-up a `b6lab train` pays too

    imported = time.time()

    spent = {phase: 0.0 for phase in [*dict.fromkeys(PHASES.values()), "setup"]}
    open_phases: list[str] = []  # the phases being timed, innermost last

    def timed(method, phase):
        def wrapper(*a, **k):
            open_phases.append(phase)
            start = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                elapsed = time.perf_counter() - start
                open_phases.pop()
                spent[phase] += elapsed
                if open_phases:  # nested (a checkpoint inside an evaluation): counted in the inner phase only
                    spent[open_phases[-1]] -= elapsed
        return wrapper

    for name, phase in PHASES.items():
        setattr(Trainer, name, timed(getattr(Trainer, name), phase))
    cfg = load_config(preset=args.preset, overrides=[*args.set, f"train.out_dir={args.out}", "logging.progress=false"])
    start = time.perf_counter()
    trainer = Trainer(cfg, Path(args.out), say=lambda line: None)
    spent["setup"] = time.perf_counter() - start
    summary = trainer.run()
    total = time.time() - started
    accounted = sum(spent.values())
    print(json.dumps({"total_seconds": total, "imports_seconds": imported - started,
                      "phases": spent, "other_seconds": total - accounted - (imported - started),  # run()'s own: folder, logs, summary
                      "tokens": summary["tokens"], "final_val_loss": summary.get("final_val_loss")}))


def bench(args) -> dict:
    command = [sys.executable, "-m", "b6lab.cli", "bench", "--preset", args.preset, "--json"]
    for override in args.set:
        command += ["--set", override]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return f"{fields.get('Model name', '?').strip()} (family {fields.get('CPU family', '?').strip()}, " \
               f"model {fields.get('Model', '?').strip()})"
    except OSError:
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="shakespeare-char-cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="b6lab-breakdown-") as tmp:
        command = [sys.executable, __file__, "--child", "--preset", args.preset, "--out", f"{tmp}/run"]
        for override in args.set:
            command += ["--set", override]
        env = os.environ | {"B6LAB_BREAKDOWN_T0": repr(time.time())}
        run = json.loads(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout.splitlines()[-1])
    rate = bench(args)["tokens_per_sec"]
    predicted = run["tokens"] / rate
    result = {"preset": args.preset, "set": args.set, "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "bench_tokens_per_sec": rate, "predicted_seconds": predicted, **run,
              "ratio_to_predicted": run["total_seconds"] / predicted}
    print(f"{args.preset} {' '.join(args.set)} on {result['cpu']}, {result['date']}")
    print(f"whole process {run['total_seconds']:.1f} s; {run['tokens']:,} tokens at bench's {rate:,.0f} tokens/s "
          f"predict {predicted:.1f} s: {result['ratio_to_predicted']:.2f}x")
    rows = [("start-up", run["imports_seconds"]), *run["phases"].items(), ("other", run["other_seconds"])]
    for name, seconds in rows:
        print(f"  {name:<12} {seconds:8.2f} s  {100 * seconds / run['total_seconds']:5.1f}%")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
