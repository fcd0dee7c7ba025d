"""Many one-night surveys of one simulated sky stepped together: torch over B nights x N fields x transients.

The batched twin of `TelescopeSimulator.step`: each of B nights of the simulator's calendar starts at
evening twilight from a fresh survey log, and each step observes one field per night with the same
slews, conditions, transients and science reward (SurveyLog's rule), so an RL scheduler can train on
thousands of decisions per second. `preview` gives every field's reward now without observing
(its maximum is the maximum achievable reward per step); `log` applies an observation recorded
elsewhere (a campaign's history) so that a policy rebuilds the night's state from it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from simulators.base import SimulatorError
from simulators.telescope import sky
from simulators.telescope.simulator import TelescopeSimulator

REWARD_SOURCES = ("transient_new", "transient_repeat", "depth")


@dataclass
class Plan:
    """Per night and field (B, N): what observing that field next would take, and whether it is allowed."""

    slew: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    allowed: torch.Tensor

    @property
    def mid(self) -> torch.Tensor:
        return (self.start + self.end) / 2.0


class NightBatch:
    """B independent one-night surveys (nights `nights` of `sim`'s calendar) observed in lock step."""

    def __init__(self, sim: TelescopeSimulator, nights: list[int]):
        if sim.exposure_range is not None:
            raise SimulatorError("the RL environment uses the default exposure; drop exposure_range")
        if not nights:
            raise SimulatorError("NightBatch needs at least one night")
        self.sim = sim
        self.device, self.dtype = sim.device, sim.dtype
        self._set_nights(nights)
        self.expo_days = sim.exposure / 86400.0
        self.priority = torch.as_tensor(sim.fields.priority, dtype=self.dtype, device=self.device)
        tr = sim.transients
        n = len(sim.fields)
        counts = torch.bincount(tr.field, minlength=n)
        width = max(int(counts.max()) if len(tr) else 0, 1)
        order = torch.argsort(tr.field, stable=True)
        starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
        slot = torch.arange(len(tr)) - starts[tr.field[order]]
        self.members = torch.zeros(n, width, dtype=torch.long)
        self.valid = torch.zeros(n, width, dtype=torch.bool)
        self.members[tr.field[order], slot] = order
        self.valid[tr.field[order], slot] = True
        self.reset()

    def _set_nights(self, nights: list[int]) -> None:
        self.nights = torch.as_tensor(nights, dtype=torch.long)
        bounds = torch.tensor([self.sim.night(int(k)) for k in nights], dtype=torch.float64, device=self.device)
        self.evening, self.morning = bounds[:, 0], bounds[:, 1]

    def move_to(self, nights: list[int]) -> None:
        """Carry every survey state over to other nights of the calendar (a campaign that goes on past morning)."""
        if len(nights) != self.size:
            raise SimulatorError(f"move_to needs {self.size} nights, got {len(nights)}")
        self._set_nights(nights)
        self.done = torch.zeros_like(self.done)
        self.done = ~self.plan().allowed.any(dim=1)

    @property
    def size(self) -> int:
        return int(self.nights.numel())

    @property
    def n_fields(self) -> int:
        return len(self.sim.fields)

    def reset(self) -> None:
        """Every night back to its evening twilight, telescope parked, nothing observed yet."""
        b, n, m = self.size, self.n_fields, len(self.sim.transients)
        f64 = dict(dtype=torch.float64, device=self.device)
        self.clock = self.evening.clone()
        self.alt = torch.full((b,), 90.0, **f64)
        self.az = torch.zeros(b, **f64)
        self.exposed = torch.zeros(b, dtype=torch.bool, device=self.device)
        self.last_visit = torch.full((b, n), -torch.inf, **f64)
        self.n_visits = torch.zeros(b, n, **f64)
        self.known = torch.zeros(b, n, **f64)
        self.last_detection = torch.full((b, m), -torch.inf, dtype=torch.float64)
        self.done = torch.zeros(b, dtype=torch.bool, device=self.device)

    # what each night can do next -------------------------------------------------------------

    @property
    def now(self) -> torch.Tensor:
        """Each night's clock, or its evening twilight while the clock is still in the day before it."""
        return torch.maximum(self.clock, self.evening)

    def plan(self) -> Plan:
        """Slew, start and end of observing each field next, and which fields are allowed: above the altitude
        limit from the start to the end of the exposure, and finished before morning twilight."""
        sim = self.sim
        t0 = self.now.view(-1, 1)
        alt1, az1 = sim.altaz(t0)
        slew = sim.mount.slew_time(self.alt.view(-1, 1).to(self.dtype), self.az.view(-1, 1).to(self.dtype), alt1, az1)
        overhead = torch.where(self.exposed.view(-1, 1), slew.clamp(min=sim.mount.readout), slew).to(torch.float64)
        start = t0 + overhead / 86400.0
        end = start + self.expo_days
        alt_start, _ = sim.altaz(start)
        alt_end, _ = sim.altaz(end)
        allowed = ((torch.minimum(alt_start, alt_end) >= sim.altitude_limit) & (end <= self.morning.view(-1, 1))
                   & ~self.done.view(-1, 1))
        return Plan(slew.to(torch.float64), start, end, allowed)

    def features(self) -> torch.Tensor:
        """The simulator's FEATURES (B, N, F) of every night's state; `known_active` counts transients seen
        per field (the most any visit to it detected), as a campaign's history also tells."""
        return self.sim.features_batch(self.now, self.morning, (self.alt, self.az), self.last_visit,
                                       self.n_visits, self.known)

    def _outcome(self, rows: torch.Tensor, mid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Reward, detections, dome state, newly detected transients and the reward by source (REWARD_SOURCES)
        of observing `rows` at `mid` (B, K)."""
        sim, tr = self.sim, self.sim.transients
        cond = sim.conditions(mid, rows)
        dome = cond["dome_open"].to(self.device)
        depth = torch.where(dome, cond["depth"].to(torch.float64), torch.zeros_like(mid))
        idx, valid = self.members[rows.cpu()], self.valid[rows.cpu()]
        mid_cpu = mid.cpu().unsqueeze(-1)
        mags = tr.magnitude(mid_cpu, idx)
        snr = sky.point_source_snr(mags, depth.cpu().unsqueeze(-1))
        detected = valid & dome.cpu().unsqueeze(-1) & (snr >= 5.0)
        batch = torch.arange(idx.shape[0]).view(-1, *([1] * (idx.dim() - 1)))
        since = mid_cpu - self.last_detection[batch, idx]
        prio = self.priority[rows].to(torch.float64)
        novelty = 1.0 - torch.exp(-since / sim.cadence)
        known = torch.isfinite(since)
        transient_new = prio.cpu() * (detected & ~known).sum(-1)
        transient_repeat = prio.cpu() * (detected & known).mul(novelty).sum(-1)
        visit_gap = mid - self.last_visit.gather(1, rows)
        deep = sim.depth_weight * prio * (1.0 - torch.exp(-visit_gap / sim.cadence)) * (depth - sim.depth_floor).clamp(min=0)
        parts = {"transient_new": transient_new.to(self.device), "transient_repeat": transient_repeat.to(self.device),
                 "depth": torch.where(dome, deep, torch.zeros_like(deep))}
        reward = parts["transient_new"] + parts["transient_repeat"] + parts["depth"]
        return reward, detected.sum(-1).to(self.device, torch.float64), dome, detected, idx, parts

    def preview(self, plan: Plan | None = None) -> torch.Tensor:
        """Reward (B, N) each field would give if observed next; -inf where it is not allowed."""
        return self.preview_parts(plan)["reward"]

    def preview_parts(self, plan: Plan | None = None) -> dict[str, torch.Tensor]:
        """Per field (B, N), what observing it next would pay: `reward` (-inf where not allowed) and its
        REWARD_SOURCES (0 where not allowed): first detections of transients, new epochs of transients already
        detected (what a scheduler can know of before looking), and the depth term."""
        plan = plan or self.plan()
        rows = torch.arange(self.n_fields, device=self.device).expand(self.size, -1)
        reward, *_, parts = self._outcome(rows, plan.mid)
        zero = torch.zeros_like(reward)
        out = {k: torch.where(plan.allowed, v, zero) for k, v in parts.items()}
        out["reward"] = torch.where(plan.allowed, reward, torch.full_like(reward, -torch.inf))
        return out

    # observing ---------------------------------------------------------------------------------

    def step(self, actions: torch.Tensor, plan: Plan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Observe field `actions[b]` in every night not done: (reward (B,), transients detected (B,)).

        A night is done when no field is allowed any more; its reward is then 0 and its action ignored.
        """
        plan = plan or self.plan()
        a = actions.to(self.device).view(-1, 1)
        live = ~self.done
        if bool((live & ~plan.allowed.gather(1, a).view(-1)).any()):
            bad = int(torch.nonzero(live & ~plan.allowed.gather(1, a).view(-1))[0])
            raise SimulatorError(f"night {bad}: field row {int(a[bad])} cannot be observed now (masked)")
        mid = plan.mid.gather(1, a)
        reward, n_det, dome, detected, idx, _ = self._outcome(a, mid)
        reward, n_det, dome = reward.view(-1), n_det.view(-1), dome.view(-1)
        hit = detected[:, 0] & live.cpu().view(-1, 1)
        b_idx = torch.arange(self.size).view(-1, 1).expand_as(hit)
        self.last_detection[b_idx[hit], idx[:, 0][hit]] = mid.cpu().view(-1, 1).expand_as(hit)[hit]
        self._apply(a.view(-1), plan.end.gather(1, a).view(-1), dome & live, n_det, live)
        return torch.where(live, reward, torch.zeros_like(reward)), torch.where(live, n_det, torch.zeros_like(n_det))

    def _apply(self, rows: torch.Tensor, end: torch.Tensor, dome: torch.Tensor, n_det: torch.Tensor,
               live: torch.Tensor) -> None:
        """Move the nights in `live` to after observing `rows` ending at `end`, then mark finished nights done."""
        b = torch.arange(self.size, device=self.device)
        alt, az = self.sim.altaz(end.view(-1, 1), rows.view(-1, 1))
        self.alt = torch.where(live, alt.view(-1).to(torch.float64), self.alt)
        self.az = torch.where(live, az.view(-1).to(torch.float64), self.az)
        self.clock = torch.where(live, end, self.clock)
        self.exposed |= live
        seen = dome & live
        mid = end - self.expo_days / 2.0
        self.last_visit[b[seen], rows[seen]] = mid[seen]
        self.n_visits[b[seen], rows[seen]] += 1.0
        self.known[b[seen], rows[seen]] = torch.maximum(self.known[b[seen], rows[seen]], n_det[seen])
        self.done |= ~self.plan().allowed.any(dim=1)

    def log(self, row: int, end_mjd: float, dome_open: bool, n_detected: float) -> None:
        """Apply an observation recorded elsewhere to a batch of one night (e.g. a campaign's trial)."""
        if self.size != 1:
            raise SimulatorError("log() replays a record into a batch of one night")
        one = lambda v, dt=torch.float64: torch.tensor([v], dtype=dt, device=self.device)  # noqa: E731
        self._apply(one(row, torch.long), one(end_mjd), one(bool(dome_open), torch.bool), one(float(n_detected)),
                    one(True, torch.bool))
