"""This process's children, whether a process is still alive, and the `router` command run as a user runs it."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Any

ROUTER = [sys.executable, "-m", "router.cli"]


def run_router(*args: str, input: bytes | None = None, timeout: float = 60,
               env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
               ) -> subprocess.CompletedProcess[bytes]:
    """`router ARGS...` in its own process (in `cwd`, if given), to its end; output captured."""
    return subprocess.run([*ROUTER, *args], input=input, capture_output=True, timeout=timeout, env=env, cwd=cwd)


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The single line a failure prints on stderr (and no traceback)."""
    assert b"Traceback" not in result.stderr, result.stderr
    assert result.stderr.count(b"\n") == 1 and result.stderr.endswith(b"\n"), result.stderr
    return result.stderr.decode()


def children() -> list[int]:
    """Live and zombie children of this process (any thread's)."""
    pids: list[int] = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{os.getpid()}/task/{task}/children") as f:
            pids.extend(int(p) for p in f.read().split())
    return pids


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or going: a read as it is reaped says ESRCH
        return False


def terminate(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGTERM (if it still runs), then SIGKILL if it has not ended within `timeout`; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
