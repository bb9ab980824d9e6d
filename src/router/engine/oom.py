"""Which processes the kernel's OOM killer ended, from the kernel log (/dev/kmsg).

An exec whose leader died of SIGKILL that the router did not send may have been killed for memory;
the kernel logs each such kill ("Killed process PID (comm) ..." and "oom-kill:...,pid=PID,...")
before the signal is delivered, so by the time the router reaps the leader the record is there.
Reading /dev/kmsg needs root or CAP_SYSLOG (and kernel.dmesg_restrict permitting); without it,
such an exit stays "signalled". Only kills logged after the router started are seen, and only
the leader's own death counts: a descendant killed for memory ends the leader some other way.
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import re

logger = logging.getLogger(__name__)

_KILLED = re.compile(rb"(?:Killed process |oom-kill:.*?,pid=)(\d+)")
_REMEMBERED = 4096  # pids, newest kept: a leader is reaped moments after its kill is logged


class OomKills:
    """Loop-thread only. `killed(pid)` reads what the kernel logged since the last call."""

    def __init__(self, path: str = "/dev/kmsg") -> None:
        self._pids: collections.OrderedDict[int, None] = collections.OrderedDict()
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)  # kills from now on
        except OSError as e:
            logger.info("cannot read the kernel log (%s): an exec killed for memory will show as signalled", e.strerror)
            self._fd = -1

    @property
    def available(self) -> bool:
        return self._fd >= 0

    def killed(self, pid: int) -> bool:
        self._read()
        return pid in self._pids

    def _read(self) -> None:
        while self._fd >= 0:
            try:
                record = os.read(self._fd, 8192)  # one record per read
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EPIPE:
                    continue  # records were overwritten before we read them; go on with the next
                logger.warning("reading the kernel log failed: %s", e.strerror)
                self.close()
                return
            if not record:
                return
            match = _KILLED.search(record)
            if match:
                self._pids[int(match.group(1))] = None
                while len(self._pids) > _REMEMBERED:
                    self._pids.popitem(last=False)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
