"""Tools for the hot path's tests (tests/fastio/): router._fastio and its pure-Python twin
(reference_log) run the same tests, so everything here takes either module."""
from __future__ import annotations

import contextlib
import mmap
import os
import random
import select
import time
from collections.abc import Callable
from types import ModuleType

from router import _fastio

from . import reference_log

PAGE = mmap.PAGESIZE
SEG = PAGE  # one-page segments: every few KiB crosses a boundary
SLOTS = 3  # slots per arena file: a few segments already span arenas


# A SegmentedLog of either module.
AnyLog = _fastio.SegmentedLog | reference_log.SegmentedLog


class _OwningCythonLog(_fastio.SegmentedLog):
    """A log with a store of its own, closed with it, so each test leaves no descriptor behind."""

    def close(self) -> None:
        super().close()
        self.store.close()


class _OwningPythonLog(reference_log.SegmentedLog):
    """A log with a store of its own, closed with it, so each test leaves no descriptor behind."""

    def close(self) -> None:
        super().close()
        self.store.close()


_OWNING: dict[ModuleType, type[_OwningCythonLog] | type[_OwningPythonLog]] = {
    _fastio: _OwningCythonLog, reference_log: _OwningPythonLog}


def owning_log(mod: ModuleType) -> Callable[..., _OwningCythonLog | _OwningPythonLog]:
    """make(directory, segment_size=32 MiB, slots_per_file=SLOTS): a log of `mod` on a store of its own,
    which its close() closes too."""
    cls = _OWNING[mod]

    def make(directory: str, segment_size: int = 32 * 1024 * 1024,
             slots_per_file: int = SLOTS) -> _OwningCythonLog | _OwningPythonLog:
        return cls(mod.SegmentStore(directory, segment_size, slots_per_file))

    return make


def delta(mod: ModuleType, before: dict[str, int]) -> dict[str, int]:
    """The counters that changed since `before`, by how much."""
    now: dict[str, int] = mod.counters()
    return {k: now[k] - before[k] for k in now if now[k] != before[k]}


def arena_bytes(directory: str, log: AnyLog, offset: int, n: int) -> bytes:
    """Bytes [offset, offset + n) of a log as the arena files hold them on disk."""
    out = b""
    seg = log.segment_size
    while n > 0:
        idx, pos = divmod(offset, seg)
        slot = log.segments[idx]
        k = min(n, seg - pos)
        with open(os.path.join(directory, f"arena-{slot // SLOTS:08d}"), "rb") as f:
            f.seek((slot % SLOTS) * seg + pos)
            out += f.read(k)
        offset += k
        n -= k
    return out


def open_arenas(logdir: str) -> list[str]:
    """The arena files of logdir this process has open."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if os.path.dirname(target) == os.path.realpath(logdir):
                out.append(os.path.basename(target))
    return sorted(out)


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def decode_frame(frame: bytes) -> bytes:
    """Parse `bytes data = 1` the way protobuf would."""
    assert frame[0] == 0x0A
    n, shift, i = 0, 0, 1
    while True:
        b = frame[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    assert len(frame) == i + n, "frame length must match its varint"
    return frame[i:]


def drain_until_eof(log: AnyLog, fd: int, budget: int = 4 * 1024 * 1024, timeout: float = 20.0) -> list[int]:
    """Event-loop stand-in: poll, drain, until EOF. Returns per-call byte counts."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    counts = []
    deadline = time.monotonic() + timeout
    while True:
        n, eof = log.drain(fd, budget)
        counts.append(n)
        assert n <= budget  # each readv asks for what is left of the budget
        if eof:
            return counts
        if n < budget:
            assert time.monotonic() < deadline, "no EOF in time"
            poller.poll(100)
