"""BoTorch's standard test functions as simulators, with optional observation noise.

Parameters are named x0..x{d-1} over each function's native bounds; single-objective functions
report metric `y`, multi-objective ones `f0`, `f1`, ... (all to be minimised, as BoTorch defines
them). The known optimum (`optimal_value`) or the hypervolume reference point (`ref_point`,
`max_hv`) comes along so benchmarks compute regret with one subtraction.
"""
from __future__ import annotations

from typing import Any

import torch
from botorch.test_functions import (
    Ackley,
    Branin,
    BraninCurrin,
    CarSideImpact,
    DTLZ2,
    Griewank,
    Hartmann,
    Levy,
    Penicillin,
    Rastrigin,
    Rosenbrock,
    SixHumpCamel,
    StyblinskiTang,
    VehicleSafety,
    ZDT1,
    ZDT3,
)
from botorch.test_functions.base import BaseTestProblem, MultiObjectiveTestProblem

from simulators.base import SimResult, SimulatorError

# name -> (class, default dim or None when fixed, takes num_objectives)
TEST_FUNCTIONS: dict[str, tuple[type[BaseTestProblem], int | None, bool]] = {
    "branin": (Branin, None, False),
    "hartmann3": (Hartmann, 3, False),
    "hartmann6": (Hartmann, 6, False),
    "ackley": (Ackley, 6, False),
    "levy": (Levy, 4, False),
    "rosenbrock": (Rosenbrock, 4, False),
    "rastrigin": (Rastrigin, 4, False),
    "griewank": (Griewank, 4, False),
    "styblinskitang": (StyblinskiTang, 4, False),
    "sixhumpcamel": (SixHumpCamel, None, False),
    "branincurrin": (BraninCurrin, None, False),
    "dtlz2": (DTLZ2, 6, True),
    "zdt1": (ZDT1, 6, True),
    "zdt3": (ZDT3, 6, True),  # a disconnected Pareto front (five pieces)
    "vehiclesafety": (VehicleSafety, None, False),
    "carsideimpact": (CarSideImpact, None, False),  # 4 objectives, 7-d
    "penicillin": (Penicillin, None, False),  # 3 objectives, 7-d (a fed-batch fermentation model)
}


class TestFunctionSimulator:
    """One BoTorch test problem, evaluated on a batch per call, with seeded Gaussian noise."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        name: str,
        dim: int | None = None,
        num_objectives: int = 2,
        noise_std: float = 0.0,
        seed: int = 0,
        device: str = "cpu",
    ):
        if name not in TEST_FUNCTIONS:
            raise SimulatorError(f"unknown test function {name!r}; expected one of {sorted(TEST_FUNCTIONS)}")
        if noise_std < 0:
            raise SimulatorError(f"noise_std must be >= 0, got {noise_std}")
        cls, default_dim, multi = TEST_FUNCTIONS[name]
        kwargs: dict[str, Any] = {}
        if default_dim is not None:
            kwargs["dim"] = int(dim or default_dim)
        elif dim is not None:
            raise SimulatorError(f"{name} has a fixed dimension; drop the 'dim' option")
        if multi:
            kwargs["num_objectives"] = int(num_objectives)
        try:
            self.problem = cls(**kwargs).to(device)
        except (ValueError, AssertionError, TypeError) as exc:
            raise SimulatorError(f"{name}: {exc}") from exc
        self.name = name
        self.noise_std = float(noise_std)
        self.device = torch.device(device)
        self._generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.multi_objective = isinstance(self.problem, MultiObjectiveTestProblem)
        self.dim = self.problem.dim
        self.optimal_value = None if self.multi_objective else float(self.problem.optimal_value)
        self.ref_point = (
            [float(v) for v in self.problem.ref_point] if self.multi_objective else None
        )
        self.max_hv = float(getattr(self.problem, "_max_hv", float("nan")) or float("nan")) if self.multi_objective else None

    def parameters(self) -> list[dict[str, Any]]:
        b = self.problem.bounds
        return [
            {"name": f"x{i}", "type": "real", "low": float(b[0, i]), "high": float(b[1, i])}
            for i in range(self.dim)
        ]

    def metrics(self) -> list[str]:
        if self.multi_objective:
            return [f"f{i}" for i in range(self.problem.num_objectives)]
        return ["y"]

    def objectives(self) -> list[dict[str, Any]]:
        if self.multi_objective:
            return [
                {"metric": m, "goal": "minimize", "threshold": r}
                for m, r in zip(self.metrics(), self.ref_point)
            ]
        return [{"metric": "y", "goal": "minimize"}]

    def evaluate_tensor(self, X: torch.Tensor, noise: bool = True) -> torch.Tensor:
        """Values at X (b x dim, native bounds): b, or b x m for multi-objective problems."""
        X = X.to(device=self.device, dtype=torch.float64)
        f = self.problem.evaluate_true(X)
        if noise and self.noise_std > 0:
            f = f + self.noise_std * torch.randn(f.shape, generator=self._generator, device=self.device, dtype=f.dtype)
        return f

    def evaluate(self, params: dict[str, torch.Tensor]) -> SimResult:
        missing = [f"x{i}" for i in range(self.dim) if f"x{i}" not in params]
        if missing:
            raise SimulatorError(f"{self.name}: missing parameters {missing}")
        X = torch.stack([torch.as_tensor(params[f"x{i}"], dtype=torch.float64) for i in range(self.dim)], dim=-1)
        f = self.evaluate_tensor(X)
        names = self.metrics()
        if self.multi_objective:
            metrics = {n: f[:, i] for i, n in enumerate(names)}
        else:
            metrics = {"y": f}
        sem = {n: torch.full_like(v, self.noise_std) for n, v in metrics.items()} if self.noise_std > 0 else {}
        return SimResult(metrics=metrics, sem=sem)
