"""model.init: the weights' starting values (gpt2, the unchanged default; xavier, fairseq's), a plugin kind."""

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import yaml

import b6lab
from b6lab import parts, testing
from b6lab.cli import main
from b6lab.config import load_config
from tests.test_model import CPU32

D_MODEL, N_LAYERS = 64, 4


def build(init="gpt2", norm="pre", seed=0, **model_overrides):
    cfg = load_config(preset="tiny", overrides=[f"model.init={init}", f"model.norm={norm}", "model.attention=eager"])
    model_cfg = replace(cfg.model, vocab_size=256, d_model=D_MODEL, n_heads=4, n_layers=N_LAYERS, **model_overrides)
    torch.manual_seed(seed)
    model, _ = parts.build_model(model_cfg, replace(CPU32, head_dim=model_cfg.head_dim))
    return model


def gpt2_init_as_it_was(model):
    """B6._init_weights before init became a plugin (commit 31dde47), word for word: the reference
    the default must still match bit for bit."""

    def init_weights(module):
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * model.cfg.n_layers) if getattr(module, "residual_projection", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    model.apply(init_weights)


class OldInit:
    @b6lab.hookimpl
    def b6lab_register_init(self, register):
        register("as-it-was", lambda: gpt2_init_as_it_was)


@pytest.mark.parametrize("norm", ["pre", "post", "deepnorm"])  # deepnorm: its own init_residual still runs after
def test_the_default_init_is_bit_identical_to_the_old_gpt2_init(register_plugin, norm):
    register_plugin(OldInit(), "old-init")
    default, old = build(norm=norm, init="gpt2"), build(norm=norm, init="as-it-was")
    assert load_config(preset="tiny").model.init == "gpt2"
    assert default.state_dict().keys() == old.state_dict().keys()
    for name, tensor in default.state_dict().items():
        assert torch.equal(tensor, old.state_dict()[name]), name


def test_a_tiny_run_has_the_same_losses_with_the_default_and_the_old_init(register_plugin, tmp_path, tiny_run):
    register_plugin(OldInit(), "old-init")
    losses = {}
    for init in ("gpt2", "as-it-was"):
        tiny_run.train(tmp_path / init, "train.log_interval=1", "train.precision=fp32", f"model.init={init}",
                       f"train.out_dir={tmp_path / init}", max_steps=6, eval_interval=3, eval_steps=1)
        rows = [json.loads(line) for line in (tmp_path / init / "metrics.jsonl").read_text().splitlines()]
        losses[init] = [(row["step"], row.get("loss"), row.get("val_loss")) for row in rows
                        if "loss" in row or "val_loss" in row]
    assert len(losses["gpt2"]) >= 6 and losses["gpt2"] == losses["as-it-was"]


def uniform_bound(weight, gain=1.0):
    fan_out, fan_in = weight.shape
    return gain * math.sqrt(6 / (fan_in + fan_out))


def assert_uniform(weight, bound):
    """Xavier-uniform U(-bound, bound): inside the bound, reaching near it, with sd bound / sqrt(3)."""
    assert weight.abs().max() <= bound
    assert weight.abs().max() > 0.95 * bound
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.06)


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_xavier_gives_fairseqs_weight_statistics(n_kv_heads):
    model = build("xavier", bias=True, attn_bias=True, n_kv_heads=n_kv_heads)
    assert model.tok_emb.weight.std().item() == pytest.approx(D_MODEL ** -0.5, rel=0.03)
    assert model.lm_head.weight is model.tok_emb.weight  # tied: the output projection is the embedding
    for block in model.blocks:
        attn = block.attn
        kv_dim = (attn.qkv.weight.size(0) - D_MODEL) // 2
        assert kv_dim == (n_kv_heads or 4) * attn.head_dim
        for weight in attn.qkv.weight.detach().split([D_MODEL, kv_dim, kv_dim]):  # q, k, v: gain 1/sqrt(2) each
            assert_uniform(weight, uniform_bound(weight, 1 / math.sqrt(2)))
        for linear in (attn.proj, block.ffn.up, block.ffn.down):  # no residual scaling: proj and down as the rest
            assert_uniform(linear.weight.detach(), uniform_bound(linear.weight))
        for linear in (attn.qkv, attn.proj, block.ffn.up, block.ffn.down):
            assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
        for norm in (block.wiring.ln_attn, block.wiring.ln_ffn):  # the norms keep their gain 1, bias 0
            assert torch.equal(norm.weight, torch.ones_like(norm.weight))


def test_xavier_gives_an_untied_lm_head_the_embeddings_normal():
    model = build("xavier", tie_embeddings=False)
    assert model.lm_head.weight is not model.tok_emb.weight
    assert model.lm_head.weight.std().item() == pytest.approx(D_MODEL ** -0.5, rel=0.03)
    assert model.lm_head.weight.abs().max() > 3 * D_MODEL ** -0.5  # a normal's tail, not a uniform's bound


def test_gpt2_gives_its_weight_statistics():
    model = build("gpt2")
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.03)
    for block in model.blocks:
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.ffn.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
        for residual in (block.attn.proj, block.ffn.down):
            assert residual.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * N_LAYERS), rel=0.05)


def test_the_two_inits_give_post_ln_very_different_branches_at_step_0():
    """What issue 29 found at the study's width: GPT-2's init leaves a Post-LN branch a fraction of a
    percent of the skip path, Xavier tens of percent (the point of comparing them)."""
    ratios = {}
    for init in ("gpt2", "xavier"):
        model = build(init, norm="post").eval()
        x = model.tok_emb(torch.randint(0, 256, (4, 32)))
        rope = model.rope(32)
        with torch.no_grad():
            x = model.blocks[0].wiring.ln_attn(x + model.blocks[0].attn(x, rope))  # block 0's attention in, as run
            branch = model.blocks[1].attn(x, rope)
        ratios[init] = (branch.norm() / x.norm()).item()
    assert ratios["gpt2"] < 0.01 and ratios["xavier"] > 0.1


def test_an_unknown_init_is_one_line_listing_the_known_ones(capsys):
    code = main(["train", "--preset", "tiny", "--set", "model.init=kaiming"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "model.init" in lines[0] and "'kaiming'" in lines[0] and "gpt2" in lines[0] and "xavier" in lines[0]


def test_config_yaml_records_the_init(tiny_overrides, tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--quiet", "--set", "model.init=xavier", "--set", "train.max_steps=2",
                 *(f"--set={o}" for o in tiny_overrides if "max_steps" not in o)]) == 0
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["model"]["init"] == "xavier"


def test_b6lab_plugins_lists_the_inits(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("\ninit\n"):].split("\n\n")[0]
    assert "gpt2" in section and "xavier" in section and "built-in (b6lab.plugins.inits)" in section


class ReturnsNothing:
    @b6lab.hookimpl
    def b6lab_register_init(self, register):
        register("broken", lambda: None)


def test_an_init_plugin_that_returns_no_function_is_one_line_naming_it(register_plugin, capsys):
    register_plugin(ReturnsNothing(), "broken-init")
    code = main(["train", "--preset", "tiny", "--set", "model.init=broken"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "model.init" in err and "'broken'" in err and "not a function init(model)" in err


def test_export_ignores_the_init_a_training_time_choice(tmp_path, capsys):
    """The weights exported are what training made of the starting values; an xavier run exports as
    the same HF architecture as a gpt2 one, with the same logits."""
    from tests.test_export import assert_round_trip, export_cli, make_loud, train

    run = make_loud(train(tmp_path / "run", "model.init=xavier"))
    code, out, err = export_cli(capsys, run, tmp_path / "hf")
    assert code == 0, err
    assert "init" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    assert_round_trip(run, tmp_path / "hf", "GPTNeoXForCausalLM")


class LeavesNaN:
    @b6lab.hookimpl
    def b6lab_register_init(self, register):
        def nan_embeddings():
            return lambda model: model.tok_emb.weight.data.fill_(float("nan"))

        register("nan-embeddings", nan_embeddings)


def test_the_plugin_kit_checks_an_init(register_plugin, capsys):
    assert testing.check("init", "xavier") == ["a function init(model)", "every parameter finite"]
    register_plugin(LeavesNaN(), "nan-init")
    with pytest.raises(testing.ContractError, match="left tok_emb.weight with non-finite values"):
        testing.check_init("nan-embeddings")
    assert main(["plugins", "--check", "xavier"]) == 0  # (gpt2 is also a tokenizer, which --check would build too)
    assert "every parameter finite" in capsys.readouterr().out
