"""Where measurements run: `LocalExecutor` (worker threads, the default) and `RayExecutor` (Ray actors,
optionally with GPUs, locally or on a cluster). Each worker owns its own instrument instance.

Both follow one protocol (`Executor`): submit(trial), completed(timeout) -> results, free_slots(),
cancel(id), running(), abort_all(grace), shutdown(); `utilisation` says how busy the workers were.
Ray is imported only when a `RayExecutor` is built.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from controller.executors.base import Executor, ExecutorError, Trial, TrialResult, Utilisation, run_measurement
from controller.executors.local import LocalExecutor

if TYPE_CHECKING:
    from controller.executors.ray import RayExecutor

__all__ = ["Executor", "ExecutorError", "LocalExecutor", "RayExecutor", "Trial", "TrialResult", "Utilisation",
           "run_measurement"]


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":
        from controller.executors.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'controller.executors' has no attribute {name!r}")
