"""Where a run's records go: metrics.jsonl always, and wandb and TensorBoard when enabled.

The trainer calls `RunLog.write(record)` with every record (a training log, an eval, the
per-block diagnostics, an out-of-memory event) and `RunLog.close(summary, best)` at the end;
each tracker gets the same figures under the same names. A list value (`block_grad_norm`,
`block_residual_rms`: one float per block, first block first) becomes one scalar per block,
`block_grad_norm/0`, `block_grad_norm/1`, ..., which wandb and TensorBoard both group into a
section of their own.

wandb is left to its own settings unless the config says otherwise, as HF Trainer and
Lightning do: `logging.wandb.mode`, `project` and `entity` default to None, which leaves
WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY (and WANDB_DIR) and then wandb's settings file in
charge; a key set in the config wins over them. The project falls back to "b6lab", not to
wandb's "uncategorized".

TensorBoard event files are written with tensorboardX (already installed with ray[tune];
`torch.utils.tensorboard` would need the `tensorboard` package and its grpcio, absl-py,
Markdown, Werkzeug and tensorboard-data-server) into `<run folder>/tensorboard/`.
"""

from __future__ import annotations

import os
from pathlib import Path

from b6lab.config import LoggingConfig, WandbConfig
from b6lab.errors import ConfigError
from b6lab.train.records import MetricsFile, is_disk_full

TENSORBOARD_DIR = "tensorboard"
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")
WANDB_WITHOUT_LOGIN = ("offline", "disabled", "dryrun")


def check_wandb_login(cfg: WandbConfig) -> None:
    """Before any data is built: wandb online with no API key is a user mistake, said in one line.

    Checks what wandb would use (WANDB_API_KEY, ~/.netrc, wandb's settings) without the network."""
    if not cfg.enabled:
        return
    env_mode = os.environ.get("WANDB_MODE")
    if cfg.mode is None and env_mode is not None and env_mode not in WANDB_MODES:
        raise ConfigError(f"WANDB_MODE={env_mode!r} is not a wandb mode; use online, offline or disabled",
                          key="logging.wandb.mode")
    import wandb

    mode = resolved_mode(cfg) or wandb.setup().settings.mode  # then wandb's settings file
    if mode in WANDB_WITHOUT_LOGIN:
        return
    # wandb reads WANDB_MODE once per process and its login check trusts that: tell it this run's mode.
    wandb.setup(wandb.Settings(mode=mode))
    try:
        logged_in = wandb.login(prompt=False, verify=False)
    except wandb.errors.Error as exc:  # a key in the wrong format
        raise ConfigError(f"wandb cannot use its API key: {exc}", key="logging.wandb") from None
    if not logged_in:
        raise ConfigError("wandb is online but has no API key: run `wandb login`, or set WANDB_MODE=offline "
                          "or logging.wandb.mode=offline to log without the network", key="logging.wandb.mode")


def resolved_mode(cfg: WandbConfig) -> str | None:
    """logging.wandb.mode, else WANDB_MODE as it is now (wandb's settings read it once per process)."""
    return cfg.mode or os.environ.get("WANDB_MODE") or None


def scalars(record: dict) -> dict:
    """The record's numbers, a list as one number per block (`key/0`, `key/1`, ...); step left out."""
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        if isinstance(value, (list, tuple)):
            out |= {f"{key}/{i}": v for i, v in enumerate(value) if _is_number(v)}
        elif _is_number(value):
            out[key] = value
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class WandbRun:
    """wandb logging; offline (WANDB_MODE or logging.wandb.mode) writes the run under the run folder."""

    def __init__(self, cfg: WandbConfig, out_dir: Path, config: dict, resume_id: str | None = None,
                 quiet: bool = False):
        import wandb

        self.wandb, self.cfg = wandb, cfg
        self.run = wandb.init(
            project=cfg.project or (None if os.environ.get("WANDB_PROJECT") else "b6lab"),
            entity=cfg.entity,  # None: WANDB_ENTITY, then the account's default
            mode=resolved_mode(cfg),  # None: wandb's settings
            name=cfg.name or Path(out_dir).name,
            dir=None if os.environ.get("WANDB_DIR") else str(out_dir),
            config=config,
            id=resume_id,
            resume="allow" if resume_id else None,
            # logging.quiet (--quiet): none of wandb's lines, its run summary block at the end included.
            settings=wandb.Settings(silent=True) if quiet else None,
        )

    @property
    def id(self) -> str:
        return self.run.id

    def log(self, record: dict) -> None:
        figures = scalars(record) | {k: v for k, v in record.items() if isinstance(v, str)}  # e.g. event: oom
        self.run.log(figures, step=record["step"])

    def finish(self, summary: dict, best_checkpoint: Path | None) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        if self.cfg.log_checkpoint and best_checkpoint is not None and best_checkpoint.exists():
            artifact = self.wandb.Artifact(f"{self.run.id}-best", type="model")
            artifact.add_dir(str(best_checkpoint))
            self.run.log_artifact(artifact)
        self.run.finish()


class TensorBoardRun:
    """Event files under <run folder>/tensorboard; a resumed run drops the events after its checkpoint."""

    def __init__(self, out_dir: Path, resume_step: int | None = None):
        from tensorboardX import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(logdir=str(Path(out_dir) / TENSORBOARD_DIR), purge_step=purge)
        self.failed: OSError | None = None
        self._keep_errors_of_the_writer_thread()

    def _keep_errors_of_the_writer_thread(self) -> None:
        """tensorboardX writes the event file on a thread of its own, where a full disk would only be
        a traceback (and the events after it lost unsaid): its writes' error is kept instead, and
        raised on the trainer's thread at the next record, as any full-disk write is."""
        events = self.writer._get_file_writer().event_writer._ev_writer  # what its thread calls
        path = events._file_name

        def kept(write):
            def call(*args):
                if self.failed:  # the file is not touched again (nor by tensorboardX's close at exit)
                    return None
                try:
                    return write(*args)
                except OSError as exc:
                    exc.filename = exc.filename or path
                    self.failed = self.failed or exc
            return call

        events.write_event, events.flush = kept(events.write_event), kept(events.flush)

    def log(self, record: dict) -> None:
        if self.failed:
            raise self.failed
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record["step"])

    def finish(self, summary: dict, best_checkpoint: Path | None) -> None:
        try:
            self.writer.close()
        except OSError as exc:  # the file's last flush, on this thread
            self.failed = self.failed or exc
        if self.failed:
            raise self.failed


class RunLog:
    """One call for the trainer: every record to metrics.jsonl and to each enabled tracker."""

    def __init__(self, metrics: MetricsFile, cfg: LoggingConfig, out_dir: Path, config: dict,
                 resume_step: int | None = None, wandb_id: str | None = None):
        self.metrics, self.trackers, self.wandb_id = metrics, [], wandb_id
        if cfg.wandb.enabled:
            wandb_run = WandbRun(cfg.wandb, out_dir, config, wandb_id, quiet=cfg.quiet)
            self.trackers.append(wandb_run)
            self.wandb_id = wandb_run.id
        if cfg.tensorboard:
            self.trackers.append(TensorBoardRun(out_dir, resume_step))

    def write(self, record: dict) -> None:
        self.metrics.write(record)
        for tracker in self.trackers:
            tracker.log(record)

    def close(self, summary: dict, best_checkpoint: Path | None) -> None:
        """Every file closed even when the disk is full (each keeps what it has written); the first
        full-disk error is raised after, for the trainer to say."""
        full = None
        for finish in (self.metrics.close, *(lambda t=t: t.finish(summary, best_checkpoint) for t in self.trackers)):
            try:
                finish()
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                full = full or exc
        if full:
            raise full


def tensorboard_command(folders) -> str | None:
    """`tensorboard --logdir ...` for those of `folders` (runs, or a sweep's trials/) that hold event files."""
    found = [Path(f) for f in folders if any(Path(f).glob(f"**/{TENSORBOARD_DIR}/events.out.tfevents.*"))]
    if len(found) <= 1:
        return f"tensorboard --logdir {found[0]}" if found else None
    return "tensorboard --logdir_spec " + ",".join(f"{f.name}:{f}" for f in found)
