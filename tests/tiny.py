"""The one factory of tiny runs for tests: `TinyRun` (short runs of the `tiny` preset, and the
settings a sweep file's `base.set` takes for them) and `write_sweep` (a sweep file from its sections).

Test modules import it as `from tests.tiny import TinyRun, write_sweep`, never from conftest: in a
full run the name `conftest` can resolve to tests/gpu/conftest.py. The `tiny_run` fixture returns TinyRun.
"""

from pathlib import Path

import yaml


class TinyRun:
    """Runs of the `tiny` preset short enough for a test (seconds on a CPU): `max_steps` steps, an
    evaluation of `eval_steps` batches every `eval_interval` steps, a log line every
    `log_interval` (None: the preset's), no progress bar, then each `--set` text given.

        cfg = tiny_run.config("model.norm=post", max_steps=6, eval_interval=3)   # its RunConfig
        summary = tiny_run.train(folder, "model.norm=post", max_steps=6)          # trained here
        base_set = TinyRun.settings(log_interval=3)                              # a sweep's base.set
    """

    @classmethod
    def sets(cls, *overrides: str, max_steps: int = 12, eval_interval: int | None = 6,
             eval_steps: int | None = 2, log_interval: int | None = None) -> list[str]:
        length = cls.settings(max_steps, eval_interval, eval_steps, log_interval)
        return ["logging.progress=false", *(f"{key}={n}" for key, n in length.items()), *overrides]

    @staticmethod
    def settings(max_steps: int | None = 12, eval_interval: int | None = 6, eval_steps: int | None = 2,
                 log_interval: int | None = None, **more) -> dict:
        """The dotted-key dict a sweep file's `base.set` takes: the train lengths given (None: the
        preset's), in this order, then `more` (dotted keys, so passed as `**{"train.threads": 1}`)."""
        length = {"max_steps": max_steps, "eval_interval": eval_interval, "eval_steps": eval_steps,
                  "log_interval": log_interval}
        return {f"train.{key}": n for key, n in length.items() if n is not None} | more

    @classmethod
    def config(cls, *overrides: str, **length):
        from b6lab.config import load_config

        return load_config(preset="tiny", overrides=cls.sets(*overrides, **length))

    @classmethod
    def train(cls, out, *overrides: str, max_steps: int = 12, eval_interval: int | None = 6,
              eval_steps: int | None = 2, log_interval: int | None = None, fault_injector=None,
              **trainer_options) -> dict:
        """The run trained in this process into `out`, quietly unless given a `say`; its summary.
        `fault_injector(step, micro_batch)` is called before each micro-batch (tests/fault_hook.py)."""
        from b6lab.train.trainer import Trainer
        from tests.fault_hook import inject

        cfg = cls.config(*overrides, max_steps=max_steps, eval_interval=eval_interval, eval_steps=eval_steps,
                         log_interval=log_interval)
        return inject(Trainer(cfg, out, **{"say": lambda line: None} | trainer_options), fault_injector).run()


def write_sweep(folder: Path, **sections) -> Path:
    """folder/sweep.yaml holding these sections in the order given; its path."""
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path
