"""aec's controller: campaign files, the loop, the store, executors, and the `aec` CLI.

The names below are imported on first use (PEP 562), so `import controller.cli` (and `aec --help`)
does not pay for torch, which `controller.campaign` pulls in through the policies.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.campaign import Campaign, CampaignSummary
    from controller.config import CampaignConfig
    from controller.preflight import load_config, parse_config
    from controller.errors import UserError
    from controller.store import Store

_WHERE = {"Campaign": "campaign", "CampaignSummary": "campaign", "CampaignConfig": "config", "load_config": "preflight",
          "parse_config": "preflight", "UserError": "errors", "Store": "store"}

__all__ = ["Campaign", "CampaignConfig", "CampaignSummary", "Store", "UserError", "load_config", "parse_config"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'controller' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"controller.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
