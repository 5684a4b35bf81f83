"""Progress for long jobs, with or without a terminal.

On a terminal: a rich bar (done/total, rate, elapsed, time left). Anywhere else (nohup, CI, a
pipe into a log file), where a bar prints nothing until it ends: one plain line every N seconds,

    generate: 120/320 (38%) 2.4/s, ETA 1m23s, 12.3 tok/s

and a last line when the job ends. N is `RLAIF_PROGRESS_SECONDS` (default 30). Lines go to
stderr, so stdout keeps only the summary a script may parse.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import IO, Any, Iterator

DEFAULT_EVERY_S = 30.0


def every_s() -> float:
    """Seconds between plain progress lines (RLAIF_PROGRESS_SECONDS; a bad value means the default)."""
    try:
        v = float(os.environ.get("RLAIF_PROGRESS_SECONDS", DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return v if v >= 0 else DEFAULT_EVERY_S


def duration(s: float) -> str:
    """3h02m, 4m05s, 7s."""
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


class Ticker:
    """What a job calls as work finishes: `advance(n)`, and `note(text)` for a figure of its own."""

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def __call__(self, n: int) -> None:  # usable as a backend's progress callback
        self.advance(n)


class _Lines(Ticker):
    def __init__(self, label: str, total: int, stream: IO[str], every: float):
        self.label, self.total, self.stream, self.every = label, total, stream, every
        self.done = 0
        self.extra = ""
        self.t0 = self.last = time.monotonic()
        self._lock = threading.Lock()

    def line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.t0
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.label}: {self.done}/{self.total}{pct}"]
        if final:
            parts.append(f"in {duration(elapsed)}")
        else:
            parts.append(f"{rate:.2f}/s" if rate < 10 else f"{rate:.0f}/s")
            left = self.total - self.done
            parts.append(f"ETA {duration(left / rate)}" if rate > 0 and left > 0 else "ETA -")
        return parts[0] + " " + ", ".join(parts[1:]) + (f", {self.extra}" if self.extra else "")

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self.last >= self.every:
                self.last = now
                print(self.line(), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self.extra = text


class _Bar(Ticker):
    def __init__(self, bar: Any, task: Any):
        self.bar, self.task = bar, task

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)

    def note(self, text: str) -> None:
        self.bar.update(self.task, note=text)


@contextlib.contextmanager
def progress(label: str, total: int, enabled: bool = True, *, stream: IO[str] | None = None,
             every: float | None = None) -> Iterator[Ticker]:
    """A progress display for `total` units of work; yields the `Ticker` to advance.

    `enabled=False` (--no-progress, --quiet) shows nothing. `stream` defaults to stderr; when it
    is not a terminal, plain lines every `every` seconds (default: `every_s()`).
    """
    stream = stream or sys.stderr
    if not enabled or total <= 0:
        yield Ticker()
        return
    if not _is_tty(stream):
        lines = _Lines(label, total, stream, every_s() if every is None else every)
        yield lines
        print(lines.line(final=True), file=stream, flush=True)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=stream), transient=False) as bar:
        yield _Bar(bar, bar.add_task(label, total=total, note=""))


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
