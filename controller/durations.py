"""Durations as people write them in campaign files: 90, "90s", "30m", "2h", "1d", "1h30m"."""
from __future__ import annotations

import math
import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?)\s*([smhd])")


def parse_duration(value: float | int | str) -> float:
    """Seconds in `value`; ValueError with the accepted forms when it is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; expected e.g. 90, '90s', '30m', '2h', '1h30m'")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a positive, finite duration")
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    try:
        seconds = float(text)
    except ValueError:
        parts = _PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{value!r} is not a duration; expected e.g. 90, '90s', '30m', '2h', '1h30m'") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a positive, finite duration")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
