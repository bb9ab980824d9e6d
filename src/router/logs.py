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
import os
import sys
import threading
import time
from typing import Any, Literal

import msgspec

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has: anything else on a record came from `extra` and is an event's field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Lines below WARNING reach stderr in blocks at most this late: a write per line cost the exec rate
# 7% (benchmarks/RESULTS.md, "Logs"); WARNING and above are written at once.
FLUSH_SECS = 0.1
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


class BlockHandler(logging.Handler):
    """Lines to a descriptor, those below WARNING in blocks written by a thread of its own at most
    FLUSH_SECS after them; WARNING and above at once, with what came before. Only whole lines
    are written, so another writer on the descriptor never cuts one."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._lines: list[str] = []
        self._pending = threading.Event()
        threading.Thread(target=self._flush_pending, name="router-log-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))  # handle() holds self.lock
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()
        elif not self._pending.is_set():
            self._pending.set()

    def write(self, level: str, name: str, message: str, fields: dict[str, Any]) -> None:
        """An INFO line of logger `name` as the formatter would make it, without a LogRecord (see `direct`)."""
        formatter = self.formatter
        assert isinstance(formatter, TextFormatter | JsonFormatter)
        line = formatter.line(time.time(), level, name, message, fields)
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
        if not self._pending.is_set():
            self._pending.set()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines = self._lines, []
            if not lines:
                return
            data = memoryview(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))
            try:
                while data:
                    data = data[os.write(self._fd, data):]
            except OSError:
                pass  # nowhere to say it: the lines are lost, the server goes on

    def _flush_pending(self) -> None:
        while self._pending.wait():
            time.sleep(FLUSH_SECS)
            self._pending.clear()
            self.flush()


_configured: BlockHandler | None = None  # router serve's, once configure() made it


def direct(logger: logging.Logger) -> BlockHandler | None:
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
    handler = _configured = BlockHandler(sys.stderr.fileno())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Neither format shows them, and each costs every record a call (logging's "Optimization").
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


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
