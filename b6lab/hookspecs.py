"""The plugin hooks of b6lab: one per kind of part a researcher can swap.

Each hook receives `register` and calls it once per part the plugin provides:

    register(name, factory, unavailable=None)

b6lab calls `factory(*FACTORY_ARGUMENTS[kind], **options)`: first what the kind always gets (below),
then the plugin's options. The factory's keyword-only arguments are its options, config keys that
sit beside the plugin's name in its config section; one without a default is required.
`unavailable(**context)`, if given, returns why the part cannot run here (or None when it can);
context holds `device`, `dtype`, `head_dim` and `dropout`. plugins/README.md has each kind's
full contract; `b6lab.contracts` checks it on every part b6lab builds.
"""

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


@hookspec
def b6lab_register_attention(register):
    """Register attention backends: factory(context, **options) -> backend(q, k, v, *, causal, docs, dropout_p, scale).

    `context` is a b6lab.attention.AttentionContext; q, k, v and the result are (batch, heads, seq, head_dim).
    """


@hookspec
def b6lab_register_norm(register):
    """Register norm placements: factory(d_model, n_layers, make_norm=nn.LayerNorm, **options) -> nn.Module
    called as forward(x, attn, ffn).

    `make_norm(d_model)`, if the factory takes it, builds a norm of model.norm_layer. The module's
    `final_norm` is True (the model adds its own final norm), False (the block already ends with a
    norm) or an nn.Module (the model's final norm); `embedding_norm` (optional) normalises the
    embeddings before the first block.
    """


@hookspec
def b6lab_register_feedforward(register):
    """Register feed-forwards: factory(d_model, d_ff, *, bias, **options) -> nn.Module on (batch, seq, d_model)."""


@hookspec
def b6lab_register_init(register):
    """Register initialisations: factory(**options) -> init(model), which sets the weights of a freshly
    built B6 in place (`model.cfg` is its ModelConfig); a norm placement's `init_residual` runs after it."""


@hookspec
def b6lab_register_parametrization(register):
    """Register parametrizations: factory(**options) -> an object with parametrize(model), run on the
    built and initialised model, and optimizer(model, groups, name, build) -> the optimizer, where
    build(groups) builds optim.name's (optionally check_optimizer(name), raising for one it cannot scale);
    b6lab/plugins/parametrizations.py has standard and mup."""


@hookspec
def b6lab_register_optimizer(register):
    """Register optimizers: factory(param_groups, **options) -> torch.optim.Optimizer over those groups.

    Two groups: weight matrices, then norms and biases with weight_decay 0.0; each group needs an `lr`.
    """


@hookspec
def b6lab_register_scheduler(register):
    """Register LR schedules: factory(max_steps, **options) -> function step -> multiplier of the peak lr.

    `step` counts the updates done so far: 0 before the first, max_steps - 1 before the last.
    """


@hookspec
def b6lab_register_dataset(register):
    """Register document sources: factory(val_fraction, **options) -> source.

    The source has `fingerprint` (a str) and `documents(split, start=0)`, an iterator of str over
    split "train" or "val" that skips the first `start` documents.
    """


@hookspec
def b6lab_register_tokenizer(register):
    """Register tokenizers: factory(corpus, **options) -> tokenizer (encode, decode, vocab_size, eos_id).

    `corpus` is a b6lab.data.documents.Corpus (source, cache_dir, text_sample); the tokenizer must pickle.
    """
