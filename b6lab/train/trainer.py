"""The trainer that `b6lab train` runs, and that every trial of a sweep runs.

Setup builds every part from its plugin; the loop takes optimizer steps of grad_accum_steps
micro-batches each, logs every log_interval, evaluates (and keeps the best checkpoint) every
eval_interval, and writes a resumable checkpoint every checkpoint_interval and at the end.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
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
from b6lab.config import RunConfig, dump_config
from b6lab.data.packing import TrainBatches, validation_batches
from b6lab.errors import UsageError
from b6lab.train import checkpoint, diagnostics, hardware, provenance
from b6lab.train.checkpoint import TOKENIZER_FILE
from b6lab.train.records import MetricsFile, Progress, WandbRun, write_json

# Called with every eval record and the checkpoint folder written with it (or None): Ray Tune's hook.
EvalCallback = Callable[[dict, "Path | None"], None]


class Diverged(Exception):
    pass


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: Path, *, resume: bool = False, on_eval: EvalCallback | None = None,
                 fault_injector: Callable[[int, int], None] | None = None, say: Callable[[str], None] = print):
        self.cfg, self.out_dir, self.on_eval = cfg, Path(out_dir), on_eval
        self.fault_injector, self.say = fault_injector, say
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir = self.out_dir / "checkpoints"
        resume_from = checkpoint.find(self.ckpt_dir / "last") if resume else None
        if resume and resume_from is None:
            say(f"no checkpoint in {self.ckpt_dir / 'last'}: starting from step 0")
        saved = checkpoint.load(resume_from) if resume_from else None
        self._setup(saved)

    # -----------------------------------------------------------------------------------------
    # Setup

    def _setup(self, saved) -> None:
        cfg = self.cfg
        _seed_everything(cfg.train.seed)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.source = parts.build_source(cfg.data)
        self.tokenizer = parts.build_tokenizer(cfg.data, self.source)
        model_cfg = parts.resolve_vocab(cfg.model, self.tokenizer)
        self.plan = hardware.plan(replace(cfg, model=model_cfg), _approx_params(model_cfg))
        state = saved[1] if saved else None
        if state:  # an out-of-memory retreat before the crash keeps its smaller micro-batch
            self.plan.batch_size, self.plan.grad_accum_steps = state["batch_size"], state["grad_accum_steps"]
        self.device = torch.device(self.plan.device)
        compute_dtype = self.plan.dtype
        context = AttentionContext(self.device, compute_dtype, model_cfg.head_dim, model_cfg.dropout)
        model_cfg = replace(model_cfg, gradient_checkpointing=self.plan.gradient_checkpointing)
        self.model_cfg = model_cfg
        self.model, self.attention = parts.build_model(model_cfg, context)
        self.model.to(self.device)
        self.optimizer = parts.build_optimizer(cfg.optim, self.model)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.schedule = parts.build_schedule(cfg.schedule, cfg.train.max_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.plan.precision == "fp16")
        self.autocast = (
            torch.autocast(self.device.type, dtype=compute_dtype) if self.plan.precision != "fp32" else contextlib.nullcontext()
        )
        self.step, self.tokens, self.best_val, self.last_val, self.train_seconds = 0, 0, math.inf, None, 0.0
        self.best_bpb, self.last_bpb, self.grad_norm = math.inf, None, None
        self.wandb_id, self._data_before_step = None, None
        if saved:
            self._restore(*saved)
        self.batches = TrainBatches(
            self.source, self.tokenizer, seq_len=cfg.seq_len, batch_size=self.plan.batch_size,
            shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.train.seed, num_workers=cfg.data.num_workers,
            prefetch_factor=cfg.data.prefetch_factor, pin_memory=self.device.type == "cuda",
            state=state["data"] if state else None,
        )
        # eval_steps effective batches, in micro-batches: the same sequences whatever the accumulation.
        self.val_batches = validation_batches(
            self.source, self.tokenizer, seq_len=cfg.seq_len, batch_size=cfg.train.batch_size,
            max_batches=cfg.train.eval_steps * cfg.train.grad_accum_steps,
        )
        self.token_bytes = token_byte_lengths(self.tokenizer).to(self.device)
        self.step_model = torch.compile(self.model) if self.plan.compile else self.model
        self.params = self.model.num_params()
        self.record = self._record()
        dump_config(cfg, self.out_dir / "config.yaml", self.record)

    def _restore(self, model_state, state, _config) -> None:
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens, self.best_val = state["step"], state["tokens"], state["best_val_loss"]
        self.last_val, self.train_seconds = state.get("last_val_loss"), state["train_seconds"]
        self.best_bpb, self.last_bpb = state.get("best_val_bpb", math.inf), state.get("last_val_bpb")
        self.wandb_id = state.get("wandb_id")
        checkpoint.restore_rng(state["rng"])

    def _record(self) -> dict:
        """What config.yaml records beside the config: versions, plugin sources, automatic choices."""
        chosen = {
            "attention": (self.cfg.model.attention, self.attention), "norm": (self.cfg.model.norm, None),
            "optimizer": (self.cfg.optim.name, None), "scheduler": (self.cfg.schedule.name, None),
            "dataset": (self.cfg.data.source, None), "tokenizer": (self.cfg.data.tokenizer, None),
        }
        plugins = {}
        for kind, (name, resolved) in chosen.items():
            reg = registry.get(kind, name)
            plugins[kind] = {"name": name, "source": reg.source, "version": reg.version}
            if resolved and resolved != name:
                plugins[kind]["chose"] = resolved
        git = provenance.b6lab_git()
        return {
            "b6lab_version": b6lab.__version__,
            **({"b6lab_git": git} if git else {}),
            "torch_version": str(torch.__version__),
            "plugins": plugins,
            "resolved": {"vocab_size": self.model_cfg.vocab_size, "attention": self.attention, **self.plan.record()},
            "params": self.params,
        }

    # -----------------------------------------------------------------------------------------
    # The loop

    def run(self) -> dict:
        cfg, train = self.cfg, self.cfg.train
        resuming = self.step > 0
        self.metrics = MetricsFile(self.out_dir / "metrics.jsonl", resume_step=self.step if resuming else None)
        self.wandb = None
        if self.cfg.logging.wandb.enabled:
            self.wandb = WandbRun(cfg.logging.wandb, self.out_dir, cfg.to_dict() | {"run": self.record}, self.wandb_id)
            self.wandb_id = self.wandb.id
        self._announce(resuming)
        progress = Progress(cfg.logging.progress, train.max_steps, self.step, self.out_dir.name, self.say)
        status, reason = "completed", None
        start_wall, start_seconds = time.perf_counter(), self.train_seconds
        try:
            self._loop(progress)
        except Diverged as exc:
            status, reason = "diverged", str(exc)
        except KeyboardInterrupt:
            status, reason = "failed", f"interrupted at step {self.step}; `b6lab train --resume` continues from the last checkpoint"
            raise
        except BaseException as exc:
            status, reason = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            progress.close()
            self.batches.close()
            summary = self._finish(status, reason, start_seconds + time.perf_counter() - start_wall)
        return summary

    def _loop(self, progress: Progress) -> None:
        train = self.cfg.train
        checkpoint_interval = train.checkpoint_interval or train.eval_interval
        initial_rms = self._residual_rms() if self.step == 0 else None
        window_start, window_tokens = time.perf_counter(), 0
        loss_sum, loss_count = torch.zeros((), device=self.device), 0
        while self.step < train.max_steps:
            multiplier = self.schedule(self.step)
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * multiplier
            loss, grad_norm = self.train_step()
            self.grad_norm = float(grad_norm)
            if initial_rms is not None:  # the first step's gradient was taken at the initial weights
                self._log_block_diagnostics(initial_rms)
                initial_rms = None
            self.step += 1
            step_tokens = self.plan.batch_size * self.plan.grad_accum_steps * self.cfg.seq_len
            self.tokens += step_tokens
            window_tokens += step_tokens
            loss_sum += loss
            loss_count += 1
            last = self.step == train.max_steps
            if self.step % train.log_interval == 0 or last:
                elapsed = time.perf_counter() - window_start
                self.train_seconds += elapsed
                mean_loss = (loss_sum / loss_count).item()
                if not math.isfinite(mean_loss):
                    raise Diverged(f"the training loss became {mean_loss} by step {self.step}")
                record = {
                    "step": self.step, "tokens": self.tokens, "loss": mean_loss, "lr": self.optimizer.param_groups[0]["lr"],
                    "tokens_per_sec": window_tokens / elapsed, "grad_norm": float(grad_norm),
                    "micro_batch": self.plan.batch_size, **_memory(self.device),
                }
                self._log(record)
                progress.update(0, loss=mean_loss, lr=record["lr"], tok_s=record["tokens_per_sec"])
                window_start, window_tokens = time.perf_counter(), 0
                loss_sum, loss_count = torch.zeros((), device=self.device), 0
            progress.update(1)
            if self.step % train.eval_interval == 0 or last:
                self._evaluate_and_keep_best(progress, save_last=self.step % checkpoint_interval == 0 or last)
                window_start = time.perf_counter()  # evaluation time is not training time
            elif self.step % checkpoint_interval == 0:
                self._save("last")

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over grad_accum_steps micro-batches: (mean loss, grad norm), as tensors.

        On out-of-memory it halves the micro-batch, doubles accumulation and tries again."""
        while True:
            try:
                return self._accumulate_and_step()
            except torch.OutOfMemoryError:
                self._retreat_from_oom()

    def _accumulate_and_step(self):
        # Where the data stood before this step: what a checkpoint written mid-step must record.
        self._data_before_step = self.batches.state_dict()
        self.optimizer.zero_grad(set_to_none=True)
        accum = self.plan.grad_accum_steps
        total = torch.zeros((), device=self.device)
        for _ in range(accum):
            x, y = next(self.batches)
            if self.fault_injector:
                self.fault_injector(self.step, x.size(0))
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            docs = Documents.from_tokens(x, self.tokenizer.eos_id) if self.cfg.data.doc_masking else None
            with self.autocast:
                loss = self.step_model(x, y, docs=docs) / accum
            self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip or math.inf  # inf: measure the norm, clip nothing
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._data_before_step = None
        return total, grad_norm

    def _retreat_from_oom(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        old = self.plan.batch_size
        if not self.cfg.train.adaptive_batch or old == 1:
            why = "train.adaptive_batch is off" if old > 1 else "even a micro-batch of 1 does not fit"
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

    @torch.no_grad()
    def evaluate(self) -> dict:
        """{"val_loss": nats per target token, "val_bpb": bits per UTF-8 byte those targets spell}."""
        self.model.eval()
        nats, targets, n_bytes = (torch.zeros((), dtype=torch.float64, device=self.device) for _ in range(3))
        for x, y in self.val_batches:
            x, y = x.to(self.device), y.to(self.device)
            docs = Documents.from_tokens(x, self.tokenizer.eos_id) if self.cfg.data.doc_masking else None
            with self.autocast:
                mean_loss = self.step_model(x, y, docs=docs).float()
            counted = y != -1  # the loss is a mean over these; times their number, it is their sum
            nats += mean_loss * counted.sum()
            targets += counted.sum()
            n_bytes += self.token_bytes[y.clamp(min=0)][counted].sum()
        self.model.train()
        return {"val_loss": (nats / targets).item(), "val_bpb": bits_per_byte(nats.item(), int(n_bytes.item()))}

    def _residual_rms(self) -> list[float]:
        x = self.val_batches[0][0].to(self.device)
        docs = Documents.from_tokens(x, self.tokenizer.eos_id) if self.cfg.data.doc_masking else None
        return diagnostics.block_residual_rms(self.model, x, docs, self.autocast)

    def _log_block_diagnostics(self, residual_rms: list[float]) -> None:
        grad_norms = diagnostics.block_grad_norms(self.model, self.grad_norm, self.cfg.optim.grad_clip)
        self._log({"step": self.step, "tokens": self.tokens, "block_grad_norm": grad_norms,
                   "block_residual_rms": residual_rms})

    def _evaluate_and_keep_best(self, progress: Progress, save_last: bool) -> None:
        evaluated = self.evaluate()
        val_loss, val_bpb = evaluated["val_loss"], evaluated["val_bpb"]
        if not math.isfinite(val_loss):
            raise Diverged(f"the validation loss became {val_loss} at step {self.step}")
        improved = val_loss < self.best_val
        self.best_val, self.last_val = min(self.best_val, val_loss), val_loss
        self.best_bpb, self.last_bpb = min(self.best_bpb, val_bpb), val_bpb
        record = {"step": self.step, "tokens": self.tokens, "val_loss": val_loss, "best_val_loss": self.best_val,
                  "val_bpb": val_bpb, "best_val_bpb": self.best_bpb, **_peak_memory(self.device)}
        self._log(record)
        self._log_block_diagnostics(self._residual_rms())
        progress.write(f"step {self.step}: val loss {val_loss:.4f}" + (" (best)" if improved else ""))
        saved = None
        if improved:
            saved = self._save("best")
        if save_last:
            saved = self._save("last") or saved
        if self.on_eval:
            self.on_eval(record, saved)

    def _save(self, name: str) -> Path | None:
        folder = self.ckpt_dir / name
        needed = checkpoint.size_estimate(self.model, self.optimizer) * 1.2
        free = shutil.disk_usage(self.out_dir).free
        if free < needed:
            self.say(f"warning: {free / 2**20:.0f} MB free, a checkpoint needs ~{needed / 2**20:.0f} MB: "
                     f"skipped checkpoints/{name}; the previous one stays")
            return None
        state = {
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
            "tokens": self.tokens, "best_val_loss": self.best_val, "last_val_loss": self.last_val,
            "best_val_bpb": self.best_bpb, "last_val_bpb": self.last_bpb,
            "train_seconds": self.train_seconds, "rng": checkpoint.rng_state(),
            "data": self._data_before_step or self.batches.state_dict(),
            "batch_size": self.plan.batch_size, "grad_accum_steps": self.plan.grad_accum_steps, "wandb_id": self.wandb_id,
        }
        checkpoint.save(folder, model_state=self.model.state_dict(), state=state, config=self.cfg.to_dict() | {"run": self.record},
                        extra={TOKENIZER_FILE: self.tokenizer})
        return folder

    def _log(self, record: dict) -> None:
        self.metrics.write(record)
        if self.wandb:
            self.wandb.log(record)

    def _announce(self, resuming: bool) -> None:
        cfg = self.cfg
        what = f"resuming at step {self.step}" if resuming else "training"
        self.say(f"b6lab: {what} {cfg.name}: {self.params / 1e6:.2f}M params, {self.model_cfg.n_layers} layers x "
                 f"{self.model_cfg.d_model}, attention {self.attention}, norm {cfg.model.norm}, optimizer {cfg.optim.name}")
        self.say(f"  device: {self.plan.describe()}")
        for note in self.plan.notes:
            self.say(f"  {note}")
        self.say(f"  data: {cfg.data.source} ({self.source.fingerprint}), tokenizer {cfg.data.tokenizer} "
                 f"({self.tokenizer.vocab_size} ids), {cfg.seq_len} tokens per sequence")
        self.say(f"  writing to {self.out_dir}")

    def _finish(self, status: str, reason: str | None, train_seconds: float) -> dict:
        summary = {
            "status": status, "reason": reason, "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "final_val_loss": self.last_val, "best_val_bpb": self.best_bpb if math.isfinite(self.best_bpb) else None,
            "final_val_bpb": self.last_bpb, "steps": self.step, "tokens": self.tokens, "params": self.params,
            "wall_seconds": round(train_seconds, 3), "tokens_per_sec": self.tokens / train_seconds if train_seconds else None,
            "attention": self.attention, "precision": self.plan.precision, "device": self.plan.device,
        }
        if status != "completed" and self.step > 0 and status != "diverged":
            self._save("last")  # an interrupted or crashed run resumes from where it stopped
        write_json(self.out_dir / "summary.json", summary)
        self.metrics.close()
        if self.wandb:
            self.wandb.finish(summary, self.ckpt_dir / "best")
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


def _peak_memory(device: torch.device) -> dict:
    """Peak memory since the last eval (CUDA: max allocated; CPU: the process's peak RSS)."""
    if device.type == "cuda":
        peak = hardware.peak_memory_mb(device)
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.empty_cache()
        record = {"peak_mem_mb": peak}
        with contextlib.suppress(Exception):
            record["gpu_util"] = torch.cuda.utilization(device)
        return record
    return {"peak_rss_mb": hardware.peak_memory_mb(device)}
