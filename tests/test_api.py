"""The Python API: `b6lab.train`, `b6lab.sweep` and `b6lab.compare` do what their commands do and return the
results; `b6lab.load` gives a checkpoint's model and tokenizer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import b6lab
from b6lab.cli import main
from b6lab.train.records import read_metrics
from tests import tiny
from tests.tiny import TinyRun

ROOT = Path(__file__).resolve().parents[1]
TINY = TinyRun.settings(max_steps=6, eval_interval=3, eval_steps=1, log_interval=3, **{"logging.progress": False})


def test_importing_b6lab_imports_neither_torch_nor_ray():
    code = ("import sys, b6lab; b6lab.train; b6lab.sweep; b6lab.compare; b6lab.load; b6lab.ConfigError; "
            "print(sorted(m for m in ('torch', 'ray', 'wandb', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "[]"


def test_train_returns_the_summary_and_takes_dotted_overrides(tmp_path):
    overrides = TINY | {"optim.betas": [0.8, 0.95], "model.norm": "post"}
    summary = b6lab.train(preset="tiny", overrides=overrides, out_dir=tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["optim"]["betas"] == [0.8, 0.95] and config["model"]["norm"] == "post"

    # resume=True continues the same folder, with the overrides laid over the config it started with
    summary = b6lab.train(overrides={"train.max_steps": 9}, out_dir=tmp_path / "run", resume=True)
    assert summary["steps"] == 9
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r] == [3, 6, 9]


def test_train_takes_a_config_as_a_dict_or_a_file(tmp_path):
    config = {"preset": "tiny", "name": "from-a-dict", "train": {"max_steps": 3, "eval_interval": 3, "eval_steps": 1},
              "logging": {"progress": False}}
    assert b6lab.train(config, out_dir=tmp_path / "a")["steps"] == 3
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert b6lab.train(str(path), out_dir=tmp_path / "b")["steps"] == 3


def test_a_mistake_raises_config_error_with_the_line_the_command_prints(tmp_path, capsys):
    with pytest.raises(b6lab.ConfigError) as caught:
        b6lab.train(preset="tiny", overrides={"model.nrm": "post"}, out_dir=tmp_path / "run")
    assert main(["train", "--preset", "tiny", "--set", "model.nrm=post"]) == 2
    assert capsys.readouterr().err == f"b6lab train: error: {caught.value}\n"
    # Not only config mistakes: a run folder in use is one too, as the command says.
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "metrics.jsonl").write_text("")
    with pytest.raises(b6lab.ConfigError, match="already holds a run; pass --resume"):
        b6lab.train(preset="tiny", out_dir=tmp_path / "used")
    with pytest.raises(b6lab.ConfigError, match="overrides must be a dict"):
        b6lab.train(preset="tiny", overrides=["train.max_steps=3"])


def test_load_gives_the_checkpoints_model_and_tokenizer(tmp_path):
    import torch

    from b6lab.model import B6
    from b6lab.train import checkpoint

    b6lab.train(preset="tiny", overrides=TINY | {"data.tokenizer": "byte"}, out_dir=tmp_path / "run")
    model, tokenizer = b6lab.load(tmp_path / "run", device="cpu")
    assert isinstance(model, B6) and not model.training
    saved, _, _ = checkpoint.load(checkpoint.find(tmp_path / "run" / "checkpoints" / "best"))
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in saved.items())
    ids = tokenizer.encode("def main():")
    assert tokenizer.decode(ids) == "def main():" and tokenizer.vocab_size == 256
    with torch.no_grad():
        logits = model(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), model.cfg.vocab_size) and torch.isfinite(logits).all()
    with pytest.raises(b6lab.ConfigError, match="is not a checkpoint"):
        b6lab.load(tmp_path)


@pytest.mark.slow
def test_sweep_returns_the_results_rows_and_points_to_tensorboard(tmp_path, capsys):
    sweep = {"name": "api", "base": {"preset": "tiny", "set": TINY | {"logging.tensorboard": True, "logging.progress": True}},
             "grid": {"model.norm": ["pre", "post"]}, "seeds": [0], "storage": str(tmp_path / "sweep"),
             "resources": {"cpu": 1}}
    path = tiny.write_sweep(tmp_path, **sweep)
    rows = b6lab.sweep(path)
    assert sorted((row["model.norm"], row["seed"], row["status"], row["steps"]) for row in rows) == [
        ("post", 0, "completed", 6), ("pre", 0, "completed", 6)]
    assert all(isinstance(row["best_val_loss"], float) for row in rows)
    out = capsys.readouterr().out
    assert "\r" not in out
    assert f"curves: tensorboard --logdir {tmp_path / 'sweep' / 'trials'}" in out
    for row in rows:
        assert list((Path(row["folder"]) / "tensorboard").glob("events.out.tfevents.*"))
        trial_log = (Path(row["folder"]) / "train.log").read_text()  # a trial's stdout is no terminal
        assert "step 6/6 (100%) | loss " in trial_log and "\r" not in trial_log
    with pytest.raises(b6lab.ConfigError, match="already holds the sweep api; pass --resume"):
        b6lab.sweep(path)

    # compare returns the document `b6lab compare --json` prints
    document = b6lab.compare(tmp_path / "sweep", by="model.norm")
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "sweep"), "--by", "model.norm", "--json", "--no-plots"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == json.loads(json.dumps(document))
    assert f"curves: tensorboard --logdir {tmp_path / 'sweep'}" in printed.err  # compare points to the event files
    values = document["keys"]["model.norm"]["values"]
    assert {value["value"] for value in values} == {"pre", "post"}
    assert {value["verdict"] for value in values} == {"inconclusive"}  # one seed: no test is possible
    with pytest.raises(b6lab.ConfigError, match="metric"):
        b6lab.compare([tmp_path / "sweep"], metric="accuracy")


def test_each_train_call_sees_only_the_plugins_its_config_names(tmp_path, unload_new_plugins):
    plugin = str(ROOT / "plugins" / "sliding_window.py")
    config = {"preset": "tiny", "plugins": [plugin], "model": {"attention": "sliding-window", "window": 4}}
    summary = b6lab.train(config, overrides=TINY, out_dir=tmp_path / "with")
    assert summary["status"] == "completed"
    # The next call names no plugin file: the first call's attention must not be found any more.
    with pytest.raises(b6lab.ConfigError, match="unknown attention plugin 'sliding-window'"):
        b6lab.train(preset="tiny", overrides=TINY | {"model.attention": "sliding-window"}, out_dir=tmp_path / "without")
    assert not (tmp_path / "without" / "config.yaml").exists()
    # ...and naming it again loads it again.
    assert b6lab.train(config, overrides=TINY, out_dir=tmp_path / "again")["status"] == "completed"
