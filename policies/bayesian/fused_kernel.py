"""BoTorch's fused qLogNEHVI/qLogEHVI C++ kernel, built once per machine under a lock that dies with its holder.

BoTorch compiles the kernel itself on first use into ~/.cache/torch_extensions, guarded by a lock *file*:
a process killed while compiling (kill -9, a timeout, a daemon restart) leaves the file behind, and every
later multi-objective proposal on that machine then waits on it forever. Importing this module stops
BoTorch from building it; `prepare()` builds it into aec's cache guarded by `flock` (released by the
kernel when the holder dies), then hands the module to BoTorch. Any failure leaves BoTorch's
pure-PyTorch path (the same numbers, slower: a 2-objective proposal at n = 60 took 0.64 s against
0.43 s), reported as a degradation.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import botorch
import torch
from botorch.acquisition.multi_objective import logei as botorch_logei

from policies.base import PolicyFallbackError

logger = logging.getLogger(__name__)

NAME = "logei_fused_ext"
SOURCE = Path(botorch_logei.__file__).resolve().parent.parent.parent / "csrc" / "logei_fused.cpp"
CFLAGS = ["-O3", "-march=native"]  # BoTorch's own flags; -march=native is why the CPU is in the cache key
WAIT_S = 600.0
"""How long a process waits for another one that is building the kernel (a build takes ~30 s on 2 cores)."""

botorch_logei._load_attempted = True  # BoTorch must never start its own, unguarded build

_lock = threading.Lock()
_outcome: tuple[bool, str | None] | None = None  # (loaded, why not) once prepare() has run


def cache_root() -> Path:
    """$AEC_CACHE_DIR, else $XDG_CACHE_HOME/aec, else ~/.cache/aec."""
    if os.environ.get("AEC_CACHE_DIR"):
        return Path(os.environ["AEC_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aec"


def _cpu_fingerprint() -> str:
    """The CPU model and instruction-set flags: a -march=native build must not run on another CPU (a shared home)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return "|".join([platform.machine(), platform.processor(), *sorted(set(keep))])


def build_key() -> str:
    """What the built kernel depends on: its source, the compiler flags, torch, Python and the CPU."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS).encode(), torch.__version__.encode(), botorch.__version__.encode(),
                 sys.version.encode(), _cpu_fingerprint().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _flock(path: Path, wait_s: float) -> int:
    """An exclusive flock on `path` (created), waiting up to wait_s; the open descriptor. TimeoutError past it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise TimeoutError(f"another process has been building the kernel for over {wait_s:.0f} s ({path})")
            time.sleep(0.2)


def _import(so: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(NAME, so)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {so}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_or_load(wait_s: float) -> ModuleType:
    """The kernel module: loaded from aec's cache when a complete build is there, else built there first."""
    key = build_key()
    root = cache_root() / "torch_extensions"
    root.mkdir(parents=True, exist_ok=True)
    folder, done = root / f"{NAME}-{key}", root / f"{NAME}-{key}" / "complete"
    fd = _flock(root / f"{NAME}-{key}.lock", wait_s)
    try:
        if done.is_file() and done.read_text() == key and (folder / f"{NAME}.so").is_file():
            return _import(folder / f"{NAME}.so")
        shutil.rmtree(folder, ignore_errors=True)  # a build whose holder died: its files (torch's lock too) are stale
        folder.mkdir()
        logger.warning("building BoTorch's fused hypervolume kernel once for this CPU (about 30 s) in %s", folder)
        from torch.utils.cpp_extension import load

        module = load(name=NAME, sources=[str(SOURCE)], extra_cflags=CFLAGS, build_directory=str(folder), verbose=False)
        tmp = folder / f"complete.{os.getpid()}"
        tmp.write_text(key)
        os.replace(tmp, done)
        return module
    finally:
        os.close(fd)  # releases the flock


def prepare(wait_s: float = WAIT_S) -> str | None:
    """Give BoTorch its fused kernel (once per process); None when it runs, else why BoTorch's slower path is used."""
    global _outcome
    with _lock:
        if _outcome is None:
            if not SOURCE.is_file():
                _outcome = (False, f"this BoTorch ships no {SOURCE.name}")
            else:
                try:
                    botorch_logei._C = _build_or_load(wait_s)
                    _outcome = (True, None)
                except Exception as exc:  # noqa: BLE001 - any failure leaves the pure-PyTorch path, reported
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    _outcome = (False, f"{type(exc).__name__}: {first}")
                    logger.warning("BoTorch's fused hypervolume kernel is not available (%s); its pure-PyTorch path "
                                   "(slower) is used", _outcome[1])
        return _outcome[1]


def prepare_for(policy: str, strict: bool) -> None:
    """prepare() for a multi-objective policy; in strict mode a kernel that cannot run is PolicyFallbackError."""
    if prepare() and strict:
        raise PolicyFallbackError(policy, note() or "fused hypervolume kernel unavailable")


def note() -> str | None:
    """The degradation line when prepare() failed, else None."""
    if _outcome is None or _outcome[0]:
        return None
    return f"fused hypervolume kernel unavailable: BoTorch's slower pure-PyTorch path ({_outcome[1]})"
