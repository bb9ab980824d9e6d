"""Where a drained pipe's bytes go: the router's log (`_fastio.SegmentedLog`) and the alternatives
it is measured against (the two ceilings, and the other kinds of log weighed for it).

Every sink takes one readiness event's worth (up to DRAIN_BUDGET) per `step(fd)` from a
non-blocking pipe, as the router's event loop does; `drain_until_eof` polls between steps.
"""
from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import select
import subprocess
import tempfile
import time

from .common import DRAIN_BUDGET, PIPE_SIZE, SEGMENT_SIZE, TMP, BenchError, MiB, close_fd, zeros_command

CHUNK = 1 * MiB  # one readv, as the router reads
POPULATE_AHEAD = 4 * MiB
MADV_POPULATE_WRITE = 23  # Linux 5.14; not in Python's mmap module


def spawn_zero_writer(nbytes: int) -> tuple[subprocess.Popen, int]:
    """`head -c N /dev/zero` writing into a 1 MiB pipe; returns (child, non-blocking read end)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        proc = subprocess.Popen(zeros_command(nbytes), stdin=subprocess.DEVNULL, stdout=w)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    os.set_blocking(r, False)
    return proc, r


def drain_until_eof(fd: int, sink: Sink, timeout: float) -> int:
    """Call `sink.step(fd)` once per readiness event (poll between calls) until EOF; returns bytes."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    total = 0
    while True:
        n, eof = sink.step(fd)
        total += n
        if eof:
            return total
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"pipe not at EOF after {timeout} s ({total} bytes so far)")
        poller.poll(min(remaining, 1.0) * 1000)


class Sink:
    """Takes what a pipe delivers: `read(fd)` once per call, up to DRAIN_BUDGET per `step(fd)`.
    `kept()` is how many bytes it kept (None: it keeps nothing)."""

    keeps = True

    def __init__(self) -> None:
        self.offset = 0  # bytes taken so far

    def read(self, fd: int) -> int:
        """One read from the pipe (0 at EOF; BlockingIOError when it is empty)."""
        raise NotImplementedError

    def step(self, fd: int) -> tuple[int, bool]:
        drained = 0
        while drained < DRAIN_BUDGET:
            try:
                n = self.read(fd)
            except BlockingIOError:
                return drained, False
            except InterruptedError:
                continue
            if n == 0:
                return drained, True
            self.offset += n
            drained += n
        return drained, False

    def kept(self) -> int | None:
        return self.offset if self.keeps else None

    def recycle(self) -> None:
        """Start again at offset 0 over the storage written so far (files, slots, mappings kept):
        the next drain writes only pages that were written before, as into a recycled log slot."""
        self.offset = 0

    def close(self) -> None:
        """Release what the sink holds (files, mappings); its directory is removed by the caller."""


class ReadvSink(Sink):
    """The ceiling: os.readv into one reused 1 MiB buffer, data thrown away."""

    keeps = False

    def __init__(self) -> None:
        super().__init__()
        self.view = memoryview(bytearray(CHUNK))

    def target(self) -> memoryview:
        """Where the next readv goes."""
        return self.view

    def keep(self, n: int) -> None:
        """What happens to the n bytes just read into `target()` at `offset`: nothing, for the ceiling."""

    def read(self, fd: int) -> int:
        n = os.readv(fd, [self.target()])
        self.keep(n)
        return n


class ReadvPwriteSink(ReadvSink):
    """The ceiling for a log that keeps its data: readv into a reused buffer, then os.pwrite into
    segment files `seg-00000000`, ... of SEGMENT_SIZE in `directory` (the router's log keeps its
    segments as slots of shared arena files; a file per 32 MiB costs one creation per 32 MiB)."""

    keeps = True

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.dir = directory
        self._seg = -1
        self._fd = -1

    def _segment_fd(self, idx: int) -> int:
        if idx != self._seg:
            self.close()
            self._fd = os.open(os.path.join(self.dir, f"seg-{idx:08d}"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            self._seg = idx
        return self._fd

    def keep(self, n: int) -> None:
        done = 0
        while done < n:
            idx, pos = divmod(self.offset + done, SEGMENT_SIZE)
            k = min(n - done, SEGMENT_SIZE - pos)
            done += os.pwrite(self._segment_fd(idx), self.view[done:done + k], pos)

    def close(self) -> None:
        close_fd(self._fd)
        self._fd = -1


class MappedSink(ReadvSink):
    """readv straight into shared mappings of SEGMENT_SIZE segments: files in `directory` (ext4 or
    /dev/shm), memfds, or anonymous memory (MADV_HUGEPAGE); `populate` pre-faults 4 MiB ahead
    with MADV_POPULATE_WRITE. Every touched page stays in this process's RSS until close."""

    keeps = True

    def __init__(self, backing: str, directory: str, populate: bool) -> None:
        super().__init__()
        self.backing, self.dir, self.populate = backing, directory, populate
        self.segments: list[mmap.mmap] = []
        self.index = -1  # the segment being written
        self.seg_view: memoryview | None = None
        self.pos = SEGMENT_SIZE
        self.populated = 0

    def _new_segment(self) -> mmap.mmap:
        if self.backing == "anon":
            seg = mmap.mmap(-1, SEGMENT_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            seg.madvise(mmap.MADV_HUGEPAGE)
            return seg
        fd = (os.memfd_create("seg") if self.backing == "memfd" else
              os.open(os.path.join(self.dir, f"seg-{len(self.segments):08d}"), os.O_RDWR | os.O_CREAT, 0o600))
        try:
            os.ftruncate(fd, SEGMENT_SIZE)
            return mmap.mmap(fd, SEGMENT_SIZE)
        finally:
            os.close(fd)

    def target(self) -> memoryview:
        if self.pos == SEGMENT_SIZE:
            if self.seg_view is not None:
                self.seg_view.release()
            self.index += 1
            if self.index == len(self.segments):
                self.segments.append(self._new_segment())
            self.seg_view = memoryview(self.segments[self.index])
            self.pos = self.populated = 0
        if self.populate and self.pos + CHUNK > self.populated and self.populated < SEGMENT_SIZE:
            end = min(SEGMENT_SIZE, self.populated + POPULATE_AHEAD)
            self.segments[self.index].madvise(MADV_POPULATE_WRITE, self.populated, end - self.populated)
            self.populated = end
        assert self.seg_view is not None
        return self.seg_view[self.pos:min(SEGMENT_SIZE, self.pos + CHUNK)]

    def keep(self, n: int) -> None:
        self.pos += n

    def recycle(self) -> None:
        """Back to the first segment; the mappings (and their faulted pages) stay."""
        super().recycle()
        if self.seg_view is not None:
            self.seg_view.release()
            self.seg_view = None
        self.index = -1
        self.pos = SEGMENT_SIZE

    def close(self) -> None:
        if self.seg_view is not None:
            self.seg_view.release()
            self.seg_view = None
        for seg in self.segments:
            seg.close()
        self.segments.clear()


class SpliceSink(Sink):
    """os.splice from the pipe into one file: no copy through user space."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.fd = os.open(os.path.join(directory, "log"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def read(self, fd: int) -> int:
        return os.splice(fd, self.fd, CHUNK, offset_dst=self.offset)

    def close(self) -> None:
        close_fd(self.fd)
        self.fd = -1


class FastioSink(Sink):
    """The router's log: `_fastio.SegmentedLog.drain` (readv + pwrite into arena files, in C)."""

    def __init__(self, directory: str) -> None:
        from router._fastio import SegmentedLog, SegmentStore

        super().__init__()
        self.log = SegmentedLog(SegmentStore(directory, SEGMENT_SIZE))

    def step(self, fd: int) -> tuple[int, bool]:
        return self.log.drain(fd, DRAIN_BUDGET)

    def recycle(self) -> None:
        """Close the log (its slots go back to the store) and open a new one on the same store,
        which hands the same slots out again: what a router does after retention released an exec."""
        from router._fastio import SegmentedLog

        super().recycle()
        store = self.log.store
        self.log.close()
        self.log = SegmentedLog(store)

    def kept(self) -> int:
        committed = self.log.committed
        # What was kept must read back: the log's last page is zeros like the rest.
        if committed and self.log.read(committed - 4096, 4096) != bytes(4096):
            raise BenchError("the log's tail is not zeros")
        return committed

    def close(self) -> None:
        self.log.close()
        self.log.store.close()


# kind -> (sink factory taking a fresh directory, where that directory lives)
KINDS = {
    "fastio": (FastioSink, TMP),
    "readv": (lambda d: ReadvSink(), TMP),
    "readv_pwrite": (ReadvPwriteSink, TMP),
    "pwrite_shm": (ReadvPwriteSink, "/dev/shm"),
    "mmap_file": (lambda d: MappedSink("file", d, populate=False), TMP),
    "mmap_file_populate": (lambda d: MappedSink("file", d, populate=True), TMP),
    "mmap_shm": (lambda d: MappedSink("file", d, populate=False), "/dev/shm"),
    "mmap_memfd": (lambda d: MappedSink("memfd", d, populate=False), TMP),
    "mmap_anon_populate": (lambda d: MappedSink("anon", d, populate=True), TMP),
    "splice": (SpliceSink, TMP),
}


def new_sink(kind: str) -> tuple[Sink, str]:
    """A sink of `kind` in a fresh directory; returns (sink, directory) — the caller removes it."""
    make, root = KINDS[kind]
    directory = tempfile.mkdtemp(prefix=f"drain-{kind}-", dir=root)
    try:
        return make(directory), directory
    except BaseException:
        os.rmdir(directory)
        raise
