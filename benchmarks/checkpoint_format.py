"""A checkpoint's save and load time: model.pt + state.pt (what one process writes) against
torch.distributed.checkpoint (what FSDP over several processes writes), in one process, alternating.

Both write the same state.pt (counters, RNG, data position), config.yaml, tokenizer and COMPLETE
through checkpoint.py; they differ in how the weights and the optimizer state are written and read
back into the trainer's model and optimizer (load: distributed.load_checkpoint_state, which reads
either). The rounds alternate, so that a loaded machine slows both alike: compare the ratios.

    PYTHONPATH=. python benchmarks/checkpoint_format.py --preset tiny --rounds 10
    PYTHONPATH=. python benchmarks/checkpoint_format.py --preset cpu-small --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from b6lab.bench import throwaway_trainer
from b6lab.config import load_config
from b6lab.train import checkpoint, distributed


def save_whole(trainer, folder: Path, state: dict, config: dict) -> None:
    checkpoint.save(folder, model_state=trainer.model.state_dict(),
                    state=state | {"optimizer": trainer.optimizer.state_dict()}, config=config)


def save_dcp(trainer, folder: Path, state: dict, config: dict) -> None:
    import torch.distributed.checkpoint as dcp

    partial = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    dcp.save(distributed.sharded_state(trainer.model, trainer.optimizer), checkpoint_id=partial)
    checkpoint._complete(partial, folder, state, config, None)


def load(trainer, folder: Path) -> None:
    distributed.load_checkpoint_state(trainer.model, trainer.optimizer, checkpoint.Resume.read(folder), "ddp")


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    cfg = load_config(preset=args.preset, overrides=["logging.progress=false", "train.threads=1"])
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {f"{fmt} {op}": [] for fmt in ("whole", "dcp") for op in ("save", "load")}
    with throwaway_trainer(cfg) as trainer, tempfile.TemporaryDirectory(prefix="b6lab-ckpt-") as tmp:
        trainer.take_step()  # the optimizer's state exists, as in every checkpoint of a run
        state, config = {"step": 1, "note": "counters"}, cfg.to_dict()
        for round_number in range(args.rounds + 1):  # round 0 warms both up, untimed
            order = [("whole", save_whole), ("dcp", save_dcp)]
            for fmt, save in order if round_number % 2 else order[::-1]:
                folder = Path(tmp) / fmt
                saved, loaded = timed(lambda: save(trainer, folder, state, config)), timed(lambda: load(trainer, folder))
                if round_number:
                    times[f"{fmt} save"].append(saved)
                    times[f"{fmt} load"].append(loaded)
        params = trainer.params
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "preset": args.preset, "params": params, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "median_s": {k: round(v, 4) for k, v in medians.items()},
        "dcp_over_whole": {op: round(medians[f"dcp {op}"] / medians[f"whole {op}"], 2) for op in ("save", "load")},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
