"""Reaching a Ray runtime (start a local one, or attach to a cluster) and checking that it can hold the
workers asked for, so a mistake is a one-line error within seconds instead of actors pending for good."""
from __future__ import annotations

import logging
import math
import socket
from typing import Any

from controller.executors.base import ExecutorError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
"""Seconds to reach a cluster's port before it is an error (Ray itself waits 30 s to 2 min)."""
RAY_GRANULARITY = 1e-4
"""Ray accounts fractional resources in steps of 1e-4."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(address: str | None, field: str = "executor.address", start: str = "executor") -> bool:
    """Make sure Ray is initialised; True when this call started it (so shutdown is ours to do).
    `field` and `start` name the setting in error messages (an address that fails; a local Ray that does not start)."""
    import ray

    if ray.is_initialized():
        if address:
            log.warning("Ray is already initialised in this process; %s %s is not used", field, address)
        return False
    if address not in (None, "auto"):
        _reachable(address, field)
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        if address == "auto":
            raise ExecutorError(f"{field}: auto: no running Ray cluster found from this machine; start one "
                                "with `ray start --head`, or leave address out for a local Ray") from None
        raise ExecutorError(f"{field}: {address}: Ray did not connect: {first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - Ray raises many types for "could not start"; all end the run here
        where = f"{field}: {address}: Ray did not connect" if address else f"{start}: Ray could not start"
        raise ExecutorError(f"{where}: {type(exc).__name__}: {first_line(exc)}") from None
    return True


def _reachable(address: str, field: str) -> None:
    """A quick TCP connect to HOST:PORT (or ray://HOST:PORT): fail in seconds where Ray would retry for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
            return
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if isinstance(exc, socket.timeout):
            why = f"no answer within {CONNECT_TIMEOUT:g} s"
        raise ExecutorError(f"{field}: {address}: cannot reach Ray there ({why}); is `ray start --head` "
                            "running on that host, and is the port open from here?") from None


def check_fraction(field: str, value: float, zero_ok: bool) -> None:
    """Ray refuses a resource below its granularity (and a negative one): say so with the field's name."""
    if value < 0 or (value == 0 and not zero_ok) or 0 < value < RAY_GRANULARITY:
        least = f"0 or at least {RAY_GRANULARITY:g}" if zero_ok else f"at least {RAY_GRANULARITY:g}"
        raise ExecutorError(f"executor.{field}: expected {least} (Ray's smallest fraction of a CPU or GPU), got {value:g}")


def check_capacity(workers: int, cpus_per_worker: float, gpus_per_worker: float) -> None:
    """Raise when the cluster's nodes, all of them free, could not hold `workers` actors of this size.

    Counted per node, as Ray places an actor on one node: a node with c CPUs and g GPUs holds
    min(c // cpus, g // gpus) workers (a fraction of a GPU never spans two GPUs).
    """
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    by_cpu = [_fit(r.get("CPU", 0.0), cpus_per_worker) for r in nodes]
    by_gpu = [_fit_gpus(r.get("GPU", 0.0), gpus_per_worker) for r in nodes]
    fits = int(sum(min(c, g) for c, g in zip(by_cpu, by_gpu)))
    if fits >= workers:
        return
    cpus = sum(r.get("CPU", 0.0) for r in nodes)
    gpus = sum(r.get("GPU", 0.0) for r in nodes)
    ask = f"{workers} worker(s) x {cpus_per_worker:g} CPU" + (f" + {gpus_per_worker:g} GPU" if gpus_per_worker else "")
    hints = []
    if gpus_per_worker and gpus == 0:
        hints.append("no gpus_per_worker (the cluster has no GPU; simulators then run on the CPU)")
    elif sum(by_gpu) < workers:
        hints.append(f"gpus_per_worker: {_share(gpus, workers):g}")
    if sum(by_cpu) < workers:
        hints.append(f"cpus_per_worker: {_share(cpus, workers):g} (a fraction suits instruments that wait rather than compute)")
    if fits:
        hints.append(f"workers: {fits}")
    hints = hints or ["a bigger cluster"]
    raise ExecutorError(f"executor: {ask} do not fit on this Ray cluster ({len(nodes)} node(s), {cpus:g} CPU, "
                        f"{gpus:g} GPU; {fits} such worker(s) fit); use {' or '.join(hints)}")


def _fit(have: float, need: float) -> float:
    return math.floor((have + RAY_GRANULARITY / 2) / need) if need > 0 else math.inf


def _fit_gpus(have: float, need: float) -> float:
    """Workers of `need` GPUs on a node with `have`: fractions are packed per GPU, whole numbers across them."""
    if need == 0:
        return math.inf
    return math.floor(have / need) if need >= 1 else math.floor(have) * _fit(1.0, need)


def _share(total: float, workers: int) -> float:
    return math.floor(total / workers / RAY_GRANULARITY) * RAY_GRANULARITY


def cluster_line() -> str:
    """The cluster's resources now, in one line, for error messages."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    return (f"{free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPU and {free.get('GPU', 0):g} of "
            f"{total.get('GPU', 0):g} GPU free")
