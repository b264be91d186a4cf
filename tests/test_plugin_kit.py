"""The kit for plugin authors: b6lab.testing's checks and `b6lab plugins --check NAME`, on the
built-ins, the example plugins of plugins/, and deliberately broken factories; and the packaging
example of plugins/README.md, installed as written."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from b6lab import registry, testing
from b6lab.attention import attention_mask
from b6lab.cli import main
from b6lab.contracts import ContractError
from b6lab.errors import PluginError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {name: ROOT / "plugins" / f"{name}.py" for name in ("sliding_window", "sgd_momentum", "rmsnorm_pre", "synthetic_text")}


@pytest.fixture
def examples():
    names = [registry.load_plugin_path(str(path)) for path in EXAMPLES.values()]
    yield
    for name in names:
        registry.unregister_plugin(name)


BUILT_INS = [("attention", "eager"), ("attention", "sdpa"), ("attention", "auto"), ("norm", "pre"), ("norm", "post"),
             ("norm", "sandwich"), ("norm", "peri"), ("norm", "deepnorm"), ("feedforward", "gelu"), ("feedforward", "swiglu"),
             ("feedforward", "relu2"), ("optimizer", "muon"), ("scheduler", "wsd"), ("optimizer", "lion"), ("optimizer", "adamw"),
             ("scheduler", "cosine"), ("scheduler", "constant"), ("dataset", "python-stdlib"), ("tokenizer", "byte"),
             ("tokenizer", "bpe")]


@pytest.mark.parametrize("kind,name", BUILT_INS)
def test_every_built_in_keeps_its_contract(kind, name):
    passed = testing.check(kind, name)
    assert passed and all(isinstance(line, str) for line in passed)


def test_the_example_plugins_keep_their_contracts(examples):
    # A window as long as the probe's 8 positions is plain causal attention: it must match eager.
    passed = testing.check_attention("sliding-window", window=8)
    assert "causal attention: no position sees a later one" in passed
    assert any(line.startswith("document masks: matches the reference") for line in passed)
    assert any("document masks" in line for line in testing.check_attention("sliding-window", window=3, reference=None))
    assert "one step keeps the parameters finite" in testing.check_optimizer("sgd", lr=0.1)
    assert "final_norm is RMSNorm" in testing.check_norm("rms-pre")
    assert "both splits yield str documents; start=1 skips the first" in testing.check_dataset("sums", n_documents=50)


def test_attention_meant_to_differ_from_eager_fails_only_when_it_must_match(examples):
    with pytest.raises(ContractError, match="causal attention: differs from the reference by"):
        testing.check_attention("sliding-window", window=3)
    passed = testing.check_attention("sliding-window", window=3, must_match=False)
    assert any("differs from the reference" in line for line in passed)


def seq_first(context):
    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale).transpose(1, 2)
    return attend


def no_documents(context):
    """Causal attention that ignores `docs`."""
    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        mask = attention_mask(q.size(-2), k.size(-2), causal, None, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return attend


def start_aligned(context):
    """torch's is_causal, which aligns the mask to the first key: wrong for several queries against a KV cache."""
    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if docs is None else docs.mask(),
                                              is_causal=causal and docs is None, scale=scale)
    return attend


class NoFinalNorm(nn.Module):
    def __init__(self, d_model, n_layers):
        super().__init__()

    def forward(self, x, attn, ffn):
        return x + attn(x) + ffn(x)


class NoStart:
    fingerprint = "no-start"

    def documents(self, split, start=0):
        return iter([f"{split} document {i}" for i in range(5)])


class Unpicklable:
    vocab_size, eos_id = 257, 256

    def __init__(self):
        self.encode = lambda text: list(text.encode())

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode(errors="replace")


@pytest.mark.parametrize("check,factory,says", [
    (testing.check_attention, seq_first, "that is (batch, seq, heads, head_dim): transpose(1, 2) it back"),
    (testing.check_attention, no_documents, "document masks: a document's outputs change"),
    (testing.check_attention, start_aligned, "KV cache (three queries, end-aligned causal): differs"),
    (testing.check_norm, NoFinalNorm, "its module has no `final_norm`"),
    (testing.check_optimizer, lambda param_groups: torch.optim.SGD, "returned the class SGD, not an optimizer"),
    (testing.check_scheduler, lambda max_steps: 0.5, "returned a float, not a function step -> multiplier"),
    (testing.check_dataset, lambda val_fraction: NoStart(), "documents('train', start=1) does not begin with the second"),
    (testing.check_tokenizer, lambda corpus: Unpicklable(), "its tokenizer does not pickle"),
])
def test_the_kit_names_what_is_broken(check, factory, says):
    with pytest.raises(ContractError) as failed:
        check(factory)
    assert says in str(failed.value)
    assert isinstance(failed.value, AssertionError)  # pytest reports it as a failed assertion


def test_the_kit_checks_a_factory_as_register_would():
    with pytest.raises(PluginError, match=r"cannot be called as factory\(context, \*\*options\)"):
        testing.check_attention(lambda: None)
    with pytest.raises(PluginError, match="requires the option 'window'"):
        testing.check_attention(lambda context, *, window: no_documents(context))
    with pytest.raises(PluginError, match="has no option 'windw'"):
        testing.check_attention("sdpa", windw=3)


def test_plugins_check_prints_what_passed(examples, capsys):
    assert main(["plugins", "--check", "sliding-window", "--option", "window=3"]) == 0
    out = capsys.readouterr().out
    assert f"attention plugin 'sliding-window' (from file {EXAMPLES['sliding_window']}):" in out
    assert "  ok      causal attention: no position sees a later one" in out


def test_plugins_check_reports_a_broken_plugin(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text(textwrap.dedent('''
        import b6lab

        @b6lab.hookimpl
        def b6lab_register_scheduler(register):
            register("half", lambda max_steps: 0.5)
    '''))
    try:
        assert main(["plugins", "--plugin", str(path), "--check", "half"]) == 1
    finally:
        registry.unregister_plugin(f"file:{path}")
    assert "  FAILED  returned a float, not a function step -> multiplier" in capsys.readouterr().out
    assert main(["plugins", "--check", "no-such-part"]) == 2
    assert "unknown plugin 'no-such-part'" in capsys.readouterr().err
    assert main(["plugins", "--check", "sdpaa"]) == 2
    assert "unknown plugin 'sdpaa' (did you mean 'sdpa'?)" in capsys.readouterr().err


@pytest.mark.slow
def test_the_readme_packaging_example_installs_as_written(tmp_path):
    """The pyproject.toml of plugins/README.md, built and installed with pip (no network: the build
    backend is the environment's, --no-build-isolation), then seen by `b6lab plugins`."""
    pytest.importorskip("setuptools")
    readme = (ROOT / "plugins" / "README.md").read_text()
    pyproject = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    package = tmp_path / "package"
    package.mkdir()
    (package / "pyproject.toml").write_text(pyproject)
    for module in re.findall(r'= "(b6lab_\w+)"', pyproject):
        (package / f"{module}.py").write_text((ROOT / "plugins" / f"{module.removeprefix('b6lab_')}.py").read_text())
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(package)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    env = os.environ | {"PYTHONPATH": f"{target}{os.pathsep}{ROOT}", "B6LAB_LOAD_ENTRYPOINTS": "1"}
    listed = subprocess.run([sys.executable, "-m", "b6lab.cli", "plugins"], capture_output=True, text=True, timeout=120, env=env)
    assert listed.returncode == 0, listed.stderr
    for name in ("sliding-window", "sgd", "rms-pre", "sums"):
        assert re.search(rf"  {re.escape(name)} +usable; from package b6lab-example-plugins 0\.1\.0 \(entry point", listed.stdout)


def test_check_norm_passes_make_norm_to_a_placement_that_takes_it():
    built = []

    def rms_norm(dim):
        built.append(dim)
        return nn.RMSNorm(dim)

    assert testing.check_norm("pre", make_norm=rms_norm) and built and set(built) == {16}
    assert testing.check_norm("pre", make_norm=nn.RMSNorm)


def test_load_plugin_loads_a_file_to_check_its_parts_by_name(unload_new_plugins):
    [reg] = testing.load_plugin(EXAMPLES["rmsnorm_pre"])
    assert (reg.kind, reg.name) == ("norm", "rms-pre") and reg.source == f"file {EXAMPLES['rmsnorm_pre']}"
    assert "final_norm is RMSNorm" in testing.check_norm(reg.name)
    with pytest.raises(PluginError, match="builds its own norms .*takes no make_norm"):
        testing.check_norm(reg.name, make_norm=nn.RMSNorm)


def test_plugins_check_runs_in_the_precision_training_would_pick(tmp_path, capsys, unload_new_plugins):
    from b6lab.train import hardware

    path = tmp_path / "fp32_attention.py"
    path.write_text(textwrap.dedent('''
        import torch.nn.functional as F
        from b6lab.attention import attention_mask

        def fp32_only(context):
            """Attention that returns float32 whatever q's dtype (a bf16 run's blocks then get fp32)."""
            def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
                mask = attention_mask(q.size(-2), k.size(-2), causal, docs, q.device)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).float()
            return attend

        def b6lab_register_attention(register):
            register("fp32-only", fp32_only)
    '''))
    assert main(["plugins", "--plugin", str(path), "--check", "fp32-only", "--precision", "fp32"]) == 0
    assert "checked on cpu in fp32 " in capsys.readouterr().out
    assert main(["plugins", "--plugin", str(path), "--check", "fp32-only", "--precision", "bf16"]) == 1
    out = capsys.readouterr().out
    assert "checked on cpu in bf16 " in out and "FAILED" in out and "dtype" in out
    # Without --precision: what a run with train.precision auto picks on this machine.
    main(["plugins", "--plugin", str(path), "--check", "fp32-only"])
    auto = hardware.resolve_precision("auto", hardware.resolve_device("auto"))
    assert f"checked on cpu in {auto} " in capsys.readouterr().out
