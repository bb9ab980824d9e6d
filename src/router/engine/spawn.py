"""Starting a child with vfork semantics, and what a shell would say when it cannot start.

uvloop's own subprocess support does a full fork(), which slows to a crawl once the router holds
gigabytes; posix_spawn (through _fastio.spawn, which lets go of the GIL while the child execs)
vforks (benchmarks/HISTORY.md, "Spawning off the loop, without the GIL").
"""
from __future__ import annotations

import errno
import grp
import os
import pwd
import shutil
from typing import NamedTuple

import grpc

from router import _fastio
from router._fastio import SegmentedLog
from router.errors import RouterError

from .child_stdio import PIPE_SIZE, ChildStdio, open_stdio
from .records import ExecSpec, ExitStatus


class ExecUser(NamedTuple):
    """Who execs run as (--exec-user): ids, supplementary groups, and the login's name and home."""

    uid: int
    gid: int
    groups: list[int]
    name: str
    home: str

    def environment(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def argv(self, argv: list[str]) -> list[str]:
        """argv run through setpriv(1), which takes this identity and then execs it: spawning stays
        a vfork (a fork of the router would be slow, and runs grpc's fork handlers)."""
        if SETPRIV is None:
            raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, "--exec-user needs setpriv(1) on the router host")
        groups = ["--groups", ",".join(map(str, self.groups))] if self.groups else ["--clear-groups"]
        return [SETPRIV, "--reuid", str(self.uid), "--regid", str(self.gid), *groups, "--", *argv]


def exec_user(spec: str) -> ExecUser:
    """USER[:GROUP] (names or numbers) -> ExecUser; ValueError naming what is unknown."""
    user, _, group = spec.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"--exec-user: no user {user!r}") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"--exec-user: no group {group!r}") from None
    return ExecUser(entry.pw_uid, gid, os.getgrouplist(entry.pw_name, gid), entry.pw_name, entry.pw_dir)


SETSID = shutil.which("setsid")
SETPRIV = shutil.which("setpriv")


class Started(NamedTuple):
    """A child just started: its pid and pidfd, and the router's ends of its stdio (-1 where there
    is none; a terminal's output is its stdout)."""

    pid: int
    pidfd: int
    stdin_writer: int
    stdout_reader: int
    stderr_reader: int


def start_process(spec: ExecSpec, stdout: bool, stderr: bool, user: ExecUser | None = None,
                  pid_fd: int = -1) -> Started:
    """Start the child, with output pipes for the streams logged (`stdout`, `stderr`), in a process
    group (a terminal's: a session) of its own, every signal at its default disposition (as a login
    session gives: a router run under nohup, or as a script's background job, inherited some
    ignored, and an ignored signal stays ignored across exec, where a shell cannot even trap it).
    Always through _fastio.spawn: subprocess cannot reset a disposition without preexec_fn, which
    would rule out vfork. As another user, through setpriv(1). On OSError nothing is left open or
    running. With `pid_fd`, the pid is written there as soon as the child exists (_fastio.spawn)."""
    cwd = -1 if spec.workdir is None else _open_workdir(spec.workdir)
    try:
        if spec.pty is None:
            return _posix_spawn(spec, stdout, stderr, user, cwd, pid_fd)
        stdio = open_stdio(spec, stdout, stderr)
        try:
            return _spawn_on_terminal(spec, stdio, user, cwd, pid_fd)
        except BaseException:
            stdio.close_router_ends()
            raise
        finally:
            stdio.close_child_ends()
    finally:
        if cwd >= 0:
            os.close(cwd)


def _open_workdir(workdir: str) -> int:
    """The working directory, opened here so that an error names it (as a shell's cd would), not
    the program: the child's fchdir() could only fail as its exec."""
    fd = os.open(workdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    if not os.access(workdir, os.X_OK):  # fchdir() needs search permission; O_PATH does not
        os.close(fd)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), workdir)
    return fd


def _spawn_on_terminal(spec: ExecSpec, stdio: ChildStdio, user: ExecUser | None, cwd: int, pid_fd: int) -> Started:
    argv = list(spec.args)
    _check_found(argv[0], spec)  # the same message as without a terminal
    if SETSID is None:
        raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, "PTY execs need setsid(1) on the router host")
    # setsid(1) makes the child a session leader with the pty as controlling terminal; it does so
    # in place (no fork) because the child is left in the router's process group (own_group=False).
    argv = [SETSID, "--ctty", *(argv if user is None else user.argv(argv))]
    pid, pidfd, _, _, _ = _fastio.spawn(
        os.fsencode(SETSID), [os.fsencode(a) for a in argv], _encoded_environment(spec.env),
        stdio.stdin, stdio.stdout, stdio.stderr, False, 0, cwd, False, pid_fd)
    return Started(pid, pidfd, stdio.stdin_writer, stdio.stdout_reader, stdio.stderr_reader)


def _posix_spawn(spec: ExecSpec, stdout: bool, stderr: bool, user: ExecUser | None, cwd: int,
                 pid_fd: int) -> Started:
    """Every descriptor of the router is close-on-exec (PEP 446), so only the child's stdio is
    inherited. _fastio.spawn rather than os.posix_spawn: it makes the pipes, spawns and opens a
    pidfd in one call, without the GIL."""
    argv = spec.args
    path = spec.env.get("PATH", os.defpath)
    if user is not None:
        _check_found(argv[0], spec)  # as without setpriv
        argv = user.argv(argv)  # setpriv then searches the exec's own PATH
    search = False
    if "/" in argv[0]:
        executable = argv[0]
    elif path == os.environ.get("PATH"):
        executable, search = argv[0], True  # the router's own PATH: posix_spawnp searches it
    else:
        executable = _check_found(argv[0], spec)  # posix_spawnp would search the router's PATH
    stderr_fd = _fastio.SPAWN_STDOUT if spec.stderr == "stdout" else _output(stderr)
    pid, pidfd, stdin_w, stdout_r, stderr_r = _fastio.spawn(
        os.fsencode(executable), [os.fsencode(a) for a in argv], _encoded_environment(spec.env),
        _fastio.SPAWN_PIPE, _output(stdout), stderr_fd, search, PIPE_SIZE, cwd, True, pid_fd)
    return Started(pid, pidfd, stdin_w, stdout_r, stderr_r)


# KEY=VALUE entries already encoded: execs mostly share the router's environment, and encoding its
# few dozen variables for every spawn held the GIL ~15 us of the spawner thread's ~30 (the loop
# thread waits for it). Bounded: cleared when full.
_ENCODED: dict[tuple[str, str], bytes] = {}
_ENCODED_MAX = 4096


def _encoded_environment(env: dict[str, str]) -> list[bytes]:
    if len(_ENCODED) > _ENCODED_MAX:
        _ENCODED.clear()
    out = []
    for item in env.items():
        entry = _ENCODED.get(item)
        if entry is None:
            entry = _ENCODED[item] = os.fsencode(item[0]) + b"=" + os.fsencode(item[1])
        out.append(entry)
    return out


def _output(logged: bool) -> int:
    return _fastio.SPAWN_PIPE if logged else _fastio.SPAWN_DEVNULL


def _check_found(command: str, spec: ExecSpec) -> str:
    """The program a command names, searched in the exec's own PATH; FileNotFoundError if none."""
    if "/" in command:
        return command
    found = shutil.which(command, path=spec.env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "command not found", command)
    return found


def failed_start(spec: ExecSpec, e: OSError) -> tuple[ExitStatus, bytes]:
    """Like a shell: a command that cannot start exits 127 (not found) or 126, saying why."""
    code = 127 if e.errno == errno.ENOENT else 126
    if spec.workdir is not None and e.filename == spec.workdir:
        reason = f"router: cannot enter workdir {spec.workdir}: {e.strerror}\n"
    else:
        what = "command not found" if code == 127 else e.strerror
        reason = f"router: {spec.args[0]}: {what}\n"
    return ExitStatus(code=code), reason.encode("utf-8", "replace")


def failed_start_output(spec: ExecSpec, logs: list[SegmentedLog], stdout: SegmentedLog | None,
                        stderr: SegmentedLog | None, e: OSError) -> ExitStatus:
    """Write why the start failed to the exec's stderr (or the stream it is merged into), end its
    logs, and return the status a shell would give."""
    status, reason = failed_start(spec, e)
    merged = spec.stderr == "stdout" or spec.pty is not None
    target = stderr if stderr is not None else (stdout if merged else None)
    if target is not None:
        target.append(reason)
    for log in logs:
        log.mark_eof()
    return status
