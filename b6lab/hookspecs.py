"""The plugin hooks of b6lab: one per kind of part a researcher can swap.

Each hook receives `register` and calls it once per thing the plugin provides:

    register(name, factory, unavailable=None)

`factory` builds the part (see `b6lab.registry` for what each kind's factory is given); its
keyword-only arguments with defaults are the plugin's own config keys, which sit beside the
plugin's name in the config section. `unavailable(**context)`, if given, returns why the part
cannot run here (or None when it can); context may hold `device`, `dtype` and `head_dim`.
"""

import pluggy

hookspec = pluggy.HookspecMarker("b6lab")


@hookspec
def b6lab_register_attention(register):
    """Register attention backends: factory(**options) -> backend(q, k, v, *, causal, docs, dropout_p, scale)."""


@hookspec
def b6lab_register_norm(register):
    """Register norm placements: factory(d_model, n_layers, make_norm=nn.LayerNorm, **options) -> residual block wiring (nn.Module)."""


@hookspec
def b6lab_register_feedforward(register):
    """Register feed-forwards: factory(d_model, d_ff, *, bias, **options) -> nn.Module on (batch, seq, d_model)."""


@hookspec
def b6lab_register_optimizer(register):
    """Register optimizers: factory(param_groups, **options) -> torch.optim.Optimizer."""


@hookspec
def b6lab_register_scheduler(register):
    """Register LR schedules: factory(max_steps, **options) -> callable step -> LR multiplier."""


@hookspec
def b6lab_register_dataset(register):
    """Register document sources: factory(val_fraction, **options) -> source with .documents(split, start)."""


@hookspec
def b6lab_register_tokenizer(register):
    """Register tokenizers: factory(corpus, **options) -> tokenizer (encode, decode, vocab_size, eos_id)."""
