"""Hardware-aware choices: device, precision, micro-batch and gradient checkpointing.

With train.device=auto and train.precision=auto (the defaults), the detected device decides:
bf16 on GPUs that have it (Ampere and newer), fp16 with a gradient scaler on older GPUs, fp32
on CPUs (bf16 where the CPU has AMX or AVX512-BF16). On a GPU the model's estimated memory
decides whether gradient checkpointing is needed and how large a micro-batch fits; accumulation
grows so the effective batch stays the same. train.compile=auto compiles on GPUs only. The plan
is printed at start and stored in config.yaml.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

from b6lab.config import RunConfig
from b6lab.cpu_bf16 import cpu_has_bf16_instructions, cpu_info
from b6lab.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Plan:
    device: str  # "cpu", "cuda:0", ...
    device_name: str
    precision: str  # fp32 | bf16 | fp16
    batch_size: int
    grad_accum_steps: int
    gradient_checkpointing: bool
    compile: bool = False
    memory_gb: float | None = None
    threads: int | None = None  # torch's CPU threads (None: torch's default)
    notes: tuple[str, ...] = ()

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "notes"} | {"notes": list(self.notes)}

    def describe(self) -> str:
        memory = f", {self.memory_gb:.0f} GB" if self.memory_gb else ""
        checkpointing = ", gradient checkpointing" if self.gradient_checkpointing else ""
        compiled = ", torch.compile" if self.compile else ""
        threads = f", {self.threads} thread{'s' * (self.threads > 1)}" if self.threads and self.device == "cpu" else ""
        return (
            f"{self.device} ({self.device_name}{memory}{threads}), {self.precision}, micro-batch {self.batch_size} "
            f"x {self.grad_accum_steps} accumulation{checkpointing}{compiled}"
        )


def peak_memory(device: torch.device, reset: bool = False) -> dict:
    """Peak memory since the last reset, as the trainer logs it at each eval and bench reports it.
    CUDA: `peak_mem_mb`, the most memory tensors held (`reset` starts a new peak), and `gpu_util`.
    CPU: `peak_rss_mb`, the process's peak RSS (it never goes down), and `children_mb`, what its
    child processes (data-loading workers, torch.compile's compiler pool) hold of their own (their
    unique set size, not shared with this process), where psutil can tell."""
    if device.type == "cuda":
        record = {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20}
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.empty_cache()
        with contextlib.suppress(Exception):
            record["gpu_util"] = torch.cuda.utilization(device)
        return record
    record = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with contextlib.suppress(Exception):
        children = psutil.Process().children(recursive=True)
        if children:
            record["children_mb"] = sum(child.memory_full_info().uss for child in children) / 2**20
    return record


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("asks for a CUDA GPU but torch sees none (use train.device=auto or cpu)", key="train.device")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise ConfigError("fp16 needs a GPU (use bf16 or fp32 on a CPU)", key="train.precision")
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU has no bf16 (use fp16 or auto)", key="train.precision")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16_instructions() else "fp32"


def plan(cfg: RunConfig, num_params: int, resumed_threads: int | None = None) -> Plan:
    """How the run uses this machine. `resumed_threads`: what `threads: auto` chose when a resumed
    run started (see cpu_threads)."""
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    batch, accum, checkpointing = cfg.train.batch_size, cfg.train.grad_accum_steps, cfg.model.gradient_checkpointing
    # Compiling pays on a GPU (gpt2-medium on an H100: 38% -> 54% MFU, for under a minute of
    # compiling once); on the CPU measured it made steps slower (benchmarks/README.md).
    compiled = cfg.train.compile if cfg.train.compile != "auto" else device.type == "cuda"
    notes: list[str] = []
    if device.type == "cpu":
        threads, why = cpu_threads(cfg, resumed_threads)
        return Plan(str(device), _cpu_name(), precision, batch, accum, checkpointing, compiled,
                    threads=threads, notes=(why,) if why else ())
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    total_gb = props.total_memory / 2**30
    automatic = cfg.train.device == "auto" and cfg.train.precision == "auto"
    if automatic:
        budget = 0.85 * props.total_memory - model_state_bytes(cfg, num_params)
        batch, accum, checkpointing, notes = fit_micro_batch(cfg, precision, budget, f"{total_gb:.0f} GB")
    threads = cfg.train.threads if isinstance(cfg.train.threads, int) else None  # on a GPU they only feed it
    return Plan(f"cuda:{index}", props.name, precision, batch, accum, checkpointing, compiled, total_gb, tuple(notes), threads)


def cpu_threads(cfg: RunConfig, resumed_threads: int | None = None) -> tuple[int | None, str | None]:
    """train.threads as torch will use it, and why when `auto` chose it (or a warning, when a number
    asks for more threads than this process has cores).

    auto: the cores this process may use (its CPU affinity and cgroup quota, and no more than
    OMP_NUM_THREADS: what a user, torchrun's share per process or a sweep trial's `cpu` sets), less
    the cores other processes keep busy now (sampled over 0.1 s: on a loaded machine more threads
    than free cores wait on each other, and a step can take several times longer). The model's size
    does not enter: on free cores even the 64-wide tiny model ran faster on two threads than on one
    (benchmarks/README.md, "Threads and precision"). A resumed run keeps the count auto chose when it
    started (`resumed_threads`, from its checkpoint's record) unless train.threads now names one."""
    if cfg.train.threads != "auto":
        threads, usable = cfg.train.threads, _usable_cores()
        if threads and threads > usable:  # the user's to choose, but said: it is rarely what they meant
            return threads, f"threads: {threads}, more than the {usable} cores this process may use: they will wait on each other"
        return threads, None
    if resumed_threads:  # auto again would follow today's load: another count can change sums' order, and exact resume
        return resumed_threads, f"threads: {resumed_threads} (auto, as when the run started; set train.threads to change it)"
    allowed = min(_usable_cores(), int(os.environ.get("OMP_NUM_THREADS") or 1_000_000))
    busy = _busy_cores()
    free = max(1, min(allowed, round(_total_cores() - busy)))
    reason = f"{allowed} usable" + (f", {busy:.1f} busy with other work" if free < allowed else "")
    return free, f"threads: {free} (auto: {reason})"


def share_cores(threads: int) -> None:
    """This process may use `threads` cores (a sweep trial's share): torch's default until the run's
    plan says otherwise, and the most train.threads=auto takes."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


# mallopt(3) parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
FREED_MEMORY_KEPT = 1 << 30  # blocks up to 1 GiB come from the heap, and freed ones stay there


def keep_freed_memory() -> bool:
    """On glibc, keep the memory a step frees for the next step instead of handing it back.

    glibc's malloc takes blocks over its mmap threshold (128 KiB, raised as blocks are freed, to
    32 MiB at most) straight from the OS and returns them on free, and trims the heap's free top
    as well: a step's activations and gradients then arrive as fresh pages at every step, each
    page a fault the kernel zeroes (benchmarks/step_profile.py counts them; the figures are in
    benchmarks/README.md, "Where the time still went"). CUDA's caching allocator keeps freed
    blocks the same way; the cost is that the process's resident memory stays at its peak. Left
    alone where the user tuned malloc (MALLOC_* environment variables, GLIBC_TUNABLES) or the C
    library is not glibc. One of the fast paths (fast_paths.py)."""
    if platform.libc_ver()[0] != "glibc" or "GLIBC_TUNABLES" in os.environ:
        return False
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, FREED_MEMORY_KEPT) and libc.mallopt(M_TRIM_THRESHOLD, FREED_MEMORY_KEPT))
    except (OSError, AttributeError):
        return False


def _usable_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    return cores


def _total_cores() -> int:
    return os.cpu_count() or 1


def _busy_cores() -> float:
    """Cores busy with any process's work over the next 0.1 s (psutil reads /proc/stat twice)."""
    return psutil.cpu_percent(interval=0.1) / 100 * _total_cores()


def fit_micro_batch(cfg: RunConfig, precision: str, budget: float, memory: str = "memory") -> tuple[int, int, bool, list[str]]:
    """Turn on gradient checkpointing, then halve the micro-batch (doubling accumulation), until the
    activations fit `budget` bytes. Returns (micro-batch, accumulation, checkpointing, notes)."""
    batch, accum, checkpointing = cfg.train.batch_size, cfg.train.grad_accum_steps, cfg.model.gradient_checkpointing
    notes = []
    if not checkpointing and batch * activation_bytes(cfg, precision, False) > budget:
        checkpointing = True
        notes.append("gradient checkpointing on: the micro-batch's activations would not fit")
    while batch > 1 and batch * activation_bytes(cfg, precision, checkpointing) > budget:
        batch, accum = batch // 2, accum * 2
    if batch != cfg.train.batch_size:
        notes.append(f"micro-batch {cfg.train.batch_size} -> {batch}, accumulation x{accum // cfg.train.grad_accum_steps} to fit {memory}")
    return batch, accum, checkpointing, notes


def model_state_bytes(cfg: RunConfig, num_params: int) -> float:
    """fp32 weights and gradients, plus the optimizer's state (AdamW two tensors, Lion one)."""
    states = 2 if cfg.optim.name == "adamw" else 1
    return num_params * 4 * (2 + states)


def activation_bytes(cfg: RunConfig, precision: str, checkpointing: bool) -> float:
    """Activation memory of one sequence, after Korthikanti et al. 2022 (flash attention: no S^2 term),
    plus the logits of the LM head in fp32."""
    S, d, L, V = cfg.seq_len, cfg.model.d_model, cfg.model.n_layers, cfg.model.vocab_size or 50304
    width = 2 if precision != "fp32" else 4
    per_layer = S * d * (34 if width == 2 else 68) * (1 + cfg.model.ff_dim / (4 * d)) / 2
    layers = L * (S * d * width if checkpointing else per_layer) + (per_layer if checkpointing else 0)
    return layers + S * V * (width + 8)


def _cpu_name() -> str:
    return cpu_info().get("model name") or platform.processor() or "CPU"
