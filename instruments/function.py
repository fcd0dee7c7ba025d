"""A Python callable or an external program as an instrument.

`FunctionInstrument` calls `module:function` with the parameters as a dict; the module is
looked up beside the campaign file first, then on sys.path. `CommandInstrument` runs a program
that reads the parameters as JSON on stdin and writes metrics as JSON on stdout, the way
detector groups wrap Geant4 jobs.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

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


class CommandInstrument:
    """Measures by running a program: parameters as JSON on stdin, metrics as a JSON object on stdout.

    A non-zero exit is a retryable failure (stderr's tail is the message); output that is not a JSON
    object is not retryable. `abort()` kills the running program, which the executor calls on timeout.
    """

    def __init__(self, argv: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None,
                 base_dir: str | Path | None = None, default_metric: str = "y"):
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
        self._proc: subprocess.Popen | None = None
        self._aborted = False

    def describe(self) -> dict[str, Any]:
        return {"kind": "command", "argv": self.argv}

    def measure(self, params: dict[str, Any]) -> Measurement:
        self._aborted = False
        try:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=self.cwd, env=self.env, text=True, start_new_session=True,
            )
        except OSError as exc:
            raise InstrumentError(f"cannot start {self.argv[0]}: {exc}", retryable=False) from None
        try:
            out, err = self._proc.communicate(json.dumps(params, default=float))
        finally:
            code = self._proc.returncode
            self._proc = None
        if self._aborted:
            raise InstrumentTimeout(f"{self.argv[0]} was stopped: it ran past the trial timeout")
        if code != 0:
            tail = " | ".join(err.strip().splitlines()[-3:]) or "no stderr"
            raise InstrumentError(f"{self.argv[0]} exited with status {code}: {tail}")
        return Measurement.from_value(self._parse(out), self.default_metric)

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
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._aborted = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
