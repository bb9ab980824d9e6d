"""Starting a child with vfork semantics, and what a shell would say when it cannot start.

uvloop's own subprocess support does a full fork(), which slows to a crawl once the router holds
gigabytes; posix_spawn (through _fastio.spawn, which lets go of the GIL while the child execs) and
subprocess.Popen without preexec_fn both vfork (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import errno
import grp
import os
import pwd
import shutil
import subprocess
from typing import NamedTuple

import grpc

from . import _fastio
from .errors import RouterError
from .records import ExecSpec, ExitStatus
from .stdio import ChildStdio


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


def start_process(spec: ExecSpec, stdio: ChildStdio, user: ExecUser | None = None
                  ) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start the child in a process group (a terminal's: a session) of its own: os.posix_spawn, or
    Popen (no preexec_fn) when it needs a working directory or a terminal, which posix_spawn cannot
    set up here. As another user, through setpriv(1). Returns its pid, and the Popen that started
    it if one did."""
    if spec.pty is None and spec.workdir is None:
        return _posix_spawn(spec, stdio, user), None
    argv = list(spec.args)
    if spec.pty is not None:
        _check_found(argv[0], spec)  # the same message as without a terminal
        if SETSID is None:
            raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, "PTY execs need setsid(1) on the router host")
        # setsid(1) makes the child a session leader with the pty as controlling terminal;
        # subprocess cannot do that without preexec_fn, which would rule out vfork.
        argv = [SETSID, "--ctty", *(argv if user is None else user.argv(argv))]
    elif user is not None:
        argv = user.argv(argv)
    proc = subprocess.Popen(
        argv, stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr, env=spec.env, cwd=spec.workdir,
        process_group=None if spec.pty is not None else 0, close_fds=True,
    )
    return proc.pid, proc


def _posix_spawn(spec: ExecSpec, stdio: ChildStdio, user: ExecUser | None) -> int:
    """Every descriptor of the router is close-on-exec (PEP 446), so only these three are inherited.
    _fastio.spawn rather than os.posix_spawn: it lets go of the GIL while the child execs."""
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
    return _fastio.spawn(os.fsencode(executable), [os.fsencode(a) for a in argv],
                         [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in spec.env.items()],
                         stdio.stdin, stdio.stdout, stdio.stderr, search)  # DEVNULL, STDOUT: subprocess's values


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
