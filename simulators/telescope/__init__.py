"""A survey telescope simulator: sky, targets, visibility, weather, slews (torch; CPU or GPU).

`TelescopeSimulator` is the instrument; the submodules hold the physics it composes:
`ephemeris` (time, Sun, Moon, alt/az), `site` (observatories, twilight), `sky` (sky brightness,
seeing, depth), `weather` (recorded cloud cover, seeing), `catalogue` (fields, transients),
`mount` (slews) and `imaging` (cutouts on a real static sky).
"""
from simulators.telescope.simulator import FEATURES, METRICS, TelescopeSimulator

__all__ = ["FEATURES", "METRICS", "TelescopeSimulator"]
