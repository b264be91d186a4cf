"""`b6lab export`: b6lab -> Hugging Face -> the same logits and the same greedy tokens, for every
built-in norm placement and tokenizer; safetensors; refusals that name what cannot be expressed."""

import argparse
import dataclasses
import inspect
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from b6lab import parts
from b6lab.attention import AttentionContext
from b6lab.cli import main
from b6lab.config import config_from_dict, load_config
from b6lab.generate import load_for_sampling, sample
from tests.tiny import TinyRun

TEXT = "def main():\n    print('h\u00e9llo \u2713 <|endoftext|>')\n    return 0\n"


def train(root, *overrides):
    """A tiny run of two steps in fp32: export needs a checkpoint, not a good model."""
    TinyRun.train(root, "train.precision=fp32", *overrides, max_steps=2, eval_interval=2, eval_steps=1)
    return root


def make_loud(run):
    """Replace the trained weights by larger random ones. A few steps leave attention nearly uniform,
    and a model whose attention barely matters would hide a wrong RoPE or head layout in the 5th
    decimal; with these, such a mistake moves the logits by whole units."""
    path = run / "checkpoints" / "best" / "model.pt"
    state = torch.load(path)
    generator = torch.Generator().manual_seed(0)
    for name, tensor in state.items():
        if tensor.dim() == 2:
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * (0.3 if "qkv" in name else 0.1))
        elif name.endswith("bias"):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    torch.save(state, path)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return {
        "pre": make_loud(train(root / "pre", "model.attn_bias=true", "model.bias=true")),
        "post": make_loud(train(root / "post", "model.norm=post")),
    }


def export_cli(capsys, *args):
    code = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_round_trip(run, out, expected_class, trust_remote_code=False):
    b6, tokenizer, _ = load_for_sampling(run, "cpu")
    hf_model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=trust_remote_code).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=trust_remote_code)
    assert type(hf_model).__name__ == expected_class
    ids = tokenizer.encode(TEXT)
    assert hf_tokenizer.encode(TEXT, add_special_tokens=False) == ids
    assert hf_tokenizer.decode(ids) == tokenizer.decode(ids) == TEXT
    with torch.no_grad():
        expected, got = b6(torch.tensor([ids])), hf_model(torch.tensor([ids])).logits
    assert expected.abs().max() > 1.0  # loud enough for the comparison to mean something
    assert (expected - got).abs().max().item() < 1e-4
    prompt = ids[:6]
    ours = list(sample(b6, prompt, max_new_tokens=24, temperature=0, eos_id=tokenizer.eos_id))
    theirs = hf_model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
    assert theirs[: len(ours)] == ours and theirs[len(ours):] in ([], [tokenizer.eos_id])  # b6lab stops before the eos
    return b6, hf_model, tokenizer


def test_a_pre_ln_b6_exports_as_gpt_neox_with_the_same_logits_and_greedy_tokens(runs, tmp_path, capsys):
    code, out, err = export_cli(capsys, runs["pre"], tmp_path / "hf")
    assert code == 0, err
    assert "GPT-NeoX" in out
    written = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= written
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "gpt_neox" and config["use_parallel_residual"] is False and "auto_map" not in config
    assert_round_trip(runs["pre"], tmp_path / "hf", "GPTNeoXForCausalLM")


def test_greedy_generation_agrees_through_the_b6lab_generate_command(runs, tmp_path, capsys):
    assert export_cli(capsys, runs["pre"], tmp_path / "hf")[0] == 0
    result = subprocess.run([sys.executable, "-m", "b6lab.cli", "generate", str(runs["pre"]), "--prompt", "def ",
                             "--temperature", "0", "--max-new-tokens", "20"], capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    prompt = hf_tokenizer("def ", return_tensors="pt").input_ids
    generated = hf_model.generate(prompt, max_new_tokens=20, do_sample=False)
    # bytes, not text mode: the random weights generate control characters such as a carriage return
    assert result.stdout.decode("utf-8")[:-1] == hf_tokenizer.decode(generated[0], skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["post", "sandwich", "deepnorm"])
def test_other_placements_export_as_b6_for_causal_lm_with_its_code(runs, tmp_path_factory, tmp_path, capsys, placement):
    run = runs["post"] if placement == "post" else make_loud(train(tmp_path_factory.mktemp(placement), f"model.norm={placement}"))
    code, out, err = export_cli(capsys, run, tmp_path / "hf")
    assert code == 0, err
    assert "trust_remote_code=True" in out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "b6" and config["norm_placement"] == placement
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_b6.B6ForCausalLM"
    assert (tmp_path / "hf" / "modeling_b6.py").is_file()
    b6, hf_model, tokenizer = assert_round_trip(run, tmp_path / "hf", "B6ForCausalLM", trust_remote_code=True)
    # a batch of two prompts, the shorter one padded on the left: each row as if generated alone
    short, long = tokenizer.encode("def f"), tokenizer.encode("import os\nx")
    batch = torch.tensor([[tokenizer.eos_id] * (len(long) - len(short)) + short, long])
    mask = torch.tensor([[0] * (len(long) - len(short)) + [1] * len(short), [1] * len(long)])
    generated = hf_model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False)
    for row, prompt in enumerate((short, long)):
        alone = list(sample(b6, prompt, max_new_tokens=10, temperature=0, eos_id=tokenizer.eos_id))
        assert generated[row, len(long) : len(long) + len(alone)].tolist() == alone


def test_a_softmax_scale_of_its_own_exports_as_b6_for_causal_lm(tmp_path, capsys):
    run = make_loud(train(tmp_path / "run", "model.softmax_scale=0.1"))
    code, out, err = export_cli(capsys, run, tmp_path / "hf")
    assert code == 0, err
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["softmax_scale"] == 0.1
    assert_round_trip(run, tmp_path / "hf", "B6ForCausalLM", trust_remote_code=True)


def gpt2_style_files(folder):
    """vocab.json and merges.txt in GPT-2's format (its byte alphabet, a few merges, <|endoftext|>),
    so the gpt2 tokenizer plugin runs offline through data.tokenizer_path."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir()
    symbols = list(bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("r", "e")]
    vocab = {symbol: i for i, symbol in enumerate(symbols + ["".join(m) for m in merges] + ["<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


@pytest.mark.parametrize("tokenizer", ["bpe", "gpt2"])
def test_byte_level_bpe_tokenizers_round_trip_through_auto_tokenizer(tmp_path, capsys, tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(inspect.getsource(argparse))  # real text, no download
    options = (["data.bpe_vocab_size=300", "data.bpe_train_mb=0.1"] if tokenizer == "bpe"
               else [f"data.tokenizer_path={gpt2_style_files(tmp_path / 'gpt2')}"])
    run = train(tmp_path / "run", "data.source=text", f"data.path={corpus}", f"data.tokenizer={tokenizer}", *options)
    code, _, err = export_cli(capsys, run, tmp_path / "hf")
    assert code == 0, err
    _, b6_tokenizer, _ = load_for_sampling(run, "cpu")
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = b6_tokenizer.encode(TEXT)
    assert len(ids) < len(TEXT.encode())  # merges applied
    assert hf_tokenizer.encode(TEXT, add_special_tokens=False) == ids and hf_tokenizer.decode(ids) == TEXT
    assert hf_tokenizer.eos_token_id == b6_tokenizer.eos_id
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"] == b6_tokenizer.eos_id


def test_safetensors_holds_every_weight_under_b6labs_names(runs, tmp_path, capsys):
    code, out, err = export_cli(capsys, runs["pre"], tmp_path / "st", "--format", "safetensors")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["config.yaml", "model.safetensors"]
    config = yaml.safe_load((tmp_path / "st" / "config.yaml").read_text())
    cfg = config_from_dict(config)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=config["run"]["resolved"]["vocab_size"])
    model, _ = parts.build_model(model_cfg, AttentionContext(torch.device("cpu"), torch.float32, model_cfg.head_dim, 0.0))
    missing, unexpected = model.load_state_dict(load_file(tmp_path / "st" / "model.safetensors"), strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []  # it is tok_emb.weight, which the model ties it to
    b6, _, _ = load_for_sampling(runs["pre"], "cpu")
    probe = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model.eval()(probe), b6(probe))


MODEL_OPTIONS = [  # the model options of issue 11, each set exported as B6ForCausalLM
    ["model.norm=peri"],
    ["model.norm_layer=rmsnorm", "model.feedforward=swiglu", "model.n_kv_heads=1"],
    ["model.norm_layer=layernorm-nobias", "model.qk_norm=true", "model.logit_softcap=5.0", "model.feedforward=relu2",
     "model.bias=true"],
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", MODEL_OPTIONS, ids=lambda o: ",".join(x.split(".", 1)[1] for x in o))
def test_model_options_export_as_b6_for_causal_lm(tmp_path, capsys, overrides):
    # Every option exists: a renamed one fails here (train refuses an unknown key) instead of skipping.
    run = make_loud(train(tmp_path / "run", *overrides))
    code, out, err = export_cli(capsys, run, tmp_path / "hf")
    assert code == 0, err
    assert_round_trip(run, tmp_path / "hf", "B6ForCausalLM", trust_remote_code=True)


@pytest.mark.parametrize("change, message", [
    ({"norm": "my-norm"}, "norm plugin 'my-norm' has no Hugging Face form"),
    ({"attention": "sliding-window"}, "attention plugin 'sliding-window' has no Hugging Face form"),
    ({"feedforward": "geglu"}, "feedforward plugin 'geglu' has no Hugging Face form"),
    ({"norm_layer": "scalenorm"}, "model.norm_layer='scalenorm' has no Hugging Face form"),
    ({"window": 16}, "model.window=16 is not something --format hf can express"),
])
def test_what_hf_cannot_express_is_refused_by_name(runs, tmp_path, capsys, change, message):
    """Options other engineers add to the model (the config a checkpoint carries) fail safe."""
    run = tmp_path / "run"
    shutil.copytree(runs["pre"] / "checkpoints" / "best", run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"].update(change)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = export_cli(capsys, run, tmp_path / "hf")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "--format safetensors" in err and not (tmp_path / "hf").exists()


def test_bad_export_input_is_one_line_and_exit_status_2(runs, tmp_path, capsys):
    code, _, err = export_cli(capsys, tmp_path, tmp_path / "hf")
    assert code == 2 and "is not a checkpoint" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, _, err = export_cli(capsys, runs["pre"], tmp_path / "full")
    assert code == 2 and "is not empty" in err
    with pytest.raises(SystemExit) as exit_info:  # argparse: an unknown format
        main(["export", str(runs["pre"]), str(tmp_path / "o"), "--format", "onnx"])
    assert exit_info.value.code == 2
