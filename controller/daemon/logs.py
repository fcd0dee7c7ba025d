"""Structured logs: one JSON object per line (time, level, logger, message, and the trial, event, attempt,
duration, reason and state fields a daemon record carries), for journald, Loki or `jq`."""
from __future__ import annotations

import json
import logging
import time

FIELDS = ("event", "trial", "attempt", "duration", "reason", "state")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = round(value, 6) if isinstance(value, float) else value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def use_json_lines(logger_name: str = "aec.daemon") -> None:
    """Every handler of the root logger writes JSON lines; `logger_name` logs at INFO."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())
    logging.getLogger(logger_name).setLevel(logging.INFO)
