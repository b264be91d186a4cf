"""A sweep's own overhead against Ray's fixed cost, whole processes, alternating, in one run.

Issue 17 item 3: a 4-trial tiny sweep's wall time minus its trials' training time must be at most
Ray's fixed cost plus 3 s per trial. Each round runs, in alternating order:

  ray    Ray's fixed cost: a fresh process that starts Ray exactly as `b6lab sweep` does
         (b6lab.sweep.tune_runner.start_ray / stop_ray) and runs a Tuner with the sweep's settings
         over 4 trials whose trainable only reports once. Timed from process start to exit.
  sweep  `b6lab sweep` on a 4-trial sweep file this script writes (tiny preset, 2 learning rates
         x 2 seeds, --steps steps each, 1 CPU per trial, one trial at a time). Timed from process
         start to exit.

A trial's training time is its summary.json `wall_seconds`: the Trainer's run() from its first
step to its summary (steps, evaluations, checkpoints, the reports to Tune), i.e. what a trial
would cost without a sweep around it. The overhead is the sweep's wall time minus the sum of
those. Trials run one at a time (max_concurrent 1) so that this difference is exactly the time
no trial was training; with trials side by side the difference no longer means anything.

The sweep's stdout is read line by line as it comes, which splits the overhead into phases:

  start-up        process start to the sweep's header: imports, every trial's config resolved,
                  its plugins built and checked, parameter counts
  ray start       header to the first trial's start: ray.init, the Tuner's set-up
  trial set-up    each trial's start to end (as the driver sees it) minus its training time:
                  data source, tokenizer, model, optimizer, the run folder; summed over trials.
                  The first trial's is shown apart: its new Ray worker also imports torch,
                  torch._dynamo (any torch optimizer does) and b6lab; later trials reuse it
  between trials  a trial's end to the next one's start (Tune's scheduling)
  the end         the last trial's end to process exit: Ray's shutdown, the results table,
                  results.csv, the plots

Run it from the repository root, on a quiet machine (it times whole processes):

    .venv/bin/python benchmarks/sweep_overhead.py --rounds 3
    .venv/bin/python benchmarks/sweep_overhead.py --rounds 1 --steps 50 --json-out overhead.json
    .venv/bin/python benchmarks/sweep_overhead.py --rounds 4 --baseline /tmp/before   # before/after

(a baseline checkout: `git archive COMMIT | tar -x -C /tmp/before`, or a git worktree)

The table shows each figure's median over the rounds, and the check
`overhead <= ray fixed cost + 3 s x 4 trials`.
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
TRIALS = 4
ALLOWANCE_PER_TRIAL_S = 3.0
EVENT = re.compile(r"\] (started|finished) +([^\s:]+)")


def ray_fixed_child(storage: str, max_concurrent: int) -> None:
    """The `ray` side, in its own process: b6lab's Ray start, an empty 4-trial Tuner, b6lab's Ray stop.
    The Tuner's settings are run_tuner's for a sweep without a scheduler."""
    from ray import tune

    from b6lab.sweep.tune_runner import start_ray, stop_ray

    def report_once(config):
        tune.report({"val_loss": 0.0, "step": 1})

    storage_path = Path(storage)
    began = time.perf_counter()
    start_ray(None, storage_path)
    started = time.perf_counter()
    try:
        tuner = tune.Tuner(
            tune.with_resources(report_once, {"cpu": 1, "gpu": 0}),
            param_space={"x": tune.grid_search(list(range(TRIALS)))},
            tune_config=tune.TuneConfig(metric="val_loss", mode="min", max_concurrent_trials=max_concurrent,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name="ray", storage_path=str(storage_path), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
        tuner.fit()
    finally:
        fitted = time.perf_counter()
        stop_ray(storage_path)
    print(json.dumps({"init_s": started - began, "fit_s": fitted - started, "shutdown_s": time.perf_counter() - fitted}))


def environment(checkout: Path = ROOT) -> dict:
    # Unbuffered: the sweep's lines are timed as they come; PYTHONPATH: the checkout's b6lab.
    return {**os.environ, "PYTHONPATH": str(checkout), "PYTHONUNBUFFERED": "1"}


def ray_fixed_once(python: str, max_concurrent: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sweep-overhead-ray-"))
    try:
        start = time.perf_counter()
        done = subprocess.run([python, __file__, "--ray-fixed-child", str(work), "--max-concurrent", str(max_concurrent)],
                              cwd=ROOT, capture_output=True, text=True, env=environment())
        if done.returncode != 0:
            raise SystemExit(f"the Ray-alone process failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return {"wall_s": time.perf_counter() - start, **json.loads(done.stdout.strip().splitlines()[-1])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sweep_file(folder: Path, steps: int, max_concurrent: int) -> Path:
    path = folder / "overhead_probe.yaml"
    path.write_text(
        "name: overhead_probe\n"
        f"base: {{preset: tiny, set: {{train.max_steps: {steps}, train.eval_interval: {max(1, steps // 2)}, "
        "train.log_interval: 5, train.precision: fp32}}\n"
        "grid:\n  optim.lr: [0.001, 0.002]\n"
        "seeds: [0, 1]\n"
        "resources: {cpu: 1, gpu: 0}\n"
        f"max_concurrent: {max_concurrent}\n"
        f"storage: {folder / 'sweep'}\n"
    )
    return path


def sweep_once(python: str, steps: int, max_concurrent: int, checkout: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sweep-overhead-b6lab-"))
    try:
        path = sweep_file(work, steps, max_concurrent)
        lines: list[tuple[float, str]] = []
        start = time.perf_counter()
        process = subprocess.Popen([python, "-m", "b6lab", "sweep", str(path)], cwd=checkout, env=environment(checkout),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))
        if process.wait() != 0:
            tail = "\n".join(text for _, text in lines[-20:])
            raise SystemExit(f"b6lab sweep failed (exit {process.returncode}) in {checkout}:\n{tail}")
        wall = time.perf_counter() - start
        training = {}
        for summary in (work / "sweep" / "trials").glob("*/summary.json"):
            training[summary.parent.name] = json.loads(summary.read_text())["wall_seconds"]
        if len(training) != TRIALS:
            raise SystemExit(f"expected {TRIALS} trials' summary.json, found {len(training)}")
        return {"wall_s": wall, "training_s": sum(training.values()), "overhead_s": wall - sum(training.values()),
                **phases(lines, wall, training)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def phases(lines: list[tuple[float, str]], wall: float, training: dict[str, float]) -> dict:
    """The overhead's phases, from when the sweep printed its header and each trial's start and end."""
    header = next(t for t, text in lines if text.startswith("overhead_probe:"))
    started, finished = {}, {}
    for t, text in lines:
        event = EVENT.search(text)
        if event:
            (started if event[1] == "started" else finished)[event[2]] = t
    setups = sorted((started[name], finished[name] - started[name] - training[name]) for name in started)
    first, last = min(started.values()), max(finished.values())
    between = (last - first) - sum(finished[name] - started[name] for name in started)
    return {
        "startup_s": header, "ray_start_s": first - header,
        "trial_setup_s": sum(setup for _, setup in setups), "first_trial_setup_s": setups[0][1],
        "between_trials_s": between, "end_s": wall - last,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of ray + sweep, the order alternating (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per trial (default 20)")
    parser.add_argument("--max-concurrent", type=int, default=1,
                        help="trials at a time, on both sides (default 1: the overhead is then exact)")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also time the sweep with the b6lab of another checkout (e.g. a worktree of main), "
                             "in the same rounds: a before/after under the same load")
    parser.add_argument("--json-out", type=Path, help="also write every round's figures here")
    parser.add_argument("--ray-fixed-child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_fixed_child:
        return ray_fixed_child(args.ray_fixed_child, args.max_concurrent)

    sweeps = {"sweep": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    sides = ["ray", *sweeps]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        for side in sides if round_ % 2 == 0 else sides[::-1]:
            if side == "ray":
                run = ray_fixed_once(sys.executable, args.max_concurrent)
                detail = (f"  (ray.init {run['init_s']:.1f}, empty trials {run['fit_s']:.1f}, "
                          f"shutdown {run['shutdown_s']:.1f}; the rest is imports and exit)")
            else:
                run = sweep_once(sys.executable, args.steps, args.max_concurrent, sweeps[side])
                detail = (f"  trials' training {run['training_s']:5.1f} s  overhead {run['overhead_s']:5.1f} s"
                          f"  (start-up {run['startup_s']:.1f}, ray start {run['ray_start_s']:.1f}, "
                          f"trial set-up {run['trial_setup_s']:.1f} (first {run['first_trial_setup_s']:.1f}), "
                          f"between trials {run['between_trials_s']:.1f}, end {run['end_s']:.1f})")
            runs[side].append(run)
            print(f"round {round_ + 1} {side:8s} wall {run['wall_s']:6.1f} s{detail}  load {os.getloadavg()[0]:.2f}", flush=True)

    def median(side: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[side])

    def row(what: str, key: str, bold: bool = False) -> None:
        cells = [f"{median(side, key):.1f}" for side in sweeps]
        if bold:
            what, cells = f"**{what}**", [f"**{cell}**" for cell in cells]
        print(f"| {what} | {' | '.join(cells)} |")

    ray_fixed = median("ray", "wall_s")
    limit = ray_fixed + ALLOWANCE_PER_TRIAL_S * TRIALS
    print(f"\neach figure its median over {args.rounds} round(s) (so parts need not add up exactly); {TRIALS} trials of "
          f"{args.steps} steps, {args.max_concurrent} at a time; load average now {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs\n")
    print("| Ray alone | seconds |")
    print("| --- | --- |")
    print(f"| **Ray's fixed cost**: ray.init + empty {TRIALS}-trial Tuner + shutdown, whole process | **{ray_fixed:.1f}** |")
    for key, what in (("init_s", "ray.init (b6lab's start_ray)"), ("fit_s", f"the empty {TRIALS}-trial Tuner's fit"),
                      ("shutdown_s", "ray.shutdown (b6lab's stop_ray)")):
        print(f"| &nbsp; of which {what} | {median('ray', key):.1f} |")
    print(f"\n| b6lab sweep | {' | '.join(f'{side} ({sweeps[side]})' for side in sweeps)} |")
    print(f"| --- |{' --- |' * len(sweeps)}")
    row("whole process", "wall_s")
    row("its trials' training time (sum of summary.json wall_seconds)", "training_s")
    row("overhead = sweep wall - trials' training", "overhead_s", bold=True)
    for key, what in (("startup_s", "start-up: imports, trials resolved and checked"),
                      ("ray_start_s", "ray start: ray.init, Tuner set-up"),
                      ("trial_setup_s", "trial set-up in the workers (sum over trials)"),
                      ("first_trial_setup_s", "&nbsp; &nbsp; the first trial's (a new worker: its imports)"),
                      ("between_trials_s", "between trials (Tune scheduling)"),
                      ("end_s", "the end: Ray shutdown, results table, CSV, plots")):
        row(f"&nbsp; of which {what}", key)
    print()
    for side in sweeps:
        overhead = median(side, "overhead_s")
        print(f"{side}: overhead beyond Ray's fixed cost {overhead - ray_fixed:.1f} s ({(overhead - ray_fixed) / TRIALS:.1f} s per trial); "
              f"check: overhead {overhead:.1f} s <= Ray's fixed cost {ray_fixed:.1f} s + {ALLOWANCE_PER_TRIAL_S:g} s x "
              f"{TRIALS} trials = {limit:.1f} s: {'PASS' if overhead <= limit else 'FAIL'}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"steps": args.steps, "max_concurrent": args.max_concurrent,
                                             "checkouts": {side: str(path) for side, path in sweeps.items()}, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
