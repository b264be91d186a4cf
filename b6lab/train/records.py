"""What a run writes and shows: metrics.jsonl, summary.json, the progress bar, wandb.

Every metric goes to metrics.jsonl (one JSON object per line); wandb, when enabled, gets the
same dicts. On resume the lines after the checkpoint's step are dropped, so the file reads as
one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from b6lab.config import WandbConfig
from b6lab.errors import DataError


class MetricsFile:
    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = [line for line in _lines_to_keep(self.path) if json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        self._file = open(self.path, "a", buffering=1)

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(_jsonable(record)) + "\n")

    def close(self) -> None:
        self._file.close()


def _lines_to_keep(path: Path) -> list[str]:
    """The lines of a metrics.jsonl a resumed run keeps: a last line cut off by a crash is dropped;
    an unreadable line before it means the file was damaged otherwise, which is the user's to see."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            record["step"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                return lines[:-1]
            raise DataError(f"{path}, line {number}, is not a metrics record ({line[:40]!r}); "
                            "repair or remove that line, then resume again") from None
    return lines


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line cut off by a crash is skipped."""
    records = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def read_summary(run_dir: Path) -> dict:
    """A run's summary.json, or {} while it has none (still running, or killed) or it is unreadable."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    partial = Path(f"{path}.tmp-{os.getpid()}")
    partial.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    os.replace(partial, path)


def _jsonable(record: dict) -> dict:
    # NaN/inf are not JSON; a diverged loss is written as null with the status saying why.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class Progress:
    """A tqdm bar over the steps showing loss, lr and tokens/s; its ETA comes from tqdm."""

    def __init__(self, enabled: bool, total: int, initial: int, description: str, say=print):
        self.bar, self.say = None, say
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=description, unit="step", dynamic_ncols=True)

    def update(self, steps: int = 1, **shown) -> None:
        if self.bar is not None:
            if shown:
                self.bar.set_postfix({k: _short(v) for k, v in shown.items()}, refresh=False)
            self.bar.update(steps)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            self.say(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if value and abs(value) < 1e-2 else f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


class WandbRun:
    """wandb logging; mode=offline writes the run under out_dir/wandb with no network."""

    def __init__(self, cfg: WandbConfig, out_dir: Path, config: dict, resume_id: str | None = None):
        import wandb

        self.wandb = wandb
        self.cfg = cfg
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            mode=cfg.mode,
            name=cfg.name or Path(out_dir).name,
            dir=str(out_dir),
            config=config,
            id=resume_id,
            resume="allow" if resume_id else None,
        )

    @property
    def id(self) -> str:
        return self.run.id

    def log(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def finish(self, summary: dict, best_checkpoint: Path | None) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        if self.cfg.log_checkpoint and best_checkpoint is not None and best_checkpoint.exists():
            artifact = self.wandb.Artifact(f"{self.run.id}-best", type="model")
            artifact.add_dir(str(best_checkpoint))
            self.run.log_artifact(artifact)
        self.run.finish()
