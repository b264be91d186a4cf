"""Built-in LR schedules: each is `factory(max_steps, **options)` -> step -> multiplier of the peak lr.

Warmup is linear from lr/warmup at step 0 to the full lr at step `warmup`; it can be given as a
number of steps or as a fraction of the run (`warmup_ratio`), and 0 turns it off.
"""

from __future__ import annotations

import math

import b6lab
from b6lab.errors import ConfigError


def warmup_length(max_steps: int, warmup_steps: int | None, warmup_ratio: float) -> int:
    if warmup_steps is None:
        if not 0.0 <= warmup_ratio < 1.0:
            raise ConfigError(f"must be in [0, 1), got {warmup_ratio}", key="schedule.warmup_ratio")
        return int(round(warmup_ratio * max_steps))
    if not 0 <= warmup_steps <= max_steps:
        raise ConfigError(f"must be between 0 and train.max_steps={max_steps}, got {warmup_steps}", key="schedule.warmup_steps")
    return warmup_steps


def cosine(max_steps: int, *, warmup_steps: int | None = None, warmup_ratio: float = 0.05, min_lr_ratio: float = 0.1):
    """Linear warmup, then cosine decay to min_lr_ratio * lr at max_steps."""
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"must be in [0, 1], got {min_lr_ratio}", key="schedule.min_lr_ratio")
    warmup = warmup_length(max_steps, warmup_steps, warmup_ratio)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def constant(max_steps: int, *, warmup_steps: int | None = None, warmup_ratio: float = 0.0):
    """Linear warmup, then the peak lr until the end."""
    warmup = warmup_length(max_steps, warmup_steps, warmup_ratio)
    return lambda step: (step + 1) / warmup if step < warmup else 1.0


DECAY_SHAPES = {
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "sqrt": lambda progress: 1.0 - math.sqrt(progress),  # 1 - sqrt (Hagele et al. 2024): the best of these there
}


def wsd(
    max_steps: int, *, warmup_steps: int | None = None, warmup_ratio: float = 0.05, decay_ratio: float = 0.2,
    decay_shape: str = "sqrt", min_lr_ratio: float = 0.0,
):
    """Warmup-stable-decay (MiniCPM; Hagele et al. 2024): warmup, the peak lr, then a decay over the last decay_ratio."""
    if not 0.0 <= decay_ratio <= 1.0:
        raise ConfigError(f"must be in [0, 1], got {decay_ratio}", key="schedule.decay_ratio")
    if decay_shape not in DECAY_SHAPES:
        raise ConfigError(f"must be one of {', '.join(DECAY_SHAPES)}, got {decay_shape!r}", key="schedule.decay_shape")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"must be in [0, 1], got {min_lr_ratio}", key="schedule.min_lr_ratio")
    warmup = warmup_length(max_steps, warmup_steps, warmup_ratio)
    decay = int(round(decay_ratio * max_steps))
    decay_start = max(warmup, max_steps - decay)
    shape = DECAY_SHAPES[decay_shape]

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / max(1, max_steps - decay_start))
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape(progress)

    return multiplier


@b6lab.hookimpl
def b6lab_register_scheduler(register):
    register("cosine", cosine)
    register("constant", constant)
    register("wsd", wsd)
