"""Every shipped experiment validates (as `b6lab sweep --dry-run` does) and asks what its comment says."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from b6lab.cli import main
from b6lab.sweep.experiment import load_experiment
from b6lab.sweep.trials import resolve_trials

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


def trials_of(name: str):
    return resolve_trials(load_experiment(Path(__file__).resolve().parents[1] / "experiments" / f"{name}.yaml"))


def test_the_four_experiments_are_shipped():
    assert {p.stem for p in EXPERIMENTS} >= {"norm_ablation", "attention_backends", "optimizer_ablation", "example_plugins"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_dry_runs(path, capsys, unload_new_plugins):
    base = yaml.safe_load(path.read_text())["base"]
    data_path = base.get("set", {}).get("data.path") if isinstance(base, dict) else None
    if data_path and not (path.parent / data_path).exists():  # a copy the user supplies, not here: refused first
        assert main(["sweep", str(path), "--dry-run"]) == 2
        assert "data.path" in capsys.readouterr().err
        return
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing started" in out
    assert "runs/sweeps/" in out  # the default storage


def test_norm_ablation_is_pre_post_sandwich_with_and_without_warmup_at_two_lrs_over_two_seeds():
    trials = trials_of("norm_ablation")
    assert len(trials) == 24
    assert {t.config["model"]["norm"] for t in trials} == {"pre", "post", "sandwich"}
    warmups = {t.config["schedule"]["warmup_steps"] for t in trials}
    assert 0 in warmups and len(warmups) == 2
    assert len({t.config["optim"]["lr"] for t in trials}) == 2
    assert {t.seed for t in trials} == {0, 1}
    assert all(t.skip_reason is None for t in trials)


def test_attention_backends_skips_only_what_cannot_run_here():
    trials = trials_of("attention_backends")
    assert [t.config["model"]["attention"] for t in trials] == ["auto", "sdpa", "eager", "flash-v2"]
    skipped = {t.config["model"]["attention"]: t.skip_reason for t in trials}
    # auto, sdpa and eager run on any machine; flash-v2 needs the flash_attn package and a CUDA GPU
    # (judged here from the machine itself, not from the plugin's own check).
    assert skipped["auto"] is None and skipped["sdpa"] is None and skipped["eager"] is None
    flash_runs_here = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
    if flash_runs_here:
        assert skipped["flash-v2"] is None
    else:
        missing = "flash_attn not installed" if importlib.util.find_spec("flash_attn") is None else "CUDA"
        assert "attention plugin 'flash-v2' cannot run here" in skipped["flash-v2"] and missing in skipped["flash-v2"]


def test_optimizer_ablation_gives_lion_a_smaller_lr_and_a_larger_weight_decay_than_adamw():
    trials = trials_of("optimizer_ablation")
    adamw = next(t.config["optim"] for t in trials if t.config["optim"]["name"] == "adamw")
    lions = [t.config["optim"] for t in trials if t.config["optim"]["name"] == "lion"]
    assert lions
    for lion in lions:
        assert 3 <= round(adamw["lr"] / lion["lr"], 6) <= 10
        assert 3 <= round(lion["weight_decay"] / adamw["weight_decay"], 6) <= 10


def test_example_plugins_experiment_uses_both_example_plugins(unload_new_plugins):
    trials = trials_of("example_plugins")
    assert {t.config["model"]["attention"] for t in trials} == {"sdpa", "sliding-window"}
    assert {t.config["optim"]["name"] for t in trials} == {"lion", "sgd"}
    plugin_files = {Path(p).name for p in trials[0].config["plugins"]}
    assert plugin_files == {"sliding_window.py", "sgd_momentum.py"}
    assert all(Path(p).is_absolute() for p in trials[0].config["plugins"])


def test_norm_depth_asks_xiongs_question_deep_with_and_without_warmup_under_both_inits_with_sequential_seeds():
    trials = trials_of("norm_depth")
    assert len(trials) == 8 * 8  # every trial it may run: 3 seeds to start, at most 8 (issue 23)
    exp = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "norm_depth.yaml")
    assert (exp.sequential.start, exp.sequential.max) == (3, 8)
    assert {t.config["model"]["norm"] for t in trials} == {"pre", "post"}
    assert {t.config["schedule"]["warmup_steps"] for t in trials} == {0, 100}
    assert {t.config["model"]["init"] for t in trials} == {"gpt2", "xavier"}
    assert {t.seed for t in trials} == set(range(8))
    assert all(t.config["model"]["n_layers"] >= 12 for t in trials)


def test_scale_norm_tunes_each_norm_at_each_rung_then_confirms_on_three_seeds():
    from b6lab.sweep.trials import tuning_configs

    path = Path(__file__).resolve().parents[1] / "experiments" / "scale_norm.yaml"
    exp = load_experiment(path)
    trials = resolve_trials(exp)
    assert exp.ladder.budget_rule == "tokens_per_param" and len(exp.grid[0].values) >= 3  # 3+ rungs
    assert {t.config["model"]["norm"] for t in trials} == {"pre", "post"} and {t.seed for t in trials} == {0, 1, 2}
    assert len({t.config["model"]["n_layers"] for t in trials}) == 1  # width grows, depth does not
    assert exp.tuning.algorithm == "grid" and [k.key for k in exp.tuning.keys] == ["optim.lr"]
    steps = {t.grid["ladder"]: t.max_steps for t in trials}
    tuned = tuning_configs(exp)
    assert len(tuned) == len(trials) // 3  # every (norm, rung) tuned on its own, at its rung's length
    assert {json.loads(key)["ladder"]["label"]: c["train"]["max_steps"] for key, c in tuned.items()} == steps
    assert all(t.config["train"]["precision"] == "fp32" and t.config["train"]["threads"] == 1 for t in trials)
    assert exp.max_concurrent == 2 and exp.base.preset == "tiny"  # the embedded corpus: no download


@pytest.mark.parametrize("name", ["shakespeare_tuning", "shakespeare_confirm"])
def test_shakespeare_sweeps_keep_the_recipes_model_and_tokens(name):
    from b6lab.config import load_config

    recipe = load_config(preset="shakespeare-char-cpu")
    for trial in trials_of(name):
        assert trial.config["model"] == recipe.to_dict()["model"]
        train = trial.config["train"]
        assert (train["batch_size"], train["max_steps"]) == (recipe.train.batch_size, recipe.train.max_steps)
        assert trial.config["data"]["path"] and trial.config["data"]["tokenizer"] == "byte"


def _without_run_specifics(config: dict) -> dict:
    """A trial's config less what differs between runs of the same choices: the data file, the
    eval cadence (the final evaluation is the same full validation split), the folder, the seed."""
    config = {section: dict(keys) if isinstance(keys, dict) else keys for section, keys in config.items()}
    config.pop("name", None)
    config["data"].pop("path")
    for key in ("eval_interval", "out_dir", "seed"):
        config["train"].pop(key)
    return config


def test_the_tuned_shakespeare_preset_is_the_tuning_sweeps_winner_and_the_confirm_sweeps_arm():
    from b6lab.config import load_config

    tuned = _without_run_specifics(load_config(preset="shakespeare-char-cpu-tuned").to_dict())
    winner = next(t for t in trials_of("shakespeare_tuning") if "optimizer=muon-0.03,schedule=cosine-to-0," in t.name)
    arm = next(t for t in trials_of("shakespeare_confirm") if "recipe=b6lab-tuned," in t.name)
    assert _without_run_specifics(winner.config) == tuned
    assert _without_run_specifics(arm.config) == tuned
    assert {t.seed for t in trials_of("shakespeare_confirm")} == {0, 1, 2}
