"""model.parametrization: standard (b6lab as it was, to the bit) and mup (μP for lion and adamw), a plugin kind."""

import json
import math
from dataclasses import replace

import pytest
import torch

from b6lab import fast_paths, parts, transfer
from b6lab.cli import main
from b6lab.config import load_config
from b6lab.plugins.optimizers import is_hidden_matrix
from b6lab.train.trainer import Trainer
from tests.test_model import CPU32


def config(*overrides, width=64, heads=2):
    cfg = load_config(preset="tiny", overrides=["model.attention=eager", f"model.d_model={width}",
                                                f"model.n_heads={heads}", f"model.d_ff={4 * width}", *overrides])
    return replace(cfg, model=replace(cfg.model, vocab_size=256))


def build(cfg, seed=0):
    torch.manual_seed(seed)
    model, _ = parts.build_model(cfg.model, replace(CPU32, head_dim=cfg.model.head_dim))
    return model, parts.build_optimizer(cfg.optim, model)


def build_as_it_was(cfg, seed=0):
    """parts.build_model and build_optimizer before model.parametrization existed, word for word."""
    torch.manual_seed(seed)
    context = replace(CPU32, head_dim=cfg.model.head_dim)
    backend, _ = parts.build_attention(cfg.model, context)
    model = fast_paths.make_model(context, cfg.model, backend, parts.norm_placement(cfg.model, context),
                                  parts.feedforward(cfg.model, context), parts.initialisation(cfg.model, context))
    return model, parts._optimizer_over(cfg.optim, parts.param_groups(model, cfg.optim.decay_embeddings))


def steps(model, optimizer, n=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n):
        idx = torch.randint(0, 256, (4, 33), generator=generator)
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def assert_same(a, b):
    assert a.state_dict().keys() == b.state_dict().keys()
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name


@pytest.mark.parametrize("optimizer", ["lion", "adamw", "muon"])
def test_standard_is_bit_identical_to_b6lab_before_parametrizations(optimizer):
    cfg = config(f"optim.name={optimizer}")
    assert cfg.model.parametrization == "standard"
    (model, opt), (old_model, old_opt) = build(cfg), build_as_it_was(cfg)
    assert_same(model, old_model)
    assert model.readout_multiplier == 1.0
    settings = lambda o: [{k: v for k, v in g.items() if k != "params"} for g in o.param_groups]  # noqa: E731
    assert settings(opt) == settings(old_opt)
    assert steps(model, opt) == steps(old_model, old_opt)
    assert_same(model, old_model)


@pytest.mark.parametrize("optimizer", ["lion", "adamw"])
def test_mup_at_its_base_width_is_standard_to_the_bit(optimizer):
    standard = build(config(f"optim.name={optimizer}"))
    mup = build(config(f"optim.name={optimizer}", "model.parametrization=mup", "model.mup_base_width=64"))
    assert_same(standard[0], mup[0])
    assert steps(*standard) == steps(*mup)
    assert_same(standard[0], mup[0])


def test_mup_scales_the_hidden_matrices_lr_weight_decay_and_init_and_the_logits():
    base_width, width = 32, 128  # m = 4
    cfg = config("model.parametrization=mup", f"model.mup_base_width={base_width}", "optim.lr=1e-3",
                 "optim.weight_decay=0.1", width=width, heads=8)
    model, optimizer = build(cfg)
    standard, _ = build(config(width=width, heads=8))
    assert model.readout_multiplier == pytest.approx(base_width / width)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in optimizer.param_groups:
        hidden = {is_hidden_matrix(names[id(p)], p) for p in group["params"]}
        assert len(hidden) == 1, "a group mixes hidden matrices with other parameters"
        if hidden == {True}:
            assert group["lr"] == pytest.approx(1e-3 * base_width / width)
            assert group["weight_decay"] == pytest.approx(0.1 * width / base_width)
        else:
            assert group["lr"] == pytest.approx(1e-3)  # embeddings (tied head), norms: as standard
            assert group["weight_decay"] in (0.1, 0.0)
        seen |= {id(p) for p in group["params"]}
    assert seen == {id(p) for p in model.parameters()}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # what a run logs as its lr is optim.lr
    # Init: hidden matrices (base_width / width)^1/2 of standard's, the embedding unchanged.
    for (name, p), q in zip(model.named_parameters(), standard.parameters()):
        if is_hidden_matrix(name, p):
            assert p.std().item() == pytest.approx(q.std().item() * 0.5, rel=0.03), name
    assert torch.equal(model.tok_emb.weight, standard.tok_emb.weight)
    # The logits: the readout multiplier on the (tied) head's input.
    idx = torch.randint(0, 256, (2, 16))
    h = model.hidden_states(idx)
    assert torch.allclose(model(idx), model.lm_head(h) * base_width / width, atol=1e-6)


def test_mup_keeps_a_fixed_head_size_scale_unless_given_a_base_head_size():
    cfg = config("model.parametrization=mup", "model.mup_base_width=32", width=128, heads=2)  # head size 64
    model, _ = build(cfg)
    assert model.blocks[0].attn.scale == pytest.approx(64**-0.5)
    cfg = config("model.parametrization=mup", "model.mup_base_width=32", "model.mup_base_head_dim=16", width=128, heads=2)
    model, _ = build(cfg)
    assert model.blocks[0].attn.scale == pytest.approx(16**0.5 / 64)  # 1/d_head, equal to 1/sqrt(16) at the base


@pytest.mark.parametrize("sets, named", [
    (["model.mup_base_width=0"], "model.mup_base_width"),
    (["optim.name=muon"], "optim.name"),
    (["model.init=xavier"], "model.init"),
    (["model.mup_base_widht=32"], "model.mup_base_widht"),
])
def test_a_bad_mup_setting_is_one_line_naming_the_key(capsys, tmp_path, sets, named):
    argv = ["train", "--preset", "tiny", "--set", "model.parametrization=mup", "--set", f"train.out_dir={tmp_path}",
            "--set", "logging.progress=false"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err


def test_an_unknown_parametrization_is_one_line(capsys):
    assert main(["train", "--preset", "tiny", "--set", "model.parametrization=mu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'mup'" in err and "model.parametrization" in err, err


def test_a_mup_run_trains_resumes_and_records_its_parametrization(tmp_path, tiny_overrides):
    cfg = load_config(preset="tiny", overrides=[*tiny_overrides, "model.parametrization=mup", "model.mup_base_width=32"])
    summary = Trainer(cfg, tmp_path / "run", say=lambda m: None).run()
    assert math.isfinite(summary["final_val_loss"])
    recorded = load_config(tmp_path / "run" / "config.yaml")
    assert recorded.model.parametrization == "mup" and recorded.model.options["mup_base_width"] == 32
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("lr") for row in rows)


def coordinate_slopes(parametrization, widths=(32, 64, 128), lr=3e-3):
    from b6lab import parts as p

    base = load_config(preset="tiny", overrides=["model.attention=eager"])
    source = p.build_source(base.data)
    tokenizer = p.build_tokenizer(base.data, source)
    rms = {}
    for width in widths:
        cfg = load_config(preset="tiny", overrides=[
            "model.attention=eager", f"model.d_model={width}", f"model.n_heads={width // 16}", f"model.d_ff={4 * width}",
            f"model.parametrization={parametrization}", f"optim.lr={lr}",
            *(["model.mup_base_width=32"] if parametrization == "mup" else [])])
        rms[width] = transfer.coordinate_check(cfg, source, tokenizer, steps=4)
    return transfer.rms_slopes(rms)


def test_the_coordinate_check_is_flat_under_mup_and_grows_under_standard():
    standard, mup = coordinate_slopes("standard"), coordinate_slopes("mup")
    # The logits and each block's attention and feed-forward outputs: what a hidden matrix's update moves.
    moved = [layer for layer in standard if layer == "logits" or layer.endswith((".attn", ".ffn"))]
    for layer in moved:
        assert abs(mup[layer]) < 0.25, (layer, mup[layer])
    assert standard["logits"] > 0.5, standard
    assert sum(standard[layer] for layer in moved) / len(moved) > 0.4, standard


@pytest.mark.parametrize("name", ["standard", "mup"])
def test_the_plugin_kit_checks_a_parametrization(name):
    from b6lab import testing

    passed = testing.check("parametrization", name)
    assert any("every parameter finite" in line for line in passed)
    assert any("over all" in line for line in passed), passed


def test_export_refuses_a_mup_model_for_hf_and_keeps_standard():
    from b6lab.errors import UsageError
    from b6lab.export import hf_architecture

    model = load_config(preset="tiny").to_dict()["model"]
    assert hf_architecture({"model": model}) == "gpt_neox"  # standard, as before
    with pytest.raises(UsageError, match="parametrization plugin 'mup'.*safetensors"):
        hf_architecture({"model": {**model, "parametrization": "mup", "mup_base_width": 32}})


def test_a_run_made_before_the_key_existed_resumes_and_cannot_switch_to_mup(tmp_path, capsys):
    import re

    folder = tmp_path / "run"
    common = ["--set", f"train.out_dir={folder}", "--set", "logging.progress=false", "--quiet"]
    assert main(["train", "--preset", "tiny", "--set", "train.max_steps=4", "--set", "train.eval_interval=2", *common]) == 0
    for path in (folder / "config.yaml", folder / "checkpoints" / "last" / "config.yaml"):  # as an older b6lab wrote it
        text = path.read_text().replace("  parametrization: standard\n", "")
        path.write_text(re.sub(r"    parametrization:\n(      .*\n)+", "", text))
    assert "parametrization" not in (folder / "config.yaml").read_text()
    assert main(["train", "--resume", "--set", "train.max_steps=6", *common]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--set", "train.max_steps=8", "--set", "model.parametrization=mup", *common]) == 2
    assert "model.parametrization: cannot change when resuming" in capsys.readouterr().err
