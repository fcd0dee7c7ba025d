"""The local Ray runtime that the Ray test modules share: 2 CPUs, a small object store, and as many GPUs
declared to Ray as the module asks for (Ray's own accounting; no physical GPU is needed).

    from tests.ray_helpers import ray_fixture
    local_ray = ray_fixture(num_gpus=1)   # module-scoped, autouse
"""
from __future__ import annotations

import pytest


def ray_fixture(num_gpus: int = 0, num_cpus: int = 2):
    """A module-scoped autouse fixture that starts Ray with `num_gpus` GPUs declared and shuts it down after."""

    @pytest.fixture(scope="module", autouse=True)
    def local_ray():
        ray = pytest.importorskip("ray")
        if ray.is_initialized():  # left by another module: start ours with the resources asked for
            ray.shutdown()
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 object_store_memory=100 * 1024**2, log_to_driver=False, logging_level="WARNING")
        yield ray
        ray.shutdown()

    return local_ray
