"""The trainer that `b6lab train` runs, and that every trial of a sweep runs.

Setup builds every part from its plugin; the loop takes optimizer steps (`train_step`: one
screen of plain PyTorch) of grad_accum_steps micro-batches each, logs every log_interval,
evaluates (and keeps the best checkpoint) every eval_interval, and writes a resumable checkpoint
every checkpoint_interval and at the end.

A Trainer's life: built inside its RunFolder (locked, tidied, the checkpoint to resume read),
run once, closed (the folder left: run() closes at its end, `with Trainer(...) as trainer:` for
code that only takes steps). Its `state_dict()` is what a checkpoint restores besides the
weights and optimizer; how the run ended is an Outcome, decided where it ends.

What a stop may cost, and why it costs nothing: the run folder is locked for the run's life;
Ctrl-C or SIGTERM finishes the current step, saves and writes summary.json (a second one
abandons the step, saving the state of the step's start); nothing non-finite is ever saved;
a full disk ends the run with the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import b6lab
from b6lab import parts, registry
from b6lab.attention import AttentionContext, Documents
from b6lab.bpb import bits_per_byte, token_byte_lengths
from b6lab.config import RunConfig, dump_config, plugin_choices
from b6lab.data.packing import TrainBatches, validation_batches
from b6lab.errors import DataError, UsageError, exception_line
from b6lab.progress import Progress, progress_mode
from b6lab.train import checkpoint, diagnostics, distributed, hardware, provenance
from b6lab.train.checkpoint import TOKENIZER_FILE, DiskFull, Resume
from b6lab.train.records import MetricsFile, Outcome, disk_full, disk_full_line, is_disk_full
from b6lab.train.run_folder import RunFolder
from b6lab.train.trackers import RunLog, check_wandb_login

CPU_EVAL_MICRO_BATCHES = 8  # see val_batches in Trainer._setup

# Called with every eval record and the checkpoint folder written with it (or None): Ray Tune's hook.
EvalCallback = Callable[[dict, "Path | None"], None]


class Diverged(Exception):
    """A loss or the weights became non-finite: the run ends diverged, naming the first such step."""

    def __init__(self, step: int, what: str):
        super().__init__(f"{what} at step {step}")
        self.outcome = Outcome("diverged", str(self), step, say_where_to_continue=True)


def train_step(model, batches, optimizer, scaler, accum: int, clip: float | None,
               autocast=contextlib.nullcontext(), no_sync=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `accum` micro-batches (x, y, docs) from `batches`: (mean loss, grad norm),
    as tensors (reading them waits for the device). Data-parallel, `no_sync()` keeps the gradients of
    all but the last micro-batch local (one all-reduce per step)."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for i in range(accum):
        x, y, docs = next(batches)
        with no_sync() if i < accum - 1 else contextlib.nullcontext():
            with autocast:
                loss = model(x, y, docs=docs) / accum
            scaler.scale(loss).backward()
        total = total + loss.detach()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip or math.inf)  # inf: measure, clip nothing
    scaler.step(optimizer)
    scaler.update()
    return total, grad_norm


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: Path, *, resume: bool = False, on_eval: EvalCallback | None = None,
                 say: Callable[[str], None] = print):
        self.cfg, self.out_dir, self.on_eval, self.say = cfg, Path(out_dir), on_eval, say
        check_wandb_login(cfg.logging.wandb)  # a missing login fails now, not after the data is built
        self.ranks = distributed.current()
        # One writer per run folder: the main process locks it (until close(), or the kernel if killed)
        # and tidies what a crash mid-save left; the other ranks enter it once that is done.
        self.folder = RunFolder(self.out_dir, main=self.ranks.is_main)
        self.ckpt_dir = self.folder.checkpoints
        try:
            with contextlib.ExitStack() as stack:  # the folder is left here if the set-up fails, else by close()
                distributed.main_first(lambda: stack.enter_context(self.folder))
                self._setup(self.folder.resume(say) if resume else None)
                stack.callback(self.batches.close)
                self._close = stack.pop_all()
        except OSError as exc:
            if is_disk_full(exc):  # config.yaml, the tokenizer cache: nothing was trained yet
                raise DiskFull(disk_full_line(exc, self.out_dir)) from None
            raise

    def close(self) -> None:
        """Stop the data workers and leave the run folder (its lock released); run() ends with it."""
        self._close.close()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -----------------------------------------------------------------------------------------
    # Setup

    def _setup(self, resume: Resume | None) -> None:
        cfg = self.cfg
        _seed_everything(cfg.train.seed)
        self.source = parts.build_source(cfg.data)
        self.tokenizer = distributed.main_first(lambda: parts.build_tokenizer(cfg.data, self.source))
        model_cfg = parts.resolve_vocab(cfg.model, self.tokenizer)
        self.plan = hardware.plan(replace(cfg, model=model_cfg), _approx_params(model_cfg),
                                  resumed_threads=resume.threads if resume else None)
        if self.plan.threads:
            torch.set_num_threads(self.plan.threads)
        if self.plan.device == "cpu":
            hardware.keep_freed_memory()
        if resume:
            resume.check(self.cfg.to_dict(), self.say)
            # an out-of-memory retreat before the crash keeps its smaller micro-batch
            self.plan.batch_size = distributed.resumed_micro_batch(resume.state)
            self.plan.grad_accum_steps = resume.state["grad_accum_steps"]
        self.device = torch.device(self.plan.device)
        compute_dtype = self.plan.dtype
        context = AttentionContext(self.device, compute_dtype, model_cfg.head_dim, model_cfg.dropout)
        model_cfg = replace(model_cfg, gradient_checkpointing=self.plan.gradient_checkpointing)
        self.model_cfg = model_cfg
        self.model, self.attention = parts.build_model(model_cfg, context, z_loss=cfg.train.z_loss)
        self.model.to(self.device)
        self.parallel_model = distributed.wrap(self.model, cfg.train.parallel, self.device)
        self.optimizer = parts.build_optimizer(cfg.optim, self.model)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.schedule = parts.build_schedule(cfg.schedule, cfg.train.max_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.plan.precision == "fp16")
        self.autocast = (
            torch.autocast(self.device.type, dtype=compute_dtype) if self.plan.precision != "fp32" else contextlib.nullcontext()
        )
        self.step, self.tokens, self.best_val, self.last_val, self.train_seconds = 0, 0, math.inf, None, 0.0
        self.wandb_id, self.stopped_by, self.outcome = None, None, None
        self._window: list[torch.Tensor] = []  # each step's loss since the last logged one
        # Where the current step started (data position, RNG): what a stop in its middle saves. None
        # once the optimizer updates the weights, until the step's bookkeeping is done.
        self._boundary: dict | None = None
        self.optimizer.register_step_pre_hook(lambda *_: setattr(self, "_boundary", None))
        self.best_bpb, self.last_bpb, self.grad_norm = math.inf, None, None
        if resume:
            self._restore(resume)
        self.batches = TrainBatches(
            self.source, self.tokenizer, seq_len=cfg.seq_len, batch_size=self.plan.batch_size,
            shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.train.seed, num_workers=cfg.data.num_workers,
            prefetch_factor=cfg.data.prefetch_factor, pin_memory=self.device.type == "cuda",
            state=resume.state["data"] if resume else None, rank=self.ranks.rank, ranks=self.ranks.world_size,
        )
        # eval_steps global batches: the same sequences whatever the accumulation and the number of
        # processes (each evaluates its share), also after a resume on another number of processes
        # (the plan's micro-batch is then the checkpoint's global batch shared out). A CPU evaluates
        # CPU_EVAL_MICRO_BATCHES micro-batches per forward: with no gradients to keep, memory allows
        # it, and at CPU model sizes each operation's fixed cost, not its arithmetic, is what small
        # batches pay for. A GPU keeps the micro-batch its memory plan chose.
        val = validation_batches(self.source, self.tokenizer, seq_len=cfg.seq_len, batch_size=self.plan.batch_size,
                                 max_batches=cfg.train.eval_steps * self.plan.grad_accum_steps * self.ranks.world_size)
        merged = CPU_EVAL_MICRO_BATCHES if self.device.type == "cpu" else 1
        self.val_batches = distributed.validation_share(val, cfg.train.parallel, merged)
        self.token_bytes = token_byte_lengths(self.tokenizer).to(self.device)
        # Per-block diagnostics read whole gradients and run the blocks outside the model's forward:
        # under FSDP2 both are sharded, so they are recorded alone or with DDP only.
        self.diagnose = self.ranks.world_size == 1 or cfg.train.parallel != "fsdp"
        self.step_model = torch.compile(self.parallel_model) if self.plan.compile else self.parallel_model
        self.params = self.model.num_params()
        self.record = self._record()
        if self.ranks.is_main:
            dump_config(cfg, self.out_dir / "config.yaml", self.record)

    def _restore(self, resume: Resume) -> None:
        # The optimizer's settings are this run's config (a --set optim.weight_decay takes effect);
        # its state (momenta, step counts, and the group entries it names in group_state_keys) is the checkpoint's.
        kept = ("params", *getattr(self.optimizer, "group_state_keys", ()))
        settings = [{k: v for k, v in group.items() if k not in kept} for group in self.optimizer.param_groups]
        self._optimizer_mode("train")  # loading sharded state may step the fresh optimizer (to create its state)
        try:
            distributed.load_checkpoint_state(self.model, self.optimizer, resume, self.cfg.train.parallel)
        except RuntimeError as exc:
            raise DataError(f"the checkpoint in {self.ckpt_dir} does not fit this run's model "
                            f"({exception_line(exc, 200)})") from None
        for group, chosen in zip(self.optimizer.param_groups, settings):
            group.update(chosen)
        self.load_state_dict(resume.state)
        self._optimizer_mode("train")  # a checkpoint holds a schedule-free optimizer's eval weights

    def state_dict(self) -> dict:
        """The trainer's state between steps (mid-step: of the step's start), as a checkpoint's state.pt
        holds it (torchtitan's Stateful: the weights and the optimizer state are their own state dicts,
        saved beside it). Every process calls it: the loss window is averaged over them, so that every
        rank resumes with the same window, whose mean is then the one the uninterrupted run logs."""
        window = distributed.sum_tensor_over_ranks(torch.stack(self._window)) / self.ranks.world_size \
            if self._window else []
        position = self._boundary or self._position()
        return {
            "scaler": self.scaler.state_dict(), "step": self.step,
            "tokens": self.tokens, "best_val_loss": self.best_val, "last_val_loss": self.last_val,
            "best_val_bpb": self.best_bpb, "last_val_bpb": self.last_bpb,
            "train_seconds": self.train_seconds, "rng": position["rng"], "data": position["data"],
            "loss_window": [loss.item() for loss in window],
            "batch_size": self.plan.batch_size, "grad_accum_steps": self.plan.grad_accum_steps, "wandb_id": self.wandb_id,
            "world_size": self.ranks.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """state_dict()'s counters, loss window and RNG back; its data position and micro-batch are read
        by the set-up, which builds the data stream and the plan from them."""
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens, self.train_seconds = state["step"], state["tokens"], state["train_seconds"]
        self.best_val, self.last_val = state["best_val_loss"], state["last_val_loss"]
        self.best_bpb, self.last_bpb = state["best_val_bpb"], state["last_val_bpb"]
        self.wandb_id = state["wandb_id"]
        self._window = [torch.tensor(v, device=self.device) for v in state["loss_window"]]
        checkpoint.restore_rng(state["rng"])

    def _record(self) -> dict:
        """What config.yaml records beside the config: versions, plugin sources, automatic choices."""
        plugins = {}
        for _, kind, name in plugin_choices(self.cfg):
            reg = registry.get(kind, name)
            plugins[kind] = {"name": name, "source": reg.source, "version": reg.version}
        if self.attention != self.cfg.model.attention:
            plugins["attention"]["chose"] = self.attention
        git = provenance.b6lab_git()
        return {
            "b6lab_version": b6lab.__version__,
            **({"b6lab_git": git} if git else {}),
            "torch_version": str(torch.__version__),
            "plugins": plugins,
            "resolved": {"vocab_size": self.model_cfg.vocab_size, "attention": self.attention, **self.plan.record()},
            "params": self.params,
            "processes": self.ranks.world_size,
        }

    # -----------------------------------------------------------------------------------------
    # The loop

    def run(self) -> dict:
        """Train to train.max_steps (or a stop), write summary.json, close; returns the summary. A crash,
        an interrupt or a sweep's stop is raised again once the summary is written."""
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> dict:
        cfg, train = self.cfg, self.cfg.train
        resuming = self.step > 0
        main = self.ranks.is_main  # only the main process writes the run folder and prints
        if main:
            metrics = MetricsFile(self.out_dir / "metrics.jsonl", resume_step=self.step if resuming else None)
            self.run_log = RunLog(metrics, cfg.logging, self.out_dir, cfg.to_dict() | {"run": self.record},
                                  self.step if resuming else None, self.wandb_id)
            self.wandb_id = self.run_log.wandb_id
        self._announce(resuming)
        progress = Progress(train.max_steps, initial=self.step, description=self.out_dir.name, say=self.say,
                            mode=progress_mode(cfg.logging.progress and main, cfg.logging.quiet),
                            every_seconds=cfg.logging.plain_interval_seconds)
        outcome, save_last = Outcome("completed"), False
        start_wall, start_seconds = time.perf_counter(), self.train_seconds
        try:
            with self._stopping_on_signals():
                self._loop(progress)
            if self.stopped_by and self.step < train.max_steps:
                outcome = Outcome("failed", f"stopped by {self.stopped_by} at step {self.step}", self.step,
                                  say_where_to_continue=True)
                save_last = True
        except Diverged as exc:
            outcome = exc.outcome
        except BaseException as exc:  # Ctrl-C twice, a crash, Ray stopping a trial: save if the state is whole
            if isinstance(exc, DiskFull) or is_disk_full(exc):  # a checkpoint, metrics.jsonl, TensorBoard's files
                outcome = disk_full(exc, self.out_dir, self.step)
            else:
                # An error may say how the run ended (a sweep's StoppedEarly); an interrupt says where to go
                # on; a crash's reason is its error alone (what the sweep tables show).
                outcome = getattr(exc, "outcome", None) or Outcome("failed", f"{type(exc).__name__}: {exc}", self.step)
                if isinstance(exc, KeyboardInterrupt):
                    outcome = Outcome("failed", f"interrupted (in step {self.step + 1})", self.step,
                                      say_where_to_continue=True)
                # Data-parallel, a crash may be another process gone (killed): the periodic checkpoint stands.
                save_last = self._boundary is not None and self.ranks.world_size == 1
                raise
        finally:
            progress.close()
            self.batches.close()
            summary = self._finish(outcome, start_seconds + time.perf_counter() - start_wall, save_last)
        return summary

    def _loop(self, progress: Progress) -> None:
        train = self.cfg.train
        checkpoint_interval = train.checkpoint_interval or train.eval_interval
        initial_rms = self._residual_rms() if self.step == 0 else None
        window_start, window_tokens = time.perf_counter(), 0
        while self.step < train.max_steps and not self.stopped_by:
            self._boundary = self._position()
            multiplier = self.schedule(self.step)
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * multiplier
            loss, self.grad_norm = self.take_step()
            self._boundary = None
            if initial_rms is not None:  # the first step's gradient was taken at the initial weights
                self._log_block_diagnostics(initial_rms)
                initial_rms = None
            self.step += 1
            step_tokens = self.plan.batch_size * self.plan.grad_accum_steps * self.ranks.world_size * self.cfg.seq_len
            self.tokens += step_tokens
            window_tokens += step_tokens
            self._window.append(loss)
            last = self.step == train.max_steps
            if self.step % train.log_interval == 0 or last:
                elapsed = time.perf_counter() - window_start
                self.train_seconds += elapsed
                # The mean over every rank's window first: a non-finite loss anywhere reaches every rank.
                mean_loss = distributed.mean_over_ranks(torch.stack(self._window).sum(), len(self._window))
                if not math.isfinite(mean_loss):
                    self._check_finite(weights=False)  # names the first non-finite step of this rank's window
                    raise Diverged(self.step, f"the training loss became {mean_loss}")
                record = {
                    "step": self.step, "tokens": self.tokens, "loss": mean_loss, "lr": self.optimizer.param_groups[0]["lr"],
                    "tokens_per_sec": window_tokens / elapsed, "grad_norm": distributed.full_value(self.grad_norm),
                    "micro_batch": self.plan.batch_size, **_memory(self.device),
                }
                self._log(record)
                progress.update(0, loss=mean_loss, lr=record["lr"], tok_s=record["tokens_per_sec"])
                window_start, window_tokens = time.perf_counter(), 0
                self._window = []
            progress.update(1)
            if self.step % train.eval_interval == 0 or last:
                self._evaluate_and_keep_best(progress, save_last=self.step % checkpoint_interval == 0 or last)
                window_start = time.perf_counter()  # evaluation time is not training time
            elif self.step % checkpoint_interval == 0:
                self._save("last")

    @contextlib.contextmanager
    def _stopping_on_signals(self):
        """Ctrl-C (SIGINT) and SIGTERM stop the run after the current step; a second one abandons the step."""
        if threading.current_thread() is not threading.main_thread():
            yield  # a Ray trial's thread: Ray stops it through tune.report
            return

        def stop(signum, _frame):
            if self.stopped_by:
                raise KeyboardInterrupt
            self.stopped_by = signal.Signals(signum).name
            self.say(f"\n{self.stopped_by}: finishing the current step, then saving; send it again to stop at once")

        previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def take_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """train_step, retreating from out-of-memory: half the micro-batch, twice the accumulation, and
        the sequences already drawn for the step trained on (re-cut) rather than skipped."""
        drawn: list[tuple[torch.Tensor, torch.Tensor]] = []
        while True:
            try:
                return train_step(self.step_model, self._micro_batches(drawn), self.optimizer, self.scaler,
                                  self.plan.grad_accum_steps, self.cfg.optim.grad_clip, self.autocast,
                                  no_sync=lambda: distributed.gradient_sync(self.parallel_model, sync=False))
            except torch.OutOfMemoryError:
                self._retreat_from_oom()

    def _micro_batches(self, drawn: list):
        """The step's micro-batches on the device: those drawn by an attempt that ran out of memory
        (re-cut to the current micro-batch size), then new ones from the stream (added to `drawn`)."""
        if drawn:
            x, y = torch.cat([x for x, _ in drawn]), torch.cat([y for _, y in drawn])
            drawn[:] = zip(x.split(self.plan.batch_size), y.split(self.plan.batch_size))
        for i in itertools.count():
            if i == len(drawn):
                drawn.append(next(self.batches))
            x, y = drawn[i]
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield x, y, Documents.from_tokens(x, self.tokenizer.eos_id) if self.cfg.data.doc_masking else None

    def _retreat_from_oom(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        old = self.plan.batch_size
        # Data-parallel processes share one stream of global batches: one cannot shrink its share alone.
        alone = self.ranks.world_size == 1
        if not self.cfg.train.adaptive_batch or old == 1 or not alone:
            why = "even a micro-batch of 1 does not fit" if old == 1 else (
                "train.adaptive_batch is off" if alone else "a data-parallel run keeps its micro-batch")
            raise UsageError(
                f"out of memory at micro-batch {old} ({why}); try model.gradient_checkpointing=true, a shorter "
                "data.seq_len or a smaller model"
            )
        self.plan.batch_size, self.plan.grad_accum_steps = old // 2, self.plan.grad_accum_steps * 2
        self.batches.set_batch_size(self.plan.batch_size)
        message = (f"out of memory at step {self.step}: micro-batch {old} -> {self.plan.batch_size}, "
                   f"accumulation {self.plan.grad_accum_steps} (the effective batch is unchanged)")
        self.say(message)
        self._log({"step": self.step, "tokens": self.tokens, "event": "oom", "micro_batch": self.plan.batch_size,
                   "grad_accum_steps": self.plan.grad_accum_steps})

    def _check_finite(self, weights: bool = True) -> None:
        """Diverged, naming the first step whose loss was not finite (or now, for the weights):
        checked at every log and before every save, so no checkpoint holds a diverged state."""
        if self._window:
            losses = torch.stack(self._window)
            bad = (~torch.isfinite(losses)).nonzero()
            if len(bad):
                first = int(bad[0])
                raise Diverged(self.step - len(self._window) + 1 + first,
                               f"the training loss became {losses[first].item()}")
        if weights and not distributed.all_finite(list(self.model.parameters())):
            raise Diverged(self.step, "the weights became non-finite")

    @torch.no_grad()
    def evaluate(self) -> dict:
        """{"val_loss": nats per target token, "val_bpb": bits per UTF-8 byte those targets spell}."""
        self.model.eval()
        self._optimizer_mode("eval")
        nats, targets, n_bytes = (torch.zeros((), dtype=torch.float64, device=self.device) for _ in range(3))
        for x, y, counts in self.val_batches:  # this process's share (all of them, alone)
            x, y = x.to(self.device), y.to(self.device)
            docs = Documents.from_tokens(x, self.tokenizer.eos_id) if self.cfg.data.doc_masking else None
            with self.autocast:
                mean_loss = self.step_model(x, y, docs=docs).float()
            if counts:
                counted = y != -1  # the loss is a mean over these; times their number, it is their sum
                nats += mean_loss * counted.sum()
                targets += counted.sum()
                n_bytes += self.token_bytes[y.clamp(min=0)][counted].sum()
        self.model.train()
        self._optimizer_mode("train")
        nats, targets, n_bytes = distributed.sum_tensor_over_ranks(torch.stack([nats, targets, n_bytes])).tolist()
        return {"val_loss": nats / targets, "val_bpb": bits_per_byte(nats, int(n_bytes))}

    def _residual_rms(self) -> list[float] | None:
        if not self.diagnose:
            return None
        x = self.val_batches[0][0][: self.plan.batch_size].to(self.device)  # one micro-batch
        docs = Documents.from_tokens(x, self.tokenizer.eos_id) if self.cfg.data.doc_masking else None
        return diagnostics.block_residual_rms(self.model, x, docs, self.autocast)

    def _log_block_diagnostics(self, residual_rms: list[float] | None) -> None:
        if residual_rms is None:
            return
        grad_norms = diagnostics.block_grad_norms(self.model, distributed.full_value(self.grad_norm),
                                                  self.cfg.optim.grad_clip)
        self._log({"step": self.step, "tokens": self.tokens, "block_grad_norm": grad_norms,
                   "block_residual_rms": residual_rms})

    def _evaluate_and_keep_best(self, progress: Progress, save_last: bool) -> None:
        evaluated = self.evaluate()
        val_loss, val_bpb = evaluated["val_loss"], evaluated["val_bpb"]
        if not math.isfinite(val_loss):
            raise Diverged(self.step, f"the validation loss became {val_loss}")
        improved = val_loss < self.best_val
        self.best_val, self.last_val = min(self.best_val, val_loss), val_loss
        self.best_bpb, self.last_bpb = min(self.best_bpb, val_bpb), val_bpb
        record = {"step": self.step, "tokens": self.tokens, "val_loss": val_loss, "best_val_loss": self.best_val,
                  "val_bpb": val_bpb, "best_val_bpb": self.best_bpb, **hardware.peak_memory(self.device, reset=True)}
        self._log(record)
        self._log_block_diagnostics(self._residual_rms())
        progress.write(f"step {self.step}: val loss {val_loss:.4f}" + (" (best)" if improved else ""))
        saved = None
        if improved:
            saved = self._save("best")
        if save_last:
            saved = self._save("last") or saved
        if self.on_eval:
            self._boundary = self._position()  # the step is done: a stop raised from on_eval may save
            self.on_eval(record, saved)

    def _position(self) -> dict:
        return {"data": self.batches.state_dict(), "rng": checkpoint.rng_state()}

    def _optimizer_mode(self, mode: str) -> None:
        """Schedule-free optimizers take gradients at one point (y) and evaluate at another (x, an
        average): their train()/eval() move the weights between the two (as transformers' Trainer
        calls them). Evaluation and checkpoints see x; the steps, y."""
        switch = getattr(self.optimizer, mode, None)
        if callable(switch):
            switch()

    def _save(self, name: str) -> Path | None:
        self._optimizer_mode("eval")  # the checkpoint holds the weights evaluation sees
        try:
            return self._write_checkpoint(name)
        finally:
            self._optimizer_mode("train")

    def _write_checkpoint(self, name: str) -> Path | None:
        """Write checkpoints/<name> of the state between steps (mid-step: of the step's start): the main
        rank writes it (under FSDP2 of several processes, every rank its shards and the main one the
        rest). Raises Diverged rather than save a non-finite state, DiskFull when the disk runs out."""
        self._check_finite()
        folder, sharded = self.ckpt_dir / name, not distributed.saves_alone(self.cfg.train.parallel)
        state = self.state_dict()  # on every rank: it averages the loss window over them
        if self.ranks.is_main or sharded:
            if sharded:  # FSDP2 over several processes: each rank writes its shards
                tensors = {"shards": distributed.sharded_state(self.model, self.optimizer)}
            else:
                tensors = {"model_state": self.model.state_dict()}
                state["optimizer"] = self.optimizer.state_dict()
            checkpoint.save(folder, state=state, config=self.cfg.to_dict() | {"run": self.record},
                            extra={TOKENIZER_FILE: self.tokenizer},
                            needed_bytes=checkpoint.size_estimate(self.model, self.optimizer) * 1.2, **tensors)
        self.folder.saved[name] = self.step
        return folder if self.ranks.is_main else None

    def _log(self, record: dict) -> None:
        if self.ranks.is_main:
            self.run_log.write(record)

    def _announce(self, resuming: bool) -> None:
        cfg = self.cfg
        what = f"resuming at step {self.step}" if resuming else "training"
        self.say(f"b6lab: {what} {cfg.name}: {self.params / 1e6:.2f}M params, {self.model_cfg.n_layers} layers x "
                 f"{self.model_cfg.d_model}, attention {self.attention}, norm {cfg.model.norm}, optimizer {cfg.optim.name}")
        if resuming and self.step >= cfg.train.max_steps:
            self.say(f"  nothing to train: the run is at step {self.step} and train.max_steps is "
                     f"{cfg.train.max_steps}; raise train.max_steps to go on")
        if cfg.logging.quiet:
            return
        self.say(f"  device: {self.plan.describe()}")
        if self.ranks.world_size > 1:
            self.say("  " + distributed.describe(self.ranks, cfg.train.parallel, self.plan.batch_size,
                                                self.plan.grad_accum_steps, cfg.seq_len))
        for note in self.plan.notes:
            self.say(f"  {note}")
        if callable(getattr(self.optimizer, "eval", None)) and cfg.schedule.name != "constant":
            self.say(f"  note: optimizer {cfg.optim.name} is schedule-free (no decay needed; warmup is optim.warmup_steps): "
                     f"schedule.name={cfg.schedule.name} scales its lr on top; schedule.name=constant is how it is meant to run")
        self.say(f"  data: {cfg.data.source} ({self.source.fingerprint}), tokenizer {cfg.data.tokenizer} "
                 f"({self.tokenizer.vocab_size} ids), {cfg.seq_len} tokens per sequence")
        self.say(f"  writing to {self.out_dir}")

    def _finish(self, outcome: Outcome, train_seconds: float, save_last: bool) -> dict:
        # Under FSDP the main process cannot save alone after a crash: the other ranks hold shards.
        if (save_last and self.step > 0 and self.folder.saved.get("last") != self.step
                and distributed.saves_alone(self.cfg.train.parallel)):
            try:
                self._save("last")  # a stopped or crashed run resumes from where it stopped
            except Diverged as exc:
                outcome = exc.outcome
            except DiskFull as exc:
                outcome = disk_full(exc, self.out_dir, self.step)
        self.outcome = outcome
        summary = {
            "status": outcome.status, "reason": self.folder.reason(outcome),
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "final_val_loss": self.last_val, "best_val_bpb": self.best_bpb if math.isfinite(self.best_bpb) else None,
            "final_val_bpb": self.last_bpb, "steps": self.step, "tokens": self.tokens, "params": self.params,
            "wall_seconds": round(train_seconds, 3), "tokens_per_sec": self.tokens / train_seconds if train_seconds else None,
            "attention": self.attention, "precision": self.plan.precision, "device": self.plan.device,
            "checkpoints": dict(self.folder.saved),  # name -> the step it holds
        }
        if outcome.status == "diverged":
            summary["diverged_at_step"] = outcome.step
        if self.ranks.is_main:  # metrics.jsonl, TensorBoard and wandb closed, then summary.json
            self.folder.finish(summary, close_logs=lambda: self.run_log.close(summary, self.ckpt_dir / "best"))
        return summary


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _approx_params(cfg) -> int:
    """Parameters of a model config without building it (for memory planning)."""
    per_layer = 4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.ff_dim
    embeddings = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    return cfg.n_layers * per_layer + embeddings


def _memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"mem_mb": torch.cuda.memory_allocated(device) / 2**20}
    return {}
