"""A Python callable or an external program as an instrument.

`FunctionInstrument` calls `module:function` with the parameters as a dict; the module is
looked up beside the campaign file first, then on sys.path. `CommandInstrument` runs a program
that reads the parameters as JSON on stdin and writes metrics as JSON on stdout, the way
detector groups wrap Geant4 jobs.

A command's processes never outlive its measurement, nor aec (POSIX):
- Each measurement gets a process group of its own, led by a watchdog: `/bin/sh` that ignores HUP, INT
  and TERM, blocks reading a pipe whose only write end aec holds, and on end of file SIGKILLs its whole
  group, itself included. The program joins that group (in aec's session, so Ctrl-C still reaches aec
  alone). aec closes the pipe once the program has exited (background leftovers die with the
  measurement) or an abort's grace has run out; the kernel closes it when aec dies in any way, SIGKILL
  included, so children and grandchildren die with aec. The watchdog stays a group member until aec
  reaps it, which aec does only after closing the pipe, so the group id is never recycled while aec
  may still signal it.
- On Linux the program also gets PR_SET_PDEATHSIG=SIGKILL, so it dies the moment aec does. That
  signal fires when the *thread* that forked the program exits; the forking thread is the one that runs
  `measure()`, which blocks until the program has exited, so it fires only when aec itself dies.
- A process that leaves the group (setsid, setpgid: a daemon) escapes both; only a cgroup would catch
  it. Other POSIX systems (macOS, BSD) have the watchdog but no PDEATHSIG; Windows is not supported.
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from dataclasses import dataclass
from typing import IO, Any, Callable

from instruments.base import InstrumentError, InstrumentTimeout, Measurement

_import_lock = threading.Lock()


def load_callable(target: str, base_dir: str | Path | None = None) -> Callable[..., Any]:
    """Import `module:function`, preferring a module file beside the campaign file."""
    module_name, _, func_name = target.partition(":")
    if not module_name or not func_name:
        raise InstrumentError(f"instrument.target {target!r}: expected 'module:function'", retryable=False)
    with _import_lock:
        module = None
        if base_dir is not None:
            base = Path(base_dir)
            rel = Path(*module_name.split("."))
            for candidate in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
                if candidate.exists():
                    spec = importlib.util.spec_from_file_location(module_name, candidate)
                    assert spec is not None and spec.loader is not None
                    module = importlib.util.module_from_spec(spec)
                    sys.modules.setdefault(module_name, module)
                    try:
                        spec.loader.exec_module(module)
                    except Exception as exc:
                        sys.modules.pop(module_name, None)
                        raise InstrumentError(f"instrument.target: importing {candidate} failed: {exc}", retryable=False) from exc
                    break
        if module is None:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                where = f" (looked beside the campaign file in {base_dir} and on sys.path)" if base_dir else ""
                raise InstrumentError(f"instrument.target: cannot import module {module_name!r}{where}: {exc}", retryable=False) from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise InstrumentError(f"instrument.target: module {module_name!r} has no function {func_name!r}", retryable=False)
    return fn


class FunctionInstrument:
    """Measures by calling a Python function: f(params, **options) -> float | dict | Measurement."""

    def __init__(self, target: str, base_dir: str | Path | None = None, options: dict[str, Any] | None = None,
                 default_metric: str = "y"):
        self.target = target
        self.fn = load_callable(target, base_dir)
        self.options = dict(options or {})
        self.default_metric = default_metric

    def describe(self) -> dict[str, Any]:
        return {"kind": "function", "target": self.target}

    def measure(self, params: dict[str, Any]) -> Measurement:
        try:
            value = self.fn(dict(params), **self.options)
        except InstrumentError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code may raise anything; the trial records it
            raise InstrumentError(f"{self.target} raised {type(exc).__name__}: {exc}") from exc
        return Measurement.from_value(value, self.default_metric)


_WATCHDOG = "trap '' HUP INT TERM; read _; kill -s KILL 0"


def _pdeathsig_setter() -> Callable[[], None] | None:
    """On Linux, a preexec_fn that makes the child die with SIGKILL when its parent (thread) dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    args = (ctypes.c_int(1), ctypes.c_ulong(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    return lambda: prctl(*args)


_SET_PDEATHSIG = _pdeathsig_setter()


class _ProcessGroup:
    """A process group led by a watchdog that SIGKILLs every member once `kill()` closes its pipe or aec dies."""

    def __init__(self) -> None:
        read_end, self._write_end = os.pipe()
        try:
            self._watchdog = subprocess.Popen(["/bin/sh", "-c", _WATCHDOG], stdin=read_end, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, process_group=0)
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)
        self.pgid = self._watchdog.pid
        self._lock = threading.Lock()
        self._open = True

    def signal(self, sig: int) -> None:
        """Send `sig` to every member; a no-op once the group has been killed."""
        with self._lock:
            if self._open:
                try:
                    os.killpg(self.pgid, sig)
                except ProcessLookupError:
                    pass

    def kill(self) -> None:
        """SIGKILL every member (the watchdog does it on end of file); idempotent and non-blocking."""
        with self._lock:
            if self._open:
                self._open = False
                os.close(self._write_end)

    def close(self) -> None:
        """Kill the group and reap the watchdog, so nothing of it outlives the call."""
        self.kill()
        try:
            self._watchdog.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            os.killpg(self.pgid, signal.SIGKILL)
            self._watchdog.wait()


@dataclass
class _Run:
    """One call of `CommandInstrument.measure`: its process group once started, and whether it was aborted."""

    group: _ProcessGroup | None = None
    aborted: bool = False


def _read(f: IO[bytes], size: int) -> str:
    f.seek(0)
    return f.read(size).decode("utf-8", errors="replace")


class CommandInstrument:
    """Measures by running a program: parameters as JSON on stdin, metrics as a JSON object on stdout.

    A non-zero exit is a retryable failure (stderr's tail is the message); output that is not a JSON
    object is not retryable. The measurement ends when the program exits, even if a background child
    still holds its stdout; whatever is left of its process group is then killed. `abort()` (the
    executor's, on a timeout or a stop) sends SIGTERM to the whole group and SIGKILL `kill_grace`
    seconds later, or as soon as the program has exited.
    """

    def __init__(self, argv: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None,
                 base_dir: str | Path | None = None, default_metric: str = "y", kill_grace: float = 1.0):
        base = Path(base_dir) if base_dir else Path.cwd()
        self.cwd = (base / cwd) if cwd and not Path(cwd).is_absolute() else Path(cwd) if cwd else base
        first = argv[0]
        if ("/" in first or first.startswith(".")) and not Path(first).is_absolute():
            resolved = (base / first).resolve()
            if resolved.exists():
                first = str(resolved)
        self.argv = [first, *argv[1:]]
        self.env = {**os.environ, **(env or {})}
        self.default_metric = default_metric
        self.kill_grace = kill_grace
        self._lock = threading.Lock()
        self._run: _Run | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "command", "argv": self.argv}

    def measure(self, params: dict[str, Any]) -> Measurement:
        run = _Run()
        with self._lock:
            self._run = run
        try:
            out, err, code = self._execute(run, json.dumps(params, default=float).encode())
        finally:
            with self._lock:
                self._run = None
        if run.aborted:
            raise InstrumentTimeout(f"{self.argv[0]} was aborted (trial timeout or stop)")
        if code != 0:
            tail = " | ".join(err.strip().splitlines()[-3:]) or "no stderr"
            raise InstrumentError(f"{self.argv[0]} exited with status {code}: {tail}")
        return Measurement.from_value(self._parse(out), self.default_metric)

    def _execute(self, run: _Run, stdin_bytes: bytes) -> tuple[str, str, int]:
        """Run the program in a watched group; files, not pipes, so a lingering child cannot hold the result."""
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            stdin.write(stdin_bytes)
            stdin.seek(0)
            group = _ProcessGroup()
            try:
                try:
                    proc = subprocess.Popen(self.argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=self.cwd,
                                            env=self.env, process_group=group.pgid, preexec_fn=_SET_PDEATHSIG)
                except (OSError, subprocess.SubprocessError) as exc:
                    raise InstrumentError(f"cannot start {self.argv[0]}: {exc}", retryable=False) from None
                with self._lock:
                    run.group = group
                    aborted = run.aborted
                if aborted:
                    self._terminate(group)
                code = proc.wait()
                sizes = [os.fstat(f.fileno()).st_size for f in (stdout, stderr)]
            finally:
                group.close()
            return _read(stdout, sizes[0]), _read(stderr, sizes[1]), code

    def _parse(self, out: str) -> Any:
        text = out.strip()
        for candidate in [text] + [line for line in reversed(text.splitlines()) if line.strip().startswith("{")]:
            try:
                value = json.loads(candidate)
            except json.JSONDecodeError:
                continue
            if isinstance(value, (dict, int, float)):
                return value
        raise InstrumentError(
            f"{self.argv[0]} wrote no JSON object on stdout (got {text[-200:]!r})", retryable=False
        )

    def abort(self) -> None:
        """Stop the measurement in progress (one that has not started its program yet is stopped as it does).

        Returns at once: SIGTERM to the program's group now, SIGKILL after `kill_grace` s or once it exits.
        """
        with self._lock:
            run = self._run
            if run is None or run.aborted:
                return
            run.aborted = True
            group = run.group
        if group is not None:
            self._terminate(group)

    def _terminate(self, group: _ProcessGroup) -> None:
        group.signal(signal.SIGTERM)
        timer = threading.Timer(self.kill_grace, group.kill)
        timer.daemon = True
        timer.start()
