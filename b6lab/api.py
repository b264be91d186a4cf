"""The commands as Python functions, for notebooks and scripts: `b6lab.train`, `b6lab.sweep`,
`b6lab.compare`, and `b6lab.load` for a trained model.

Each does what its command does (the same config layering, run folders, printed output and
files) and returns what the command writes instead of an exit status: `train` the run's
summary.json as a dict, `sweep` the rows of results.csv, `compare` the document `compare --json`
prints; `load` gives a checkpoint's model and tokenizer, as `b6lab generate` loads them. A user's mistake raises
`b6lab.ConfigError` with the one line the command would print.

    import b6lab
    summary = b6lab.train(preset="tiny", overrides={"train.max_steps": 50, "model.norm": "post"})
    rows = b6lab.sweep("experiments/norm_ablation.yaml")
    verdicts = b6lab.compare(["runs/sweeps/norm_ablation"], by="model.norm")
    model, tokenizer = b6lab.load("runs/default")

Nothing heavy is imported until a function is called: `import b6lab` stays cheap.
"""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from b6lab.errors import ConfigError, UsageError


def train(config: str | Path | Mapping | None = None, *, preset: str | None = None,
          overrides: Mapping[str, Any] | None = None, out_dir: str | Path | None = None,
          resume: bool = False) -> dict:
    """Train one model, as `b6lab train [CONFIG] [--preset P] [--set k=v]... [--resume]`; returns its summary.

    `config` is a YAML file or a dict of sections (`{"model": {"norm": "post"}}`); `overrides`
    maps dotted keys to values (`{"optim.lr": 1e-3}`) and is laid over it as `--set` would be;
    `out_dir` is `train.out_dir` (default: runs/<name>, or runs/<name>-2, ... never over an old run).
    What the command prints as a note (a plugin's source changed since the run being resumed) is a
    `UserWarning`."""
    import warnings

    from b6lab import registry
    from b6lab.commands.train import start_run
    from b6lab.config import load_config

    with _as_config_error():
        registry.forget_config_plugins()  # this run's config names its plugins; an earlier call's do not stay
        overrides = _as_data(overrides) | ({"train.out_dir": str(out_dir)} if out_dir is not None else {})
        path, data = (None, dict(config)) if isinstance(config, Mapping) else (config, None)
        cfg = load_config(path, preset=preset, overrides=overrides, data=data)
        trainer = start_run(cfg, overrides, resume, note=lambda line: warnings.warn(line, stacklevel=4))
        return trainer.run()


def sweep(path: str | Path, *, resume: bool = False, address: str | None = None) -> list[dict]:
    """Run a sweep file on Ray Tune, as `b6lab sweep PATH [--resume] [--address ADDR]`; returns the
    rows of its results.csv (one dict per trial: grid values, seed, status, losses, tokens, folder)."""
    from b6lab import registry
    from b6lab.commands.sweep import run_sweep

    with _as_config_error():
        registry.forget_config_plugins()
        _, storage = run_sweep(str(path), resume=resume, address=address)
    return read_results(storage / "results.csv")


def compare(paths, *, by: str | list[str] | None = None, metric: str = "val_loss", family: str = "key") -> dict:
    """Runs or sweeps side by side, as `b6lab compare DIR... [--by K1,K2] [--metric M] [--family F] --json`;
    returns that JSON document: each judged key's values with mean, std, n_seeds, n_runs, diverged, delta
    from the reference, its Holm-level confidence interval, the Holm-corrected p-value and the verdict, the
    two-way table with its interaction tests, any warnings, and every run. `family="all"` corrects across
    every key instead of within each."""
    from b6lab.sweep import comparison

    if isinstance(paths, (str, Path)):
        paths = [paths]
    with _as_config_error():
        return comparison.compare(list(paths), by=by, metric=metric, family=family)


def load(path: str | Path, *, device: str = "auto"):
    """A trained model and its tokenizer, as `b6lab generate PATH` loads them: `path` is a checkpoint
    folder or a run folder (its best checkpoint, else its last). Returns `(model, tokenizer)`: the
    model a `b6lab.model.B6` (its ModelConfig is `model.cfg`) in eval mode on `device` (auto: the GPU if there is one), fp32, called
    on a (batch, time) tensor of token ids for (batch, time, vocab) logits; the tokenizer has
    `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size` and `eos_id`. What the command
    prints as a note (a plugin's source changed since training; an attention backend that cannot
    run here, replaced by auto) is a `UserWarning`."""
    import warnings

    from b6lab.generate import load_for_sampling

    with _as_config_error():
        model, tokenizer, note = load_for_sampling(path, device)
    if note:
        warnings.warn(note, stacklevel=2)
    return model, tokenizer


def read_results(path: str | Path) -> list[dict]:
    """A results.csv as dicts, numbers as numbers and empty cells as None."""
    with open(path, newline="") as f:
        return [{key: _value(text) for key, text in row.items()} for row in csv.DictReader(f)]


def _value(text: str):
    if text == "":
        return None
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def _as_data(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The overrides' values as JSON holds them (a Path as its text, a tuple as a list, a numpy
    number as a number): what a config accepts from a YAML file, and config.yaml can write back."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a dict of dotted keys to values, got {overrides!r}")
    return {key: json.loads(json.dumps(value, default=str)) for key, value in overrides.items()}


@contextlib.contextmanager
def _as_config_error() -> Iterator[None]:
    # The command line prints any UsageError as one line; here it is one exception with that line.
    try:
        yield
    except ConfigError:
        raise
    except UsageError as exc:
        raise ConfigError(str(exc)) from exc
