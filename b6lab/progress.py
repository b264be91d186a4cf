"""Progress on the console: a bar on a terminal, plain lines in a log, nothing when quiet.

A carriage-return bar is right on a terminal and wrong everywhere else: redirected to a file
(nohup, a batch scheduler's log, `| tee`), every redraw stays in the file. So the kind of output
follows where stdout goes, as tqdm, HF Trainer and Lightning users expect:

    bar     stdout is a terminal (or a notebook): a tqdm bar with the figures beside it
    lines   stdout is not a terminal: one plain line per update, at most one every
            `every_seconds` (logging.plain_interval_seconds), and always the last one:
              step 120/400 (30%) | loss 3.2140 | lr 3.00e-04 | tokens/s 12,345 | elapsed 1:02 | ETA 2:25
    off     logging.progress=false: no progress, but the messages (eval results) still print
    quiet   --quiet (logging.quiet): neither

Nothing here writes colour or other escape codes, so NO_COLOR holds whatever the mode
(tqdm's bar has no colour unless asked for one). `train`, `bench` and `eval` use `Progress`;
a sweep's callback uses `Throttle` for its heartbeat.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Literal

Mode = Literal["bar", "lines", "off", "quiet"]

PLAIN_INTERVAL_SECONDS = 30.0  # the default of logging.plain_interval_seconds

# How the figures a caller passes are named in a plain line.
LABELS = {"tok_s": "tokens/s"}


def progress_mode(enabled: bool = True, quiet: bool = False, stream=None) -> Mode:
    """"bar" on a terminal or in a notebook, "lines" when output is redirected; "off" or "quiet" when asked."""
    if quiet:
        return "quiet"
    if not enabled:
        return "off"
    stream = stream or sys.stdout
    if _in_notebook() or (hasattr(stream, "isatty") and stream.isatty()):
        return "bar"
    return "lines"


class Throttle:
    """True at most once every `seconds` (and the first time): how often a log gets a line."""

    def __init__(self, seconds: float):
        self.seconds, self.last = seconds, None

    def due(self) -> bool:
        now = time.monotonic()
        if self.last is None or now - self.last >= self.seconds:
            self.last = now
            return True
        return False

    def mark(self) -> None:
        self.last = time.monotonic()


class Progress:
    """Steps out of `total`, with figures (loss=..., lr=...) shown beside them.

    `update(steps, **figures)` advances and replaces the figures; `write(message)` prints a line
    (an eval result) without breaking the bar; `close()` ends the bar, or prints the last line."""

    def __init__(self, total: int, *, initial: int = 0, description: str = "", unit: str = "step",
                 mode: Mode | None = None, every_seconds: float = PLAIN_INTERVAL_SECONDS,
                 say: Callable[[str], None] = print):
        self.total, self.n, self.unit, self.say = total, initial, unit, say
        self.mode = progress_mode() if mode is None else mode
        self.figures: dict = {}
        self.unprinted = False  # figures that no plain line has shown yet
        self.started, self.first = time.monotonic(), initial
        self.throttle = Throttle(every_seconds)
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=description, unit=unit, dynamic_ncols=True)

    def update(self, steps: int = 1, **figures) -> None:
        self.n += steps
        if figures:
            self.figures, self.unprinted = figures, True
        if self.bar is not None:
            if figures:
                self.bar.set_postfix({k: short_number(v) for k, v in figures.items()}, refresh=False)
            self.bar.update(steps)
        elif self.mode == "lines" and self.unprinted and steps and (self.n >= self.total or self.throttle.due()):
            self._print_line()

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        elif self.mode != "quiet":
            self.say(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines" and self.unprinted:
            self._print_line()

    def line(self) -> str:
        """The plain line: the same figures the bar shows, its elapsed time and ETA."""
        elapsed = time.monotonic() - self.started
        done = self.n - self.first
        eta = (self.total - self.n) * elapsed / done if done > 0 else math.nan
        parts = [f"{self.unit} {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%)"]
        parts += [f"{LABELS.get(k, k)} {short_number(v)}" for k, v in self.figures.items()]
        parts += [f"elapsed {clock(elapsed)}", f"ETA {clock(eta)}"]
        return " | ".join(parts)

    def _print_line(self) -> None:
        self.say(self.line())
        self.unprinted = False
        self.throttle.mark()


def short_number(value) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.2e}" if value and abs(value) < 1e-2 else f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def clock(seconds: float) -> str:
    """1:02, 1:02:03, or ? while unknown."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _in_notebook() -> bool:
    # IPython kernels replace stdout with a stream that is not a tty but renders tqdm's widget.
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"
