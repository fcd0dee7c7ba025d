"""The Q-network: one MLP scores every target from its own feature row (shared weights), with a pooled
summary of all observable targets as context, so it works for any catalogue size."""
from __future__ import annotations

import torch
from torch import nn


class TargetQNet(nn.Module):
    """Q(s, a) for each target a: head([phi(x_a), mean over observable b of phi(x_b)]); with `dueling`, that head
    is an advantage (centred over the observable targets) added to a state value V(context)."""

    def __init__(self, n_inputs: int, hidden: int = 64, dueling: bool = False):
        super().__init__()
        self.n_inputs, self.hidden, self.dueling = n_inputs, hidden, dueling
        self.embed = nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.value = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)) if dueling else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (..., N, F), mask (..., N) bool -> Q (..., N); masked targets get -inf."""
        h = self.embed(x)
        m = mask.unsqueeze(-1).to(h.dtype)
        context = (h * m).sum(-2, keepdim=True) / m.sum(-2, keepdim=True).clamp(min=1.0)
        q = self.head(torch.cat([h, context.expand_as(h)], dim=-1)).squeeze(-1)
        if self.value is not None:
            mean_adv = (q * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
            q = self.value(context).squeeze(-1) + q - mean_adv
        return q.masked_fill(~mask, -torch.inf)


def masked_argmax(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the best allowed target per row (0 where none is allowed)."""
    best = q.masked_fill(~mask, -torch.inf).argmax(-1)
    return torch.where(mask.any(-1), best, torch.zeros_like(best))
