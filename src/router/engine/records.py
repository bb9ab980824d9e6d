"""What an exec is, as data: the validated request and its exit status.

These are the exec's records, msgspec structs so that they can be journaled as they are; nothing
here holds a descriptor, a process or a lock.
"""
from __future__ import annotations

import enum
import functools
from typing import Literal

import msgspec

StdoutMode = Literal["devnull", "pipe"]
StderrMode = Literal["devnull", "pipe", "stdout"]
StreamName = Literal["stdout", "stderr"]


class PtySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rows: int
    cols: int


class ExecSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A validated request to run a command; `env` is the child's whole environment."""

    args: list[str]
    env: dict[str, str]
    workdir: str | None = None
    stdout: StdoutMode = "pipe"
    stderr: StderrMode = "pipe"
    timeout_secs: int | None = None
    pty: PtySpec | None = None

    def logged_streams(self) -> tuple[bool, bool]:
        """Whether stdout and stderr each get a log: a terminal's output is always drained (or the
        child would block) into stdout, and has no stderr of its own; merged stderr goes to stdout."""
        return self.stdout == "pipe" or self.pty is not None, self.stderr == "pipe" and self.pty is None


class ExitCause(enum.Enum):
    """Why an exec ended, as the router saw it. The values are the names logs and metrics use."""

    EXITED = "exited"  # the leader exited by itself (status.code)
    SIGNALLED = "signalled"  # a signal ended the leader (status.signal)
    TIMED_OUT = "timed_out"  # the router killed it at its timeout_secs
    KILLED = "killed"  # ended by a Kill or Signal someone asked for
    LOST = "lost"  # its router died while it ran; status unknown
    SHUTDOWN = "shutdown"  # the router stopped while it ran
    OOM = "oom"  # the kernel's OOM killer ended the leader (oom.py)
    FAILED_TO_START = "failed_to_start"  # 127/126: not found, not executable, bad workdir

    @classmethod
    def _missing_(cls, value: object) -> ExitCause | None:
        # Journals written before the values were names spelled three of them with spaces.
        return _SPELLED_WITH_SPACES.get(value) if isinstance(value, str) else None


_SPELLED_WITH_SPACES = {"timed out": ExitCause.TIMED_OUT, "failed to start": ExitCause.FAILED_TO_START,
                        "out of memory": ExitCause.OOM}


class ExitStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """How the leader ended: `code` if it exited, `signal` if a signal ended it."""

    code: int | None = None
    signal: int | None = None


@functools.cache
def exit_status(exited: bool, value: int) -> ExitStatus:
    """The status of a leader that exited with code `value` (`exited`) or was ended by signal
    `value`: one shared object per status, since thousands of retained execs hold a few."""
    return ExitStatus(code=value) if exited else ExitStatus(signal=value)


class Usage(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """What the leader (and the children it reaped) cost, from its rusage."""

    user_cpu_secs: float
    system_cpu_secs: float
    max_rss_bytes: int
