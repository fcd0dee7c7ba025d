"""Replay memory for B nights stepped in lock step, kept time-major so n-step returns read consecutive rows."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """Sampled transitions: x, mask at t; the discounted n-step return; x, mask at t + n, whether to bootstrap,
    and the discount to apply to the bootstrapped value."""

    x: torch.Tensor
    mask: torch.Tensor
    action: torch.Tensor
    ret: torch.Tensor
    next_x: torch.Tensor
    next_mask: torch.Tensor
    bootstrap: torch.Tensor
    discount: torch.Tensor


class NightReplay:
    """A ring of `steps` lock steps of B nights; observations stored as float16."""

    def __init__(self, steps: int, nights: int, n_targets: int, n_inputs: int):
        self.steps, self.b = steps, nights
        self.x = torch.zeros(steps, nights, n_targets, n_inputs, dtype=torch.float16)
        self.mask = torch.zeros(steps, nights, n_targets, dtype=torch.bool)
        self.action = torch.zeros(steps, nights, dtype=torch.long)
        self.reward = torch.zeros(steps, nights)
        self.live = torch.zeros(steps, nights, dtype=torch.bool)
        self.terminal = torch.zeros(steps, nights, dtype=torch.bool)
        self.duration = torch.ones(steps, nights)
        self.written = 0

    def add(self, x: torch.Tensor, mask: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
            live: torch.Tensor, terminal: torch.Tensor, duration: torch.Tensor | None = None) -> None:
        """One lock step: inputs and mask before acting, the action, its reward, whether the night was still
        running, whether it finished with this action, and how long it took (in decisions' worth: the
        discount applied over it is gamma ** duration; 1 when not given)."""
        i = self.written % self.steps
        self.duration[i] = 1.0 if duration is None else duration.float()
        self.x[i], self.mask[i], self.action[i] = x.to(torch.float16), mask, action
        self.reward[i], self.live[i], self.terminal[i] = reward.float(), live, terminal
        self.written += 1

    _FIELDS = ("x", "mask", "action", "reward", "live", "terminal", "duration")

    def state(self) -> dict:
        """The filled rows (in ring order) and the write count, as plain tensors for a checkpoint."""
        filled = min(self.written, self.steps)
        return {"written": self.written, "shape": list(self.x.shape),
                **{k: getattr(self, k)[:filled].clone() for k in self._FIELDS}}

    def load_state(self, state: dict) -> None:
        """Restore `state()`; ValueError if it was written for another shape (nights, targets, inputs, steps)."""
        if list(state["shape"]) != list(self.x.shape):
            raise ValueError(f"replay memory of shape {list(state['shape'])}, expected {list(self.x.shape)}")
        filled = min(int(state["written"]), self.steps)
        for k in self._FIELDS:
            getattr(self, k)[:filled] = state[k][:filled]
        self.written = int(state["written"])

    def __len__(self) -> int:
        return int(self.live[: min(self.written, self.steps)].sum())

    def sample(self, size: int, n_step: int, gamma: float, generator: torch.Generator) -> Batch | None:
        """`size` live transitions with their n-step returns, or None while too few are stored."""
        first = max(0, self.written - self.steps)
        last = self.written - n_step - 1
        if last < first:
            return None
        t = torch.randint(first, last + 1, (4 * size,), generator=generator)
        b = torch.randint(0, self.b, (4 * size,), generator=generator)
        keep = self.live[t % self.steps, b]
        t, b = t[keep][:size], b[keep][:size]
        if t.numel() == 0:
            return None
        ret = torch.zeros(t.numel())
        going = torch.ones(t.numel(), dtype=torch.bool)
        discount = torch.ones(t.numel())
        for k in range(n_step):
            i = (t + k) % self.steps
            ret += going * discount * self.reward[i, b]
            discount = discount * gamma ** self.duration[i, b]
            going &= ~self.terminal[i, b]
        i0, i_n = t % self.steps, (t + n_step) % self.steps
        return Batch(self.x[i0, b].float(), self.mask[i0, b], self.action[i0, b], ret,
                     self.x[i_n, b].float(), self.mask[i_n, b], going & self.mask[i_n, b].any(-1), discount)
