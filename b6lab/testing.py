"""Checks for plugin authors' own tests: the contract b6lab holds every part to, as functions.

    from b6lab.testing import check_attention

    def test_alibi_keeps_the_attention_contract():
        check_attention(alibi, slopes="geometric")   # a factory, or a registered name

Each `check_<kind>(plugin, **options)` takes the factory itself (as the plugin file defines it)
or the name it is registered under, builds the part with `options` (checked as a config's are),
runs the checks b6lab runs when it builds that kind (`b6lab.contracts`, against the kind's
Protocol in `b6lab.hookspecs`) plus the probes a unit test wants, and returns what passed, one
line per property. A failure raises `b6lab.contracts.ContractError` (an AssertionError, so
pytest shows it as a failed assertion) saying what is wrong. `b6lab plugins --check NAME` runs
the same checks.
"""

from __future__ import annotations

import inspect
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from b6lab import contracts, registry, validation
from b6lab.attention import AttentionContext
from b6lab.contracts import ContractError
from b6lab.data.documents import Corpus, split_documents
from b6lab.errors import PluginError, UsageError, exception_line

__all__ = ["ContractError", "load_plugin", "check", "check_attention", "check_norm", "check_feedforward", "check_init", "check_parametrization", "check_optimizer",
           "check_scheduler", "check_dataset", "check_tokenizer"]


def load_plugin(path: str | Path) -> list[registry.Registration]:
    """Load a plugin file (or module) as a config's `plugins:` list would, without installing it, and
    return what it registers, so each part can be checked by name:

        [reg] = load_plugin("plugins/rmsnorm_pre.py")
        check_norm(reg.name)
    """
    return registry.parts_of(registry.load_plugin_path(str(path)))


def _registration(kind: str, plugin: str | Callable) -> registry.Registration:
    """A registered part by name, or a factory checked as `register(...)` would check it."""
    if isinstance(plugin, str):
        return registry.get(kind, plugin)
    name = getattr(plugin, "__name__", type(plugin).__name__)
    return registry.registration(kind, name, plugin, f"the factory {getattr(plugin, '__module__', '?')}.{name}")


def _options(reg: registry.Registration, options: dict) -> dict:
    """The plugin's options as a config would resolve them (validation.check_options), given by name."""
    unknown = sorted(set(options) - set(reg.options))
    if unknown:
        raise PluginError(f"{reg.label} has no option {unknown[0]!r}; its options: {', '.join(reg.options) or 'none'}")
    resolved = validation.check_options(reg, options)
    unset = reg.unset_required(resolved)
    if unset:
        raise PluginError(f"{reg.label} requires the option {unset!r}")
    return resolved


@contextmanager
def plugin_errors(reg: registry.Registration):
    """What the plugin raises while its part is built or checked, as a failed check naming it."""
    try:
        yield
    except (ContractError, UsageError):
        raise
    except Exception as exc:
        raise ContractError(f"{reg.label} raised {exception_line(exc)}", []) from exc


def check_attention(plugin: str | Callable, *, context: AttentionContext | None = None, reference: str | None = "eager",
                    must_match: bool = True, **options) -> list[str]:
    """Shape, dtype, causal masking, KV-cache queries and document masks, each compared with the
    `reference` backend (eager by default; None, or must_match=False to only report the difference,
    for attention meant to compute something else, such as ALiBi). `context` defaults to CPU,
    float32, head_dim 16."""
    reg = _registration("attention", plugin)
    context = context or AttentionContext(torch.device("cpu"), torch.float32, head_dim=16)
    with plugin_errors(reg):
        backend = reg.build(context, **_options(reg, options))
        compared = registry.get("attention", reference).build(context) if reference else None
        return contracts.check_attention(backend, context, probe=True, reference=compared, must_match=must_match)


def check_norm(plugin: str | Callable, *, d_model: int = 16, n_layers: int = 2, make_norm: Callable | None = None,
               **options) -> list[str]:
    """An nn.Module wiring one block as forward(x, attn, ffn), with final_norm True, False or a module.
    `make_norm` (nn.RMSNorm, say) is what model.norm_layer passes a placement that takes it."""
    reg = _registration("norm", plugin)
    options = _options(reg, options)
    if make_norm is not None:
        if "make_norm" not in inspect.signature(reg.factory).parameters:
            raise PluginError(f"{reg.label} builds its own norms (its factory takes no make_norm): check it without one")
        options["make_norm"] = make_norm
    with plugin_errors(reg):
        return contracts.check_norm(reg.build(d_model, n_layers, **options), d_model)


def check_feedforward(plugin: str | Callable, *, d_model: int = 16, d_ff: int = 64, bias: bool = False,
                      **options) -> list[str]:
    """An nn.Module on (batch, seq, d_model) keeping its shape."""
    reg = _registration("feedforward", plugin)
    with plugin_errors(reg):
        return contracts.check_feedforward(reg.build(d_model, d_ff, bias=bias, **_options(reg, options)), d_model)


def check_init(plugin: str | Callable, **options) -> list[str]:
    """A function init(model) that leaves every parameter of a tiny B6 (2 layers, 16 wide) finite."""
    from b6lab import parts
    from b6lab.config import ModelConfig
    from b6lab.model import B6

    reg = _registration("init", plugin)
    cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, attention="eager")
    context = AttentionContext(torch.device("cpu"), torch.float32, head_dim=cfg.head_dim)
    with plugin_errors(reg):
        init = reg.build(**_options(reg, options))
        passed = contracts.check_init(init)
        backend, _ = parts.build_attention(cfg, context)
        model = B6(cfg, backend, parts.norm_placement(cfg, context), parts.feedforward(cfg, context), init)
        return passed + contracts.check_initialised(model)


def check_parametrization(plugin: str | Callable, *, optimizer: str = "adamw", **options) -> list[str]:
    """parametrize(model) leaves every parameter of a tiny B6 (2 layers, 16 wide) finite, and
    optimizer(model, groups, name, build) returns `optimizer`'s optimizer over every parameter."""
    from b6lab import parts
    from b6lab.config import ModelConfig, OptimConfig
    from b6lab.model import B6

    reg = _registration("parametrization", plugin)
    cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, attention="eager")
    context = AttentionContext(torch.device("cpu"), torch.float32, head_dim=cfg.head_dim)
    optim = OptimConfig(name=optimizer, options=registry.get("optimizer", optimizer).options)
    with plugin_errors(reg):
        parametrization = reg.build(**_options(reg, options))
        backend, _ = parts.build_attention(cfg, context)
        model = B6(cfg, backend, parts.norm_placement(cfg, context), parts.feedforward(cfg, context),
                   parts.initialisation(cfg, context))
        parametrization.parametrize(model)
        passed = contracts.check_initialised(model)
        groups = parts.param_groups(model)
        built = parametrization.optimizer(model, groups, optimizer, lambda groups: parts._optimizer_over(optim, groups))
        return passed + contracts.check_optimizer(built, groups, probe=True)


def check_optimizer(plugin: str | Callable, **options) -> list[str]:
    """A torch.optim.Optimizer over the groups it is given (a decaying matrix, a vector with
    weight_decay 0.0), whose step keeps them finite."""
    reg = _registration("optimizer", plugin)
    groups = contracts.stand_in_groups()
    with plugin_errors(reg):
        return contracts.check_optimizer(reg.build(groups, **_options(reg, options)), groups, probe=True)


def check_scheduler(plugin: str | Callable, *, max_steps: int = 100, **options) -> list[str]:
    """A function step -> multiplier, finite and >= 0 at steps 0, max_steps/2 and max_steps."""
    reg = _registration("scheduler", plugin)
    with plugin_errors(reg):
        return contracts.check_scheduler(reg.build(max_steps, **_options(reg, options)), max_steps)


def check_dataset(plugin: str | Callable, *, val_fraction: float = 0.1, **options) -> list[str]:
    """`fingerprint` and `documents(split, start)`; both splits yield str documents and `start` skips."""
    reg = _registration("dataset", plugin)
    with plugin_errors(reg):
        return contracts.check_dataset(reg.build(val_fraction, **_options(reg, options)), probe=True)


class _SampleText:
    """A tiny corpus for building a tokenizer under test."""

    fingerprint = "b6lab-testing-sample"
    _documents = [f"def f{i}(x):\n    return x * {i}  # héllo wörld {i}\n" for i in range(200)]

    def documents(self, split: str, start: int = 0):
        return split_documents(self._documents, split, 0.1, start)


def check_tokenizer(plugin: str | Callable, *, corpus: Corpus | None = None, **options) -> list[str]:
    """encode/decode, vocab_size, eos_id, and pickling; built on `corpus` (default: a tiny sample
    text and a temporary cache folder)."""
    reg = _registration("tokenizer", plugin)
    with tempfile.TemporaryDirectory(prefix="b6lab-check-") as cache, plugin_errors(reg):
        return contracts.check_tokenizer(reg.build(corpus or Corpus(_SampleText(), Path(cache)), **_options(reg, options)))


CHECKS = {"attention": check_attention, "norm": check_norm, "feedforward": check_feedforward, "init": check_init,
          "parametrization": check_parametrization, "optimizer": check_optimizer, "scheduler": check_scheduler, "dataset": check_dataset, "tokenizer": check_tokenizer}


def check(kind: str, plugin: str | Callable, **options) -> list[str]:
    """The check of `kind` (one of registry.KINDS) on `plugin`."""
    if kind not in CHECKS:
        raise PluginError(f"b6lab.testing has no check for {kind} plugins yet")
    return CHECKS[kind](plugin, **options)
