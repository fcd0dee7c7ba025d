"""How a running campaign reports progress: log lines with rate and ETA by default, a rich bar in the CLI."""
from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from controller.durations import format_duration

log = logging.getLogger("aec")


class Reporter(Protocol):
    def start(self, name: str, total: int | None, done: int) -> None: ...
    def update(self, done: int, failed: int, best: float | None, note: str = "", fallbacks: int = 0) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...


def status_note(note: str, failed: int, fallbacks: int) -> str:
    """The progress line's tail: the campaign's note, then failures and fallbacks when there are any."""
    parts = [note] if note else []
    if failed:
        parts.append(f"{failed} failed")
    if fallbacks:
        parts.append(f"fallbacks: {fallbacks}")
    return ", ".join(parts)


class LogReporter:
    """Logs a progress line with rate and ETA at most every `every` seconds."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self.total: int | None = None
        self._t0 = self._last = time.time()
        self._done0 = 0

    def start(self, name: str, total: int | None, done: int) -> None:
        self.name, self.total, self._done0 = name, total, done
        self._t0 = self._last = time.time()
        log.info("campaign %s: %d of %s trials done", name, done, total if total is not None else "?")

    def update(self, done: int, failed: int, best: float | None, note: str = "", fallbacks: int = 0) -> None:
        now = time.time()
        if now - self._last < self.every and (self.total is None or done < self.total):
            return
        self._last = now
        rate = (done - self._done0) / max(now - self._t0, 1e-9)
        eta = (self.total - done) / rate if self.total and rate > 0 else None
        log.info("%s: %d/%s done, %d failed, fallbacks: %d, best %s, %.2f trials/s, ETA %s%s", self.name, done,
                 self.total if self.total is not None else "?", failed, fallbacks, "-" if best is None else f"{best:.6g}",
                 rate, "-" if eta is None else format_duration(eta), f", {note}" if note else "")

    def message(self, text: str) -> None:
        log.info(text)

    def finish(self) -> None:
        pass


class RichReporter:
    """A rich progress bar: trials done, best value, rate and ETA (on stderr)."""

    def __init__(self, console: Any = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
            console=self.console, transient=False,
        )
        self.task = None
        self._t0 = time.time()
        self._done0 = 0

    def start(self, name: str, total: int | None, done: int) -> None:
        self.progress.start()
        self._t0, self._done0 = time.time(), done
        self.task = self.progress.add_task(name, total=total, completed=done, best="-", rate="", note="")

    def update(self, done: int, failed: int, best: float | None, note: str = "", fallbacks: int = 0) -> None:
        rate = (done - self._done0) / max(time.time() - self._t0, 1e-9)
        self.progress.update(self.task, completed=done, best="-" if best is None else f"{best:.6g}",
                             rate=f"{rate:.2f}/s", note=status_note(note, failed, fallbacks))

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def finish(self) -> None:
        self.progress.stop()


class SilentReporter:
    def start(self, name: str, total: int | None, done: int) -> None: ...
    def update(self, done: int, failed: int, best: float | None, note: str = "", fallbacks: int = 0) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...
