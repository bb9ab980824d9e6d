"""The server's own log lines (`router serve --log-format`), not exec output: text for people, or
JSON for machines, one object per line.

A JSON line holds `time` (RFC 3339, UTC, microseconds), `level`, `event` (a short snake_case name
that stays the same from release to release), the fields the call passed in `extra`
(`exec_id` when the line is about an exec) and `message`, the text a person would read. A logger
call without an `event` gets one from its module and level (`journaling_error`) and its logger's
name in `logger`. No line carries a secret's value, an exec's arguments or environment, or a token.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has: anything else on a record came from `extra` and is an event's field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def rfc3339(t: float) -> str:
    """Unix time `t` as 2026-01-02T03:04:05.123456Z."""
    whole = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((t - whole) * 1e6):06d}Z"


def line(event: str, message: str, level: str = "info", **fields: Any) -> str:
    """One JSON log line, without its newline."""
    return json.dumps({"time": rfc3339(time.time()), "level": level, "event": event, **fields, "message": message},
                      default=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": rfc3339(record.created), "level": record.levelname.lower()}
        event = record.__dict__.get("event")
        if event is None:
            entry["event"] = f"{record.name.rsplit('.', 1)[-1]}_{record.levelname.lower()}"
            entry["logger"] = record.name
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                entry[key] = value
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(log_format: LogFormat, level: int = logging.INFO) -> None:
    """The root logger of `router serve`: to stderr, in this format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class Announcer:
    """What `router serve` prints as it starts and stops (where it listens, its task; on stdout) and
    why it cannot start (on stderr): the bare line in text mode, a JSON object in json mode."""

    def __init__(self, log_format: LogFormat) -> None:
        self._json = log_format == "json"

    def __call__(self, event: str, message: str, **fields: Any) -> None:
        print(line(event, message, **fields) if self._json else message, flush=True)

    def error(self, event: str, message: str, **fields: Any) -> None:
        print(line(event, message, "error", **fields) if self._json else message, file=sys.stderr, flush=True)


def flush() -> None:
    """Write what was logged so far."""
    for handler in logging.root.handlers:
        handler.flush()
