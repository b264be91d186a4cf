"""Run a grid of training runs on Ray Tune: every trial a full `b6lab train`; then a results table and plots.

Every trial's config is resolved and checked before the first one starts. The sweep's folder
(default runs/sweeps/<name>) holds each trial's run folder under trials/, Ray's state under ray/,
and at the end results.csv, val_loss_vs_tokens.png and final_val_loss_by_key.png.

  b6lab sweep experiments/norm_ablation.yaml --dry-run   the trials it would run; starts nothing
  b6lab sweep experiments/norm_ablation.yaml             run it on a local Ray (or $RAY_ADDRESS)
  b6lab sweep experiments/norm_ablation.yaml --resume    continue an interrupted sweep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from b6lab.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("experiment", help="a sweep file (YAML): name, base, grid, seeds, resources, ...")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every trial (grid values, seed, plugins, parameters, tokens) and start nothing")
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep in its folder, running only the trials that did not finish")
    parser.add_argument("--retry-failed", action="store_true",
                        help="with --resume, also run the trials that failed again (from their last checkpoint)")
    parser.add_argument("--address", metavar="ADDR",
                        help="join the Ray cluster at ADDR (default: $RAY_ADDRESS, else start Ray on this machine)")
    parser.add_argument("--quiet", action="store_true",
                        help="print only the sweep's header and its results, not a line per trial event")


def run(args: argparse.Namespace) -> int:
    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed goes with --resume")
    status, _ = run_sweep(args.experiment, dry_run=args.dry_run, resume=args.resume, retry_failed=args.retry_failed,
                          address=args.address, quiet=args.quiet)
    return status


def run_sweep(experiment: str, *, dry_run: bool = False, resume: bool = False, retry_failed: bool = False,
              address: str | None = None, quiet: bool = False) -> tuple[int, Path]:
    """The sweep command's work (also `b6lab.sweep`): its exit status, and the sweep's folder."""
    from b6lab.sweep import comparison, folders, report
    from b6lab.sweep.experiment import load_experiment
    from b6lab.sweep.trials import resolve_trials
    from b6lab.train.trackers import tensorboard_command

    exp = load_experiment(experiment)
    if exp.tuning:
        from b6lab.sweep.tuning import read_tuned

        exp.tuned = read_tuned(exp)  # a finished tuning phase (on --resume); else tuned before the grid runs
    trials = resolve_trials(exp)
    if exp.tuning:
        from b6lab.sweep.trials import tuning_configs

        tuning_configs(exp)  # every arm's tuning config, at both ends of each tuned range, checked now
    print(report.sweep_header(exp, trials))
    rows = report.trial_rows(trials, exp)
    if resume:
        for row, trial in zip(rows, trials):
            row["status"] = _status_on_resume(trial, row["status"], retry_failed)
    if not quiet:
        print(report.text_table(rows))
    skipped = [t for t in trials if t.skip_reason]
    for trial in skipped:
        print(f"  skipped {trial.name}: {trial.skip_reason}")
    if dry_run:
        print("\ndry run: nothing started")
        return 0, exp.storage

    if resume and not (exp.tuning and exp.tuned is None):  # an unfinished tuning phase: checked once tuned
        folders.check_same_sweep(exp, trials)
    elif not resume and (folders.read_sweep_record(exp.storage) is not None or (exp.storage / "tuning.json").exists()):
        raise UsageError(f"{exp.storage} already holds the sweep {exp.name}; pass --resume to continue it, "
                         f"or give it another name or storage: in {exp.file.name}")
    _check_wandb_logins(trials)

    from b6lab.sweep.tune_runner import (check_resources, count_unfinished, run_tuner, start_ray, stop_left_over_ray,
                                         stop_ray)
    from b6lab.train.run_folder import RunLock

    print()
    with RunLock(exp.storage, "give the sweep another name or storage"):  # one driver per sweep folder
        stopped = stop_left_over_ray(exp.storage)
        if stopped:
            print(f"stopped {stopped} Ray process{'es' if stopped > 1 else ''} left by this sweep's killed driver")
        joined_cluster = start_ray(address, exp.storage)
        try:
            check_resources(exp, joined_cluster)
            if exp.tuning and exp.tuned is None:
                from b6lab.sweep.tuning import run_tuning

                exp.tuned = run_tuning(exp, quiet)
                trials = resolve_trials(exp)  # each grid point at its chosen setting
                if resume and folders.read_sweep_record(exp.storage) is not None:
                    folders.check_same_sweep(exp, trials)
            folders.write_sweep_record(exp, trials)
            run_tuner(exp, trials, resume=resume, retry_failed=retry_failed, quiet=quiet)
            unfinished = count_unfinished(exp)
        finally:
            stop_ray(exp.storage)

    result = comparison.build([exp.storage], metric=exp.metric)  # what `b6lab compare` of the sweep says
    runs = result.runs
    print("\n" + report.comparison_text(result, show_names=False))
    written = report.write_results(runs, result.keys, exp.storage, exp.name, result.metric, scaling=result.scaling)
    if exp.tuning:
        from b6lab.sweep.tuning import plot_tuning_curves, tuning_lines

        print("\n" + "\n".join(tuning_lines(exp)))
        written.append(plot_tuning_curves(exp))
    print(f"\nresults: {', '.join(str(path) for path in written)}")
    if any(trial.config["logging"].get("tensorboard") for trial in trials):
        print(f"curves: {tensorboard_command([exp.trials_dir]) or 'no TensorBoard event files were written'}")
    if unfinished:
        print(f"interrupted: {unfinished} trial{'s' if unfinished > 1 else ''} did not finish; "
              f"`b6lab sweep {experiment} --resume` continues")
        return 130, exp.storage
    return (1 if any(run.status == "failed" for run in runs) else 0), exp.storage


def _check_wandb_logins(trials) -> None:
    """A missing wandb login is the same one-line error as `b6lab train`'s, before Ray starts."""
    from b6lab.config import WandbConfig
    from b6lab.train.trackers import check_wandb_login

    for settings in {json.dumps(t.config["logging"]["wandb"], sort_keys=True) for t in trials}:
        check_wandb_login(WandbConfig(**json.loads(settings)))


def _status_on_resume(trial, planned: str, retry_failed: bool) -> str:
    """What --resume will do with a trial: finished ones (completed, diverged, stopped) stay as they are."""
    from b6lab.sweep.folders import read_run
    from b6lab.train.run_folder import holds_run

    if planned == "skip" or not holds_run(trial.run_dir):
        return planned
    status = read_run(trial.run_dir).status
    if status == "completed" or status in ("diverged", "stopped") or (status == "failed" and not retry_failed):
        return status
    return "rerun" if status == "failed" else "resume"
