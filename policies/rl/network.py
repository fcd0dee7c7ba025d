"""The Q-network: one MLP scores every target from its own feature row (shared weights), with a pooled
summary of all observable targets as context, so it works for any catalogue size. Optionally on top of a prior:
a linear score of a few input columns (weights found by policy search, starting from the feature-based
scheduler's), so the network learns a residual correction of a scheduler that is already good."""
from __future__ import annotations

import torch
from torch import nn


class TargetQNet(nn.Module):
    """Q(s, a) for each target a: head([phi(x_a), mean over observable b of phi(x_b)]); with `dueling`, that head
    is an advantage (centred over the observable targets) added to a state value V(context)."""

    def __init__(self, n_inputs: int, hidden: int = 64, dueling: bool = False, prior: list[int] | None = None):
        super().__init__()
        self.n_inputs, self.hidden, self.dueling = n_inputs, hidden, dueling
        self.prior = list(prior or [])
        self.embed = nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.value = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)) if dueling else None
        if self.prior:
            # Q = scale * (x[prior] @ w) + residual: w is set by the policy search (not by gradients), the scale
            # brings the prior to the returns' units, and the residual starts at zero (the prior's ranking)
            self.register_buffer("prior_weights", torch.zeros(len(self.prior)))
            self.register_buffer("prior_columns", torch.tensor(self.prior, dtype=torch.long))
            self.prior_scale = nn.Parameter(torch.ones(()))
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def prior_score(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The linear prior (..., N) with the network's weights, or with per-row `weights` (..., P)."""
        cols = x.index_select(-1, self.prior_columns)
        w = self.prior_weights if weights is None else weights.unsqueeze(-2)
        return (cols * w).sum(-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (..., N, F), mask (..., N) bool -> Q (..., N); masked targets get -inf."""
        h = self.embed(x)
        m = mask.unsqueeze(-1).to(h.dtype)
        context = (h * m).sum(-2, keepdim=True) / m.sum(-2, keepdim=True).clamp(min=1.0)
        q = self.head(torch.cat([h, context.expand_as(h)], dim=-1)).squeeze(-1)
        if self.value is not None:
            mean_adv = (q * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
            q = self.value(context).squeeze(-1) + q - mean_adv
        if self.prior:
            q = q + self.prior_scale * self.prior_score(x)
        return q.masked_fill(~mask, -torch.inf)


def masked_argmax(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the best allowed target per row (0 where none is allowed)."""
    best = q.masked_fill(~mask, -torch.inf).argmax(-1)
    return torch.where(mask.any(-1), best, torch.zeros_like(best))
