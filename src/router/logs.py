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

import msgspec

from .log_writer import MAX_PENDING_LINES, STALL_SECS, BlockHandler, write_whole

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has: anything else on a record came from `extra` and is an event's field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_encode = msgspec.json.Encoder(enc_hook=str).encode


class _Seconds:
    """A time's text up to the second, made once per second (strftime costs a microsecond or two)."""

    def __init__(self, fmt: str, convert: Any) -> None:
        self._fmt, self._convert = fmt, convert
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, t: float) -> str:
        second = int(t)
        last = self._last
        if last[0] != second:
            last = self._last = (second, time.strftime(self._fmt, self._convert(second)))
        return last[1]


_utc_seconds = _Seconds("%Y-%m-%dT%H:%M:%S", time.gmtime)


def rfc3339(t: float) -> str:
    """Unix time `t` as 2026-01-02T03:04:05.123456Z."""
    return f"{_utc_seconds(t)}.{int((t - int(t)) * 1e6):06d}Z"


def _dumps(entry: dict[str, Any]) -> str:
    try:
        return _encode(entry).decode()
    except UnicodeEncodeError:  # a lone surrogate (a path that is not UTF-8): json escapes it
        return json.dumps(entry, default=str)


def line(event: str, message: str, level: str = "info", **fields: Any) -> str:
    """One JSON log line, without its newline."""
    return _dumps({"time": rfc3339(time.time()), "level": level, "event": event, **fields, "message": message})


class TextFormatter(logging.Formatter):
    """logging's usual text (TEXT_FORMAT), its time's seconds made once per second."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._seconds = _Seconds(self.default_time_format, self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"

    def line(self, created: float, level: str, name: str, message: str, fields: dict[str, Any]) -> str:
        """What format() makes of such a record, made without one."""
        return f"{self._seconds(created)},{int((created % 1) * 1000):03d} {level} {name}: {message}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": rfc3339(record.created), "level": record.levelname.lower()}
        fields = record.__dict__
        if "event" not in fields:
            entry["event"] = f"{record.name.rsplit('.', 1)[-1]}_{record.levelname.lower()}"
            entry["logger"] = record.name
        for key, value in fields.items():
            if key not in _RECORD_ATTRIBUTES:
                entry[key] = value
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _dumps(entry)

    def line(self, created: float, level: str, name: str, message: str, fields: dict[str, Any]) -> str:
        """What format() makes of a record with an event in `fields`, made without one."""
        return _dumps({"time": rfc3339(created), "level": level.lower(), **fields, "message": message})


class _ServeHandler(BlockHandler):
    """router serve's handler: a BlockHandler whose formatter can also make a line without a LogRecord."""

    def __init__(self, fd: int, formatter: TextFormatter | JsonFormatter) -> None:
        super().__init__(fd, self._dropped_message)
        self.setFormatter(formatter)
        self._format_line = formatter.line

    def write(self, level: str, name: str, message: str, fields: dict[str, Any]) -> None:
        """A line below WARNING of logger `name`, as the formatter would make it (see `direct`)."""
        self.add(self._format_line(time.time(), level, name, message, fields))

    def _dropped_message(self, n: int) -> str:
        return self._format_line(time.time(), "WARNING", __name__, f"{n} log lines were dropped: stderr took none "
                                 f"while {MAX_PENDING_LINES} waited", {"event": "log_lines_dropped", "dropped": n})


_configured: _ServeHandler | None = None  # router serve's, once configure() made it


def direct(logger: logging.Logger) -> _ServeHandler | None:
    """The handler to `write` the logger's INFO lines to, skipping the LogRecord and the rest of
    logging (a quarter of the cost, for the lines of every exec): only while its lines would reach
    that handler alone, unfiltered (not while a test captures them, say); else None."""
    handler = _configured
    if handler is None or handler.filters or logging.root.handlers != [handler]:
        return None
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    return handler


def configure(log_format: LogFormat, level: int = logging.INFO) -> None:
    """The root logger of `router serve`: to stderr, in this format."""
    global _configured
    handler = _configured = _ServeHandler(sys.stderr.fileno(), JsonFormatter() if log_format == "json" else
                                          TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Neither format shows them, and each costs every record a call (logging's "Optimization").
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


class Announcer:
    """What `router serve` prints as it starts and stops (where it listens, its task; on stdout) and
    why it cannot start (on stderr): the bare line in text mode, a JSON object in json mode."""

    def __init__(self, log_format: LogFormat) -> None:
        self._json = log_format == "json"

    def __call__(self, event: str, message: str, **fields: Any) -> None:
        self._print(1, line(event, message, **fields) if self._json else message)

    def error(self, event: str, message: str, **fields: Any) -> None:
        self._print(2, line(event, message, "error", **fields) if self._json else message)

    @staticmethod
    def _print(fd: int, text: str) -> None:
        """After what was logged before; a reader that takes nothing for STALL_SECS does not hold up
        the server's start or stop (the line is dropped)."""
        flush()
        write_whole(fd, (text + "\n").encode("utf-8", "backslashreplace"), STALL_SECS)


def flush() -> None:
    """Write what was logged so far (what is printed next comes after it)."""
    for handler in logging.root.handlers:
        handler.flush()
