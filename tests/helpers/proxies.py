"""A loopback TCP proxy whose live connections a test can cut, as a flaky network would."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class CuttableProxy:
    """A loopback TCP proxy whose live connections the test can cut, as a flaky network would."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []  # live: cut() shuts these down
        self._all: list[socket.socket] = []  # every socket, closed by close()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: socket.socket) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self._upstream))
            with self._lock:
                self._conns += [down, up]
                self._all += [down, up]
                self.accepted += 1
            self._spawn(self._pump, down, up)
            self._spawn(self._pump, up, down)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.cut()
        for t in list(self._threads):
            t.join(5)
        with self._lock:
            for s in self._all:
                s.close()
