"""What each kind of plugin must give back, checked on what its factory built.

The contracts themselves, one typing.Protocol per kind, are in `b6lab.hookspecs`; here is how
each is checked, `check_<kind>` (the kind's name, as in `b6lab.testing`). `b6lab.parts` runs these
on every part it builds (so a wrong result fails before training, not
as silently wrong numbers), `b6lab plugins --check NAME` and `b6lab.testing` run them with the
extra probes (`probe=True`) a plugin author wants. Each check returns what passed, one line per
property, and raises `ContractError` on the first that fails.
"""

from __future__ import annotations

import inspect
import math
import numbers
import pickle
import typing

import torch
import torch.nn as nn

from b6lab import hookspecs, validation
from b6lab.attention import AttentionContext, Documents
from b6lab.errors import PluginError, UsageError, exception_line

# How far two attention outputs computed in this dtype may differ and still count as the same.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
BACKEND_CALL = "backend(q, k, v, *, causal, docs, dropout_p, scale)"


class ContractError(PluginError, AssertionError):
    """A plugin's part breaks its kind's contract; `passed` lists the checks before it that held."""

    def __init__(self, message: str, passed: list[str]):
        super().__init__(message)
        self.passed = passed


class _Checks:
    def __init__(self):
        self.passed: list[str] = []

    def ok(self, text: str) -> None:
        self.passed.append(text)

    def fail(self, text: str):
        raise ContractError(text, list(self.passed))


def _type_name(value) -> str:
    return f"the class {value.__name__}" if isinstance(value, type) else f"a {type(value).__name__}"


def _optional_members(checks: _Checks, part, contract: type) -> None:
    """Each optional member of `contract` (a Protocol in b6lab.hookspecs: one given a value there)
    that the part has must be of the declared type: a typo'd `grouped_kv = "yes"` is no silent True."""
    hints = typing.get_type_hints(contract)
    for name, default in ((n, vars(contract)[n]) for n in hints if n in vars(contract)):
        value = getattr(part, name, default)
        if value is default:
            continue
        method = "Callable" in str(hints[name])
        if not (callable(value) if method else validation.is_a(value, hints[name])):
            expected = "a method" if method else validation.type_name(hints[name])
            checks.fail(f"its {name} is {_type_name(value) if method else repr(value)}; it must be {expected} "
                        f"(b6lab.hookspecs.{contract.__name__}.{name})")


def _random(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """Random inputs from a private generator: a check never moves the run's own random state."""
    return torch.randn(*shape, generator=generator, device="cpu")


# ----------------------------------------------------------------------------------------------
# attention


def check_attention(backend, context: AttentionContext, *, probe: bool = False, reference=None,
                    must_match: bool = True) -> list[str]:
    """Shape (batch, heads, seq, head_dim), dtype and finiteness; causal masking (no position sees
    a later key); a KV-cache query (one query, and with `probe` three end-aligned causal ones, give
    the last rows of the full output); document masks (no position sees another document). A backend may
    refuse the KV-cache and document cases with a UsageError saying why (as sdpa's flash kernel
    does); `probe` reports such refusals instead of skipping them silently. `reference`, another
    backend (e.g. eager), is compared on every case: a difference fails if `must_match`, else it
    is reported (attention meant to compute something else, as ALiBi, differs from eager)."""
    checks = _Checks()
    if not callable(backend):
        checks.fail(f"returned {_type_name(backend)}, not a backend function {BACKEND_CALL}")
    _optional_members(checks, backend, hookspecs.AttentionBackend)
    with torch.device(context.device):  # not the meta device a model may be built under to count it
        _probe_attention(checks, backend, context, probe, reference, must_match)
    return checks.passed


def _probe_attention(checks: _Checks, backend, context: AttentionContext, probe: bool, reference,
                     must_match: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    B, H, S, D = 2, 2, 8, context.head_dim
    q, k, v = (_random(generator, B, H, S, D).to(context.device, context.dtype) for _ in range(3))
    tol = TOLERANCE.get(context.dtype, 1e-4)
    scale = D**-0.5

    def call(fn, q_, k_, v_, causal, docs=None, what="causal attention"):
        arguments = dict(causal=causal, docs=docs, dropout_p=0.0, scale=scale)
        try:
            inspect.signature(fn).bind(q_, k_, v_, **arguments)
        except TypeError as exc:
            checks.fail(f"its backend cannot be called as {BACKEND_CALL}: {exc}")
        except ValueError:
            pass  # a builtin without a signature: calling it will tell
        try:
            with torch.no_grad():
                out = fn(q_, k_, v_, **arguments)
        except UsageError:
            raise
        except Exception as exc:
            checks.fail(f"its backend raised {exception_line(exc)} ({what})")
        expected = (q_.size(0), q_.size(1), q_.size(2), v_.size(-1))
        if not isinstance(out, torch.Tensor):
            checks.fail(f"its backend returned {_type_name(out)}, not a tensor ({what})")
        if tuple(out.shape) != expected:
            hint = ""
            if tuple(out.shape) == (expected[0], expected[2], expected[1], expected[3]):
                hint = "; that is (batch, seq, heads, head_dim): transpose(1, 2) it back"
            checks.fail(f"its backend returned shape {tuple(out.shape)} ({what}); expected (batch, heads, seq, "
                        f"head_dim) = {expected}{hint}")
        if out.dtype != q_.dtype:
            checks.fail(f"its backend returned {out.dtype} for {q_.dtype} inputs ({what}); return q's dtype")
        if not torch.isfinite(out).all():
            checks.fail(f"its backend returned inf or nan ({what})")
        return out

    def differs(a, b) -> float:
        return (a.float() - b.float()).abs().max().item()

    def compare(name, out, *args, **kwargs):
        if reference is not None:
            diff = differs(out, call(reference, *args, **kwargs))
            if diff <= tol:
                checks.ok(f"{name}: matches the reference (max difference {diff:.2g})")
            elif must_match:
                checks.fail(f"{name}: differs from the reference by {diff:.3g} (more than {tol:g})")
            else:
                checks.ok(f"{name}: differs from the reference by {diff:.3g} (fine if it is meant to compute something else)")

    full = call(backend, q, k, v, True)
    checks.ok(f"causal attention: shape (batch, heads, seq, head_dim) = {tuple(full.shape)}, {context.dtype}, finite")
    later_k, later_v = k.clone(), v.clone()
    later_k[..., S // 2:, :], later_v[..., S // 2:, :] = k[..., :S // 2, :], v[..., :S // 2, :]
    moved = differs(call(backend, q, later_k, later_v, True)[..., : S // 2, :], full[..., : S // 2, :])
    if moved > tol:
        checks.fail(f"causal attention: the first {S // 2} positions change by {moved:.3g} when only later keys "
                    "change; with causal=True a position sees only itself and earlier ones")
    checks.ok("causal attention: no position sees a later one")
    compare("causal attention", full, q, k, v, True)

    def optional(name, run):
        try:
            run()
        except ContractError:
            raise
        except UsageError as exc:
            if probe:
                checks.ok(f"{name}: refused ({exc})")

    def kv_cache():
        # Generating asks one query at a time (causal=False); several end-aligned causal queries
        # against a cache are part of the contract, but b6lab does not ask for them yet: probed only.
        cases = [(1, False, "one query, causal=False")] + ([(3, True, "three queries, end-aligned causal")] if probe else [])
        for rows, causal, how in cases:
            out = call(backend, q[..., -rows:, :], k, v, causal, what=f"KV cache, {how}")
            diff = differs(out, full[..., -rows:, :])
            if diff > tol:
                checks.fail(f"KV cache ({how}): differs from the last {rows} rows of the full causal output by "
                            f"{diff:.3g}; queries are the last positions of the keys (b6lab.attention.attention_mask)")
            compare(f"KV cache ({how})", out, q[..., -rows:, :], k, v, causal)
        checks.ok(f"KV cache: {' and '.join(how for _, _, how in cases)} give the last rows of the full output")

    def documents():
        # Row 0 holds documents [0..2], [3..5], [6..7]; row 1 holds [0..4], [5..7] (0 is end-of-sequence).
        tokens = torch.tensor([[5, 5, 0, 7, 7, 0, 3, 3], [1, 1, 1, 1, 0, 2, 2, 2]])
        docs = Documents.from_tokens(tokens.to(context.device), eos_id=0)
        out = call(backend, q, k, v, True, docs, what="with document masks")
        other_k, other_v = k.clone(), v.clone()
        other_k[0, :, :3], other_v[0, :, :3] = k[0, :, 5:8], v[0, :, 5:8]  # only row 0's first document
        moved = differs(call(backend, q, other_k, other_v, True, docs, what="with document masks")[0, :, 3:], out[0, :, 3:])
        if moved > tol:
            checks.fail(f"document masks: a document's outputs change by {moved:.3g} when an earlier document "
                        "changes; with docs, a position sees only its own document")
        first = differs(out[0, :, :3], full[0, :, :3])
        if first > tol:
            checks.fail(f"document masks: the first document differs by {first:.3g} from plain causal attention")
        checks.ok("document masks: no position sees another document")
        compare("document masks", out, q, k, v, True, docs)

    optional("KV cache", kv_cache)
    optional("document masks", documents)


# ----------------------------------------------------------------------------------------------
# norm (a norm placement)


def check_norm(placement, d_model: int) -> list[str]:
    """An nn.Module called as forward(x, attn, ffn) that keeps x's shape, with `final_norm` True,
    False or an nn.Module mapping (..., d_model) to the same shape (hookspecs.NormPlacement)."""
    checks = _Checks()
    if not isinstance(placement, nn.Module):
        checks.fail(f"returned {_type_name(placement)}, not an nn.Module wiring one block as forward(x, attn, ffn)")
    _optional_members(checks, placement, hookspecs.NormPlacement)
    final = getattr(placement, "final_norm", inspect.Parameter.empty)
    if final is inspect.Parameter.empty:
        checks.fail("its module has no `final_norm`: set it to True (the model adds its own final norm), False "
                    "(each block already ends with a norm) or an nn.Module (the model's final norm)")
    if not (final is True or final is False or isinstance(final, nn.Module)):
        checks.fail(f"its final_norm is {final!r}; it must be True, False or an nn.Module")
    checks.ok(f"final_norm is {type(final).__name__ if isinstance(final, nn.Module) else final}")
    if any(p.is_meta for p in placement.parameters()):
        return checks.passed  # built on the meta device to count parameters: nothing to run
    generator = torch.Generator().manual_seed(0)
    x = _random(generator, 2, 5, d_model)
    try:
        with torch.no_grad(), torch.device("cpu"):
            out = placement(x, lambda h: 0.5 * torch.tanh(h), lambda h: 0.1 * h)
            normed = final(x) if isinstance(final, nn.Module) else x
    except Exception as exc:
        checks.fail(f"its module cannot wire a block as forward(x, attn, ffn): {exception_line(exc)}")
    for what, y in (("forward(x, attn, ffn)", out), ("final_norm(x)", normed)):
        if not isinstance(y, torch.Tensor) or y.shape != x.shape or not torch.isfinite(y).all():
            shown = tuple(y.shape) if isinstance(y, torch.Tensor) else _type_name(y)
            checks.fail(f"its {what} gave {shown} for x of shape {tuple(x.shape)}; expected a finite tensor shaped as x")
    checks.ok(f"forward(x, attn, ffn) keeps x's shape {tuple(x.shape)}")
    return checks.passed


# ----------------------------------------------------------------------------------------------
# feed-forward


def check_feedforward(module, d_model: int) -> list[str]:
    """An nn.Module mapping (batch, seq, d_model) to the same shape, finite."""
    checks = _Checks()
    if not isinstance(module, nn.Module):
        checks.fail(f"returned {_type_name(module)}, not an nn.Module on (batch, seq, d_model)")
    if any(p.is_meta for p in module.parameters()):
        return checks.passed + ["an nn.Module (built on the meta device: not run)"]
    x = _random(torch.Generator().manual_seed(0), 2, 5, d_model)
    try:
        with torch.no_grad(), torch.device("cpu"):
            y = module(x)
    except Exception as exc:
        checks.fail(f"its module raised {exception_line(exc)} on x of shape {tuple(x.shape)}")
    if not isinstance(y, torch.Tensor) or y.shape != x.shape or not torch.isfinite(y).all():
        shown = tuple(y.shape) if isinstance(y, torch.Tensor) else _type_name(y)
        checks.fail(f"its module gave {shown} for x of shape {tuple(x.shape)}; expected a finite tensor shaped as x")
    checks.ok(f"an nn.Module keeping x's shape {tuple(x.shape)}")
    return checks.passed


# ----------------------------------------------------------------------------------------------
# init


def check_init(init) -> list[str]:
    """A function of one argument, the model (hookspecs.Init; check_initialised runs after it)."""
    checks = _Checks()
    if not callable(init):
        checks.fail(f"returned {_type_name(init)}, not a function init(model)")
    checks.ok("a function init(model)")
    return checks.passed


def check_initialised(model: nn.Module) -> list[str]:
    """Every parameter finite after init(model) (those on the meta device hold no values to check)."""
    checks = _Checks()
    for name, param in model.named_parameters():
        if not param.is_meta and not torch.isfinite(param).all():
            checks.fail(f"left {name} with non-finite values")
    checks.ok("every parameter finite")
    return checks.passed


# ----------------------------------------------------------------------------------------------
# optimizer


def stand_in_groups() -> list[dict]:
    """Parameter groups shaped and named like a model's (parts.param_groups): a block's matrix and
    the embedding decay, a norm's weight does not."""
    generator = torch.Generator().manual_seed(0)
    return [{"params": [nn.Parameter(_random(generator, 4, 4)), nn.Parameter(_random(generator, 8, 4))],
             "param_names": ["blocks.0.ffn.up.weight", "tok_emb.weight"]},
            {"params": [nn.Parameter(_random(generator, 4))], "param_names": ["blocks.0.wiring.ln_attn.weight"],
             "weight_decay": 0.0}]


def check_optimizer(optimizer, param_groups: list[dict], *, probe: bool = False) -> list[str]:
    """A torch.optim.Optimizer over every given parameter, each group with an `lr`; with `probe`,
    one step on the given parameters keeps them finite (so pass stand-ins, not a model's)."""
    checks = _Checks()
    if isinstance(optimizer, type):
        checks.fail(f"returned {_type_name(optimizer)}, not an optimizer: return {optimizer.__name__}(param_groups, ...)")
    if not isinstance(optimizer, torch.optim.Optimizer):
        checks.fail(f"returned {_type_name(optimizer)}, not a torch.optim.Optimizer")
    given = {id(p) for group in param_groups for p in group["params"]}
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if given - held:
        checks.fail(f"its optimizer holds {len(given & held)} of the {len(given)} parameters it was given: "
                    "build it over param_groups")
    _optional_members(checks, optimizer, hookspecs.Optimizer)
    if any("lr" not in group for group in optimizer.param_groups):
        checks.fail("its optimizer has a param group without 'lr'; the schedule scales each group's lr")
    checks.ok(f"a torch.optim.Optimizer ({type(optimizer).__name__}) over all {len(given)} parameters, lr in every group")
    # The no-decay group (norms, biases: weight_decay 0.0) must stay undecayed: an optimizer that
    # rebuilds one group from model.parameters() would decay every parameter the same.
    exempt = {id(p) for group in param_groups if group.get("weight_decay") == 0.0 for p in group["params"]}
    decayed = sum(id(p) in exempt for group in optimizer.param_groups if group.get("weight_decay", 0.0) != 0.0
                  for p in group["params"])
    if decayed:
        checks.fail(f"its optimizer decays {decayed} parameter(s) given in a group with weight_decay 0.0 (norms, biases): "
                    "keep each given group's own settings, e.g. torch.optim.AdamW(param_groups, weight_decay=...)")
    if exempt:
        checks.ok("the no-decay group (weight_decay 0.0) is kept")
    if probe:
        params = [p for group in param_groups for p in group["params"]]
        for p in params:
            p.grad = torch.ones_like(p)
        try:
            optimizer.step()
        except Exception as exc:
            checks.fail(f"its optimizer's step() raised {exception_line(exc)}")
        if not all(torch.isfinite(p).all() for p in params):
            checks.fail("one step of its optimizer made a parameter inf or nan")
        checks.ok("one step keeps the parameters finite")
    return checks.passed


# ----------------------------------------------------------------------------------------------
# scheduler (a schedule)


def check_scheduler(schedule, max_steps: int) -> list[str]:
    """A function step -> multiplier of the peak lr, a finite number >= 0 from step 0 to max_steps."""
    checks = _Checks()
    if isinstance(schedule, torch.optim.lr_scheduler.LRScheduler):
        checks.fail(f"returned a torch {type(schedule).__name__}; b6lab scales the lr itself: return the "
                    "function step -> multiplier (e.g. the lambda you gave LambdaLR)")
    if not callable(schedule):
        checks.fail(f"returned {_type_name(schedule)}, not a function step -> multiplier of the peak lr")
    values = []
    for step in sorted({0, max_steps // 2, max_steps}):
        try:
            value = schedule(step)
        except Exception as exc:
            checks.fail(f"its schedule({step}) raised {exception_line(exc)}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            checks.fail(f"its schedule({step}) gave {value!r}; it must be a finite number >= 0 (a multiplier of the peak lr)")
        values.append(f"{value:.3g} at step {step}")
    checks.ok(f"multipliers {', '.join(values)} (of {max_steps} steps)")
    return checks.passed


# ----------------------------------------------------------------------------------------------
# dataset (a document source)


def check_dataset(source, *, probe: bool = False) -> list[str]:
    """`fingerprint` (a str) and `documents(split, start=0)`; with `probe`, both splits yield str
    documents and `start` skips that many of them."""
    checks = _Checks()
    documents = getattr(source, "documents", None)
    if not callable(documents):
        checks.fail(f"returned {_type_name(source)} without a documents(split, start=0) method")
    try:
        inspect.signature(documents).bind("train", 0)
    except TypeError:
        checks.fail(f"its documents{inspect.signature(documents)} cannot be called as documents(split, start)")
    except ValueError:
        pass  # a builtin without a signature
    if not isinstance(getattr(source, "fingerprint", None), str):
        checks.fail("its source has no `fingerprint` string (it names the corpus in the tokenizer cache and messages)")
    checks.ok(f"fingerprint {source.fingerprint!r} and documents(split, start)")
    if probe:
        for split in ("train", "val"):
            try:
                first = [doc for _, doc in zip(range(2), source.documents(split))]
                skipped = next(iter(source.documents(split, 1)), None)
            except Exception as exc:
                checks.fail(f"its documents({split!r}) raised {exception_line(exc)}")
            if not first or not all(isinstance(doc, str) for doc in first):
                checks.fail(f"its documents({split!r}) gave {first[:1]!r}; it must yield str documents")
            if len(first) > 1 and skipped != first[1]:
                checks.fail(f"its documents({split!r}, start=1) does not begin with the second document of documents({split!r})")
        checks.ok("both splits yield str documents; start=1 skips the first")
    return checks.passed


# ----------------------------------------------------------------------------------------------
# tokenizer


def check_tokenizer(tokenizer, text: str = "def hello(world):\n    return 'héllo'\n") -> list[str]:
    """encode -> list of ids below vocab_size, decode -> str, an int eos_id, and it pickles (runs
    sample from the pickled copy in their checkpoint)."""
    checks = _Checks()
    _optional_members(checks, tokenizer, hookspecs.Tokenizer)
    for attr in ("encode", "decode"):
        if not callable(getattr(tokenizer, attr, None)):
            checks.fail(f"returned {_type_name(tokenizer)} without an {attr}() method")
    vocab, eos = getattr(tokenizer, "vocab_size", None), getattr(tokenizer, "eos_id", None)
    if not isinstance(vocab, int) or vocab < 1:
        checks.fail(f"its vocab_size is {vocab!r}; it must be a positive int")
    if not isinstance(eos, int) or not 0 <= eos < vocab:
        checks.fail(f"its eos_id is {eos!r}; it must be an int below vocab_size {vocab}")
    try:
        ids = tokenizer.encode(text)
        decoded = tokenizer.decode(ids)
    except Exception as exc:
        checks.fail(f"its encode/decode raised {exception_line(exc)}")
    if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < vocab for i in ids):
        checks.fail(f"its encode() gave {ids!r:.60}; it must return a list of int ids below vocab_size")
    if not isinstance(decoded, str):
        checks.fail(f"its decode() gave {_type_name(decoded)}, not a str")
    checks.ok(f"encode/decode ({len(ids)} ids for {len(text)} characters), vocab_size {vocab}, eos_id {eos}")
    try:
        copy = pickle.loads(pickle.dumps(tokenizer))
    except Exception as exc:
        checks.fail(f"its tokenizer does not pickle ({exception_line(exc)}); runs keep a pickled copy to sample from")
    if copy.encode(text) != ids:
        checks.fail("its tokenizer encodes differently after pickling")
    checks.ok("pickles, and encodes the same after")
    return checks.passed
