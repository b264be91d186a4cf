"""A short bf16 training run on CUDA: the real trainer step, then `b6lab bench` on the GPU."""

import json
import math

import torch

from b6lab.cli import main
from b6lab.config import load_config
from b6lab.train.trainer import Trainer

OVERRIDES = ["train.device=cuda", "train.precision=bf16", "logging.progress=false", "data.num_workers=0"]


def test_bf16_training_steps_on_cuda_lower_the_loss(tmp_path):
    cfg = load_config(preset="tiny", overrides=OVERRIDES + [f"train.out_dir={tmp_path}", "optim.name=adamw"])
    trainer = Trainer(cfg, tmp_path, say=lambda message: None)
    assert trainer.device.type == "cuda" and trainer.plan.precision == "bf16"
    assert next(trainer.model.parameters()).dtype == torch.float32  # bf16 autocast, fp32 weights
    assert trainer.plan.compile  # train.compile=auto compiles on a GPU
    losses = [trainer.take_step()[0].item() for _ in range(30)]
    val_loss = trainer.evaluate()["val_loss"]  # the compiled model in eval mode, then training again
    losses.append(trainer.take_step()[0].item())
    trainer.batches.close()
    assert all(math.isfinite(loss) for loss in losses + [val_loss])
    assert sum(losses[-5:]) < sum(losses[:5])


def test_bench_on_cuda_reports_max_allocated_memory(capsys):
    args = ["bench", "--preset", "tiny", "--json", "--steps", "3", "--warmup", "1"]
    for override in OVERRIDES:
        args += ["--set", override]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["memory_kind"] == "cuda max allocated" and result["peak_mem_mb"] > 0
    assert result["precision"] == "bf16" and result["device"].startswith("cuda")
    assert 0 < result["mfu"] < 1
