"""The Ray Tune side of a sweep: the trainable every trial runs, and starting or restoring the Tuner.

A trial is handed only plain data (its resolved config as a dict, absolute paths) and rebuilds
its config in its own worker process, where the sweep's plugin files are loaded again. It runs
the same Trainer as `b6lab train` into its own run folder, reports every evaluation to Tune with
the checkpoint written beside it, and when Ray restarts it, continues from Tune's checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from b6lab.errors import UsageError
from b6lab.sweep.grid import SEED_KEY, Experiment, point_key
from b6lab.train.records import Outcome, read_summary, write_json

if TYPE_CHECKING:  # trials.py imports torch, which Ray's own start need not wait for
    from b6lab.sweep.trials import Trial


class StoppedEarly(SystemExit):
    """Tune stopped the trial: its scheduler did, or the sweep was interrupted. A SystemExit with
    code 0 is how Ray ends a trial's thread quietly; the Trainer records its `outcome`."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.reason)
        self.code, self.outcome = 0, outcome


def stopped_by_tune(step: int, max_steps: int, scheduler: str | None) -> Outcome:
    """A trial Tune ended at `step`: stopped (by its scheduler, or the sweep was interrupted), or
    completed if that was its last evaluation (a scheduler may stop a trial there too)."""
    if step >= max_steps:
        return Outcome("completed")
    why = "the sweep was interrupted"
    if scheduler:
        why = f"the {scheduler} scheduler stopped it early (or {why})"
    return Outcome("stopped", f"stopped at step {step}: {why}", step)


def trial_spec(trial: Trial, exp: Experiment) -> dict:
    """What a worker needs to run one trial, as plain values."""
    return {
        "name": trial.name, "config": trial.config, "run_dir": str(trial.run_dir), "max_steps": trial.max_steps,
        "skip_reason": trial.skip_reason, "cwd": os.getcwd(), "threads": max(1, int(exp.cpus)),
        "scheduler": exp.scheduler["name"] if exp.scheduler else None,
        "workers": exp.workers, "cpus": exp.cpus, "gpus": exp.gpus, "train_storage": str(exp.ray_dir / "train"),
    }


def run_trial(config: dict, trials: dict) -> None:
    """Ray Tune's trainable: one full training run, of the grid point `config`."""
    from ray import tune

    from b6lab.config import config_from_dict
    from b6lab.train import checkpoint, hardware
    from b6lab.train.trainer import Trainer

    spec = trials[point_key(config)]
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    if os.path.isdir(spec["cwd"]):  # Ray starts trials in its own folder; relative paths mean what they did for the sweep
        os.chdir(spec["cwd"])
    if spec["skip_reason"] or _already_finished(run_dir, spec["max_steps"]):
        _report_without_training(spec, run_dir)
        return
    _restore_tune_checkpoint(tune.get_checkpoint(), run_dir / "checkpoints" / "last")
    if spec["workers"] > 1:
        from b6lab.sweep.ray_train import run_on_workers

        return run_on_workers(spec)
    cfg = config_from_dict(spec["config"])
    hardware.share_cores(spec["threads"])  # else torch takes every core in every trial, and trials fight over them

    def report(record: dict, saved: Path | None) -> None:
        metrics = {k: record[k] for k in ("step", "tokens", "val_loss", "best_val_loss", "val_bpb", "best_val_bpb") if k in record}
        metrics |= {"max_steps": spec["max_steps"], "trial": spec["name"]}
        last = tune.Checkpoint.from_directory(str(saved)) if saved is not None and saved.name == "last" else None
        try:
            tune.report(metrics, checkpoint=last)
        except SystemExit:  # how Ray tells a trial's thread to end; the Trainer records why
            raise StoppedEarly(stopped_by_tune(record["step"], spec["max_steps"], spec["scheduler"])) from None

    with open(run_dir / "train.log", "a") as log:
        try:
            resume = checkpoint.find(run_dir / "checkpoints" / "last") is not None
            trainer = Trainer(cfg, run_dir, resume=resume, on_eval=report,
                              say=lambda line: print(line, file=log, flush=True))
        except Exception as exc:  # set-up failed before the Trainer could record why
            write_json(run_dir / "summary.json", {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"})
            raise
        trainer.run()


def _already_finished(run_dir: Path, max_steps: int) -> bool:
    """A trial Ray runs again although it finished (the sweep was killed before Ray recorded that)."""
    summary = read_summary(run_dir)
    status = summary.get("status")
    return status == "diverged" or (status == "completed" and summary.get("steps") == max_steps)


def _report_without_training(spec: dict, run_dir: Path) -> None:
    """A skipped or already finished trial: Tune still wants its metric reported once."""
    from ray import tune

    if spec["skip_reason"]:
        write_json(run_dir / "summary.json", {"status": "skipped", "reason": spec["skip_reason"]})
    summary = read_summary(run_dir)
    tune.report({"val_loss": summary.get("final_val_loss") or math.nan, "step": summary.get("steps") or 0,
                 "max_steps": spec["max_steps"], "trial": spec["name"]})


def _restore_tune_checkpoint(saved, target: Path) -> None:
    """Tune's last checkpoint of this trial becomes the run's checkpoints/last, which the Trainer resumes."""
    if saved is None:
        return
    partial = target.with_name(f"{target.name}.from-tune")
    shutil.rmtree(partial, ignore_errors=True)
    with saved.as_directory() as folder:
        shutil.copytree(folder, partial)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


# ---------------------------------------------------------------------------------------------
# The driver: start Ray, run or restore the Tuner


class TrialNames:
    """Ray's name (and folder under ray/) for a trial: the same as its run folder's."""

    def __init__(self, names: dict[str, str]):
        self.names = names

    def __call__(self, trial) -> str:
        return self.names[point_key(trial.config)]


def start_ray(address: str | None, storage: Path | None = None) -> bool:
    """A local Ray with this machine's resources, or the cluster at `address` (or $RAY_ADDRESS).
    Returns whether it joined a cluster. A local Ray's session is recorded in `storage`, so that
    the next sweep there can stop what a killed driver left running (`stop_left_over_ray`)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return address is not None
    # Ray Tune's own reporting: SweepProgress prints a line per trial instead of Ray's tables, and
    # a failed trial's reason instead of its traceback (which stays in ray/<trial>/error.txt); and
    # a sweep that checkpoints at every eval snapshots its state often by design (--resume needs it).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.getLogger("ray.tune.tune").addFilter(_NotRaysResumeHint())
    if address:
        _check_reachable(address)
    # Trials run in Ray's worker processes: give them b6lab's settings (cache folder, entry points).
    env = {k: v for k, v in os.environ.items() if k.startswith(("B6LAB_", "HF_", "WANDB_", "TOKENIZERS_"))}
    try:
        context = ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                           runtime_env={"env_vars": env})
    except ConnectionError as exc:
        raise UsageError(f"cannot join the Ray cluster at {address}: {exc}") from None
    if address is None and storage is not None:
        write_json(Path(storage) / SESSION_RECORD, {"driver_pid": os.getpid(), "session_dir": context.address_info["session_dir"]})
    return address is not None


SESSION_RECORD = "ray_session.json"  # the local Ray session a running sweep started: its driver and session folder


def stop_ray(storage: Path) -> None:
    """The driver's own shutdown: Ray's processes end with it, and the record goes."""
    import ray

    ray.shutdown()
    (Path(storage) / SESSION_RECORD).unlink(missing_ok=True)


def session_processes(session: str) -> list:
    """The processes of one Ray session (session_<date>_<pid>): its name is in their command line or,
    for the agents that rename themselves (ray::DashboardAgent), in the log files they hold open."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            cmdline = process.info["cmdline"] or []
            if process.pid == os.getpid() or not any("ray" in part for part in cmdline):
                continue
            if any(session in part for part in cmdline) or any(session in f.path for f in process.open_files()):
                found.append(process)
    return found


def stop_left_over_ray(storage: Path) -> int:
    """Stop the Ray processes a killed sweep driver left behind (Ray's agents outlive a SIGKILLed
    driver): only those of the session recorded in `storage`, never another sweep's or user's Ray.
    Returns how many it stopped."""
    import json

    import psutil

    path = Path(storage) / SESSION_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    if psutil.pid_exists(record["driver_pid"]) and record["driver_pid"] != os.getpid():
        return 0  # its driver still runs (the sweep folder's lock keeps a second driver out)
    left = session_processes(Path(record["session_dir"]).name)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(left, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    path.unlink(missing_ok=True)
    return len(left)


class _NotRaysResumeHint(logging.Filter):
    """Ray's hint after an interrupt names its Python API; b6lab prints `b6lab sweep FILE --resume`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Experiment has been interrupted")


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable address for minutes; a host:port that refuses is a mistake to report now."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def check_resources(exp: Experiment, joined_cluster: bool) -> None:
    """A trial that asks for more than all of Ray has would wait forever: say so now."""
    import ray

    total = ray.cluster_resources()
    workers = f"{exp.workers} workers x " if exp.workers > 1 else ""
    for kind, asked in (("CPU", exp.cpus), ("GPU", exp.gpus)):
        if asked * exp.workers > total.get(kind, 0):
            message = (f"each trial asks for {workers}{asked:g} {kind} (resources in {exp.file}) "
                       f"but Ray has {total.get(kind, 0):g}")
            if not joined_cluster:
                raise UsageError(f"{message}; ask for less, or join a bigger cluster with --address")
            print(f"warning: {message}; the trials wait until the cluster grows", flush=True)
    if joined_cluster and exp.workers > 1:
        print(f"note: a trial's {exp.workers} workers may land on different nodes, and all of them read its "
              f"checkpoints: storage ({exp.storage}) must be a folder every node sees", flush=True)


def run_tuner(exp: Experiment, trials: list[Trial], resume: bool, retry_failed: bool, quiet: bool = False):
    """Run the sweep's trials on Ray Tune (restoring an interrupted sweep with `resume`); returns Ray's ResultGrid."""
    from ray import tune

    from b6lab.sweep.progress import SweepProgress
    from b6lab.sweep.ray_train import TrainTrialEnds

    names, run_dirs = {t.key: t.name for t in trials}, {t.name: str(t.run_dir) for t in trials}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, trials={t.key: trial_spec(t, exp) for t in trials}),
        # A trial of several workers is only their driver: Ray Train reserves the workers' resources
        # (Tune refuses a trial that asks for nothing at all, hence one byte of memory).
        {"cpu": exp.cpus, "gpu": exp.gpus} if exp.workers == 1 else {"cpu": 0, "memory": 1},
    )
    if resume and tune.Tuner.can_restore(str(exp.ray_dir)):
        tuner = tune.Tuner.restore(str(exp.ray_dir), trainable, resume_unfinished=True, resume_errored=retry_failed)
    else:  # a new sweep, or one killed before Ray saved its state: finished trials return at once
        if exp.sequential:  # no grid: the searcher hands out each point's seeds as the analysis asks
            from b6lab.sweep.seed_searcher import SeedSearcher

            space, search = {}, {"search_alg": SeedSearcher(exp, {t.key: str(t.run_dir) for t in trials}),
                                 "num_samples": -1}
        else:
            space = ({axis.key: tune.grid_search(list(axis.values)) for axis in exp.grid}
                     | {SEED_KEY: tune.grid_search(exp.seeds)})
            search = {}
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                **search, metric=exp.metric, mode="min", scheduler=_scheduler(exp, trials),
                max_concurrent_trials=exp.max_concurrent,
                # A new worker process per trial costs seconds of imports, so reuse them; but not with a
                # scheduler: a stopped trial still saves its checkpoint, and Ray gives up on reusing a
                # worker that is busy for more than 2 seconds (and with it, on the next trial).
                reuse_actors=exp.scheduler is None,
                trial_name_creator=TrialNames(names), trial_dirname_creator=TrialNames(names),
            ),
            run_config=tune.RunConfig(
                name=exp.ray_dir.name, storage_path=str(exp.ray_dir.parent), verbose=0,
                failure_config=tune.FailureConfig(max_failures=exp.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the last one is all a restart needs
                callbacks=[SweepProgress(names, run_dirs, len(trials), quiet)]
                + ([TrainTrialEnds(run_dirs, exp.scheduler and exp.scheduler["name"])] if exp.workers > 1 else []),
            ),
        )
    with tune_errors_silenced(quiet):
        return tuner.fit()


# Where Tune logs "Trials did not complete: [...]" as an ERROR at the end of a sweep with a failed
# trial; the sweep's own lines have said which trial failed and why.
TUNE_LOGGER = "ray.tune.tune"


@contextlib.contextmanager
def tune_errors_silenced(quiet: bool):
    """Under --quiet, none of Tune's end-of-sweep log lines (its logger's level restored after)."""
    tune_logger = logging.getLogger(TUNE_LOGGER)
    level = tune_logger.level
    if quiet:
        tune_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tune_logger.setLevel(level)


def count_unfinished(exp: Experiment) -> int:
    """Trials an interrupted sweep left for --resume, as the state that --resume restores says.
    (The ResultGrid can't tell: Ray marks the trials it stops on an interrupt as terminated.)"""
    from ray.tune import ExperimentAnalysis

    return sum(trial.status not in ("TERMINATED", "ERROR") for trial in ExperimentAnalysis(str(exp.ray_dir)).trials)


def _scheduler(exp: Experiment, trials: list[Trial]):
    if exp.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    options = {k: v for k, v in exp.scheduler.items() if k != "name"}
    options.setdefault("time_attr", "step")
    # By default the longest trial's length, in the unit of time_attr (steps or tokens).
    longest = max(t.max_steps if options["time_attr"] == "step" else t.tokens for t in trials)
    options.setdefault("max_t", longest)
    options.setdefault("grace_period", max(1, math.ceil(longest / 10)))
    if options["grace_period"] > options["max_t"]:
        raise UsageError(f"scheduler.grace_period {options['grace_period']} is past max_t {options['max_t']} "
                         f"({options['time_attr']}s) in {exp.file}")
    return ASHAScheduler(**options)
