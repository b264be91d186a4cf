"""The plugin system: every hook, plugin files from a config, duplicate and unknown names."""

import textwrap

import pytest
import torch

import b6lab
from b6lab import parts, registry
from b6lab.attention import AttentionContext
from b6lab.config import load_config
from b6lab.errors import PluginError
from b6lab.plugins import attention as builtin_attention
from b6lab.plugins.norms import PreLN
from b6lab.plugins.tokenizers import ByteTokenizer


class EveryKind:
    """A test plugin providing one part of every kind."""

    @b6lab.hookimpl
    def b6lab_register_attention(self, register):
        def doubled_eager(context, *, factor: float = 2.0):
            eager = builtin_attention.eager(context)
            return lambda q, k, v, **kw: factor * eager(q, k, v, **kw)

        register("test-attention", doubled_eager)

    @b6lab.hookimpl
    def b6lab_register_norm(self, register):
        register("test-norm", PreLN)

    @b6lab.hookimpl
    def b6lab_register_optimizer(self, register):
        def sgd(param_groups, *, lr: float = 0.1):
            return torch.optim.SGD(param_groups, lr=lr)

        register("test-optimizer", sgd)

    @b6lab.hookimpl
    def b6lab_register_scheduler(self, register):
        register("test-scheduler", lambda max_steps, *, value=0.5: (lambda step: value))

    @b6lab.hookimpl
    def b6lab_register_dataset(self, register):
        class Repeated:
            fingerprint = "test-repeated"

            def documents(self, split, start=0):
                return iter(["hello world"] * (100 - start))

        register("test-dataset", lambda val_fraction: Repeated())

    @b6lab.hookimpl
    def b6lab_register_tokenizer(self, register):
        register("test-tokenizer", lambda corpus: ByteTokenizer(), unavailable=lambda **_: "needs a test")


KINDS_AND_NAMES = [
    ("attention", "test-attention"), ("norm", "test-norm"), ("optimizer", "test-optimizer"),
    ("scheduler", "test-scheduler"), ("dataset", "test-dataset"), ("tokenizer", "test-tokenizer"),
]


@pytest.mark.parametrize("kind,name", KINDS_AND_NAMES)
def test_every_hook_registers_through_a_fixture_plugin(register_plugin, kind, name):
    register_plugin(EveryKind(), name="every-kind", source="test fixture")
    reg = registry.get(kind, name)
    assert reg.kind == kind and reg.source == "test fixture"


def test_fixture_plugins_are_gone_after_their_test():
    assert "test-attention" not in registry.registrations("attention")


def test_registered_parts_build_and_run(register_plugin):
    register_plugin(EveryKind(), name="every-kind")
    context = AttentionContext(torch.device("cpu"), torch.float32, 8)
    cfg = load_config(preset="tiny", overrides=["model.attention=test-attention", "model.factor=3.0"])
    backend, chosen = parts.build_attention(cfg.model, context)
    q = torch.randn(1, 2, 4, 8)
    eager = registry.get("attention", "eager").build(context)
    assert chosen == "test-attention"
    assert torch.allclose(backend(q, q, q, causal=True, scale=0.3), 3.0 * eager(q, q, q, causal=True, scale=0.3))
    assert parts.build_schedule(load_config(overrides=["schedule.name=test-scheduler"]).schedule, 10)(3) == 0.5
    source = parts.build_source(load_config(overrides=["data.source=test-dataset"]).data)
    assert next(iter(source.documents("train"))) == "hello world"
    with pytest.raises(PluginError, match="cannot run here: needs a test"):
        parts.usable("tokenizer", "test-tokenizer")


def test_plugin_options_are_checked_against_the_factory(register_plugin):
    register_plugin(EveryKind(), name="every-kind")
    cfg = load_config(overrides=["optim.name=test-optimizer", "optim.lr=0.5"])
    assert cfg.optim.options == {"lr": 0.5}
    with pytest.raises(b6lab.errors.ConfigError, match="optim.betas.*unknown optim key"):
        load_config(overrides=["optim.name=test-optimizer", "optim.betas=[0.9,0.9]"])


def test_a_name_registered_twice_names_both_sources(register_plugin):
    class Duplicate:
        @b6lab.hookimpl
        def b6lab_register_norm(self, register):
            register("pre", lambda d_model, n_layers: None)

    register_plugin(Duplicate(), name="duplicate", source="file /somewhere/my_norms.py")
    with pytest.raises(PluginError) as error:
        registry.registrations("norm")
    message = str(error.value)
    assert "'pre' is registered twice" in message
    assert "built-in (b6lab.plugins.norms)" in message and "file /somewhere/my_norms.py" in message


def test_an_unknown_name_lists_the_choices_and_the_closest():
    with pytest.raises(PluginError) as error:
        registry.get("norm", "pree")
    message = str(error.value)
    assert "did you mean 'pre'?" in message
    assert "deepnorm, peri, post, pre, sandwich" in message


def test_an_unknown_plugin_in_a_config_names_the_key_and_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  norm: postln\n")
    with pytest.raises(b6lab.errors.ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "model.norm" in message and str(path) in message and "did you mean 'post'?" in message


def test_a_plugin_file_named_in_a_config_is_loaded(tmp_path):
    plugin_file = tmp_path / "plugins" / "half_attention.py"
    plugin_file.parent.mkdir()
    plugin_file.write_text(textwrap.dedent('''
        import torch.nn.functional as F
        import b6lab

        def half(context, *, temperature: float = 1.0):
            """Plain SDPA with a temperature on the scores."""
            def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale / temperature)
            return attend

        @b6lab.hookimpl
        def b6lab_register_attention(register):
            register("tempered", half)
    '''))
    config = tmp_path / "run.yaml"
    config.write_text("plugins: [plugins/half_attention.py]\nmodel: {attention: tempered, temperature: 2.0}\n")
    try:
        cfg = load_config(config)
        assert cfg.plugins == [str(plugin_file)]  # absolute, so a Ray worker elsewhere finds it
        assert cfg.model.options["temperature"] == 2.0
        reg = registry.get("attention", "tempered")
        assert reg.source == f"file {plugin_file}" and reg.version.startswith("sha256:")
        assert reg.description == "Plain SDPA with a temperature on the scores."
        load_config(config)  # loading the same file again is a no-op, not a duplicate
    finally:
        registry.unregister_plugin(f"file:{plugin_file}")


def test_a_missing_or_broken_plugin_file_is_a_clear_error(tmp_path):
    with pytest.raises(PluginError, match="not found"):
        registry.load_plugin_path(str(tmp_path / "nope.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_real_module_xyz\n")
    with pytest.raises(PluginError, match="failed to load: ModuleNotFoundError"):
        registry.load_plugin_path(str(broken))


def test_flash_plugins_say_why_they_cannot_run_on_cpu():
    context = dict(device=torch.device("cpu"), dtype=torch.float32, head_dim=64)
    for name in ("flash-v1", "flash-v2", "flash-v3"):
        reason = registry.get("attention", name).why_unavailable(**context)
        assert reason and ("not installed" in reason or "CUDA" in reason)
    cfg = load_config(preset="tiny", overrides=["model.attention=flash-v2"])
    with pytest.raises(PluginError, match="attention plugin 'flash-v2' cannot run here"):
        parts.build_attention(cfg.model, AttentionContext(torch.device("cpu"), torch.float32, cfg.model.head_dim))


def test_auto_chooses_sdpa_on_cpu():
    cfg = load_config(preset="tiny")
    _, chosen = parts.build_attention(cfg.model, AttentionContext(torch.device("cpu"), torch.float32, cfg.model.head_dim))
    assert chosen == "sdpa"


def test_a_plugins_hooks_run_once_and_lookups_reuse_what_they_registered(register_plugin):
    calls = []

    class Counting:
        @b6lab.hookimpl
        def b6lab_register_scheduler(self, register):
            calls.append(1)
            register("counted", lambda max_steps: (lambda step: 1.0))

    register_plugin(Counting(), name="counting")
    for _ in range(5):
        assert registry.get("scheduler", "counted").source == "test fixture"
        registry.get("optimizer", "lion")
    assert calls == [1]
    known = registry.registrations("scheduler")
    assert registry.registrations("scheduler") is known  # the merged view is kept ...
    registry.unregister_plugin("counting")
    assert "counted" not in registry.registrations("scheduler")  # ... until a plugin comes or goes


def test_factory_arguments_after_a_star_are_passed_by_keyword(monkeypatch):
    from b6lab import hookspecs

    monkeypatch.setitem(hookspecs.FACTORY_ARGUMENTS, "norm", ("d_model", "d_ff", "*", "bias"))
    assert registry.factory_arguments("norm") == (("d_model", "d_ff"), ("bias",))
    reg = registry.registration("norm", "ff", lambda d_model, d_ff, *, bias, act="gelu": None, "test")
    assert reg.options == {"act": "gelu"} and reg.required == ()
    with pytest.raises(PluginError, match=r"cannot be called as factory\(d_model, d_ff, bias=, \*\*options\)"):
        registry.registration("norm", "ff", lambda d_model, d_ff: None, "test")


def test_file_plugins_get_the_same_module_name_in_every_process(tmp_path):
    path = tmp_path / "my plugin.py"
    name = registry.plugin_module_name(path)
    assert name.startswith("b6lab_plugin_my_plugin_") and name.isidentifier()
    assert name == registry.plugin_module_name(path) != registry.plugin_module_name(tmp_path / "other" / "my plugin.py")
