"""SegmentStore and SegmentedLog: the Cython hot path and its pure-Python twin, same tests."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import hashlib
import mmap
import os
import random
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from router import _fastio
from tests.helpers import reference_log

PAGE = mmap.PAGESIZE
SEG = PAGE  # one-page segments: every few KiB crosses a boundary


SLOTS = 3  # slots per arena file: a few segments already span arenas


def _owning(mod):
    class OwningLog(mod.SegmentedLog):
        """A log with a store of its own, closed with it, so each test leaves no descriptor behind."""

        def close(self):
            super().close()
            self.store.close()

    def make(directory, segment_size=32 * 1024 * 1024, slots_per_file=SLOTS):
        return OwningLog(mod.SegmentStore(directory, segment_size, slots_per_file))

    return make


@pytest.fixture(scope="module", params=[_fastio, reference_log], ids=["cython", "python"])
def Log(request):
    return _owning(request.param)


@pytest.fixture(scope="module", params=[_fastio, reference_log], ids=["cython", "python"])
def fio(request):
    """The module itself, for tests that build stores and logs (and read counters) on their own."""
    return request.param


@pytest.fixture(autouse=True)
def counters_restored():
    """Every test here leaves both modules' counters as it found them: they are exact."""
    before = {mod: mod.counters() for mod in (_fastio, reference_log)}
    yield
    gc.collect()
    assert {mod: mod.counters() for mod in (_fastio, reference_log)} == before


def delta(mod, before: dict[str, int]) -> dict[str, int]:
    """The counters that changed since `before`, by how much."""
    now = mod.counters()
    return {k: now[k] - before[k] for k in now if now[k] != before[k]}


def arena_bytes(directory: str, log, offset: int, n: int) -> bytes:
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


@pytest.fixture
def logdir(tmp_path):
    d = tmp_path / "log"
    d.mkdir()
    return str(d)


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


def set_nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def socketpair_fds() -> tuple[int, int]:
    """A connected pair of raw socket descriptors: a byte stream that is not a pipe."""
    a, b = socket.socketpair()
    return a.detach(), b.detach()


def drain_until_eof(log, fd: int, budget: int = 4 * 1024 * 1024, timeout: float = 20.0) -> list[int]:
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


# -- construction, files ------------------------------------------------------


@pytest.mark.parametrize("size", [0, -PAGE, 1, PAGE + 1, PAGE // 2])
def test_segment_size_must_be_page_multiple(Log, logdir, size):
    with pytest.raises(ValueError):
        Log(logdir, size)


def test_missing_directory(Log, tmp_path):
    with pytest.raises(FileNotFoundError):
        Log(str(tmp_path / "nope"), SEG)


def test_defaults_and_properties(Log, logdir):
    log = Log(logdir)
    try:
        assert log.segment_size == 32 * 1024 * 1024
        assert (log.committed, log.eof, log.closed) == (0, False, False)
        log.mark_eof()
        assert log.eof
    finally:
        log.close()
    assert log.closed


def test_files_created_lazily(Log, logdir):
    log = Log(logdir, SEG)
    try:
        log.append(b"")
        assert log.read(0, 10) == b""
        assert os.listdir(logdir) == [] and log.segments == []
        data = payload(SLOTS * SEG + 1)
        log.append(data[:SEG])
        # Exactly full: the next segment has no byte yet, so it has no slot.
        assert os.listdir(logdir) == ["arena-00000000"] and log.segments == [0]
        log.append(data[SEG:])
        assert sorted(os.listdir(logdir)) == ["arena-00000000", "arena-00000001"]
        assert log.segments == list(range(SLOTS + 1)) and log.store.slots_used == SLOTS + 1
        for name in os.listdir(logdir):
            assert os.stat(os.path.join(logdir, name)).st_mode & 0o777 == 0o600
        # Arena files hold the bytes at slot * segment_size + position, sparse past the end.
        assert os.stat(os.path.join(logdir, "arena-00000001")).st_size == 1
        assert arena_bytes(logdir, log, 0, len(data)) == data
    finally:
        log.close()
    assert sorted(os.listdir(logdir)) == ["arena-00000000", "arena-00000001"]  # close keeps files


def test_one_fd_per_arena_none_per_segment(Log, logdir):
    before = sorted(os.listdir("/proc/self/fd"))
    log = Log(logdir, SEG)
    try:
        log.append(payload(5 * SEG))
        assert log.read(SEG - 3, 2 * SEG + 6) == payload(5 * SEG)[SEG - 3:3 * SEG + 3]
        assert len(os.listdir("/proc/self/fd")) == len(before) + 2  # 5 segments, 3 slots an arena
    finally:
        log.close()
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_logs_share_a_store(Log, logdir):
    a = Log(logdir, SEG)
    try:
        b = type(a)(a.store)
        a.append(b"a" * SEG)
        b.append(b"b" * (SEG + 1))
        a.append(b"A")
        assert (a.segments, b.segments) == ([0, 3], [1, 2])
        assert a.read(SEG - 1, 2) == b"aA" and b.read(0, SEG + 1) == b"b" * (SEG + 1)
        assert arena_bytes(logdir, b, 0, SEG + 1) == b"b" * (SEG + 1)
        with pytest.raises(TypeError):
            type(a)(logdir)
    finally:
        a.close()


# -- append / read ------------------------------------------------------------


@pytest.mark.parametrize("seg", [PAGE, 2 * PAGE])
def test_round_trip_across_segments(Log, logdir, seg):
    data = payload(5 * seg + 123, seed=seg)
    log = Log(logdir, seg)
    try:
        for chunk in (data[:10], data[10:seg - 1], data[seg - 1:seg + 1], data[seg + 1:4 * seg], data[4 * seg:]):
            log.append(chunk)
        assert log.committed == len(data)
        assert log.read(0, len(data) + 1000) == data
        for off, ln in [(0, 0), (seg - 3, 6), (seg, seg), (1, 3 * seg), (len(data), 5), (len(data) - 1, 5)]:
            expect = data[off:off + ln]
            assert log.read(off, ln) == expect
            frame = log.read_frame(off, ln)
            assert (decode_frame(frame) if expect else frame) == expect
        assert log.read(0, sys.maxsize) == data
        # bytes-likes
        log.append(bytearray(b"ab"))
        log.append(memoryview(b"xcdx")[1:3])
        assert log.read(len(data), 10) == b"abcd"
    finally:
        log.close()


def test_read_returns_bytes(Log, logdir):
    log = Log(logdir, SEG)
    try:
        log.append(b"hello")
        assert type(log.read(0, 5)) is bytes
        assert type(log.read_frame(0, 5)) is bytes
        assert type(log.read(5, 5)) is bytes
    finally:
        log.close()


@pytest.mark.parametrize("n", [1, 127, 128, 300, 16383, 16384, 3 * PAGE + 5])
def test_read_frame_encoding(Log, logdir, n):
    data = payload(n, seed=n)
    log = Log(logdir, SEG)
    try:
        log.append(data)
        frame = log.read_frame(0, n)
        varint = bytearray()
        m = n
        while m >= 0x80:
            varint.append(m & 0x7F | 0x80)
            m >>= 7
        varint.append(m)
        assert frame == b"\x0a" + bytes(varint) + data
        assert log.read_frame(n, 10) == b""
        assert log.read_frame(0, 0) == b""
    finally:
        log.close()


def test_read_frame_parses_as_protobuf(Log, logdir):
    try:
        from router._proto.task_command_router_pb2 import TaskExecStdioReadResponse
    except Exception:  # generated code is someone else's; don't fail on it here
        pytest.skip("generated protobuf module not importable")
    data = payload(3 * SEG)
    log = Log(logdir, SEG)
    try:
        log.append(data)
        assert TaskExecStdioReadResponse.FromString(log.read_frame(5, 2 * SEG)).data == data[5:5 + 2 * SEG]
        assert TaskExecStdioReadResponse(data=data).SerializeToString() == log.read_frame(0, len(data))
    finally:
        log.close()


def test_read_errors(Log, logdir):
    log = Log(logdir, SEG)
    log.append(b"abc")
    assert log.read(3, 10) == b""
    for off, ln in [(4, 1), (-1, 1), (0, -1), (10**6, 0)]:
        with pytest.raises(ValueError):
            log.read(off, ln)
        with pytest.raises(ValueError):
            log.read_frame(off, ln)
    with pytest.raises(TypeError):
        log.read(0.0, 1)
    log.close()
    log.close()  # idempotent
    for call in (lambda: log.read(0, 1), lambda: log.read_frame(0, 1), lambda: log.append(b"x")):
        with pytest.raises(ValueError):
            call()
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError):
            log.drain(r)
    finally:
        os.close(r)
        os.close(w)
    assert log.committed == 3


def test_append_after_eof(Log, logdir):
    log = Log(logdir, SEG)
    try:
        log.append(b"abc")
        log.mark_eof()
        with pytest.raises(ValueError):
            log.append(b"d")
        assert log.read(0, 10) == b"abc"
    finally:
        log.close()


def test_append_rejects_non_buffers(Log, logdir):
    log = Log(logdir, SEG)
    try:
        with pytest.raises(TypeError):
            log.append("text")
        with pytest.raises(BufferError):
            log.append(memoryview(b"abcd")[::2])
        assert log.committed == 0
    finally:
        log.close()


# -- property test against a bytearray model -----------------------------------

op = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 3 * SEG)),
    st.tuples(st.just("read"), st.floats(0, 1), st.integers(0, 4 * SEG)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=25), seed=st.integers(0, 2**32 - 1))
def test_model(Log, ops, seed):
    rng = random.Random(seed)
    model = bytearray()
    with tempfile.TemporaryDirectory() as d:
        log = Log(d, SEG)
        try:
            for o in ops:
                if o[0] == "append":
                    chunk = rng.randbytes(o[1])
                    log.append(chunk)
                    model += chunk
                    assert log.committed == len(model)
                else:
                    off = int(o[1] * len(model))
                    expect = bytes(model[off:off + o[2]])
                    assert log.read(off, o[2]) == expect
                    frame = log.read_frame(off, o[2])
                    assert (decode_frame(frame) if frame else b"") == expect
            assert log.read(0, len(model)) == model
            assert len(os.listdir(d)) == -(-len(log.segments) // SLOTS)
            assert arena_bytes(d, log, 0, len(model)) == model
        finally:
            log.close()


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 3 * SEG), max_size=12), budget=st.integers(1, 3 * SEG))
def test_model_drain(Log, sizes, budget):
    """Drain in random budgets from a pipe fed in random writes."""
    data = payload(sum(sizes), seed=len(sizes))
    with tempfile.TemporaryDirectory() as d:
        log = Log(d, SEG)
        r, w = os.pipe()
        try:
            set_nonblocking(r)
            pos = 0
            for s in sizes:
                os.write(w, data[pos:pos + s])  # < pipe capacity since we drain after each
                pos += s
                while True:
                    n, eof = log.drain(r, budget)
                    assert not eof and n <= budget
                    if n == 0:
                        break
                assert log.committed == pos
            os.close(w)
            w = -1
            assert log.drain(r, budget) == (0, True)
            assert log.read(0, len(data)) == data
        finally:
            log.close()
            os.close(r)
            if w >= 0:
                os.close(w)


# -- drain ---------------------------------------------------------------------


def test_drain_empty_pipe_then_eof(Log, logdir):
    log = Log(logdir, SEG)
    r, w = os.pipe()
    try:
        set_nonblocking(r)
        assert log.drain(r) == (0, False)
        assert not log.eof
        assert os.listdir(logdir) == []  # nothing arrived, nothing created
        os.close(w)
        w = -1
        assert log.drain(r) == (0, True)
        assert log.eof
        assert log.drain(r) == (0, True)  # and stays so without reading
        assert os.listdir(logdir) == []
        with pytest.raises(ValueError):
            log.append(b"x")
    finally:
        log.close()
        os.close(r)
        if w >= 0:
            os.close(w)


def test_drain_budget(Log, logdir):
    data = payload(3 * SEG + 100, seed=7)
    log = Log(logdir, SEG)
    r, w = os.pipe()
    try:
        set_nonblocking(r)
        assert os.write(w, data) == len(data)
        budget = SEG + 10
        n, eof = log.drain(r, budget)
        assert (n, eof) == (budget, False)  # stopped by the budget, not by EAGAIN
        assert log.read(0, n) == data[:n]
        total = n
        while total < len(data):
            n, eof = log.drain(r, budget)
            assert 0 < n and not eof
            total += n
        assert total == len(data)
        assert log.drain(r, budget) == (0, False)  # EAGAIN
        assert log.read(0, len(data) + 1) == data
        with pytest.raises(ValueError):
            log.drain(r, 0)
    finally:
        log.close()
        os.close(r)
        os.close(w)


def test_drain_writer_thread(Log, logdir):
    data = payload(300_000, seed=3)
    log = Log(logdir, 2 * PAGE)
    r, w = os.pipe()

    def writer():
        try:
            for i in range(0, len(data), 7777):
                os.write(w, data[i:i + 7777])
        finally:
            os.close(w)

    t = threading.Thread(target=writer)
    try:
        set_nonblocking(r)
        t.start()
        counts = drain_until_eof(log, r, budget=10_000)
        assert sum(counts) == len(data)
        assert log.read(0, len(data)) == data
        assert log.eof
    finally:
        t.join()
        log.close()
        os.close(r)


def test_drain_child_process_fds_closed(Log, logdir):
    n = 1_000_003
    fds_before = sorted(os.listdir("/proc/self/fd"))
    log = Log(logdir, 4 * PAGE)
    r, w = os.pipe()
    proc = None
    try:
        set_nonblocking(r)
        proc = subprocess.Popen(
            ["head", "-c", str(n), "/dev/urandom"], stdout=w, stdin=subprocess.DEVNULL
        )
        os.close(w)
        w = -1
        counts = drain_until_eof(log, r, budget=64 * 1024)
        assert proc.wait(10) == 0
        assert sum(counts) == log.committed == n
        # Compare in pieces via read and via the segment files on disk.
        h = hashlib.sha256()
        for off in range(0, n, 50_000):
            h.update(log.read(off, 50_000))
        whole = hashlib.sha256(log.read(0, n)).hexdigest()
        assert h.hexdigest() == whole
        assert hashlib.sha256(arena_bytes(logdir, log, 0, n)).hexdigest() == whole
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        os.close(r)
        if w >= 0:
            os.close(w)
    assert sorted(os.listdir("/proc/self/fd")) == fds_before


def test_drain_python_child_known_bytes(Log, logdir):
    code = "import random,sys; sys.stdout.buffer.write(random.Random(5).randbytes(200_000))"
    log = Log(logdir, PAGE)
    r, w = os.pipe()
    proc = None
    try:
        set_nonblocking(r)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=w, stdin=subprocess.DEVNULL)
        os.close(w)
        w = -1
        drain_until_eof(log, r)
        assert proc.wait(10) == 0
        assert log.read(0, 10**9) == payload(200_000, seed=5)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        os.close(r)
        if w >= 0:
            os.close(w)


def test_drain_pty_eio_is_eof(Log, logdir):
    data = payload(20_000, seed=11)
    log = Log(logdir, PAGE)
    master, slave = os.openpty()
    t = None
    try:
        tty.setraw(slave)  # no \n -> \r\n or echo games
        set_nonblocking(master)

        def writer():
            nonlocal slave
            try:
                os.write(slave, data)
            finally:
                os.close(slave)
                slave = -1

        t = threading.Thread(target=writer)
        t.start()
        drain_until_eof(log, master, budget=3000)
        assert log.eof
        assert log.read(0, len(data) + 1) == data
    finally:
        if t is not None:
            t.join()
        log.close()
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_drain_bad_fd_raises_oserror(Log, logdir):
    log = Log(logdir, SEG)
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as exc:
            log.drain(w)  # write end: EBADF on read
        assert exc.value.errno == 9
        assert not log.eof and log.committed == 0
    finally:
        log.close()
        os.close(r)
        os.close(w)


def test_drain_write_failing_midway_loses_nothing(Log, logdir):
    """A write that fails part-way (EFBIG here, standing in for ENOSPC / EIO) keeps what it wrote and
    loses nothing it took: spliced bytes stay in the pipe, read ones are written first next time."""
    import resource
    data = payload(3000)
    log = Log(logdir, SEG)
    r, w = os.pipe()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    try:
        set_nonblocking(r)
        os.write(w, data)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, limits[1]))  # arena files: 1000 bytes at most
        try:
            with pytest.raises(OSError) as exc:
                log.drain(r)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        # Spliced bytes count once written; a buffered piece only once all of it is (then it is stashed).
        assert exc.value.errno == errno.EFBIG and log.committed in (0, 1000)
        os.close(w)
        w = -1
        drain_until_eof(log, r)
        assert log.read(0, 5000) == data and log.eof
    finally:
        signal.signal(signal.SIGXFSZ, old)
        log.close()
        os.close(r)
        if w >= 0:
            os.close(w)


def test_drain_splices_a_pipe_and_buffers_anything_else(fio, logdir):
    """Pipes go straight into the slots (no drain buffer is made); a pty or socket through the buffer.
    A pipe that never had output takes no slot, even at EOF."""
    c0 = fio.counters()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    piped, silent, other = fio.SegmentedLog(store), fio.SegmentedLog(store), fio.SegmentedLog(store)
    r, w = os.pipe()
    r2, w2 = os.pipe()
    a, b = socketpair_fds()
    try:
        for fd in (r, r2, a):
            set_nonblocking(fd)
        os.write(w, payload(3 * SEG))
        os.close(w2)
        assert piped.drain(r) == (3 * SEG, False) and piped.read(0, 4 * SEG) == payload(3 * SEG)
        if fio is _fastio:
            assert "scratch_buffers" not in delta(fio, c0)
        assert silent.drain(r2) == (0, True)
        assert fio.counters()["slots_in_use"] - c0["slots_in_use"] == 3
        os.write(b, b"abc")
        assert other.drain(a) == (3, False) and other.read(0, 10) == b"abc"
        assert delta(fio, c0)["scratch_buffers"] == 1
    finally:
        for log in (piped, silent, other):
            log.close()
        store.close()
        for fd in (r, w, r2, a, b):
            if fd != w2:
                os.close(fd)
    assert delta(fio, c0) == {}


def test_drain_segment_creation_failure(Log, tmp_path):
    d = tmp_path / "gone"
    d.mkdir()
    log = Log(str(d), SEG)
    r, w = os.pipe()
    try:
        set_nonblocking(r)
        os.write(w, b"abc")
        os.rmdir(d)  # segment files can't be created any more
        with pytest.raises(FileNotFoundError):
            log.drain(r)
        assert log.committed == 0
        with pytest.raises(FileNotFoundError):
            log.drain(r)  # still failing: nothing more is taken from the pipe
        # Once writing works again, the bytes the failed calls took come first, nothing lost.
        os.write(w, b"def")
        d.mkdir()
        os.close(w)
        w = -1
        drain_until_eof(log, r)
        assert log.read(0, 100) == b"abcdef" and log.eof
    finally:
        log.close()
        os.close(r)
        if w >= 0:
            os.close(w)


# -- concurrency -------------------------------------------------------------


def test_close_while_reading(Log, logdir):
    seg = 64 * PAGE
    size = 64 * seg  # 16 MiB with 4 KiB pages
    data = payload(size)
    log = Log(logdir, seg)
    log.append(data)
    results, errors = [], []
    started = threading.Barrier(3)

    def reader(k):
        started.wait()
        try:
            while True:
                off = (k * 12345) % seg
                got = log.read(off, size)
                results.append(got == data[off:])
        except ValueError:
            pass
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    started.wait()
    deadline = time.monotonic() + 10
    while not results and time.monotonic() < deadline:  # a fixed sleep is too short on a busy machine
        time.sleep(0.005)
    log.close()
    log.close()
    for t in threads:
        t.join(10)
    assert not errors
    assert results and all(results)
    assert log.closed
    with pytest.raises(ValueError):
        log.read(0, 1)


def test_readers_while_draining(Log, logdir):
    """Readers only ever see committed bytes, and those are final."""
    data = payload(400_000, seed=9)
    log = Log(logdir, PAGE)
    r, w = os.pipe()
    stop = threading.Event()
    bad = []

    def reader():
        rng = random.Random(1)
        while not stop.is_set():
            c = log.committed
            off = rng.randrange(c + 1)
            got = log.read(off, rng.randrange(3 * PAGE))
            if got != data[off:off + len(got)] or off + len(got) > log.committed:
                bad.append(off)

    def writer():
        try:
            for i in range(0, len(data), 5000):
                os.write(w, data[i:i + 5000])
        finally:
            os.close(w)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    try:
        set_nonblocking(r)
        for t in threads:
            t.start()
        drain_until_eof(log, r, budget=20_000)
    finally:
        stop.set()
        for t in threads:
            t.join()
        log.close()
        os.close(r)
    assert not bad


# -- signals: EINTR runs the handlers, then the call is retried ---------------------------


class Interrupted(Exception):
    """Raised by a test's signal handler."""


@contextlib.contextmanager
def kicking(handler, enough, on_timeout, timeout: float = 5.0):
    """Install `handler` for SIGUSR1 and send SIGUSR1 to the main thread every 10 ms until `enough()`.

    A signal that lands before the main thread sleeps in the syscall only sets Python's flag, so
    keep sending: the next one interrupts the syscall. If `enough()` stays false for `timeout`
    seconds (the handler never ran: the bug under test), `on_timeout()` must unblock the main
    thread; the yielded list then holds True.
    """
    main = threading.main_thread().ident
    timed_out: list[bool] = []
    stop = threading.Event()

    def kick():
        deadline = time.monotonic() + timeout
        while not stop.is_set() and not enough():
            if time.monotonic() > deadline:
                timed_out.append(True)
                on_timeout()
                return
            signal.pthread_kill(main, signal.SIGUSR1)
            stop.wait(0.01)

    old = signal.signal(signal.SIGUSR1, handler)
    t = threading.Thread(target=kick)
    t.start()
    try:
        yield timed_out
    finally:
        stop.set()
        t.join()
        signal.signal(signal.SIGUSR1, old)


def raised_in(exc: BaseException, name: str) -> bool:
    """Whether `name` (a Python or Cython function) is on the exception's traceback."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name.rsplit(".", 1)[-1] == name:
            return True
        tb = tb.tb_next
    return False


def test_drain_eintr_retried_after_handlers_ran(fio, logdir):
    """readv() on a blocking pipe, interrupted twice: each time the handler runs, then the read is retried."""
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    r, w = os.pipe()  # blocking: readv sleeps until bytes come
    data = payload(1000)
    armed, hits = False, []

    def handler(signum, frame):
        if armed:
            hits.append(signum)
            if len(hits) == 2:
                os.write(w, data)  # the retried readv gets them

    try:
        with kicking(handler, lambda: len(hits) >= 2, lambda: os.write(w, data)) as timed_out:
            armed = True
            got = log.drain(r, len(data))
            armed = False
        assert not timed_out, "no signal handler ran while readv() slept"
        assert got == (len(data), False) and log.read(0, len(data)) == data
    finally:
        log.close()
        store.close()
        os.close(r)
        os.close(w)


def test_drain_signal_handler_exception_propagates(fio, logdir):
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    r, w = os.pipe()
    armed, done = False, threading.Event()

    def handler(signum, frame):
        if armed:
            raise Interrupted

    try:
        # A budget of 4: should the handler never run, the 4 bytes written after 5 s end the call.
        with kicking(handler, done.is_set, lambda: os.write(w, b"late")) as timed_out:
            armed = True
            try:
                with pytest.raises(Interrupted) as exc:
                    log.drain(r, 4)
            finally:
                armed = False
                done.set()
        assert not timed_out and raised_in(exc.value, "drain"), "the handler did not run inside drain()"
        assert log.committed == 0 and not log.eof
        # Nothing was taken from the pipe, and the log still works.
        os.write(w, b"abc")
        os.close(w)
        w = -1
        assert log.drain(r) == (3, True)
        assert log.read(0, 10) == b"abc"
    finally:
        log.close()
        store.close()
        os.close(r)
        if w >= 0:
            os.close(w)


def _kmsg_reader() -> int | None:
    """A descriptor on /dev/kmsg positioned at its end, where pread() sleeps until the kernel logs
    something: the one file here a pread() really blocks on (pipes and FIFOs refuse pread).
    None where it can't be used (not root, no /dev/kmsg)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        os.lseek(fd, 0, os.SEEK_END)
        with open("/dev/kmsg", "wb"):  # the failure path needs to wake a stuck pread by logging a line
            pass
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def blocking_arena(logdir: str, arena: int):
    """Make reads from arena file `arena` (already open in a store) sleep in pread().

    The store's descriptor for it is replaced in place (dup2) by one on /dev/kmsg, read-only: a
    write there fails with EBADF. On exit the file is put back. Yields `unblock`, which makes the
    sleeping pread return and the next ones read the file again: for a test whose bug keeps it asleep.
    """
    kmsg = _kmsg_reader()
    if kmsg is None:
        pytest.skip("needs a readable and writable /dev/kmsg (root)")
    path = os.path.join(logdir, f"arena-{arena:08d}")
    fds = [int(fd) for fd in os.listdir("/proc/self/fd")
           if os.path.realpath(f"/proc/self/fd/{fd}") == os.path.realpath(path)]
    assert len(fds) == 1, fds
    arena_fd = fds[0]
    saved = os.dup(arena_fd)
    os.dup2(kmsg, arena_fd, inheritable=False)
    os.close(kmsg)

    def unblock():
        os.dup2(saved, arena_fd, inheritable=False)  # the next pread reads the file again
        with open("/dev/kmsg", "wb") as k:
            k.write(b"router test_fastio: waking a pread that ignored signals\n")

    try:
        yield unblock
    finally:
        os.dup2(saved, arena_fd, inheritable=False)
        os.close(saved)


def test_pread_eintr_runs_signal_handlers(fio, logdir):
    """A reader asleep in pread() lets signal handlers run (the old loop retried EINTR in C only)."""
    store = fio.SegmentStore(logdir, SEG, 1)
    log = fio.SegmentedLog(store)
    log.append(payload(SEG))
    armed, hits = False, []

    def handler(signum, frame):
        if armed:
            hits.append(signum)
            if len(hits) == 2:  # the first one returned: pread was retried
                raise Interrupted

    try:
        with blocking_arena(logdir, 0) as unblock, kicking(handler, lambda: len(hits) >= 2, unblock) as timed_out:
            armed = True
            try:
                with pytest.raises(Interrupted) as exc:
                    log.read(0, SEG)
            finally:
                armed = False
        assert not timed_out and raised_in(exc.value, "read"), "no signal handler ran while pread() slept"
        assert len(hits) == 2
    finally:
        log.close()
        store.close()


# -- closed logs give their slots back, once no reader is inside -----------------------------


def test_closed_log_slots_reused(fio, logdir):
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    try:
        a = fio.SegmentedLog(store)
        a.append(b"a" * (2 * SEG + 1))
        assert a.segments == [0, 1, 2] and a.readers == 0
        a.close()
        assert a.segments == [] and a.committed == 2 * SEG + 1  # nobody was inside: back at once
        with pytest.raises(ValueError):
            a.read(0, 1)
        b = fio.SegmentedLog(store)
        b.append(b"b" * 5)
        c = fio.SegmentedLog(store)
        c.append(b"c" * (2 * SEG))
        assert (b.segments, c.segments, store.slots_used) == ([0], [1, 2], 3)  # reused, in order
        # A reused slot still holds the old bytes; a log shows only its own committed ones.
        assert b.read(0, 10 * SEG) == b"b" * 5 and c.read(0, 10 * SEG) == b"c" * (2 * SEG)
        assert arena_bytes(logdir, b, 0, 6) == b"bbbbba"
        # A log dropped without close() gives its slots back too.
        del c
        d = fio.SegmentedLog(store)
        d.append(b"d" * (SEG + 1))
        assert d.segments == [1, 2] and store.slots_used == 3
        # close() during the write: the writer's slots go back when it leaves, none taken after.
        e = fio.SegmentedLog(store)
        e.close()
        e.close()
        with pytest.raises(ValueError):
            e.append(b"x")
        assert e.segments == [] and store.slots_used == 3
    finally:
        store.close()


def test_close_with_reader_inside_defers_slot_release(fio, logdir):
    """Deterministic: the reader sleeps in pread() (see blocking_arena) and the signal handler,
    running inside read(), closes the log and has another log take slots."""
    store = fio.SegmentStore(logdir, SEG, 1)  # one slot an arena: only slot 0 reads from kmsg
    log = fio.SegmentedLog(store)
    log.append(payload(SEG))
    seen = {}

    def handler(signum, frame):
        if log.readers != 1 or seen:
            return  # not inside read() yet
        before = fio.counters()
        log.close()
        seen["closed"] = (log.closed, log.readers, log.segments)
        seen["counts"] = (before["syscalls_in_flight"], delta(fio, before))
        other = fio.SegmentedLog(store)
        try:
            other.append(b"o" * (2 * SEG))  # must not get slot 0: its reader is still inside
        except OSError as e:  # slot 0 is /dev/kmsg, read-only, now
            seen["append"] = e
        seen["other"] = other
        raise Interrupted

    try:
        with blocking_arena(logdir, 0) as unblock, kicking(handler, lambda: bool(seen), unblock) as timed_out:
            with pytest.raises(Interrupted):
                log.read(0, SEG)
        assert not timed_out
        assert seen["closed"] == (True, 1, [0]), "slots went back while a reader was inside"
        assert seen["counts"] == (1, {"open_logs": -1})  # the reader was in pread; slot 0 still held
        assert "append" not in seen and seen["other"].segments == [1, 2]
        # The reader has left: slot 0 is back and is the next one handed out.
        assert log.readers == 0 and log.segments == []
        assert fio.counters()["syscalls_in_flight"] == seen["counts"][0] - 1
        third = fio.SegmentedLog(store)
        third.append(b"t")
        assert third.segments == [0] and store.slots_used == 3
    finally:
        seen.clear()
        log.close()
        store.close()


def test_close_while_reading_big_range_then_reuse(fio, logdir):
    """A reader inside a 16 MiB read while the log is closed and another log writes new bytes,
    which would land in the same slots if they went back at close(): intact bytes or ValueError."""
    seg = 64 * PAGE
    size = 64 * seg
    store = fio.SegmentStore(logdir, seg, 16)
    try:
        for rnd in range(3):
            data = payload(size, seed=rnd)
            log = fio.SegmentedLog(store)
            log.append(data)
            got, inside = [], threading.Event()

            def reader():
                try:
                    while True:
                        inside.set()
                        got.append(log.read(0, size) == data)
                except ValueError:
                    got.append("closed")

            t = threading.Thread(target=reader)
            t.start()
            inside.wait()
            deadline = time.monotonic() + 5
            while log.readers == 0 and time.monotonic() < deadline:
                pass
            log.close()
            other = fio.SegmentedLog(store)
            other.append(b"\x00" * size)
            t.join(20)
            assert got and all(g is True or g == "closed" for g in got), got
            assert other.read(0, size) == b"\x00" * size
            other.close()
    finally:
        store.close()


def test_readers_only_see_their_own_log(fio, logdir):
    """Stress: readers on many logs while the main thread keeps closing logs and writing new ones
    into the slots they give back; every read gives the log's own bytes or ValueError."""
    store = fio.SegmentStore(logdir, PAGE, 8)
    size = 24 * PAGE
    serial = iter(range(10**6))
    logs: list = []

    def new_log():
        k = next(serial)
        log = fio.SegmentedLog(store)
        data = payload(size, seed=k)
        log.append(data)
        return log, data

    stop = threading.Event()
    bad, reads, refused = [], [0], [0]

    def reader(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            log, data = rng.choice(logs)  # a list swap from the main thread is atomic
            off = rng.randrange(size)
            try:
                got = log.read(off, rng.randrange(1, size))
            except ValueError:
                refused[0] += 1
                continue
            reads[0] += 1
            if got != data[off:off + len(got)]:
                bad.append((off, len(got)))

    try:
        logs.extend(new_log() for _ in range(4))
        threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        created = 4
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not bad:
            i = random.randrange(len(logs))
            old, _ = logs[i]
            old.close()
            logs[i] = new_log()
            created += 1
        stop.set()
        for t in threads:
            t.join(10)
        assert not bad, f"a reader saw another log's bytes: {bad[:5]}"
        assert reads[0] > 0
        # Slots were reused: far fewer exist than the logs ever written needed.
        assert store.slots_used < created * 24
    finally:
        stop.set()
        for log, _ in logs:
            log.close()
        store.close()


class SlotMachine(RuleBasedStateMachine):
    """Logs created, appended to, read, closed and dropped in any order on one store."""

    def __init__(self, mod):
        super().__init__()
        self.mod = mod
        self.tmp = tempfile.TemporaryDirectory()
        self.store = mod.SegmentStore(self.tmp.name, SEG, SLOTS)
        self.live: list[tuple[object, bytearray, random.Random]] = []
        self.serial = 0
        self.peak = 0

    def _pick(self, i):
        return self.live[i % len(self.live)]

    def _in_use(self):
        return sum(len(log.segments) for log, _, _ in self.live)

    @rule()
    def new_log(self):
        self.serial += 1
        self.live.append((self.mod.SegmentedLog(self.store), bytearray(), random.Random(self.serial)))

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99), n=st.integers(0, 3 * SEG))
    def append(self, i, n):
        log, model, rng = self._pick(i)
        chunk = rng.randbytes(n)  # each log draws from its own seed: others' bytes would show
        log.append(chunk)
        model += chunk
        self.peak = max(self.peak, self._in_use())

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99), frac=st.floats(0, 1), n=st.integers(0, 4 * SEG))
    def read(self, i, frac, n):
        log, model, _ = self._pick(i)
        off = int(frac * len(model))
        assert log.read(off, n) == model[off:off + n]

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99))
    def close(self, i):
        entry = self._pick(i)
        self.live.remove(entry)
        log = entry[0]
        log.close()
        assert log.segments == []
        with pytest.raises(ValueError):
            log.read(0, 0)

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99))
    def drop(self, i):
        self.live.remove(self._pick(i))  # the last reference: dealloc gives the slots back

    @invariant()
    def slots_disjoint_and_reused_first(self):
        slots = [s for log, _, _ in self.live for s in log.segments]
        assert len(slots) == len(set(slots))
        # A fresh slot is made only when none is free: the store never grew past the peak.
        assert self.store.slots_used == self.peak

    @invariant()
    def every_log_holds_its_own_bytes(self):
        for log, model, _ in self.live:
            assert log.committed == len(model) and log.read(0, len(model)) == model

    def teardown(self):
        for log, _, _ in self.live:
            log.close()
        self.live.clear()
        self.store.close()
        self.tmp.cleanup()


def test_slot_reuse_state_machine(fio):
    run_state_machine_as_test(lambda: SlotMachine(fio),
                              settings=settings(max_examples=60, stateful_step_count=30, deadline=None,
                                                suppress_health_check=[HealthCheck.too_slow]))


# -- counters ------------------------------------------------------------------------------


def test_counters_exact(fio, logdir):
    c0 = fio.counters()
    assert set(c0) >= {"open_stores", "open_logs", "syscalls_in_flight", "slots_in_use"}
    assert all(type(v) is int and v >= 0 for v in c0.values())
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    assert delta(fio, c0) == {"open_stores": 1}
    a, b = fio.SegmentedLog(store), fio.SegmentedLog(store)
    a.append(b"a" * (2 * SEG + 1))
    b.append(b"b")
    assert delta(fio, c0) == {"open_stores": 1, "open_logs": 2, "slots_in_use": 4}
    assert a.read(0, 3 * SEG) and delta(fio, c0)["open_logs"] == 2  # reads leave nothing behind
    a.close()
    a.close()
    assert delta(fio, c0) == {"open_stores": 1, "open_logs": 1, "slots_in_use": 1}
    del b  # never closed: dealloc counts it down
    assert delta(fio, c0) == {"open_stores": 1}
    c = fio.SegmentedLog(store)
    c.append(b"c")  # reuses a slot: still counted
    store.close()
    store.close()
    assert delta(fio, c0) == {"open_logs": 1, "slots_in_use": 1}
    c.close()  # after its store: counts down all the same
    d = fio.SegmentedLog(store)  # a log on a closed store is a log
    assert delta(fio, c0) == {"open_logs": 1}
    del d
    with pytest.raises(ValueError):
        fio.SegmentStore(logdir, SEG + 1)  # __init__ failed: nothing counted
    with pytest.raises(TypeError):
        fio.SegmentedLog(logdir)
    fio.SegmentedLog.__new__(fio.SegmentedLog).close()  # never initialised: never counted
    del store
    assert delta(fio, c0) == {}


def test_counters_dealloc(fio, logdir):
    """A store and a log dropped unclosed, the log in a reference cycle: counted down once each."""
    c0 = fio.counters()

    class Tagged(fio.SegmentedLog):
        pass

    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = Tagged(store)
    log.append(b"x" * (SEG + 1))
    log.me = log  # only the collector can free it
    assert delta(fio, c0) == {"open_stores": 1, "open_logs": 1, "slots_in_use": 2}
    del log, store
    gc.collect()
    assert delta(fio, c0) == {}
    assert not [f for f in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{f}").startswith(logdir)]


# -- the drain buffer belongs to the store ---------------------------------------------------


def test_scratch_made_on_first_drain_freed_by_store_close(fio, logdir, tmp_path):
    c0 = fio.counters()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    a, b = fio.SegmentedLog(store), fio.SegmentedLog(store)
    r, w = socketpair_fds()  # no pipe: drained through the buffer (pipes are spliced, no buffer)
    try:
        set_nonblocking(r)
        a.append(b"x")
        assert "scratch_buffers" not in delta(fio, c0)  # made on first use
        os.write(w, b"abc")
        assert a.drain(r) == (3, False) and b.drain(r) == (0, False)
        assert a.read(0, 10) == b"xabc"
        assert delta(fio, c0)["scratch_buffers"] == 1  # one per store, kept between drains
        other = fio.SegmentStore(tmp_path, SEG)
        c = fio.SegmentedLog(other)
        c.drain(r)
        assert delta(fio, c0)["scratch_buffers"] == 2
        other.close()
        c.close()
        assert delta(fio, c0)["scratch_buffers"] == 1
        store.close()
        assert "scratch_buffers" not in delta(fio, c0)
        # Its logs can't drain any more, and take nothing from the pipe trying.
        os.write(w, b"def")
        for log in (a, b):
            with pytest.raises(ValueError):
                log.drain(r)
        assert os.read(r, 10) == b"def" and "scratch_buffers" not in delta(fio, c0)
        a.mark_eof()
        assert a.drain(r) == (0, True)  # EOF already seen: as before, no store needed
    finally:
        a.close()
        b.close()
        store.close()
        os.close(r)
        os.close(w)
    assert delta(fio, c0) == {}


def test_scratch_not_freed_under_a_drain(fio, logdir):
    """A drain asleep in readv() holds the store's buffer: a second drain gets a temporary one, and
    store.close() leaves it to the sleeping drain, which frees it on its way out."""
    c0 = fio.counters()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    slow, quick = fio.SegmentedLog(store), fio.SegmentedLog(store)
    r1, w1 = os.pipe()  # blocking
    r2, w2 = os.pipe()
    outcome = []

    def sleeper():
        try:
            outcome.append(slow.drain(r1))
        except Exception as e:
            outcome.append(e)

    t = threading.Thread(target=sleeper)
    try:
        t.start()
        deadline = time.monotonic() + 10
        while delta(fio, c0).get("scratch_buffers") != 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert delta(fio, c0)["scratch_buffers"] == 1  # the sleeper took the store's
        set_nonblocking(r2)
        data = payload(3 * SEG + 5)
        os.write(w2, data)
        assert quick.drain(r2) == (len(data), False)  # through a temporary buffer, gone again
        assert quick.read(0, len(data)) == data and delta(fio, c0)["scratch_buffers"] == 1
        store.close()
        assert delta(fio, c0) == {"open_logs": 2, "slots_in_use": 4, "scratch_buffers": 1}
        os.write(w1, b"late")  # wakes the sleeper: its store is closed, so its write fails
        t.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], ValueError)
        assert delta(fio, c0) == {"open_logs": 2, "slots_in_use": 4}
    finally:
        os.close(w1)
        t.join(10)
        slow.close()
        quick.close()
        store.close()
        for fd in (r1, r2, w2):
            os.close(fd)
    assert delta(fio, c0) == {}


# -- releasing the middle of a running log (the per-exec output cap) -----------------------------


def test_release_then_read(fio, logdir):
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    data = payload(6 * SEG + 10)
    try:
        log.append(data)
        c0 = fio.counters()
        assert (log.released_range, log.held_bytes) == ((0, 0), len(data))
        assert log.release(1, 3) == 2 * SEG
        assert log.segments == [0, -1, -1, 3, 4, 5, 6]
        assert (log.released_range, log.held_bytes) == ((SEG, 3 * SEG), len(data) - 2 * SEG)
        assert delta(fio, c0) == {"slots_in_use": -2}  # nobody inside: back at once
        assert issubclass(fio.OffsetReleased, LookupError)
        # Inside the gap: OffsetReleased naming the first offset still held, whatever the length.
        for off in (SEG, SEG + 1, 2 * SEG, 3 * SEG - 1):
            for call in (log.read, log.read_frame):
                for n in (0, 1, 10 * SEG):
                    with pytest.raises(fio.OffsetReleased) as exc:
                        call(off, n)
                    assert exc.value.first_held == 3 * SEG and exc.value.offset == off
                    assert str(3 * SEG) in str(exc.value)
        # Before it: stops at the gap, never bytes across it.
        assert log.read(0, 10 * SEG) == data[:SEG]
        assert log.read(SEG - 5, 100) == data[SEG - 5:SEG]
        assert decode_frame(log.read_frame(SEG - 5, 100)) == data[SEG - 5:SEG]
        assert log.read(SEG - 5, 3) == data[SEG - 5:SEG - 2]
        # After it: as before.
        assert log.read(3 * SEG, 10 * SEG) == data[3 * SEG:]
        assert log.read(4 * SEG - 3, 6) == data[4 * SEG - 3:4 * SEG + 3]
        assert decode_frame(log.read_frame(3 * SEG, SEG)) == data[3 * SEG:4 * SEG]
        assert log.read(len(data), 5) == b""
        # Extended at its end only; an empty range does nothing.
        assert log.release(1, 3) == 0 and log.release(2, 3) == 0 and log.release(4, 4) == 0
        assert log.release(3, 4) == SEG and log.release(1, 5) == SEG
        assert log.segments == [0, -1, -1, -1, -1, 5, 6] and log.released_range == (SEG, 5 * SEG)
        assert delta(fio, c0) == {"slots_in_use": -4}
        with pytest.raises(fio.OffsetReleased) as exc:
            log.read(3 * SEG, 1)
        assert exc.value.first_held == 5 * SEG
        for start, stop, why in [(0, 6, "extended at its end"), (0, 1, "extended at its end"),
                                 (6, 6 + 1, "tail"), (5, 7, "tail"), (2, 1, "bad"), (-1, 2, "bad"),
                                 (1, 7, "tail")]:
            with pytest.raises(ValueError, match=why):
                log.release(start, stop)
        assert log.released_range == (SEG, 5 * SEG)
        # The tail moves on: what was the tail segment can go now.
        log.append(data[:SEG])
        assert log.release(5, 7) == 2 * SEG and log.read(0, 10 * SEG) == data[:SEG]
        assert log.read(7 * SEG, 2 * SEG) == (data + data[:SEG])[7 * SEG:]
    finally:
        log.close()
        store.close()
    assert log.segments == [] and log.released_range == (SEG, 7 * SEG)
    with pytest.raises(ValueError):
        log.release(1, 2)


def test_release_needs_a_contiguous_range(fio, logdir):
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    try:
        log.append(payload(8 * SEG))
        assert log.release(2, 3) == SEG
        with pytest.raises(ValueError):
            log.release(4, 6)  # a second range
        with pytest.raises(ValueError):
            log.release(1, 3)  # growing at the start
        assert log.release(3, 5) == 2 * SEG and log.released_range == (2 * SEG, 5 * SEG)
        assert log.read(0, 8 * SEG) == payload(8 * SEG)[:2 * SEG]
        other = fio.SegmentedLog(store)
        with pytest.raises(ValueError):
            other.release(0, 1)  # empty log: segment 0 is the tail
        assert other.release(0, 0) == 0 and other.released_range == (0, 0)
        other.close()
    finally:
        log.close()
        store.close()


def test_released_slots_reused_by_other_logs(fio, logdir):
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    data = payload(5 * SEG + 1, seed=1)
    try:
        log.append(data)
        log.release(1, 4)
        other = fio.SegmentedLog(store)
        other.append(b"o" * (4 * SEG))
        assert other.segments == [1, 2, 3, 6]  # the released ones first, lowest first
        assert store.slots_used == 7
        assert arena_bytes(logdir, other, 0, 4 * SEG) == b"o" * (4 * SEG)
        assert log.read(0, 10 * SEG) == data[:SEG] and log.read(4 * SEG, 10 * SEG) == data[4 * SEG:]
        c0 = fio.counters()
        log.close()  # gives back what it still holds, the released ones not again
        assert delta(fio, c0) == {"open_logs": -1, "slots_in_use": -3}
        third = fio.SegmentedLog(store)
        third.append(b"t" * (3 * SEG))
        assert sorted(third.segments) == [0, 4, 5] and other.read(0, 4 * SEG) == b"o" * (4 * SEG)
        third.close()
        other.close()
    finally:
        log.close()
        store.close()


def test_release_with_reader_inside_defers_slot_return(fio, logdir):
    """Deterministic: the reader sleeps in pread() on segment 0 (see blocking_arena) and the signal
    handler, running inside read(), releases segments 1-2 and has another log take slots: it must
    not get 1 or 2 while the reader is inside; once it has left, they are handed out."""
    store = fio.SegmentStore(logdir, SEG, 1)  # one slot an arena: only slot 0 reads from kmsg
    log = fio.SegmentedLog(store)
    data = payload(4 * SEG + 1)
    log.append(data)
    seen = {}

    def handler(signum, frame):
        if log.readers != 1 or seen:
            return  # not inside read() yet
        before = fio.counters()
        seen["released"] = log.release(1, 3)
        seen["state"] = (log.segments, log.released_range, delta(fio, before))
        other = fio.SegmentedLog(store)
        other.append(b"o" * (2 * SEG))  # must not get slot 1 or 2: the reader is still inside
        seen["other"] = other
        seen["in_use"] = fio.counters()["slots_in_use"]
        raise Interrupted

    try:
        with blocking_arena(logdir, 0) as unblock, kicking(handler, lambda: bool(seen), unblock) as timed_out:
            with pytest.raises(Interrupted):
                log.read(0, 4 * SEG)
        assert not timed_out
        assert seen["released"] == 2 * SEG
        assert seen["state"] == ([0, -1, -1, 3, 4], (SEG, 3 * SEG), {}), "slots went back with a reader inside"
        assert seen["other"].segments == [5, 6], "released slots were handed out with a reader inside"
        # The reader has left: slots 1 and 2 are back, and the next ones handed out.
        assert log.readers == 0 and fio.counters()["slots_in_use"] == seen["in_use"] - 2
        third = fio.SegmentedLog(store)
        third.append(b"t" * (2 * SEG))
        assert third.segments == [1, 2] and store.slots_used == 7
        assert log.read(3 * SEG, 2 * SEG) == data[3 * SEG:]
        third.close()
        seen["other"].close()
    finally:
        seen.clear()
        log.close()
        store.close()


release_op = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 3 * SEG)),
    st.tuples(st.just("release"), st.integers(0, 3), st.integers(0, 12)),
    st.tuples(st.just("read"), st.floats(0, 1), st.integers(0, 4 * SEG)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(release_op, max_size=30), seed=st.integers(0, 2**32 - 1))
def test_model_release(fio, ops, seed):
    """release() and reads at random offsets against a model: bytes plus one released range."""
    rng = random.Random(seed)
    model = bytearray()
    rel: tuple[int, int] | None = None  # released segments [a, b)
    with tempfile.TemporaryDirectory() as d:
        store = fio.SegmentStore(d, SEG, SLOTS)
        c0 = fio.counters()
        log = fio.SegmentedLog(store)
        try:
            for o in ops:
                if o[0] == "append":
                    chunk = rng.randbytes(o[1])
                    log.append(chunk)
                    model += chunk
                elif o[0] == "release":
                    start, stop = o[1], o[1] + o[2]
                    tail = len(model) // SEG
                    if start == stop:
                        assert log.release(start, stop) == 0
                    elif stop > tail or (rel is not None and not rel[0] <= start <= rel[1]):
                        with pytest.raises(ValueError):
                            log.release(start, stop)
                    else:
                        first = start if rel is None else max(start, rel[1])
                        assert log.release(start, stop) == max(stop - first, 0) * SEG
                        rel = (start, stop) if rel is None else (rel[0], max(rel[1], stop))
                else:
                    off = int(o[1] * len(model))
                    lo, hi = (rel[0] * SEG, rel[1] * SEG) if rel else (len(model) + 1, len(model) + 1)
                    if lo <= off < hi:
                        for call in (log.read, log.read_frame):
                            with pytest.raises(fio.OffsetReleased) as exc:
                                call(off, o[2])
                            assert exc.value.first_held == hi
                    else:
                        expect = bytes(model[off:min(off + o[2], lo if off < lo else len(model))])
                        assert log.read(off, o[2]) == expect
                        frame = log.read_frame(off, o[2])
                        assert (decode_frame(frame) if frame else b"") == expect
                segs = log.segments
                assert len(segs) == -(-len(model) // SEG)
                assert [i for i, s in enumerate(segs) if s == -1] == (list(range(*rel)) if rel else [])
                assert log.released_range == ((rel[0] * SEG, rel[1] * SEG) if rel else (0, 0))
                assert log.held_bytes == len(model) - ((rel[1] - rel[0]) * SEG if rel else 0)
                assert delta(fio, c0).get("slots_in_use", 0) == sum(s >= 0 for s in segs)
        finally:
            log.close()
            store.close()


def test_release_while_readers_read(fio, logdir):
    """Stress: readers at random offsets of a log whose released range keeps growing while other
    logs write into the slots it gives back: every read gives the log's own bytes or
    OffsetReleased, never another log's bytes."""
    store = fio.SegmentStore(logdir, PAGE, 8)
    nseg = 200
    data = payload(nseg * PAGE + 1, seed=42)
    log = fio.SegmentedLog(store)
    log.append(data)
    stop = threading.Event()
    bad, reads, refused = [], [0], [0]

    def reader(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            off = rng.randrange(len(data))
            try:
                got = log.read(off, rng.randrange(1, 16 * PAGE))
            except fio.OffsetReleased as e:
                refused[0] += 1
                if not (e.first_held > off and e.first_held % PAGE == 0):
                    bad.append(("first_held", off, e.first_held))
                continue
            reads[0] += 1
            if got != data[off:off + len(got)]:
                bad.append((off, len(got)))
            time.sleep(0.0002)  # now and then no reader is inside: the slots go back

    others = []
    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        for end in range(2, nseg):
            log.release(1, end)
            other = fio.SegmentedLog(store)
            other.append(b"\xff" * PAGE)  # lands in a released slot once it is back
            others.append(other)
            if end % 20 == 0:
                time.sleep(0.002)
        stop.set()
        for t in threads:
            t.join(10)
        assert not bad, f"a reader saw wrong bytes: {bad[:5]}"
        assert reads[0] > 0 and refused[0] > 0
        assert store.slots_used < nseg + 1 + len(others)  # released slots were reused
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for other in others:
            other.close()
        log.close()
        store.close()


# -- restore after a restart -----------------------------------------------------------------------


def _open_arenas(logdir: str) -> list[str]:
    """The arena files of logdir this process has open."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if os.path.dirname(target) == os.path.realpath(logdir):
                out.append(os.path.basename(target))
    return sorted(out)


def _crashed_run(fio, logdir):
    """A run that writes logs and 'crashes': the journal says what each live log held, then the
    objects are just dropped (nothing closed on purpose; the arena files stay). Arena 1 (slots 3-5)
    belonged to a log closed before the crash: no journal entry holds a slot of it."""
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    a, b, c, gone = (fio.SegmentedLog(store) for _ in range(4))
    datas = {"a": payload(3 * SEG, seed=1), "b": payload(2 * SEG + 100, seed=2),
             "c": payload(6 * SEG + 7, seed=3), "empty": b""}
    a.append(datas["a"])                  # slots 0 1 2, exactly full: no tail slot
    gone.append(payload(3 * SEG, seed=4))  # slots 3 4 5
    b.append(datas["b"])                  # 6 7 8
    c.append(datas["c"])                  # 9 .. 15
    b.mark_eof()
    c.release(1, 4)                       # 10 11 12 back to the store
    gone.close()
    empty = fio.SegmentedLog(store)
    assert (a.segments, b.segments, c.segments, empty.segments) == (
        [0, 1, 2], [6, 7, 8], [9, -1, -1, -1, 13, 14, 15], [])
    journal = {name: (log.segments, log.committed, log.eof)
               for name, log in [("a", a), ("b", b), ("c", c), ("empty", empty)]}
    return store, [a, b, c, empty], journal, datas


def test_restore_round_trip(fio, logdir):
    old = _crashed_run(fio, logdir)
    journal, datas = old[2], old[3]
    sizes = {name: os.stat(os.path.join(logdir, name)).st_size for name in os.listdir(logdir)}
    del old  # the crash: nothing closed, the objects just go
    gc.collect()
    c0 = fio.counters()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    logs = {}
    try:
        assert store.slots_used == 0 and _open_arenas(logdir) == []
        for name, (slots, committed, eof) in journal.items():
            logs[name] = fio.SegmentedLog.restore(store, slots, committed, eof)
        assert {n: os.stat(os.path.join(logdir, n)).st_size for n in os.listdir(logdir)} == sizes  # never truncated
        assert store.slots_used == 16
        assert delta(fio, c0) == {"open_stores": 1, "open_logs": 4, "slots_in_use": 3 + 3 + 4}
        assert _open_arenas(logdir) == ["arena-00000000", "arena-00000002", "arena-00000003",
                                        "arena-00000004", "arena-00000005"]  # not arena 1: nobody's
        for name, log in logs.items():
            slots, committed, eof = journal[name]
            assert (log.segments, log.committed, log.eof, log.store) == (slots, committed, eof, store)
        c = logs["c"]
        assert (c.released_range, c.held_bytes) == ((SEG, 4 * SEG), 6 * SEG + 7 - 3 * SEG)
        with pytest.raises(fio.OffsetReleased) as exc:
            c.read(2 * SEG, 1)
        assert exc.value.first_held == 4 * SEG

        def check_bytes(rng):
            for name, log in logs.items():
                data = datas[name]
                lo, hi = log.released_range
                assert log.read(0, len(data)) == data[:lo if hi else len(data)]
                assert log.read(hi, len(data)) == data[hi:]
                for _ in range(20):
                    off = rng.randrange(len(data) + 1)
                    n = rng.randrange(3 * SEG)
                    if lo <= off < hi:
                        continue
                    assert log.read(off, n) == data[off:min(off + n, lo if off < lo else len(data))]

        check_bytes(random.Random(0))
        # finish_restore: the slots nobody claimed (3-5: the closed log's; 10-12: c's released
        # ones) are handed out, lowest first, before new ones.
        store.finish_restore()
        assert delta(fio, c0)["slots_in_use"] == 10
        new = fio.SegmentedLog(store)
        new.append(b"n" * (7 * SEG))
        assert new.segments == [3, 4, 5, 10, 11, 12, 16] and store.slots_used == 17
        assert arena_bytes(logdir, new, 0, 7 * SEG) == b"n" * (7 * SEG)
        assert "arena-00000001" in _open_arenas(logdir)
        # The restored logs go on: c's tail segment is continued in place; a's next byte gets a slot.
        logs["c"].append(b"C" * SEG)
        logs["a"].append(b"A")
        datas["c"] += b"C" * SEG
        datas["a"] += b"A"
        assert logs["c"].segments == [9, -1, -1, -1, 13, 14, 15, 17] and logs["a"].segments == [0, 1, 2, 18]
        with pytest.raises(ValueError):
            logs["b"].append(b"x")  # restored at EOF
        assert logs["c"].release(1, 7) == 3 * SEG
        # The restored bytes were never overwritten.
        check_bytes(random.Random(1))
        new.close()
    finally:
        for log in logs.values():
            log.close()
        store.close()


def test_restore_validation(fio, logdir):
    old = _crashed_run(fio, logdir)
    journal = old[2]
    del old
    gc.collect()
    c0 = fio.counters()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    logs = []
    try:
        logs.append(fio.SegmentedLog.restore(store, *journal["a"]))  # slots 0 1 2
        c1 = fio.counters()
        bad = [
            ([6, 7, 6], 2 * SEG + 100, "twice"),
            ([6, 1, 8], 2 * SEG + 100, "already held"),
            ([6, -2, 8], 2 * SEG + 100, "out of range"),
            ([6, 7, 10**6], 2 * SEG + 100, "out of range"),  # no such arena file
            ([6, 7, 8], 3 * SEG + 100, "does not fit"),       # too few slots
            ([6, 7, 8, 9], 2 * SEG + 100, "does not fit"),    # too many
            ([6, 7, 8], 2 * SEG - 1, "does not fit"),         # an extra slot, and the tail not empty
            ([6, 7, 8, 9], 3 * SEG + 1, "short"),             # slot 9 holds a full segment, slot 8 not
            ([9, -1, 11, -1, 13], 5 * SEG, "contiguous"),
            ([9, 10, -1], 2 * SEG + 1, "below the tail"),
            ([9, -1], 2 * SEG - 1, "below the tail"),
            ([], -1, "committed"),
        ]
        for slots, committed, why in bad:
            with pytest.raises(ValueError, match=why):
                fio.SegmentedLog.restore(store, slots, committed, False)
            assert fio.counters() == c1 and store.slots_used == 3, f"{why}: something was claimed"
        with pytest.raises(TypeError):
            fio.SegmentedLog.restore(store, [6, "7"], SEG + 1, False)
        with pytest.raises(TypeError):
            fio.SegmentedLog.restore(logdir, [6], 1, False)
        assert fio.counters() == c1
        # Valid ones still go: an empty tail slot, a released run at the start.
        logs.append(fio.SegmentedLog.restore(store, [6, 7, 8], 2 * SEG, False))
        logs.append(fio.SegmentedLog.restore(store, [-1, -1, 15], 2 * SEG + 7, True))
        assert logs[-1].released_range == (0, 2 * SEG) and logs[-1].read(2 * SEG, 10) == payload(6 * SEG + 7, seed=3)[6 * SEG:]
        assert delta(fio, c0) == {"open_stores": 1, "open_logs": 3, "slots_in_use": 7}
        # A restored log closed before finish_restore gives its slots back exactly once.
        logs.pop(1).close()
        store.finish_restore()
        with pytest.raises(RuntimeError):
            store.finish_restore()
        with pytest.raises(RuntimeError):
            fio.SegmentedLog.restore(store, [9], SEG, False)
        others = [fio.SegmentedLog(store) for _ in range(3)]
        for o in others:
            o.append(b"x" * (5 * SEG))
        handed = [s for o in others for s in o.segments]
        assert len(handed) == len(set(handed)) == 15 and not set(handed) & {0, 1, 2, 15}
        assert sorted(handed)[:13] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16]
        logs.extend(others)
    finally:
        for log in logs:
            log.close()
        store.close()
    # The first allocation ends the restore phase too; a closed store refuses.
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    try:
        log.append(b"x")
        assert log.segments == [0]
        with pytest.raises(RuntimeError):
            fio.SegmentedLog.restore(store, [1], 1, False)
        with pytest.raises(RuntimeError):
            store.finish_restore()
    finally:
        log.close()
        store.close()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    store.close()
    with pytest.raises(ValueError):
        fio.SegmentedLog.restore(store, [0], 1, False)
    with pytest.raises(ValueError):
        store.finish_restore()


# -- spawn ----------------------------------------------------------------------------------------


def _spawned(argv, stdout=None, stderr=None, env=(b"PATH=/usr/bin:/bin",), search=False):
    """Run argv through _fastio.spawn with stdin from /dev/null and outputs to pipes (or the
    given spawn values); returns (status, stdout bytes, stderr bytes)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(out_r, "rb") as o, os.fdopen(err_r, "rb") as e:
        try:
            pid, pidfd, *ends = _fastio.spawn(argv[0], list(argv), list(env), null,
                                              out_w if stdout is None else stdout, err_w if stderr is None else stderr,
                                              search)
        finally:
            for fd in (out_w, err_w, null):
                os.close(fd)
        os.close(pidfd)
        assert ends == [-1, -1, -1]  # no pipes asked for
        try:
            out, err = o.read(), e.read()
        finally:
            _, status = os.waitpid(pid, 0)
    return status, out, err


def test_spawn_wires_stdio_group_and_signals():
    # In its own group; SIGPIPE (13) and SIGXFSZ (25) neither ignored nor blocked, though this
    # Python ignores SIGPIPE; stdin the descriptor given; the environment as given. grep reads its
    # own masks, which it inherits (the shell's own may be read while it blocks all to fork grep).
    script = (b'echo "$(ps -o pgid= $$ | tr -d \' \') $$"; grep -E "^Sig(Ign|Blk)" /proc/self/status; '
              b'cat; echo "X=$X"; echo err >&2')
    status, out, err = _spawned([b"/bin/sh", b"-c", script], env=[b"X=y\xff", b"PATH=/usr/bin:/bin"])
    assert os.waitstatus_to_exitcode(status) == 0 and err == b"err\n"
    lines = out.decode("latin-1").splitlines()
    pgid, pid = lines[0].split()
    assert pgid == pid
    masks = dict(line.split(":\t") for line in lines[1:3])
    for mask in masks.values():
        assert int(mask, 16) & ((1 << 12) | (1 << 24)) == 0, masks
    assert lines[3:] == ["X=y\xff"]
    status, out, err = _spawned([b"/bin/sh", b"-c", b"echo out; echo err >&2"], stderr=_fastio.SPAWN_STDOUT)
    assert out == b"out\nerr\n" and err == b""
    status, out, err = _spawned([b"/bin/sh", b"-c", b"echo out; echo err >&2"], stdout=_fastio.SPAWN_DEVNULL)
    assert out == b"" and err == b"err\n"


def test_spawn_takes_subprocess_values_for_devnull_stdout_and_pipe():
    assert ((_fastio.SPAWN_DEVNULL, _fastio.SPAWN_STDOUT, _fastio.SPAWN_PIPE)
            == (subprocess.DEVNULL, subprocess.STDOUT, subprocess.PIPE))


def _open_fds():
    listed = [int(fd) for fd in os.listdir("/proc/self/fd")]  # the listing's own descriptor is closed by now
    return sorted(fd for fd in listed if _is_open(fd))


def _is_open(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def test_spawn_makes_the_pipes_and_a_pidfd_and_keeps_only_the_routers_ends():
    before = _open_fds()
    pid, pidfd, stdin_w, out_r, err_r = _fastio.spawn(
        b"/bin/sh", [b"/bin/sh", b"-c", b"cat; echo err >&2"], [], _fastio.SPAWN_PIPE, _fastio.SPAWN_PIPE,
        _fastio.SPAWN_PIPE, False, 1 << 20)
    mine = {pidfd, stdin_w, out_r, err_r}
    try:
        # The child's ends were closed in the call: only ours are new, all close-on-exec.
        assert sorted(set(_open_fds()) - set(before)) == sorted(mine)
        assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in mine)
        assert fcntl.fcntl(out_r, fcntl.F_GETPIPE_SZ) == 1 << 20
        os.write(stdin_w, b"in\n")
        os.close(stdin_w)
        mine.discard(stdin_w)
        with os.fdopen(out_r, "rb", closefd=False) as o, os.fdopen(err_r, "rb", closefd=False) as e:
            assert (o.read(), e.read()) == (b"in\n", b"err\n")  # EOF: no copy of a write end left
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        assert info is not None and info.si_pid == pid and info.si_status == 0
    finally:
        for fd in mine:
            os.close(fd)
    merged = _fastio.spawn(b"/bin/sh", [b"/bin/sh", b"-c", b"echo out; echo err >&2"], [], _fastio.SPAWN_PIPE,
                           _fastio.SPAWN_PIPE, _fastio.SPAWN_STDOUT)
    pid, pidfd, stdin_w, out_r, err_r = merged
    assert err_r == -1
    with os.fdopen(out_r, "rb") as o:
        assert o.read() == b"out\nerr\n"
    os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    os.close(pidfd)
    os.close(stdin_w)
    assert _open_fds() == before


def test_spawn_gives_dev_null_as_stdin_too():
    pid, pidfd, stdin_w, out_r, err_r = _fastio.spawn(
        b"/bin/sh", [b"/bin/sh", b"-c", b"cat; echo done"], [], _fastio.SPAWN_DEVNULL, _fastio.SPAWN_PIPE,
        _fastio.SPAWN_DEVNULL)
    assert (stdin_w, err_r) == (-1, -1)
    with os.fdopen(out_r, "rb") as o:
        assert o.read() == b"done\n"  # cat saw an empty stdin at once
    os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    os.close(pidfd)


def test_a_failed_spawn_leaves_nothing_open():
    before = _open_fds()
    with pytest.raises(FileNotFoundError):
        _fastio.spawn(b"/no/such/program", [b"x"], [], _fastio.SPAWN_PIPE, _fastio.SPAWN_PIPE, _fastio.SPAWN_PIPE)
    assert _open_fds() == before
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(before) + 3, hard))  # room for a pipe and a half
    try:
        with pytest.raises(OSError) as e:
            _fastio.spawn(b"/bin/true", [b"true"], [], _fastio.SPAWN_PIPE, _fastio.SPAWN_PIPE, _fastio.SPAWN_PIPE)
        assert e.value.errno == errno.EMFILE and e.value.filename is None  # the system's lack, not the program's
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _open_fds() == before


def test_spawn_searches_path_only_when_asked_and_names_what_failed(tmp_path):
    status, out, _ = _spawned([b"echo", b"hi"], search=True)
    assert out == b"hi\n" and os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(FileNotFoundError) as e:
        _spawned([b"echo", b"hi"])  # no search: "echo" relative to the cwd
    assert e.value.filename == "echo"
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(PermissionError) as e:
        _spawned([bytes(plain)])
    assert e.value.filename == str(plain)
    with pytest.raises(ValueError):
        _spawned([b"/bin/true", b"a\0b"])
    with pytest.raises(ValueError):
        _fastio.spawn(b"/bin/true", [], [], 0, 1, 2)


# -- calls that never block, made with the GIL held -------------------------------------------------


def test_epoll_watch_adds_and_removes_a_reader():
    ep = select.epoll()
    r, w = os.pipe()
    try:
        _fastio.epoll_watch(ep.fileno(), r, True)
        with pytest.raises(FileExistsError):
            _fastio.epoll_watch(ep.fileno(), r, True)
        assert ep.poll(0) == []
        os.write(w, b"x")
        assert ep.poll(0) == [(r, select.EPOLLIN)]
        assert ep.poll(0) == [(r, select.EPOLLIN)]  # level-triggered: still readable
        _fastio.epoll_watch(ep.fileno(), r, False)
        assert ep.poll(0) == []
        with pytest.raises(FileNotFoundError):
            _fastio.epoll_watch(ep.fileno(), r, False)
    finally:
        ep.close()
        _fastio.close_now(r)
        _fastio.close_now(w)
    with pytest.raises(OSError) as e:
        _fastio.close_now(r)
    assert e.value.errno == errno.EBADF


def test_exit_status_leaves_the_child_unreaped_and_reap_gives_its_usage():
    pid, pidfd, *_ = _fastio.spawn(b"/bin/sh", [b"sh", b"-c", b"i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exit 3"],
                                   [], _fastio.SPAWN_DEVNULL, _fastio.SPAWN_DEVNULL, _fastio.SPAWN_DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while (ended := _fastio.exit_status(pidfd)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ended == (True, 3)
        assert _fastio.exit_status(pidfd) == (True, 3)  # WNOWAIT: still there to be read again
        usage = _fastio.reap(pid)
        assert usage is not None and usage[0] + usage[1] > 0 and usage[2] > 0
        with pytest.raises(ChildProcessError):
            _fastio.reap(pid)  # reaped once only
    finally:
        _fastio.close_now(pidfd)
    pid, pidfd, *_ = _fastio.spawn(b"/bin/sh", [b"sh", b"-c", b"kill -TERM $$"], [], _fastio.SPAWN_DEVNULL,
                                   _fastio.SPAWN_DEVNULL, _fastio.SPAWN_DEVNULL)
    os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT)
    assert _fastio.exit_status(pidfd) == (False, signal.SIGTERM)
    assert _fastio.reap(pid) is not None
    _fastio.close_now(pidfd)
