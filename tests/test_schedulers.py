"""LR schedules at warmup start and end, the middle of the decay, and the end of the run."""

import math

import pytest

from b6lab import parts
from b6lab.config import load_config
from b6lab.errors import ConfigError


def schedule(*overrides, max_steps=1000):
    cfg = load_config(overrides=list(overrides) + [f"train.max_steps={max_steps}"])
    return parts.build_schedule(cfg.schedule, cfg.train.max_steps)


def test_cosine_warmup_middle_and_end():
    f = schedule("schedule.warmup_steps=100", "schedule.min_lr_ratio=0.1")
    assert f(0) == pytest.approx(1 / 100)  # warmup start
    assert f(49) == pytest.approx(0.5)
    assert f(99) == pytest.approx(1.0)  # warmup end
    assert f(100) == pytest.approx(1.0)  # decay starts at the peak
    assert f(550) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay: the midpoint
    assert f(1000) == pytest.approx(0.1)  # the end: min_lr_ratio
    values = [f(s) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_cosine_warmup_as_a_ratio_and_zero_warmup():
    f = schedule("schedule.warmup_ratio=0.1", max_steps=200)
    assert f(0) == pytest.approx(1 / 20) and f(19) == pytest.approx(1.0)
    g = schedule("schedule.warmup_steps=0", "schedule.min_lr_ratio=0.0", max_steps=200)
    assert g(0) == pytest.approx(1.0)
    assert g(100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert g(200) == pytest.approx(0.0)


def test_constant_with_warmup():
    f = schedule("schedule.name=constant", "schedule.warmup_steps=10")
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == f(500) == f(1000) == 1.0


def test_impossible_schedule_values_are_config_errors():
    with pytest.raises(ConfigError, match="schedule.warmup_steps"):
        schedule("schedule.warmup_steps=2000")
    with pytest.raises(ConfigError, match="schedule.min_lr_ratio"):
        schedule("schedule.min_lr_ratio=1.5")
