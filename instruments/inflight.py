"""The measurement in progress, which another thread (the executor's watchdog, a stop) may abort."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Aborted(Exception):
    """The measurement in progress was aborted (a trial timeout or a stop)."""


class InFlight:
    """Hands each measurement an Event that `abort()` sets; the instrument's waits check it and raise Aborted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run: threading.Event | None = None

    @contextmanager
    def measuring(self) -> Iterator[threading.Event]:
        run = threading.Event()
        with self._lock:
            self._run = run
        try:
            yield run
        finally:
            with self._lock:
                self._run = None

    def abort(self) -> bool:
        """Set the running measurement's Event; False when none runs."""
        with self._lock:
            run = self._run
        if run is None:
            return False
        run.set()
        return True
