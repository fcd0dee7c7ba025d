"""BoTorch policies: single and multi-objective, constrained, batch and asynchronous, pools, cost-aware.

The pieces compose and stay apart: `models` (what we believe), `acquisition` (what a measurement
is worth), `search` and `route` (how we look for it), and `policy` (BotorchPolicy, the loop).
"""
from policies.bayesian.policy import BotorchOptions, BotorchPolicy

__all__ = ["BotorchOptions", "BotorchPolicy"]
