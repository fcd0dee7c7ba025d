"""The survey's memory (visits per field, detections per transient) and what a new observation is worth.

Reward of one observation: for each transient it detects (SNR >= 5), the field's priority times
1 - exp(-gap / cadence), gap being the days since that transient's last detection (a first detection
counts in full); plus, with the dome open, depth_weight * priority * max(0, depth - depth_floor)
times the same novelty factor for the days since the field's last visit. New epochs of active
transients and deep looks at fields not seen lately pay; repeating an observation does not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

ACTIVE_WINDOW_DAYS = 30.0
SINCE_CAP_DAYS = 30.0


@dataclass
class Epoch:
    """One observation as the survey scores it: field row, mid-exposure MJD, depth and transients in view."""

    row: int
    mjd: float
    depth: float
    dome_open: bool
    transients: list[int] = field(default_factory=list)
    snr: list[float] = field(default_factory=list)


class SurveyLog:
    """Visit and detection history, on `device`, and the reward model that reads it."""

    def __init__(self, priority: np.ndarray, transient_fields: torch.Tensor, cadence: float, depth_weight: float,
                 depth_floor: float, device: torch.device):
        n = len(priority)
        self.priority = np.asarray(priority, dtype=np.float64)
        self.transient_fields = transient_fields.cpu()
        self.cadence = cadence
        self.depth_weight = depth_weight
        self.depth_floor = depth_floor
        self.device = device
        self.last_visit = torch.full((n,), -math.inf, dtype=torch.float64, device=device)
        self.n_visits = torch.zeros(n, dtype=torch.float64, device=device)
        self.last_detection = torch.full((len(self.transient_fields),), -math.inf, dtype=torch.float64)
        self.n_detections = torch.zeros(len(self.transient_fields), dtype=torch.long)
        self._active: tuple[tuple[int, int], torch.Tensor] | None = None

    def _novelty(self, days: float) -> float:
        return 1.0 - math.exp(-days / self.cadence)

    def record(self, epochs: list[Epoch]) -> list[float]:
        """Score the epochs in order, remembering each as it is scored; one reward per epoch."""
        rewards = []
        visited: dict[int, float] = {}
        last_visit = self.last_visit.cpu()
        for e in epochs:
            prio = float(self.priority[e.row])
            reward = 0.0
            for i, snr in zip(e.transients, e.snr):
                if e.dome_open and snr >= 5.0:
                    reward += prio * self._novelty(e.mjd - float(self.last_detection[i]))
                    self.last_detection[i] = e.mjd
                    self.n_detections[i] += 1
            if e.dome_open:
                before = visited.get(e.row, float(last_visit[e.row]))
                reward += self.depth_weight * prio * self._novelty(e.mjd - before) * max(0.0, e.depth - self.depth_floor)
                visited[e.row] = e.mjd
            rewards.append(reward)
        if visited:
            rows = torch.tensor(list(visited), dtype=torch.long, device=self.device)
            self.last_visit[rows] = torch.tensor(list(visited.values()), dtype=torch.float64, device=self.device)
            self.n_visits += torch.bincount(torch.tensor([e.row for e in epochs if e.dome_open], device=self.device),
                                            minlength=len(self.priority)).to(self.n_visits)
        return rewards

    def since_visit(self, mjd: float) -> torch.Tensor:
        """Days since each field's last visit, capped at SINCE_CAP_DAYS (the cap for never)."""
        return (mjd - self.last_visit).clamp(max=SINCE_CAP_DAYS)

    def known_active(self, mjd: float) -> torch.Tensor:
        """Per field, how many of its transients were detected within the last ACTIVE_WINDOW_DAYS."""
        recent = (mjd - self.last_detection) < ACTIVE_WINDOW_DAYS
        key = (int(self.n_detections.sum()), int(recent.sum()))
        if self._active is None or self._active[0] != key:
            counts = torch.bincount(self.transient_fields[recent], minlength=len(self.priority))
            self._active = (key, counts.to(device=self.device, dtype=torch.float64))
        return self._active[1]
