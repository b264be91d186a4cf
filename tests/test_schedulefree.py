"""Schedule-free AdamW (the `adamw-schedulefree` plugin over the schedulefree package): the same steps
as the package's own optimizer, and the trainer's train()/eval() calls around evaluation, checkpoints
and resumption."""

import sys

import pytest
import torch

from b6lab import parts, registry
from b6lab.attention import AttentionContext
from b6lab.commands.plugins import check
from b6lab.config import load_config
from b6lab.errors import PluginError
from b6lab.train import checkpoint
from b6lab.train.records import read_metrics
from b6lab.train.trainer import Trainer
from tests.tiny import TinyRun

schedulefree = pytest.importorskip("schedulefree")  # the [schedulefree] extra; [dev] installs it

BATCH = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(1))
OPTIONS = dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.05, warmup_steps=2, eps=1e-8)


def config(*overrides):
    return TinyRun.config("train.checkpoint_interval=4", "train.precision=fp32", "optim.name=adamw-schedulefree",
                          "optim.lr=3e-3", "optim.warmup_steps=3", "schedule.name=constant", *overrides,
                          max_steps=None, eval_interval=4, eval_steps=2, log_interval=1)


def test_the_plugin_steps_as_adamw_schedulefree_on_the_same_groups():
    cfg = load_config(preset="tiny", overrides=[
        "model.vocab_size=256", "model.attention=sdpa", "optim.name=adamw-schedulefree", "optim.lr=3e-3",
        "optim.betas=[0.9, 0.95]", "optim.weight_decay=0.05", "optim.warmup_steps=2", "optim.eps=1e-8",
    ])
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        context = AttentionContext(torch.device("cpu"), torch.float32, cfg.model.head_dim)
        models.append(parts.build_model(cfg.model, context)[0])
    ours = parts.build_optimizer(cfg.optim, models[0])
    theirs = schedulefree.AdamWScheduleFree(parts.param_groups(models[1]), **OPTIONS)
    theirs.train()
    for _ in range(3):
        for model, optimizer in zip(models, (ours, theirs)):
            model.train()(BATCH[:, :-1], BATCH[:, 1:]).backward()
            optimizer.step()
            optimizer.zero_grad()
    for mode in ("train", "eval"):  # y, where gradients are taken; x, the average evaluated
        for optimizer in (ours, theirs):
            getattr(optimizer, mode)()
        for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=f"{mode}: {name}")
    assert not torch.equal(ours.state[models[0].lm_head.weight]["z"], models[0].lm_head.weight)


@pytest.mark.slow  # three tiny runs: 12, 8 and 4 steps
def test_a_resumed_run_equals_a_straight_one_and_checkpoints_hold_the_evaluated_weights(tmp_path):
    straight = Trainer(config("train.max_steps=12"), tmp_path / "straight", say=lambda m: None)
    summary = straight.run()
    losses = [r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if "loss" in r]
    assert summary["status"] == "completed" and sum(losses[-3:]) < sum(losses[:3]) - 0.3

    # Stopped at step 8 (its last checkpoint), then resumed to 12: the step count of the optimizer's
    # warmup and averaging weights come back from the checkpoint, and y from x and z.
    Trainer(config("train.max_steps=8"), tmp_path / "split", say=lambda m: None).run()
    resumed = Trainer(config("train.max_steps=12"), tmp_path / "split", resume=True, say=lambda m: None)
    assert resumed.optimizer.param_groups[0]["k"] == 8 and resumed.optimizer.param_groups[0]["train_mode"]
    resumed.run()
    split_losses = [r["loss"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl") if "loss" in r]
    assert split_losses == pytest.approx(losses, abs=1e-6)
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)

    # The checkpoint holds x, the averaged weights evaluations see, not y, where the steps were taken.
    saved, state, _ = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last")
    assert state["optimizer"]["param_groups"][0]["train_mode"] is False
    weights = dict(straight.model.named_parameters())
    assert any(not torch.equal(saved[name], p) for name, p in weights.items())  # y after the run
    straight.optimizer.eval()
    for name, p in weights.items():
        torch.testing.assert_close(saved[name], p, atol=1e-6, rtol=0, msg=name)
    straight.optimizer.train()
    assert straight.evaluate()["val_loss"] == pytest.approx(summary["final_val_loss"], abs=1e-6)


def test_a_decaying_schedule_gets_one_line_saying_it_is_schedule_free(tmp_path):
    said = []
    Trainer(config("train.max_steps=2", "schedule.name=cosine"), tmp_path / "run", say=said.append).run()
    notes = [line for line in said if "schedule-free" in line]
    assert len(notes) == 1 and "schedule.name=cosine" in notes[0] and "schedule.name=constant" in notes[0]


def test_without_the_package_it_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "schedulefree", None)  # as if not installed: find_spec None, import fails
    cfg = load_config(preset="tiny", overrides=["optim.name=adamw-schedulefree"])
    with pytest.raises(PluginError, match=r"pip install 'b6lab\[schedulefree\]'"):
        parts.build_optimizer(cfg.optim, torch.nn.Linear(2, 2))


def test_b6lab_plugins_lists_it_and_its_check_passes(capsys):
    reg = registry.get("optimizer", "adamw-schedulefree")
    assert reg.why_unavailable(device="cpu") is None and {"lr", "betas", "weight_decay", "warmup_steps"} <= set(reg.options)
    assert check("adamw-schedulefree", {}) == 0  # `b6lab plugins --check`: builds it and takes one step
    assert "adamw-schedulefree" in capsys.readouterr().out
