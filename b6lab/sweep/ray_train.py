"""A sweep trial across several workers: Ray Train's TorchTrainer run from inside the Tune trial.

Ray's Train-inside-Tune pattern (Ray Train V2): the Tune trial is a small driver that starts a
TorchTrainer of `resources.workers` workers (each with the sweep's cpu/gpu), and Ray Train makes
their process group (gloo on CPUs, NCCL on GPUs). Every worker runs the same Trainer as
`torchrun -m b6lab train`; rank 0 writes the trial's run folder and its checkpoints. Workers
report with `ray.train.report` (every rank must call it), and Ray's TuneReportCallback hands rank
0's figures to Tune, where schedulers and the results table read them.

A retried or resumed trial goes on from checkpoints/last in its run folder, which every worker
reads: on a cluster the sweep's `storage` must be a folder every node sees (a shared file system).
"""

from __future__ import annotations

import os
from pathlib import Path


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
