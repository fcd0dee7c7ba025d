"""aec's controller: campaign files, the loop, the store, executors, and the `aec` CLI."""
from controller.campaign import Campaign, CampaignSummary
from controller.config import CampaignConfig, load_config, parse_config
from controller.errors import UserError
from controller.store import Store

__all__ = ["Campaign", "CampaignConfig", "CampaignSummary", "Store", "UserError", "load_config", "parse_config"]
