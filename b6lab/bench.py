"""Training throughput of the real trainer step: tokens/s, MFU, step time and peak memory.

`measure` builds the same Trainer that `b6lab train` builds (same config layering, same data
stream, same `train_step`), takes `warmup` optimizer steps, then times `steps` more. Nothing
else is timed: building the model, training or loading the tokenizer and the first batches of
the data stream all happen before. When the step is compiled (train.compile; by default on a
GPU) the compilation happens in the warm-up steps, which are timed apart and reported beside.

MFU (model FLOPs utilisation) = flops_per_token * tokens/s / peak, with nanoGPT's estimate of
the FLOPs (b6lab.model.flops_per_token) and a peak that is either given or measured here by a
matrix product in the run's compute dtype (`measure_peak_flops`), so that the figure says how
close the step comes to what this machine's matmuls reach, not to a datasheet.

`compare_attention` runs every attention backend that can run here on the same workload, each
in a fresh process (so that each one's peak memory is its own), and adds the largest difference
of each backend's output from `eager` on the same inputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from b6lab import cpu_bf16
from b6lab.config import RunConfig

# The workloads of a matmul probe: big enough to reach the machine's peak, small enough to be quick.
PROBE_SIZE = {"cpu": 1024, "cuda": 8192}


def measure_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a square matrix product in `dtype` on `device`: the best of a few timed repeats.
    Where the model's bf16 matmuls run on the fp32 GEMM (cpu_bf16.py), that is the peak probed."""
    if cpu_bf16.emulated(dtype, device):
        dtype = torch.float32
    n = PROBE_SIZE.get(device.type, 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # first call: kernel selection, allocation
    _sync(device)
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        elapsed = time.perf_counter() - start
        spent += elapsed
        best = max(best, 4 * 2 * n**3 / elapsed)
    return best


def measure(cfg: RunConfig, *, steps: int = 10, warmup: int = 3, peak_tflops: float | None = None) -> dict:
    """Time `steps` trainer steps after `warmup` ones; the result is what `b6lab bench --json` prints."""
    from b6lab.model import flops_per_token
    from b6lab.train import hardware
    from b6lab.train import distributed

    with throwaway_trainer(cfg) as trainer:
        device = trainer.device
        if trainer.plan.compile:
            warmup = max(warmup, 1)  # compilation happens in the first step: never time it
        warmup_times = [_timed_step(trainer) for _ in range(warmup)]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step_times = [_timed_step(trainer) for _ in range(steps)]
        memory = hardware.peak_memory(device)  # CUDA: during the timed steps

    plan = trainer.plan
    tokens_per_step = plan.batch_size * plan.grad_accum_steps * cfg.seq_len
    tokens_per_sec = tokens_per_step * len(step_times) / sum(step_times) if step_times else 0.0
    if peak_tflops:
        peak, peak_source = peak_tflops * 1e12, "given"
    else:
        peak, peak_source = measure_peak_flops(device, plan.dtype), f"measured ({plan.precision} matmul)"
        if cpu_bf16.emulated(plan.dtype, device):
            peak_source = "measured (fp32 matmul, the GEMM bf16 matmuls run on here)"
    flops = flops_per_token(trainer.model_cfg, trainer.params, cfg.seq_len)
    result = {
        "tokens_per_sec": tokens_per_sec,  # per process under torchrun
        "processes": distributed.current().world_size,
        "total_tokens_per_sec": distributed.sum_over_ranks(tokens_per_sec),
        "mfu": flops * tokens_per_sec / peak,
        "peak_mem_mb": memory.get("peak_mem_mb", memory.get("peak_rss_mb")),
        "params": trainer.params,
        "step_time_s": statistics.median(step_times) if step_times else None,
        "step_times_s": [round(t, 4) for t in step_times],
        "peak_tflops": peak / 1e12,
        "peak_source": peak_source,
        "flops_per_token": flops,
        "tokens_per_step": tokens_per_step,
        "steps": steps,
        "warmup": warmup,
        "warmup_s": sum(warmup_times),
        "first_step_s": warmup_times[0] if warmup_times else None,
        "compile": plan.compile,
        "attention": trainer.attention,
        "precision": plan.precision,
        "device": f"{plan.device} ({plan.device_name})",
        "micro_batch": plan.batch_size,
        "grad_accum_steps": plan.grad_accum_steps,
        "seq_len": cfg.seq_len,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "threads": torch.get_num_threads(),
        "memory_kind": "cuda max allocated" if device.type == "cuda" else "peak RSS",
    }
    if "children_mb" in memory:
        result["children_mb"] = memory["children_mb"]
    return result


@contextlib.contextmanager
def throwaway_trainer(cfg: RunConfig):
    """The Trainer `b6lab train` would build for `cfg`, in a temporary run folder removed afterwards,
    printing nothing, without progress bars or wandb: for timing its steps."""
    from b6lab.train.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="b6lab-bench-") as tmp:
        cfg = replace(cfg, train=replace(cfg.train, out_dir=tmp), logging=replace(cfg.logging, progress=False))
        cfg.logging.wandb = replace(cfg.logging.wandb, enabled=False)
        with Trainer(cfg, Path(tmp) / "run", say=lambda message: None) as trainer:
            yield trainer


def _timed_step(trainer) -> float:
    start = time.perf_counter()
    loss, _ = trainer.take_step()
    loss.item()  # waits for the GPU; on a CPU the step is already done
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Every attention backend, side by side


def compare_attention(overrides: list[str], *, preset: str | None, config: str | None, steps: int, warmup: int,
                      peak_tflops: float | None, isolate: bool | None = None, say=print) -> dict:
    """One row per registered attention backend: its throughput and peak memory on the workload,
    its largest |output - eager|, or why it cannot run here; with the peak every row's MFU is
    against (measured here in the run's precision unless given), as {"peak_tflops", "backends"}.

    `isolate` runs each backend in a fresh process; by default on a CPU, where a process's peak
    RSS never goes down, and not on CUDA, where the peak is reset between backends."""
    from b6lab import parts, registry
    from b6lab.attention import AttentionContext
    from b6lab.config import load_config
    from b6lab.train import hardware

    cfg = load_config(config, preset=preset, overrides=overrides)
    device = hardware.resolve_device(cfg.train.device)
    precision = hardware.resolve_precision(cfg.train.precision, device)
    context = AttentionContext(device, hardware.DTYPES[precision], cfg.model.head_dim, cfg.model.dropout)
    if isolate is None:
        isolate = device.type != "cuda"
    if peak_tflops is None:  # one peak for every row, so that their MFUs compare
        peak_tflops = measure_peak_flops(device, context.dtype) / 1e12
    say(f"b6lab bench: every attention backend on the same workload (peak {peak_tflops:.3g} TFLOP/s)")
    eager_out, inputs = None, _attention_inputs(cfg, device)
    rows = []
    for name, reg in sorted(registry.registrations("attention").items(), key=lambda item: item[0] != "eager"):
        reason = reg.why_unavailable(**context.as_kwargs())
        if reason:
            rows.append({"attention": name, "unavailable": reason})
            continue
        if name == "auto":  # an alias: it runs one of the others, measured in its own row
            rows.append({"attention": name, "chooses": getattr(reg.build(context), "chosen", "?")})
            continue
        say(f"  {name}: timing ...")
        row = {"attention": name}
        try:
            out = _attention_output(reg.build(context, **parts.plugin_kwargs(cfg.model, reg)), inputs, context.dtype)
            if eager_out is None:
                eager_out = out  # eager goes first
            row["max_abs_diff"] = (out - eager_out).abs().max().item()
            with_backend = overrides + [f"model.attention={name}"]
            if isolate:
                row.update(_bench_in_subprocess(config, preset, with_backend, steps, warmup, peak_tflops))
            else:
                one = load_config(config, preset=preset, overrides=with_backend)
                row.update(measure(one, steps=steps, warmup=warmup, peak_tflops=peak_tflops))
                if device.type != "cuda":
                    row["memory_kind"] = "peak RSS of one process shared by every backend so far"
        except Exception as exc:  # one broken backend (a third-party plugin, say) is a row, not the end
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        rows.append(row)
    return {"peak_tflops": peak_tflops, "backends": rows}


def _attention_inputs(cfg: RunConfig, device: torch.device) -> dict:
    """Queries, keys and values of the model's shape, with three packed documents per row."""
    from b6lab.attention import Documents

    generator = torch.Generator().manual_seed(0)
    batch, heads, seq, head_dim = 2, cfg.model.n_heads, cfg.seq_len, cfg.model.head_dim
    q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=generator).to(device) for _ in range(3))
    cuts = torch.tensor([seq // 3, seq // 2])
    doc_ids = (torch.arange(seq)[None, :, None] >= cuts).sum(-1).expand(batch, seq).contiguous()
    return {"q": q, "k": k, "v": v, "docs": Documents(doc_ids.to(device)), "scale": cfg.model.softmax_scale or head_dim**-0.5}


def _attention_output(backend, inputs: dict, dtype: torch.dtype) -> torch.Tensor:
    """The backend's causal output, without and with document boundaries, in fp32 (computed in `dtype`)."""
    q, k, v = (inputs[key].to(dtype) for key in "qkv")
    with torch.no_grad():
        plain = backend(q, k, v, causal=True, docs=None, dropout_p=0.0, scale=inputs["scale"])
        packed = backend(q, k, v, causal=True, docs=inputs["docs"], dropout_p=0.0, scale=inputs["scale"])
    return torch.stack([plain, packed]).float()


def _bench_in_subprocess(config, preset, overrides, steps, warmup, peak_tflops) -> dict:
    command = [sys.executable, "-m", "b6lab.cli", "bench", "--json", "--steps", str(steps), "--warmup", str(warmup)]
    command += [config] if config else []
    command += ["--preset", preset] if preset else []
    command += ["--peak-tflops", str(peak_tflops)] if peak_tflops else []
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"b6lab bench exited with status {done.returncode}: {last}")
    return json.loads(lines[-1])
