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

import logging
import os
import pathlib
import struct
import threading

import msgspec

HEADER = struct.Struct("=iI")
# Each file's size, allocated when it is made: more than any exec id takes.
SLOT_BYTES = 4096

logger = logging.getLogger(__name__)


class Slot(msgspec.Struct, frozen=True):
    """What one file says: the exec being spawned, its child's pid (0: not yet), in which boot, and
    when the file was last written (the pid's write is the last: the child started before it)."""

    exec_id: str
    pid: int
    boot_id: str
    written_at: float


class SpawnSlots:
    """`count` files, one for each spawner thread (taken on its first spawn), made with their blocks
    allocated, so that noting a spawn never needs space: a full state filesystem must not stop a
    start that the journal's reserve admits. `close` closes them all."""

    def __init__(self, directory: pathlib.Path, boot_id: str, count: int) -> None:
        self.directory = directory
        self._boot_id = boot_id
        self._local = threading.local()
        self._lock = threading.Lock()
        self._fds: list[int] = []
        self._taken = 0
        directory.mkdir(mode=0o700, exist_ok=True)
        for i in range(count):
            fd = os.open(directory / f"slot-{i}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._fds.append(fd)
            try:
                if os.fstat(fd).st_size < SLOT_BYTES:  # else made already: its time says when it was last noted
                    os.posix_fallocate(fd, 0, SLOT_BYTES)
            except OSError as e:  # no room even for this: its spawns go unnoted (restore.py)
                logger.warning("cannot allocate the spawner slot %s: %s", directory / f"slot-{i}", e)

    def claim(self, exec_id: str) -> int:
        """Note that this thread spawns `exec_id` now; the descriptor _fastio.spawn writes the pid
        to, or -1 if it could not be noted."""
        fd: int | None = getattr(self._local, "fd", None)
        if fd is None:
            with self._lock:
                fd = self._fds[self._taken] if self._taken < len(self._fds) else -1
                self._taken += 1
            self._local.fd = fd
        payload = msgspec.json.encode([self._boot_id, exec_id])
        if fd < 0 or len(payload) > SLOT_BYTES - HEADER.size:
            return -1
        try:
            os.pwrite(fd, HEADER.pack(0, len(payload)) + payload, 0)
        except OSError:
            return -1
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
