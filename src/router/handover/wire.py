"""Messages between the keeper and serving processes: one msgpack message per SOCK_SEQPACKET
datagram, descriptors beside it (SCM_RIGHTS). A datagram keeps its bounds and its descriptors, so
neither side ever splits or joins them."""
from __future__ import annotations

import array
import os
import socket
from typing import Any

import msgspec

# Every message is small (bulk bytes go in chunks of at most this much).
MAX_MESSAGE = 256 << 10
CHUNK = 64 << 10
# Linux's limit for one SCM_RIGHTS message (SCM_MAX_FD).
MAX_FDS = 253

_encoder = msgspec.msgpack.Encoder()


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MAX_MESSAGE)
    return a, b


def send(sock: socket.socket, message: Any, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message (a msgspec Struct) and the descriptors beside it (duplicated into the receiver)."""
    data = _encoder.encode(message)
    if len(data) > MAX_MESSAGE or len(fds) > MAX_FDS:
        raise ValueError(f"message of {len(data)} bytes and {len(fds)} descriptors is too large")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def recv(sock: socket.socket, decoder: msgspec.msgpack.Decoder[Any]) -> tuple[Any, list[int]]:
    """The next message and its descriptors (the caller owns them); EOFError once the peer is gone.
    A message that does not decode raises msgspec.ValidationError/DecodeError, its descriptors closed."""
    fds = array.array("i")
    # Close-on-exec at once: execs spawned later must not inherit another exec's pipes.
    data, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize),
                                           socket.MSG_CMSG_CLOEXEC)
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    received = list(fds)
    if not data and not received:
        raise EOFError("the peer closed the connection")
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise msgspec.DecodeError("message truncated")
        return decoder.decode(data), received
    except BaseException:
        close_all(received)
        raise


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
