"""spawn(), and the calls that never block made with the GIL held (epoll_watch, close_now, exit_status, reap)."""
from __future__ import annotations

import errno
import fcntl
import os
import resource
import select
import signal
import subprocess
import time

import pytest

from router import _fastio
from tests.helpers.fds import open_fds

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


def test_spawn_makes_the_pipes_and_a_pidfd_and_keeps_only_the_routers_ends():
    before = open_fds()
    pid, pidfd, stdin_w, out_r, err_r = _fastio.spawn(
        b"/bin/sh", [b"/bin/sh", b"-c", b"cat; echo err >&2"], [], _fastio.SPAWN_PIPE, _fastio.SPAWN_PIPE,
        _fastio.SPAWN_PIPE, False, 1 << 20)
    mine = {pidfd, stdin_w, out_r, err_r}
    try:
        # The child's ends were closed in the call: only ours are new, all close-on-exec.
        assert sorted(set(open_fds()) - set(before)) == sorted(mine)
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
    assert open_fds() == before


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
    before = open_fds()
    with pytest.raises(FileNotFoundError):
        _fastio.spawn(b"/no/such/program", [b"x"], [], _fastio.SPAWN_PIPE, _fastio.SPAWN_PIPE, _fastio.SPAWN_PIPE)
    assert open_fds() == before
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(before) + 3, hard))  # room for a pipe and a half
    try:
        with pytest.raises(OSError) as e:
            _fastio.spawn(b"/bin/true", [b"true"], [], _fastio.SPAWN_PIPE, _fastio.SPAWN_PIPE, _fastio.SPAWN_PIPE)
        assert e.value.errno == errno.EMFILE and e.value.filename is None  # the system's lack, not the program's
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert open_fds() == before


def test_spawn_searches_path_only_when_asked_and_names_what_failed(tmp_path):
    status, out, _ = _spawned([b"echo", b"hi"], search=True)
    assert out == b"hi\n" and os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(FileNotFoundError) as missing:
        _spawned([b"echo", b"hi"])  # no search: "echo" relative to the cwd
    assert missing.value.filename == "echo"
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(PermissionError) as denied:
        _spawned([bytes(plain)])
    assert denied.value.filename == str(plain)
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
    busy = b"i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exit 3"
    pid, pidfd, *_ = _fastio.spawn(b"/bin/sh", [b"sh", b"-c", busy], [], _fastio.SPAWN_DEVNULL, _fastio.SPAWN_DEVNULL,
                                   _fastio.SPAWN_DEVNULL)
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
