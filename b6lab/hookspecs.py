"""The plugin contracts of b6lab: one hook per kind of part a researcher can swap, and one
`typing.Protocol` per kind saying what its factory must build.

Each hook receives `register` and calls it once per part the plugin provides:

    register(name, factory, unavailable=None)

b6lab calls `factory(*FACTORY_ARGUMENTS[kind], **options)`: first what the kind always gets (below),
then the plugin's options. The factory's keyword-only arguments are its options, config keys that
sit beside the plugin's name in its config section; one without a default is required.
`unavailable(**context)`, if given, returns why the part cannot run here (or None when it can);
context holds `device`, `dtype`, `head_dim` and `dropout`.

What the factory returns is described by its kind's Protocol (`BUILDS[kind]`), read by people,
not by isinstance: a member the Protocol gives a value is optional, and that value is what b6lab
assumes when a part lacks it (a method given None: b6lab calls it only if the part has one); a
member without one is required. `b6lab.contracts` checks every part b6lab builds against them,
and `b6lab.testing` offers the same checks to a plugin's own tests. A plugin need not subclass
them.

Names: the kind (`scheduler`, `dataset`, `norm`) names the plugin everywhere in this API (hooks,
`b6lab plugins`, registry.get, contracts, b6lab.testing); the Protocol names what the plugin
builds (a Schedule, a DocumentSource, a NormPlacement); the config key names the choice
(`schedule.name`, `data.source`, `model.norm`). All three are part of the contract in DESIGN.md.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("b6lab")

# What b6lab passes each kind's factory before the plugin's options (names after "*" by keyword).
FACTORY_ARGUMENTS = {
    "attention": ("context",),
    "norm": ("d_model", "n_layers"),
    "feedforward": ("d_model", "d_ff", "*", "bias"),
    "init": (),
    "parametrization": (),
    "optimizer": ("param_groups",),
    "scheduler": ("max_steps",),
    "dataset": ("val_fraction",),
    "tokenizer": ("corpus",),
}


# ----------------------------------------------------------------------------------------------
# What each kind's factory builds


class AttentionBackend(Protocol):
    """attention: factory(context, **options) -> backend, `context` a b6lab.attention.AttentionContext.

    q, k, v and the result are (batch, heads, seq, head_dim), torch's layout; the result has q's
    dtype. `causal=True` masks later keys; with fewer queries than keys the queries are the last
    positions (end-aligned, as a KV cache asks: one query with causal=False, several with True).
    `docs`, a b6lab.attention.Documents or None, restricts each position to its own packed
    document. A backend that cannot do a case (document masks, a KV-cache query) raises a
    UsageError saying why.
    """

    grouped_kv: bool = False  # True: takes k, v with fewer heads than q (grouped-query) as they are
    chosen: str | None = None  # `auto`'s: the name of the backend it chose, recorded in config.yaml

    def __call__(self, q, k, v, *, causal: bool, docs, dropout_p: float, scale: float): ...


class NormPlacement(Protocol):
    """norm: factory(d_model, n_layers, make_norm=nn.LayerNorm, **options) -> an nn.Module wiring one
    block, called once per block.

    `make_norm(d_model)`, if the factory takes it, builds a norm of model.norm_layer; a placement
    that builds its own norms leaves it out (and then model.norm_layer must stay layernorm).
    """

    # True: the model adds a final norm (of model.norm_layer) after the last block; False: each
    # block already ends with one (Post-LN); an nn.Module: that module is the model's final norm
    # (for a placement that builds its own norms, as plugins/rmsnorm_pre.py does).
    final_norm: Any
    embedding_norm: bool = False  # True: a norm on the embeddings before the first block (Peri-LN)
    # A method init_residual(attn, ffn), if it has one, runs after the init plugin: to rescale the
    # block's residual branches (DeepNorm's beta).
    init_residual: Callable[[Any, Any], None] | None = None

    def forward(self, x, attn: Callable, ffn: Callable): ...  # the residual stream after one block


class FeedForward(Protocol):
    """feedforward: factory(d_model, d_ff, *, bias, **options) -> an nn.Module on (batch, seq, d_model),
    keeping that shape; d_ff is model.d_ff (None: the plugin's own default width), bias model.bias."""

    def forward(self, x): ...


class Init(Protocol):
    """init: factory(**options) -> init(model), which sets the weights of a freshly built B6 in
    place (`model.cfg` is its ModelConfig) and leaves every parameter finite; a norm placement's
    `init_residual` runs after it."""

    def __call__(self, model) -> None: ...


class Parametrization(Protocol):
    """parametrization: factory(**options) -> how the init, the logits and each parameter group's lr
    scale with the model's width (b6lab/plugins/parametrizations.py: standard, mup)."""

    # A method check_optimizer(name), if it has one: raises for an optim.name it has no rules for,
    # so that a sweep refuses it before its first trial.
    check_optimizer: Callable[[str], None] | None = None

    def parametrize(self, model) -> None:
        """Runs once on the built, initialised model (after init and init_residual): rescale weights,
        set `model.readout_multiplier` (the factor on the LM head's input) or an attention's `scale`."""

    def optimizer(self, model, groups: list[dict], name: str, build: Callable[[list[dict]], Any]):
        """The run's optimizer: `build(groups)` builds optim.name's over `groups` (the Optimizer's
        groups below, which it may split); scale each built group's lr, which the schedule multiplies."""


class Optimizer(Protocol):
    """optimizer: factory(param_groups, **options) -> a torch.optim.Optimizer over those groups.

    Two groups come in: weight matrices, then norms and biases with weight_decay 0.0 (keep it);
    each holds its parameters' names under "param_names" (torch's key; Muon routes by them).
    Every group of the optimizer needs an "lr": the schedule scales it.
    """

    param_groups: list[dict]
    # Entries of its param groups that are state, not settings (a step count, say): a resumed run
    # takes them from the checkpoint, the settings from its config.
    group_state_keys: tuple[str, ...] = ()
    # Methods train() and eval(), if it has them (schedule-free optimizers): b6lab calls eval()
    # before it evaluates or saves, and train() after, so each sees the weights meant for it.
    train: Callable[[], Any] | None = None
    eval: Callable[[], Any] | None = None

    def step(self, closure=None): ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state_dict: dict) -> None: ...


class Schedule(Protocol):
    """scheduler: factory(max_steps, **options) -> schedule, step -> multiplier of the peak lr, a
    finite number >= 0. `step` counts the updates done: 0 before the first, max_steps - 1 before
    the last. Not a torch LRScheduler: b6lab scales each group's lr itself."""

    def __call__(self, step: int) -> float: ...


class DocumentSource(Protocol):
    """dataset: factory(val_fraction, **options) -> a source of documents, streamed and resumable."""

    fingerprint: str  # names the corpus (in the tokenizer cache and messages)

    def documents(self, split: str, start: int = 0) -> Iterator[str]:
        """The documents of split "train" or "val", skipping the first `start` of them."""


class Tokenizer(Protocol):
    """tokenizer: factory(corpus, **options) -> tokenizer; `corpus` is a b6lab.data.documents.Corpus
    (source, cache_dir, text_sample). It must pickle: runs keep a copy to sample from."""

    vocab_size: int
    eos_id: int  # below vocab_size
    # A method token_byte_lengths(), if it has one: the UTF-8 bytes each id stands for, one per id
    # (val_bpb; without it each id is measured by decoding it alone: b6lab/bpb.py).
    token_byte_lengths: Callable[[], Any] | None = None
    # A method to_fast_tokenizer(), if it has one: its tokenizers.Tokenizer, which `b6lab export` needs.
    to_fast_tokenizer: Callable[[], Any] | None = None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


BUILDS = {"attention": AttentionBackend, "norm": NormPlacement, "feedforward": FeedForward, "init": Init,
          "parametrization": Parametrization, "optimizer": Optimizer, "scheduler": Schedule, "dataset": DocumentSource, "tokenizer": Tokenizer}


# ----------------------------------------------------------------------------------------------
# The hooks


@hookspec
def b6lab_register_attention(register):
    """Register attention backends: factory(context, **options) -> AttentionBackend."""


@hookspec
def b6lab_register_norm(register):
    """Register norm placements: factory(d_model, n_layers, make_norm=nn.LayerNorm, **options) -> NormPlacement."""


@hookspec
def b6lab_register_feedforward(register):
    """Register feed-forwards: factory(d_model, d_ff, *, bias, **options) -> FeedForward."""


@hookspec
def b6lab_register_init(register):
    """Register initialisations: factory(**options) -> Init."""


@hookspec
def b6lab_register_parametrization(register):
    """Register parametrizations: factory(**options) -> Parametrization."""


@hookspec
def b6lab_register_optimizer(register):
    """Register optimizers: factory(param_groups, **options) -> Optimizer."""


@hookspec
def b6lab_register_scheduler(register):
    """Register LR schedules: factory(max_steps, **options) -> Schedule."""


@hookspec
def b6lab_register_dataset(register):
    """Register document sources: factory(val_fraction, **options) -> DocumentSource."""


@hookspec
def b6lab_register_tokenizer(register):
    """Register tokenizers: factory(corpus, **options) -> Tokenizer."""
