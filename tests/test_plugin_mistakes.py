"""Every plugin author's mistake of issue 11, each a small plugin file: `b6lab train` ends in one
line naming the file (or the plugin and its source) and what to do, exit status 2, and nothing
trained. Loading runs a plugin's hooks once, so most mistakes fail before any data is read."""

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from b6lab import parts, registry
from b6lab.attention import AttentionContext
from b6lab.cli import main
from b6lab.config import load_config
from b6lab.errors import PluginError

CPU = AttentionContext(torch.device("cpu"), torch.float32, head_dim=32)
ROOT = Path(__file__).resolve().parents[1]


# Every test here loads plugin files; each is unloaded after its test (conftest.unload_new_plugins).
pytestmark = pytest.mark.usefixtures("unload_new_plugins")


def plugin_file(tmp_path: Path, source: str, name: str = "my_plugin.py") -> Path:
    path = tmp_path / name
    path.write_text("import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\nimport b6lab\n"
                    + textwrap.dedent(source))
    return path


def train(tmp_path: Path, capsys, plugin: Path | None, *overrides: str) -> tuple[int, str]:
    """`b6lab train` on the tiny preset with the plugin file; (exit status, the error line)."""
    sets = [f"plugins=[{plugin}]"] if plugin else []
    sets += ["data.tokenizer=byte", "train.max_steps=2", "train.eval_interval=2", "train.eval_steps=1",
             "logging.progress=false", f"train.out_dir={tmp_path / 'run'}", *overrides]
    status = main(["train", "--preset", "tiny", *[arg for text in sets for arg in ("--set", text)]])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()
    return status, err.strip().splitlines()[-1]


def assert_fails(tmp_path, capsys, source: str, *overrides: str, says: str) -> str:
    path = plugin_file(tmp_path, source)
    status, line = train(tmp_path, capsys, path, *overrides)
    assert status == 2
    assert str(path) in line and says in line, line
    return line


ATTENTION_OK = '''
def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
'''


# ----------------------------------------------------------------------------------------------
# Loading: hooks, markers, register() calls


def test_a_misspelled_hook_names_the_file_and_the_closest_hook(tmp_path, capsys):
    assert_fails(tmp_path, capsys, '''
        @b6lab.hookimpl
        def b6lab_register_attn(register):
            pass
    ''', says="unknown b6lab hook 'b6lab_register_attn' (did you mean 'b6lab_register_attention'?)")


def test_a_hook_without_the_hookimpl_decorator_is_found_by_its_name(tmp_path):
    path = plugin_file(tmp_path, ATTENTION_OK + '''
def plain(context):
    return attend

def b6lab_register_attention(register):
    register("undecorated", plain)
''')
    registry.load_plugin_path(str(path))
    assert registry.get("attention", "undecorated").source == f"file {path}"


def test_another_projects_hookimpl_marker_is_named(tmp_path, capsys):
    assert_fails(tmp_path, capsys, '''
        import pluggy
        hookimpl = pluggy.HookimplMarker("llm")

        @hookimpl
        def b6lab_register_optimizer(register):
            register("sgd2", lambda param_groups: torch.optim.SGD(param_groups, lr=0.1))
    ''', says="is marked by HookimplMarker('llm'), another project's; decorate it with @b6lab.hookimpl")


def test_a_hook_returning_its_parts_instead_of_registering_them(tmp_path, capsys):
    assert_fails(tmp_path, capsys, '''
        @b6lab.hookimpl
        def b6lab_register_scheduler(register):
            return {"flat": lambda max_steps: (lambda step: 1.0)}
    ''', says="b6lab_register_scheduler returned a dict, which b6lab ignores; call register(name, factory)")


def test_a_plugin_that_registers_nothing_is_a_warning_naming_it(tmp_path, capsys):
    path = plugin_file(tmp_path, "HELPER = 1\n")
    assert main(["plugins", "--plugin", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"b6lab: warning: plugin file {path} registers nothing" in err


def test_a_misnamed_hook_argument_is_one_line_naming_the_file(tmp_path, capsys):
    assert_fails(tmp_path, capsys, '''
        @b6lab.hookimpl
        def b6lab_register_norm(reg):
            pass
    ''', says="b6lab_register_norm(reg) must take one argument called `register`")


def test_register_without_a_name(tmp_path, capsys):
    assert_fails(tmp_path, capsys, '''
        def sgd(param_groups):
            return torch.optim.SGD(param_groups, lr=0.1)

        @b6lab.hookimpl
        def b6lab_register_optimizer(register):
            register(sgd)
    ''', says="register(sgd) must be register(name, factory, unavailable=None); it needs a name first")


def test_register_with_a_factory_that_is_no_function(tmp_path, capsys):
    assert_fails(tmp_path, capsys, '''
        @b6lab.hookimpl
        def b6lab_register_optimizer(register):
            register("sgd2", torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    ''', says="the factory of optimizer plugin 'sgd2' is")


def test_an_attention_factory_without_context(tmp_path, capsys):
    assert_fails(tmp_path, capsys, ATTENTION_OK + '''
def no_context(*, window: int = 4):
    return attend

@b6lab.hookimpl
def b6lab_register_attention(register):
    register("no-context", no_context)
''', "model.attention=no-context", says="cannot be called as factory(context, **options)")


# ----------------------------------------------------------------------------------------------
# Options: required ones, and names that collide


def test_a_keyword_only_option_without_a_default_is_required(tmp_path, capsys):
    source = ATTENTION_OK + '''
def needs_window(context, *, window: int):
    return attend

@b6lab.hookimpl
def b6lab_register_attention(register):
    register("needs-window", needs_window)
'''
    path = plugin_file(tmp_path, source)
    status, line = train(tmp_path, capsys, path, "model.attention=needs-window")
    assert status == 2
    assert f"model.window is required by attention plugin 'needs-window' (from file {path})" in line
    assert main(["plugins", "--plugin", str(path)]) == 0
    assert "Options: window (required)." in capsys.readouterr().out


def test_an_option_named_like_a_section_key(tmp_path, capsys):
    assert_fails(tmp_path, capsys, ATTENTION_OK + '''
def leaky(context, *, dropout: float = 0.1):
    return attend

@b6lab.hookimpl
def b6lab_register_attention(register):
    register("leaky", leaky)
''', "model.attention=leaky", says="has an option 'dropout', which is also the config key model.dropout")


def test_two_chosen_plugins_with_the_same_option(tmp_path, capsys):
    line = assert_fails(tmp_path, capsys, ATTENTION_OK + '''
def stable(context, *, eps: float = 1e-6):
    return attend

class EpsPre(nn.Module):
    final_norm = True

    def __init__(self, d_model, n_layers, *, eps: float = 1e-5):
        super().__init__()
        self.ln = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x, attn, ffn):
        x = x + attn(self.ln(x))
        return x + ffn(self.ln(x))

@b6lab.hookimpl
def b6lab_register_attention(register):
    register("stable", stable)

@b6lab.hookimpl
def b6lab_register_norm(register):
    register("eps-pre", EpsPre)
''', "model.attention=stable", "model.norm=eps-pre", says="model.eps is an option of both")
    assert "attention plugin 'stable'" in line and "norm plugin 'eps-pre'" in line


# ----------------------------------------------------------------------------------------------
# Results: each kind's part checked as soon as it is built


def attention_plugin(name: str, attend_body: str) -> str:
    """A plugin file registering attention `name` whose attend(q, k, v, ...) runs `attend_body`."""
    return f'''
def factory(context):
    def attend(q, k, v, *, causal, docs=None, dropout_p=0.0, scale):
{textwrap.indent(textwrap.dedent(attend_body).strip(), " " * 8)}
    return attend

@b6lab.hookimpl
def b6lab_register_attention(register):
    register({name!r}, factory)
'''


def test_attention_in_the_wrong_layout(tmp_path, capsys):
    assert_fails(tmp_path, capsys, attention_plugin("seq-first", """
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
        return out.transpose(1, 2)
    """), "model.attention=seq-first", says="that is (batch, seq, heads, head_dim): transpose(1, 2) it back")


def test_attention_that_ignores_causal(tmp_path, capsys):
    assert_fails(tmp_path, capsys, attention_plugin("peeking", """
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    """), "model.attention=peeking", says="with causal=True a position sees only itself and earlier ones")


def test_an_attention_factory_returning_a_tensor(tmp_path, capsys):
    assert_fails(tmp_path, capsys, '''
@b6lab.hookimpl
def b6lab_register_attention(register):
    register("tensor", lambda context: torch.zeros(2))
''', "model.attention=tensor", says="returned a Tensor, not a backend function")


def test_a_backend_without_the_keyword_arguments(tmp_path, capsys):
    assert_fails(tmp_path, capsys, '''
def positional(context):
    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attend

@b6lab.hookimpl
def b6lab_register_attention(register):
    register("positional", positional)
''', "model.attention=positional", says="cannot be called as backend(q, k, v, *, causal, docs, dropout_p, scale)")


@pytest.mark.parametrize("returned,says", [
    ("torch.optim.SGD", "returned the class SGD, not an optimizer: return SGD(param_groups, ...)"),
    ("[torch.optim.SGD(param_groups, lr=0.1)]", "returned a list, not a torch.optim.Optimizer"),
    ("torch.optim.SGD(param_groups[:1], lr=0.1)", "parameters it was given: build it over param_groups"),
])
def test_an_optimizer_factory_returning_something_else(tmp_path, capsys, returned, says):
    line = assert_fails(tmp_path, capsys, f'''
def odd(param_groups):
    return {returned}

@b6lab.hookimpl
def b6lab_register_optimizer(register):
    register("odd", odd)
''', "optim.name=odd", says=says)
    assert line.startswith("b6lab train: error: optim.name: optimizer plugin 'odd' (from file")


@pytest.mark.parametrize("returned,says", [
    ("0.5", "returned a float, not a function step -> multiplier"),
    ("torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), lambda s: 1.0)",
     "returned a torch LambdaLR; b6lab scales the lr itself"),
    ("lambda step: float('nan')", "gave nan; it must be a finite number >= 0"),
])
def test_a_scheduler_returning_something_else(tmp_path, capsys, returned, says):
    assert_fails(tmp_path, capsys, f'''
def odd(max_steps):
    return {returned}

@b6lab.hookimpl
def b6lab_register_scheduler(register):
    register("odd", odd)
''', "schedule.name=odd", says=says)


def test_a_norm_without_final_norm(tmp_path, capsys):
    assert_fails(tmp_path, capsys, '''
class Bare(nn.Module):
    def __init__(self, d_model, n_layers):
        super().__init__()
        self.ln = nn.LayerNorm(d_model)

    def forward(self, x, attn, ffn):
        x = x + attn(self.ln(x))
        return x + ffn(self.ln(x))

@b6lab.hookimpl
def b6lab_register_norm(register):
    register("bare", Bare)
''', "model.norm=bare", says="its module has no `final_norm`: set it to True")


def test_a_dataset_without_documents(tmp_path, capsys):
    assert_fails(tmp_path, capsys, '''
class Listing:
    fingerprint = "listing"

    def docs(self, split):
        return iter(["text"])

@b6lab.hookimpl
def b6lab_register_dataset(register):
    register("listing", lambda val_fraction: Listing())
''', "data.source=listing", says="without a documents(split, start=0) method")


NESTEROV = '''
def nesterov(param_groups, *, lr: float = 0.1, momentum: float = 0.9):
    """SGD with Nesterov momentum: torch refuses momentum 0 with a ValueError."""
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=True)

@b6lab.hookimpl
def b6lab_register_optimizer(register):
    register("nesterov", nesterov)
'''
NESTEROV_ERROR = "raised ValueError: Nesterov momentum requires a momentum and zero dampening"


def test_a_plugins_own_error_is_one_line_naming_it(tmp_path, capsys):
    path = plugin_file(tmp_path, NESTEROV)
    status, line = train(tmp_path, capsys, path, "optim.name=nesterov", "optim.momentum=0")
    assert status == 2
    assert line == f"b6lab train: error: optim.name: optimizer plugin 'nesterov' (from file {path}) {NESTEROV_ERROR}"


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path, capsys):
    path = plugin_file(tmp_path, NESTEROV)
    for argv in (["--debug", "train"], ["train", "--debug"]):
        argv += ["--preset", "tiny", "--set", f"plugins=[{path}]", "--set", "optim.name=nesterov", "--set", "optim.momentum=0",
                 "--set", "data.tokenizer=byte", "--set", f"train.out_dir={tmp_path / 'run'}", "--set", "logging.progress=false"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "ValueError: Nesterov momentum requires a momentum" in err
        assert err.strip().splitlines()[-1].endswith(NESTEROV_ERROR)


def test_a_bad_optimizer_option_in_a_sweep_fails_before_the_first_trial(tmp_path, capsys):
    path = plugin_file(tmp_path, NESTEROV)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(textwrap.dedent(f"""
        name: bad-momentum
        plugins: [{path}]
        base: {{preset: tiny, set: {{data.tokenizer: byte, optim.name: nesterov}}}}
        grid: {{optim.momentum: [0.9, 0]}}
        storage: {tmp_path / 'sweep'}
    """))
    assert main(["sweep", str(sweep), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "momentum=0" in err and f"optimizer plugin 'nesterov' (from file {path}) {NESTEROV_ERROR}" in err
    cfg = load_config(preset="tiny", overrides=[f"plugins=[{path}]", "optim.name=nesterov", "optim.momentum=0"])
    with pytest.raises(PluginError, match="optimizer plugin 'nesterov'"):
        parts.check_plugins(cfg, CPU)


# ----------------------------------------------------------------------------------------------
# A norm placement may supply the final norm


def test_a_norm_placement_supplies_the_models_final_norm(tmp_path):
    registry.load_plugin_path(str(ROOT / "plugins" / "rmsnorm_pre.py"))
    cfg = load_config(preset="tiny", overrides=["model.norm=rms-pre", "model.vocab_size=64"])
    model, _ = parts.build_model(cfg.model, CPU)
    assert isinstance(model.final_norm, nn.RMSNorm)
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert not any(hasattr(block.wiring, "final_norm") for block in model.blocks)  # no unused copies
    names = [name for name, _ in model.named_parameters()]
    assert "final_norm.weight" in names and len(names) == len(set(names))
    loss = model(torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16)))
    loss.backward()
    assert model.final_norm.weight.grad is not None


# ----------------------------------------------------------------------------------------------
# Across processes


TOKENIZER_PLUGIN = '''
class Letters:
    vocab_size, eos_id = 257, 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

@b6lab.hookimpl
def b6lab_register_tokenizer(register):
    register("letters", lambda corpus: Letters())
'''


@pytest.mark.slow
def test_a_tokenizer_from_a_plugin_file_unpickles_in_another_process(tmp_path):
    path = plugin_file(tmp_path, TOKENIZER_PLUGIN, name="letters.py")
    registry.load_plugin_path(str(path))
    tokenizer = registry.get("tokenizer", "letters").build(None)
    assert type(tokenizer).__module__ == registry.plugin_module_name(path)
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps(tokenizer))
    script = (f"from b6lab import registry; import pickle; registry.load_plugin_path({str(path)!r}); "
              f"print(pickle.loads(open({str(tmp_path / 'tokenizer.pkl')!r}, 'rb').read()).encode('hi'))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[104, 105]"


@pytest.mark.slow
def test_a_file_plugin_also_installed_as_a_package_names_both_and_the_fix(tmp_path):
    """A run made with plugins: [alibi.py], resumed once the same plugin is installed."""
    path = plugin_file(tmp_path, ATTENTION_OK + '''
def alibi(context):
    return attend

@b6lab.hookimpl
def b6lab_register_attention(register):
    register("alibi", alibi)
''', name="alibi.py")
    site = tmp_path / "site"
    site.mkdir()
    (site / "b6lab_alibi.py").write_text(path.read_text())
    dist_info = site / "b6lab_alibi-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: b6lab-alibi\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text("[b6lab]\nalibi = b6lab_alibi\n")
    env = os.environ | {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "B6LAB_LOAD_ENTRYPOINTS": "1"}
    done = subprocess.run([sys.executable, "-m", "b6lab.cli", "train", "--preset", "tiny", "--set", f"plugins=[{path}]",
                           "--set", "model.attention=alibi", "--set", f"train.out_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert (f"attention plugin 'alibi' is registered twice: by package b6lab-alibi 0.1.0 (entry point alibi) "
            f"and by file {path}") in line
    assert f"drop {path} from plugins: (on resume: --set plugins=[])" in line and "pip uninstall b6lab-alibi" in line


@pytest.mark.slow
def test_resuming_or_sampling_with_a_changed_plugin_says_which_sources_differ(tmp_path, capsys):
    path = plugin_file(tmp_path, (ROOT / "plugins" / "sgd_momentum.py").read_text(), name="sgd.py")
    run = tmp_path / "run"
    sets = [f"plugins=[{path}]", "optim.name=sgd", "data.tokenizer=byte", "train.max_steps=2", "train.eval_interval=2",
            "train.eval_steps=1", "logging.progress=false", f"train.out_dir={run}"]
    assert main(["train", "--preset", "tiny", *[arg for text in sets for arg in ("--set", text)]]) == 0
    made_with = registry.get("optimizer", "sgd").version
    registry.unregister_plugin(f"file:{path}")
    path.write_text(path.read_text() + "\n# edited after the run\n")
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "def", "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    now = registry.get("optimizer", "sgd").version
    assert now != made_with
    assert (f"optimizer plugin 'sgd' comes from file {path} ({now}), but the run was made with file {path} "
            f"({made_with}): restore that one to continue exactly") in err
    registry.unregister_plugin(f"file:{path}")
    assert main(["train", "--resume", "--set", f"train.out_dir={run}", "--set", "train.max_steps=3"]) == 0
    assert "note: optimizer plugin 'sgd' comes from file" in capsys.readouterr().err


def test_a_hook_without_its_register_argument(tmp_path, capsys):
    assert_fails(tmp_path, capsys, '''
        @b6lab.hookimpl
        def b6lab_register_optimizer():
            pass
    ''', says="b6lab_register_optimizer() must take one argument called `register`")
