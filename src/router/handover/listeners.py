"""This process's listening TCP sockets on a port, found by their descriptors: grpcio cannot adopt
a listening socket, so during a handover both processes listen on the port with SO_REUSEPORT (the
kernel lets only the same user's sockets share it) and the old one then closes its own."""
from __future__ import annotations

import contextlib
import os
import socket


def _listening(port: int) -> list[socket.socket]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM \
                    and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and s.getsockname()[1] == port:
                found.append(s)
                continue
        except OSError:
            pass
        s.close()
    return found


def reuse_port(port: int, on: bool) -> int:
    """Set (or clear) SO_REUSEPORT on every socket of this process listening on `port`; how many."""
    sockets = _listening(port)
    for s in sockets:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(on))
        s.close()  # a duplicate: the listener itself stays open
    return len(sockets)
