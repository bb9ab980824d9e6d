"""drain(): pipes spliced into the slots, anything else through the drain buffer; budgets, EOF, failures."""
from __future__ import annotations

import errno
import hashlib
import os
import resource
import signal
import subprocess
import sys
import threading
import tty

import pytest

from router import _fastio
from tests.helpers.fds import Pipe, set_nonblocking
from tests.helpers.logs import PAGE, SEG, SLOTS, arena_bytes, delta, drain_until_eof, payload


def test_drain_empty_pipe_then_eof(Log, logdir, pipe):
    log = Log(logdir, SEG)
    try:
        assert log.drain(pipe.r) == (0, False)
        assert not log.eof
        assert os.listdir(logdir) == []  # nothing arrived, nothing created
        pipe.close_write()
        assert log.drain(pipe.r) == (0, True)
        assert log.eof
        assert log.drain(pipe.r) == (0, True)  # and stays so without reading
        assert os.listdir(logdir) == []
        with pytest.raises(ValueError):
            log.append(b"x")
    finally:
        log.close()


def test_drain_budget(Log, logdir, pipe):
    data = payload(3 * SEG + 100, seed=7)
    log = Log(logdir, SEG)
    try:
        assert pipe.write(data) == len(data)
        budget = SEG + 10
        n, eof = log.drain(pipe.r, budget)
        assert (n, eof) == (budget, False)  # stopped by the budget, not by EAGAIN
        assert log.read(0, n) == data[:n]
        total = n
        while total < len(data):
            n, eof = log.drain(pipe.r, budget)
            assert 0 < n and not eof
            total += n
        assert total == len(data)
        assert log.drain(pipe.r, budget) == (0, False)  # EAGAIN
        assert log.read(0, len(data) + 1) == data
        with pytest.raises(ValueError):
            log.drain(pipe.r, 0)
    finally:
        log.close()


def test_drain_writer_thread(Log, logdir, pipe):
    data = payload(300_000, seed=3)
    log = Log(logdir, 2 * PAGE)
    try:
        pipe.feed(data, 7777)
        counts = drain_until_eof(log, pipe.r, budget=10_000)
        assert sum(counts) == len(data)
        assert log.read(0, len(data)) == data
        assert log.eof
    finally:
        log.close()


def test_drain_child_process_fds_closed(Log, logdir):
    n = 1_000_003
    fds_before = sorted(os.listdir("/proc/self/fd"))
    log = Log(logdir, 4 * PAGE)
    proc = None
    try:
        with Pipe() as p:
            proc = subprocess.Popen(
                ["head", "-c", str(n), "/dev/urandom"], stdout=p.w, stdin=subprocess.DEVNULL
            )
            p.close_write()
            counts = drain_until_eof(log, p.r, budget=64 * 1024)
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
    assert sorted(os.listdir("/proc/self/fd")) == fds_before


def test_drain_python_child_known_bytes(Log, logdir, pipe):
    code = "import random,sys; sys.stdout.buffer.write(random.Random(5).randbytes(200_000))"
    log = Log(logdir, PAGE)
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=pipe.w, stdin=subprocess.DEVNULL)
        pipe.close_write()
        drain_until_eof(log, pipe.r)
        assert proc.wait(10) == 0
        assert log.read(0, 10**9) == payload(200_000, seed=5)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


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


def test_drain_bad_fd_raises_oserror(Log, logdir, pipe):
    log = Log(logdir, SEG)
    try:
        with pytest.raises(OSError) as exc:
            log.drain(pipe.w)  # write end: EBADF on read
        assert exc.value.errno == 9
        assert not log.eof and log.committed == 0
    finally:
        log.close()


def test_drain_write_failing_midway_loses_nothing(Log, logdir, pipe):
    """A write that fails part-way (EFBIG here, standing in for ENOSPC / EIO) keeps what it wrote and
    loses nothing it took: spliced bytes stay in the pipe, read ones are written first next time."""
    data = payload(3000)
    log = Log(logdir, SEG)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    try:
        pipe.write(data)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, limits[1]))  # arena files: 1000 bytes at most
        try:
            with pytest.raises(OSError) as exc:
                log.drain(pipe.r)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        # Spliced bytes count once written; a buffered piece only once all of it is (then it is stashed).
        assert exc.value.errno == errno.EFBIG and log.committed in (0, 1000)
        pipe.close_write()
        drain_until_eof(log, pipe.r)
        assert log.read(0, 5000) == data and log.eof
    finally:
        signal.signal(signal.SIGXFSZ, old)
        log.close()


def test_drain_splices_a_pipe_and_buffers_anything_else(fio, logdir):
    """Pipes go straight into the slots (no drain buffer is made); a pty or socket through the buffer.
    A pipe that never had output takes no slot, even at EOF."""
    c0 = fio.counters()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    piped, silent, other = fio.SegmentedLog(store), fio.SegmentedLog(store), fio.SegmentedLog(store)
    try:
        with Pipe(payload(3 * SEG)) as full, Pipe() as empty, Pipe.sockets() as stream:
            empty.close_write()
            assert piped.drain(full.r) == (3 * SEG, False) and piped.read(0, 4 * SEG) == payload(3 * SEG)
            if fio is _fastio:
                assert "scratch_buffers" not in delta(fio, c0)
            assert silent.drain(empty.r) == (0, True)
            assert fio.counters()["slots_in_use"] - c0["slots_in_use"] == 3
            stream.write(b"abc")
            assert other.drain(stream.r) == (3, False) and other.read(0, 10) == b"abc"
            assert delta(fio, c0)["scratch_buffers"] == 1
    finally:
        for log in (piped, silent, other):
            log.close()
        store.close()
    assert delta(fio, c0) == {}


def test_drain_segment_creation_failure(Log, tmp_path, pipe):
    d = tmp_path / "gone"
    d.mkdir()
    log = Log(str(d), SEG)
    try:
        pipe.write(b"abc")
        os.rmdir(d)  # segment files can't be created any more
        with pytest.raises(FileNotFoundError):
            log.drain(pipe.r)
        assert log.committed == 0
        with pytest.raises(FileNotFoundError):
            log.drain(pipe.r)  # still failing: nothing more is taken from the pipe
        # Once writing works again, the bytes the failed calls took come first, nothing lost.
        pipe.write(b"def")
        d.mkdir()
        pipe.close_write()
        drain_until_eof(log, pipe.r)
        assert log.read(0, 100) == b"abcdef" and log.eof
    finally:
        log.close()
