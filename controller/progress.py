"""How a running campaign reports progress: log lines with rate and ETA by default, a rich bar in the CLI."""
from __future__ import annotations

import logging
import time
from typing import Any, Protocol, TextIO

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
    """A plain progress line (done/total, failed, fallbacks, best, rate, ETA) at most every `every` seconds,
    and a last one at the end. With `stream` (the CLI passes stderr when it is not a terminal) the lines are
    written there directly, so `aec run ... > log 2>&1` shows progress without any logging set up; without
    one they go to the `aec` logger at INFO (the library's default).
    """

    def __init__(self, every: float = 10.0, stream: TextIO | None = None):
        self.every = every
        self.stream = stream
        self.name = ""
        self.total: int | None = None
        self._t0 = self._last = time.time()
        self._done0 = 0
        self._unsaid: tuple[int, int, float | None, str, int] | None = None  # the latest state not yet printed

    def start(self, name: str, total: int | None, done: int) -> None:
        self.name, self.total, self._done0 = name, total, done
        self._t0 = self._last = time.time()
        self._emit(f"campaign {name}: {done} of {total if total is not None else '?'} trials done")

    def update(self, done: int, failed: int, best: float | None, note: str = "", fallbacks: int = 0) -> None:
        now = time.time()
        self._unsaid = (done, failed, best, note, fallbacks)
        if now - self._last < self.every and (self.total is None or done < self.total):
            return
        self._last = now
        self._say(now)

    def _say(self, now: float) -> None:
        assert self._unsaid is not None
        done, failed, best, note, fallbacks = self._unsaid
        self._unsaid = None
        rate = (done - self._done0) / max(now - self._t0, 1e-9)
        eta = (self.total - done) / rate if self.total and rate > 0 else None
        self._emit(f"{self.name}: {done}/{self.total if self.total is not None else '?'} done, {failed} failed, "
                   f"fallbacks: {fallbacks}, best {'-' if best is None else f'{best:.6g}'}, {rate:.2f} trials/s, "
                   f"ETA {'-' if eta is None else format_duration(eta)}{f', {note}' if note else ''}")

    def _emit(self, text: str) -> None:
        if self.stream is None:
            log.info(text)
        else:
            print(f"{time.strftime('%H:%M:%S')} {text}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        self._emit(text)

    def finish(self) -> None:
        if self._unsaid is not None:
            self._say(time.time())


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
