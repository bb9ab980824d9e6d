"""What the leak guard (conftest.py) records before each test and compares after it."""
from __future__ import annotations

import contextlib
import os

from router import _fastio

from . import reference_log


def open_descriptors() -> set[str]:
    """This process's open descriptors, as fd -> target, so a reused number with a new file still counts."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
    return out


def grpc_internal(fd: str) -> bool:
    """grpc core may keep a socket, eventfd or epoll of its own for a moment after a channel closes;
    a pidfd (anon_inode:[pidfd]) or anything else left open is a leak."""
    return "socket:" in fd or fd.endswith(("anon_inode:[eventfd]", "anon_inode:[eventpoll]"))


def mounts_under(under: str) -> set[str]:
    """Mount points below the directory `under`."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:  # names are bytes
        return {point for line in f if (point := line.split(" ")[4]).startswith(under + "/")}


def log_counters() -> dict[str, int]:
    """The hot path's counters (stores, logs, slots, drain buffers, calls inside a syscall) and its twin's."""
    return {**{f"_fastio.{k}": v for k, v in _fastio.counters().items()},
            **{f"reference_log.{k}": v for k, v in reference_log.counters().items()}}
