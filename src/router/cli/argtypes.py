"""The types of the `router` command's flag values: each parses one and refuses what is out of range."""
from __future__ import annotations

import argparse
import math
import signal
from typing import Any

# `router ls --state`'s values (admin.STATES maps them): here, so that the parser need not import admin.
EXEC_STATES = ("any", "exited", "running")


def whole(low: int, high: int = 2**63 - 1) -> Any:
    """A whole number in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low} to {high})")
        return value
    return parse


def seconds(low: float = 0.0, *, above: bool = False) -> Any:
    """A duration in seconds: at least `low` (more than `low` with `above`), finite."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value) or value < low or (above and value == low):
            bound = f"{'>' if above else '>='} {low:g}"
            raise argparse.ArgumentTypeError(f"{text} seconds is out of range (must be {bound})")
        return value
    return parse


positive = whole(1)


def listen(text: str) -> str:
    """HOST:PORT with a port in 0-65535 (0 picks a free one)."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT with a port in 0-65535: {text!r}")
    return text


def signal_number(text: str) -> int:
    """A signal by number (1-64) or name (TERM, SIGTERM, term)."""
    if text.isdigit():
        number = int(text)
        if 1 <= number <= signal.SIGRTMAX:
            return number
    else:
        found = getattr(signal, "SIG" + text.upper().removeprefix("SIG"), None)
        if isinstance(found, signal.Signals):
            return int(found)
    raise argparse.ArgumentTypeError(f"not a signal: {text!r} (a name such as TERM, or a number)")


def halt(text: str) -> Any:
    from .batch_jobs import Halt

    try:
        return Halt.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def size(text: str, limit: int = 2**63 - 1) -> int:
    """A byte count: digits with an optional binary unit (K, M, G, T; B or iB may follow), at most `limit`."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    try:
        number = int(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 4G)") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (negative)")
    if number * _SIZE_UNITS[unit] > limit:
        raise argparse.ArgumentTypeError(f"{text} is too large (at most {limit} bytes)")
    return number * _SIZE_UNITS[unit]


def message_size(text: str) -> int:
    return size(text, limit=2**31 - 1)  # gRPC's limits are 32-bit


