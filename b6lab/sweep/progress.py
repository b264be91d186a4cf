"""What a sweep prints while it runs: one line per trial event and the best so far, instead of
Ray's own tables (which are redrawn every few seconds and hard to read in a log).

    [ 3/24 done, 2 running] finished norm=pre,lr=0.001,seed=0: completed, val loss 2.4120 | best 2.3900 (norm=sandwich,...)

Plain lines, never a carriage return, whether stdout is a terminal or a log; `--quiet` prints none.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ray import tune

from b6lab.sweep.grid import point_key
from b6lab.train.records import read_summary

HEARTBEAT_SECONDS = 60.0  # a status line at least this often, so a long trial doesn't look hung


class SweepProgress(tune.Callback):
    # Plain data only: Ray pickles this callback with the sweep's state and restores it on --resume.
    def __init__(self, names: dict[str, str], run_dirs: dict[str, str], total: int, quiet: bool = False):
        self.names, self.run_dirs, self.total, self.quiet = names, run_dirs, total, quiet
        self.best: tuple[float, str] | None = None
        self.running: set[str] = set()  # started by this process and not ended yet
        self.ended: set[str] = set()
        self.last_line = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(self._name(trial))
        self._say(trials, f"started  {self._name(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        loss = result.get("val_loss")
        if isinstance(loss, float) and math.isfinite(loss) and (self.best is None or loss < self.best[0]):
            self.best = (loss, self._name(trial))
        if time.monotonic() - self.last_line > HEARTBEAT_SECONDS:
            self._say(trials, f"{self._name(trial)} at step {result.get('step')}: val loss {_loss(loss)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        name = self._name(trial)
        self._ended(name)
        summary, result = self._summary(name), trial.last_result
        if summary.get("status") in ("completed", "diverged", "skipped"):
            how = summary["status"] + (f" ({summary['reason']})" if summary.get("reason") else "")
        elif result.get("step", 0) < result.get("max_steps", 0):  # its own summary may still be on the way
            how = f"stopped early at step {result['step']}"
        else:
            how = "completed"
        self._say(trials, f"finished {name}: {how}, val loss {_loss(result.get('val_loss'))}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(self._name(trial))
        name = self._name(trial)
        self._say(trials, f"failed   {name}: {self._reason(trial)} (traceback: ray/{name}/error.txt)")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.running.discard(self._name(trial))
        self._say(trials, f"retrying {self._name(trial)} after: {self._reason(trial)}")

    def on_step_begin(self, iteration, trials, **info):
        if trials and time.monotonic() - self.last_line > HEARTBEAT_SECONDS:
            self._say(trials, "still running")

    # -----------------------------------------------------------------------------------------

    def _ended(self, name: str) -> None:
        self.running.discard(name)
        self.ended.add(name)

    def _name(self, trial) -> str:
        return self.names.get(point_key(trial.config), trial.trial_id)

    def _summary(self, name: str) -> dict:
        return read_summary(Path(self.run_dirs.get(name, "")))

    def _reason(self, trial) -> str:
        """The trainer's own account of a crash if it wrote one, else the last line of Ray's."""
        reason = self._summary(self._name(trial)).get("reason")
        if reason:
            return reason
        error = trial.get_error() or ""
        lines = [line for line in str(error).splitlines() if line.strip()]
        return lines[-1].strip() if lines else "unknown error (see the trial's error.txt under ray/)"

    def _say(self, trials, text: str) -> None:
        # Ray updates a trial's status after calling back: count what this callback has seen, plus
        # what a restored sweep had finished before.
        if self.quiet:
            return
        done = len(self.ended | {self._name(t) for t in trials if t.status in ("TERMINATED", "ERROR")})
        running = len(self.running)
        best = f" | best {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        print(f"[{done:>{len(str(self.total))}}/{self.total} done, {running} running] {text}{best}", flush=True)
        self.last_line = time.monotonic()


def _loss(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"
