"""Starting a child with vfork semantics, and what a shell would say when it cannot start.

uvloop's own subprocess support does a full fork(), which slows to a crawl once the router holds
gigabytes; os.posix_spawn, and subprocess.Popen without preexec_fn, both vfork (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess

import grpc

from .errors import RouterError
from .records import ExecSpec, ExitStatus
from .stdio import ChildStdio

# Python ignores these; a child must start with the defaults, as Popen(restore_signals=True) does.
_RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
SETSID = shutil.which("setsid")


def start_process(spec: ExecSpec, stdio: ChildStdio) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start the child in a process group (a terminal's: a session) of its own: os.posix_spawn, or
    Popen (no preexec_fn) when it needs a working directory or a terminal, which posix_spawn cannot
    set up here. Returns its pid, and the Popen that started it if one did."""
    if spec.pty is None and spec.workdir is None:
        return _posix_spawn(spec, stdio), None
    argv = list(spec.args)
    if spec.pty is not None:
        # Checked here so that a missing command gets the same message as without a terminal.
        if "/" not in argv[0] and shutil.which(argv[0], path=spec.env.get("PATH", os.defpath)) is None:
            raise FileNotFoundError(errno.ENOENT, "command not found", argv[0])
        if SETSID is None:
            raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, "PTY execs need setsid(1) on the router host")
        # setsid(1) makes the child a session leader with the pty as controlling terminal;
        # subprocess cannot do that without preexec_fn, which would rule out vfork.
        argv = [SETSID, "--ctty", *argv]
    proc = subprocess.Popen(
        argv, stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr, env=spec.env, cwd=spec.workdir,
        process_group=None if spec.pty is not None else 0, close_fds=True,
    )
    return proc.pid, proc


def _posix_spawn(spec: ExecSpec, stdio: ChildStdio) -> int:
    """Every descriptor of the router is close-on-exec (PEP 446), so only these three are inherited."""
    actions: list[tuple[int, int, int] | tuple[int, int, str, int, int]] = [(os.POSIX_SPAWN_DUP2, stdio.stdin, 0)]
    for fd, target in ((stdio.stdout, 1), (stdio.stderr, 2)):
        if fd == subprocess.DEVNULL:
            actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, os.O_WRONLY, 0))
        elif fd == subprocess.STDOUT:
            actions.append((os.POSIX_SPAWN_DUP2, 1, target))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
    argv = spec.args
    path = spec.env.get("PATH", os.defpath)
    if "/" in argv[0]:
        executable = argv[0]
    elif path == os.environ.get("PATH"):
        return os.posix_spawnp(argv[0], argv, spec.env, file_actions=actions, setpgroup=0,
                               setsigdef=_RESTORED_SIGNALS, setsigmask=())
    else:
        # posix_spawnp searches the router's PATH; the exec's own PATH decides.
        found = shutil.which(argv[0], path=path)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "command not found", argv[0])
        executable = found
    return os.posix_spawn(executable, argv, spec.env, file_actions=actions, setpgroup=0,
                          setsigdef=_RESTORED_SIGNALS, setsigmask=())


def failed_start(spec: ExecSpec, e: OSError) -> tuple[ExitStatus, bytes]:
    """Like a shell: a command that cannot start exits 127 (not found) or 126, saying why."""
    code = 127 if e.errno == errno.ENOENT else 126
    if spec.workdir is not None and e.filename == spec.workdir:
        reason = f"router: cannot enter workdir {spec.workdir}: {e.strerror}\n"
    else:
        what = "command not found" if code == 127 else e.strerror
        reason = f"router: {spec.args[0]}: {what}\n"
    return ExitStatus(code=code), reason.encode("utf-8", "replace")
