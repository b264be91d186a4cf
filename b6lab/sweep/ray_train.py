"""A sweep trial across several workers: Ray Train's TorchTrainer run from inside the Tune trial.

Ray's Train-inside-Tune pattern (Ray Train V2): the Tune trial is a small driver that starts a
TorchTrainer of `resources.workers` workers (each with the sweep's cpu/gpu), and Ray Train makes
their process group (gloo on CPUs, NCCL on GPUs). Every worker runs the same Trainer as
`torchrun -m b6lab train`; rank 0 writes the trial's run folder and its checkpoints. Workers
report with `ray.train.report` (every rank must call it), and Ray's TuneReportCallback hands rank
0's figures to Tune, where schedulers and the results table read them.

A retried or resumed trial goes on from checkpoints/last in its run folder, which every worker
reads: on a cluster the sweep's `storage` must be a folder every node sees (a shared file system).

When Tune stops such a trial (an ASHA decision, which also comes at a trial's last evaluation),
it ends the trial's process, and with it Ray Train's controller and workers, mid-step: nothing of
theirs can record the stop or release what they reserved. `TrainTrialEnds`, a callback of the
sweep's driver, does both.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ray import tune

from b6lab.sweep.tune_runner import stopped_by_tune
from b6lab.train.records import read_summary, write_json


def run_on_workers(spec: dict) -> None:
    """Called in the Tune trial: train the trial `spec` (tune_runner.trial_spec) on spec["workers"] workers."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resources = {"CPU": spec["cpus"]} | ({"GPU": spec["gpus"]} if spec["gpus"] else {})
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=spec["workers"], use_gpu=spec["gpus"] > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=spec["name"], storage_path=spec["train_storage"], callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def train_worker(loop_config: dict) -> None:
    """One Ray Train worker: the Trainer, in the process group Ray Train has set up."""
    import ray.train

    from b6lab.config import config_from_dict
    from b6lab.train import checkpoint, distributed, hardware
    from b6lab.train.trainer import Trainer

    spec = loop_config["spec"]
    if os.path.isdir(spec["cwd"]):
        os.chdir(spec["cwd"])
    cfg = config_from_dict(spec["config"])
    hardware.share_cores(spec["threads"])
    run_dir = Path(spec["run_dir"])

    def report(record: dict, saved: Path | None) -> None:
        metrics = {k: record[k] for k in ("step", "tokens", "val_loss", "best_val_loss")}
        ray.train.report(metrics | {"max_steps": spec["max_steps"], "trial": spec["name"]})

    resume = checkpoint.find(run_dir / "checkpoints" / "last") is not None
    main = distributed.current().is_main
    with open(run_dir / "train.log", "a") if main else open(os.devnull, "w") as log:
        Trainer(cfg, run_dir, resume=resume, on_eval=report, say=lambda line: print(line, file=log, flush=True)).run()


class TrainTrialEnds(tune.Callback):
    """The sweep driver's side of multi-worker trials that Tune stopped (see the module's docstring)."""

    CHECK_SECONDS = 2.0

    def __init__(self, run_dirs: dict[str, str], scheduler: str | None):
        self.run_dirs, self.scheduler, self.last_check = run_dirs, scheduler, 0.0

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        run_dir = Path(self.run_dirs.get(result.get("trial", ""), ""))
        summary = read_summary(run_dir)
        if not result.get("max_steps") or summary.get("status") in ("completed", "diverged", "skipped", "stopped"):
            return
        # Tune ended the trial at its last report, before its workers wrote their summary.
        step = result.get("step", 0)
        outcome = stopped_by_tune(step, result["max_steps"], self.scheduler)
        figures = {"steps": step, "tokens": result.get("tokens"), "final_val_loss": result.get("val_loss"),
                   "best_val_loss": result.get("best_val_loss")}
        write_json(run_dir / "summary.json", summary | figures | {"status": outcome.status, "reason": outcome.reason})

    def on_step_begin(self, iteration, trials, **info):
        if self.last_check is not None and time.monotonic() - self.last_check > self.CHECK_SECONDS:
            self.last_check = time.monotonic()
            try:
                release_orphaned_placement_groups()
            except Exception as exc:  # noqa: BLE001 - Ray's internals moved: say so once, let the sweep go on
                self.last_check = None
                print(f"warning: cannot release the workers of stopped trials ({type(exc).__name__}: {exc}); "
                      "a multi-worker trial after an ASHA stop may wait for them", flush=True)


def release_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creator actor is dead: the workers' reservations of
    Ray Train controllers that died with their Tune trial. (Ray Train's own cleaner asks Ray's State
    API, which needs the dashboard; without it they would hold their CPUs and GPUs until the sweep
    ends, and the next multi-worker trial would wait for them forever.) Returns how many it removed."""
    import ray
    from ray._private.state import state
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job, removed = ray.get_runtime_context().get_job_id(), 0
    for entry in state._connect_and_get_accessor().get_placement_group_table():
        group = PlacementGroupTableData.FromString(entry)
        created_by_an_actor = not ray.ActorID(group.creator_actor_id).is_nil()  # not Tune's own, the driver's
        if (created_by_an_actor and group.creator_actor_dead and not group.is_detached
                and group.creator_job_id.hex() == job and group.state != PlacementGroupTableData.REMOVED):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(group.placement_group_id)))
            removed += 1
    return removed
