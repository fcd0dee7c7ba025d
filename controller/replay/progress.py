"""Progress of a replay: one bar (or one line every few seconds) over all runs, counted in measurements."""
from __future__ import annotations

import time
from typing import Any, TextIO

from controller.durations import format_duration


class SilentProgress:
    def start(self, total: int, done: int) -> None: ...
    def advance(self, key: str, done: int) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...


class _Counts:
    """Measurements done per run; the sum is the bar's position."""

    def __init__(self) -> None:
        self.total = self.base = 0
        self.per_run: dict[str, int] = {}
        self.start_per_run: dict[str, int] = {}

    def set(self, key: str, done: int) -> int:
        self.start_per_run.setdefault(key, done)
        self.per_run[key] = max(done, self.per_run.get(key, 0))
        return self.done

    @property
    def done(self) -> int:
        return self.base + sum(self.per_run[k] - self.start_per_run[k] for k in self.per_run)


class RichProgress(_Counts):
    """A rich bar on stderr: measurements done over all runs, runs in progress, rate, ETA."""

    def __init__(self, console: Any = None):
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("measurements"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console or Console(stderr=True))
        self.task = None

    def start(self, total: int, done: int) -> None:
        self.total, self.base = total, done
        self.progress.start()
        self.task = self.progress.add_task("replay", total=total, completed=done)

    def advance(self, key: str, done: int) -> None:
        self.progress.update(self.task, completed=self.set(key, done))

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def finish(self) -> None:
        self.progress.stop()


class LineProgress(_Counts):
    """Plain lines (for logs and pipes): measurements done of the total, rate and ETA, every `every` seconds."""

    def __init__(self, stream: TextIO, every: float = 10.0):
        super().__init__()
        self.stream, self.every = stream, every
        self._t0 = self._last = time.time()

    def start(self, total: int, done: int) -> None:
        self.total, self.base = total, done
        self._t0 = self._last = time.time()
        self._line(f"replay: {done} of {total} measurements done")

    def advance(self, key: str, done: int) -> None:
        self.set(key, done)
        if time.time() - self._last >= self.every:
            self._say()

    def _say(self) -> None:
        self._last = now = time.time()
        rate = (self.done - self.base) / max(now - self._t0, 1e-9)
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "-"
        self._line(f"replay: {self.done}/{self.total} measurements, {rate:.2f}/s, ETA {eta}")

    def message(self, text: str) -> None:
        self._line(text)

    def _line(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=self.stream, flush=True)

    def finish(self) -> None:
        self._say()
