"""Where each spawner thread notes the exec it is spawning, and the child's pid the moment it exists.

The journal holds an exec's Begun before its spawn and its Spawned (with the pid) right after; but
"right after" waits for the GIL, and a `kill -9` of the router in between would leave a child that
a restart cannot find. So each spawner thread has a small file of its own (`STATE_DIR/spawning/`):
before a spawn it writes the exec's id there (and a zero pid), and _fastio.spawn writes the pid at
offset 0 before it even takes the GIL back. A restart reads them (`read`) for execs whose journal
has a Begun and no Spawned, and ends the child the file names (restore.py).

A file: native int pid, u32 payload length, then the payload: JSON [boot id, exec id].
"""
from __future__ import annotations

import os
import pathlib
import struct
import threading

import msgspec

HEADER = struct.Struct("=iI")


class Slot(msgspec.Struct, frozen=True):
    """What one file says: the exec being spawned, its child's pid (0: not yet), in which boot, and
    when the file was last written (the pid's write is the last: the child started before it)."""

    exec_id: str
    pid: int
    boot_id: str
    written_at: float


class SpawnSlots:
    """One file per spawner thread, opened on its first spawn; `close` closes them all."""

    def __init__(self, directory: pathlib.Path, boot_id: str) -> None:
        self.directory = directory
        self._boot_id = boot_id
        self._local = threading.local()
        self._lock = threading.Lock()
        self._fds: list[int] = []

    def claim(self, exec_id: str) -> int:
        """Note that this thread spawns `exec_id` now; the descriptor _fastio.spawn writes the pid to."""
        fd: int | None = getattr(self._local, "fd", None)
        if fd is None:
            with self._lock:
                self.directory.mkdir(mode=0o700, exist_ok=True)
                path = self.directory / f"slot-{len(self._fds)}"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._fds.append(fd)
            self._local.fd = fd
        payload = msgspec.json.encode([self._boot_id, exec_id])
        os.pwrite(fd, HEADER.pack(0, len(payload)) + payload, 0)
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()


def read(directory: pathlib.Path) -> dict[str, Slot]:
    """The slots a previous run left, by exec id (pid 0: the spawn had not returned). Unreadable
    ones are skipped: a torn write can only be of a spawn that had not started."""
    slots: dict[str, Slot] = {}
    for path in sorted(directory.glob("slot-*")):
        try:
            data = path.read_bytes()
            pid, length = HEADER.unpack_from(data)
            boot_id, exec_id = msgspec.json.decode(data[HEADER.size:HEADER.size + length], type=tuple[str, str])
            written_at = path.stat().st_mtime
        except (OSError, struct.error, msgspec.DecodeError, msgspec.ValidationError):
            continue
        slots[exec_id] = Slot(exec_id, pid, boot_id, written_at)
    return slots
