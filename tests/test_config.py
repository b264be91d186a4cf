"""Config layers, presets, --set parsing, and the errors a user sees for a bad key or value."""

import pickle
import subprocess
import sys

import pytest

from b6lab.config import RunConfig, config_from_dict, load_config
from b6lab.errors import ConfigError
from b6lab.presets import PRESETS


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_layers_defaults_preset_file_then_set(tmp_path):
    path = write(tmp_path, "preset: tiny\nmodel: {d_model: 96, n_heads: 3}\ntrain: {max_steps: 7}\n")
    cfg = load_config(path, overrides=["train.max_steps=9", "optim.betas=[0.8,0.9]", "optim.lr=3e-4"])
    assert cfg.model.d_model == 96 and cfg.model.n_layers == PRESETS["tiny"]["model"]["n_layers"]
    assert cfg.train.max_steps == 9
    assert cfg.optim.options["betas"] == (0.8, 0.9)
    assert cfg.optim.options["lr"] == pytest.approx(3e-4)  # YAML reads 3e-4 as a string: coerced
    assert cfg.name == "run"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_resolves(preset):
    cfg = load_config(preset=preset)
    assert cfg.name == preset and cfg.model.d_model % cfg.model.n_heads == 0


def test_presets_match_the_issue():
    small = load_config(preset="cpu-small")
    assert (small.model.n_layers, small.model.d_model, small.model.n_heads, small.model.d_ff) == (6, 384, 6, 1536)
    assert (small.model.max_seq_len, small.train.batch_size) == (256, 8)
    medium = load_config(preset="gpt2-medium")
    assert (medium.model.n_layers, medium.model.d_model, medium.model.n_heads) == (24, 1024, 16)
    assert medium.model.vocab_size >= 50257


def test_config_is_plain_data_that_pickles_and_round_trips():
    cfg = load_config(preset="tiny", overrides=["optim.name=adamw", "model.norm=post"])
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    again = config_from_dict(cfg.to_dict())
    assert isinstance(again, RunConfig) and again == cfg


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        ("model: {n_head: 4}\n", "model.n_head", "did you mean 'n_heads'?"),
        ("trian: {max_steps: 4}\n", "trian", "did you mean 'train'?"),
        ("model: {d_model: wide}\n", "model.d_model", "expected an integer, got 'wide'"),
        ("model: {d_model: 100, n_heads: 3}\n", "model.n_heads", "does not divide d_model=100"),
        ("model: {d_model: 60, n_heads: 4}\n", "model.n_heads", "is odd"),
        ("train: {precision: fp8}\n", "train.precision", "one of 'auto', 'fp32', 'bf16', 'fp16'"),
        ("train: {max_steps: 0}\n", "train.max_steps", "positive"),
        ("train: {compile: maybe}\n", "train.compile", "expected true, false or 'auto', got 'maybe'"),
        ("train: {threads: 0}\n", "train.threads", "expected 'auto', an integer > 0 or null, got 0"),
        ("optim: {betas: [0.9]}\n", "optim.betas", "a list of 2"),
        ("optim: {lr: fast}\n", "optim.lr", "expected a number"),
        ("data: {val_fraction: 1.5}\n", "data.val_fraction", "(0, 1)"),
        ("data: {seq_len: 512}\nmodel: {max_seq_len: 256}\n", "data.seq_len", "longer than model.max_seq_len"),
        ("logging: {wandb: {mode: sideways}}\n", "logging.wandb.mode", "'offline'"),
    ],
)
def test_bad_keys_and_values_name_the_key_and_the_file(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(key), message
    assert str(path) in message and fragment in message


def test_a_bad_set_names_the_override():
    with pytest.raises(ConfigError) as error:
        load_config(preset="tiny", overrides=["model.n_layers=two"])
    assert "model.n_layers" in str(error.value) and "--set model.n_layers" in str(error.value)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["model.n_layers"])


def test_overrides_are_values_or_set_texts_and_say_where_they_came_from():
    as_values = load_config(preset="tiny", overrides={"optim.betas": [0.8, 0.9], "model.norm": "post", "optim.lr": "1e-3"})
    as_texts = load_config(preset="tiny", overrides=["optim.betas=[0.8, 0.9]", "model.norm=post", "optim.lr='1e-3'"])
    assert as_values == as_texts and as_values.optim.options["betas"] == (0.8, 0.9)
    with pytest.raises(ConfigError) as error:
        load_config(preset="tiny", overrides={"model.norm": "nope"}, origin=lambda key: f"grid of sweep.yaml ({key})")
    assert str(error.value).startswith("model.norm (in grid of sweep.yaml (model.norm)): unknown norm plugin 'nope'")
    with pytest.raises(ConfigError, match="an override's key must be a dotted config key like optim.lr, got 3"):
        load_config(preset="tiny", overrides={3: 1})


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="did you mean 'tiny'.*cpu-small"):
        load_config(preset="tiny2")


def test_plugin_option_types_come_from_the_factory():
    cfg = load_config(overrides=["schedule.min_lr_ratio=0.2", "schedule.warmup_steps=5"])
    assert cfg.schedule.options == {"warmup_steps": 5, "warmup_ratio": 0.05, "min_lr_ratio": 0.2}
    with pytest.raises(ConfigError, match="schedule.warmup_steps.*expected an integer"):
        load_config(overrides=["schedule.warmup_steps=some"])
    with pytest.raises(ConfigError, match="schedule.warmup.*unknown schedule key 'warmup'.*scheduler=cosine|did you mean"):
        load_config(overrides=["schedule.warmup=5"])


def test_a_presets_plugin_option_gives_way_when_the_user_picks_another_plugin():
    """cpu-small sets data.bpe_vocab_size for its bpe tokenizer; choosing the byte tokenizer drops it,
    while the same key written by the user for a plugin that has no such option is an error."""
    cfg = load_config(preset="cpu-small", overrides=["data.tokenizer=byte"])
    assert cfg.data.tokenizer == "byte" and "bpe_vocab_size" not in cfg.data.options
    with pytest.raises(ConfigError, match="data.bpe_vocab_size.*--set data.bpe_vocab_size"):
        load_config(preset="cpu-small", overrides=["data.tokenizer=byte", "data.bpe_vocab_size=512"])


def test_cli_prints_one_line_and_exits_2_for_a_user_mistake(tmp_path):
    path = write(tmp_path, "model: {n_head: 4}\n")
    result = subprocess.run([sys.executable, "-m", "b6lab.cli", "train", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.n_head" in lines[0] and str(path) in lines[0]


def test_cli_missing_config_file_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "b6lab.cli", "train", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr


def test_plugin_choices_lists_every_kind_once_with_its_config_key():
    from b6lab import registry
    from b6lab.config import plugin_choices
    from b6lab.sweep.comparison import plugin_choice_keys

    choices = plugin_choices(load_config(preset="tiny", overrides=["model.feedforward=swiglu", "model.init=xavier"]))
    assert sorted(kind for _, kind, _ in choices) == sorted(registry.KINDS)
    assert ("model.feedforward", "feedforward", "swiglu") in choices and ("model.init", "init", "xavier") in choices
    assert ("optim.name", "optimizer", "lion") in choices
    assert plugin_choice_keys() == {key for key, _, _ in choices}
