"""pydantic checks the types of a run config and a sweep file; what comes out is still plain
dataclasses, and a mistake is still one line naming the key, the file and what would do."""

import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from b6lab.config import ModelConfig, RunConfig, WandbConfig, load_config
from b6lab.cpu_bf16 import cpu_flags, cpu_info
from b6lab.errors import ConfigError, unknown
from b6lab.sweep.experiment import load_experiment
from b6lab.train.hardware import peak_memory
from tests import tiny


def test_the_config_is_the_plain_dataclasses_and_unpickles_in_another_process():
    cfg = load_config(preset="tiny", overrides=["optim.betas=[0.8,0.9]"])
    assert type(cfg) is RunConfig and type(cfg.model) is ModelConfig and type(cfg.logging.wandb) is WandbConfig
    assert not hasattr(RunConfig, "__pydantic_validator__")  # pydantic validated it; it did not change the class
    # What a Ray worker does: unpickle in a fresh interpreter that has only imported b6lab.
    code = "import pickle, sys; cfg = pickle.loads(sys.stdin.buffer.read()); print(cfg.model.d_model, cfg.optim.options['betas'])"
    result = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(cfg), capture_output=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.decode().split() == [str(cfg.model.d_model), "(0.8,", "0.9)"]


def test_what_yaml_gives_is_coerced(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {rope_theta: 1e4, dropout: 0}\ntrain: {max_steps: 4.0}\n")
    cfg = load_config(path, overrides=["optim.lr=3e-4"])
    assert cfg.model.rope_theta == 10000.0 and cfg.train.max_steps == 4 and isinstance(cfg.train.max_steps, int)
    assert cfg.optim.options["lr"] == pytest.approx(3e-4)


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=true", "train.max_steps (in --set train.max_steps): expected an integer, got True"),
    ("optim.lr=yes", "optim.lr (in --set optim.lr): expected a number, got True"),
    ("logging.wandb.mode=sideways", "logging.wandb.mode (in --set logging.wandb.mode): expected 'online', 'offline', 'disabled' or null"),
    ("train.grad_clip=[1]", "unknown train key 'grad_clip'; known:"),
])
def test_a_wrong_type_is_one_line_naming_the_key_and_where_it_was_set(override, message):
    """YAML's true/yes is a boolean; pydantic would take it as 1 for a number: here it is a mistake."""
    with pytest.raises(ConfigError) as error:
        load_config(preset="tiny", overrides=[override])
    assert message in str(error.value) and "\n" not in str(error.value)


def write_sweep(folder: Path, **keys) -> Path:
    return tiny.write_sweep(folder, **{"name": "t", "base": {"preset": "tiny"}, "grid": {"model.norm": ["pre", "post"]}} | keys)


def test_a_sweep_may_minimise_bits_per_byte(tmp_path):
    assert load_experiment(write_sweep(tmp_path, metric="val_bpb")).metric == "val_bpb"
    with pytest.raises(ConfigError, match="metric .*must be one of 'val_loss', 'val_bpb', got 'val_acc'"):
        load_experiment(write_sweep(tmp_path, metric="val_acc"))


def test_a_sweep_files_scheduler_keeps_the_keys_given_and_checks_them(tmp_path):
    exp = load_experiment(write_sweep(tmp_path, scheduler={"name": "asha", "grace_period": 2.0, "reduction_factor": 3}))
    assert exp.scheduler == {"name": "asha", "grace_period": 2, "reduction_factor": 3.0}
    assert load_experiment(write_sweep(tmp_path)).scheduler is None
    for scheduler, message in [
        ({"name": "asha", "grace_period": 10, "max_t": 5}, "grace_period 10 is past max_t 5"),
        ({"name": "asha", "reduction_factor": 1}, "scheduler.reduction_factor (in "),
        ({"name": "asha", "time_attr": "epochs"}, "must be 'step', 'tokens' or null, got 'epochs'"),
    ]:
        with pytest.raises(ConfigError) as error:
            load_experiment(write_sweep(tmp_path, scheduler=scheduler))
        assert message in str(error.value)
    with pytest.raises(ConfigError, match=r"max_failures .*must be an integer >= 0, got True"):
        load_experiment(write_sweep(tmp_path, max_failures=True))


def test_one_did_you_mean_for_every_unknown_name():
    assert unknown("grace", ["brackets", "grace_period"], "asha key") == (
        "unknown asha key 'grace' (did you mean 'grace_period'?); known: brackets, grace_period")
    assert unknown("n_head", ["d_model", "n_heads"], "model key").startswith("unknown model key 'n_head' (did you mean 'n_heads'?)")
    assert unknown("zzz", ["pre", "post"], "norm plugin") == "unknown norm plugin 'zzz'; known: pre, post"


def test_cpuinfo_is_read_once_for_the_flags_and_the_name():
    if not Path("/proc/cpuinfo").is_file():
        assert cpu_info() == {} and cpu_flags() == frozenset()
        return
    info = cpu_info()
    assert cpu_info() is info  # cached: the file is read once per process
    assert cpu_flags() == frozenset(info.get("flags", "").split())


def test_peak_memory_on_a_cpu_is_the_peak_rss():
    record = peak_memory(torch.device("cpu"))
    assert record["peak_rss_mb"] > 10 and "peak_mem_mb" not in record


def test_an_annotated_limit_in_a_plugin_factory_is_checked(register_plugin):
    from typing import Annotated

    from b6lab.validation import POSITIVE

    def sharpened(param_groups, *, sharpness: Annotated[float, POSITIVE] = 1.0):
        """SGD whose step is scaled by `sharpness` (only its option's limit matters here)."""
        return torch.optim.SGD(param_groups, lr=0.1 * sharpness)

    register_plugin(types.SimpleNamespace(b6lab_register_optimizer=lambda register: register("sharpened", sharpened)))
    assert load_config(preset="tiny", overrides=["optim.name=sharpened", "optim.sharpness=2"]).optim.options["sharpness"] == 2
    with pytest.raises(ConfigError) as caught:
        load_config(preset="tiny", overrides=["optim.name=sharpened", "optim.sharpness=-1"])
    assert "\n" not in str(caught.value)
    assert "optim.sharpness" in str(caught.value) and "must be a positive number, got -1" in str(caught.value)
