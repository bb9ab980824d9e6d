"""The journal's file operations: whole reads and writes at an offset, copying a range between two
files, and making a rename durable. They release the GIL in their system calls, which is what lets a
compaction on its own thread leave the event loop room (journal.py)."""
from __future__ import annotations

import os
import pathlib
import time
from typing import Final

# A range is copied this much at a time.
COPY_CHUNK: Final = 1 << 20
# An unlinked file is freed this much at a time, with this pause between (see `release`).
RELEASE_CHUNK: Final = 4 << 20
RELEASE_PAUSE: Final = 0.002


def read_all(fd: int) -> bytes:
    parts: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    with memoryview(data) as view:
        done = 0
        while done < len(data):
            n = os.pwrite(fd, view[done:], offset + done)
            if n == 0:
                raise OSError(28, "no space left on device (wrote nothing)")
            done += n


def copy_range(src: int, start: int, end: int, dst: int, offset: int) -> int:
    """Copy bytes [start, end) of `src` to `dst` at `offset`; returns how many (end - start)."""
    pos = start
    while pos < end:
        chunk = os.pread(src, min(COPY_CHUNK, end - pos), pos)
        if not chunk:
            raise OSError(f"journal ends at {pos}, before {end}")
        pwrite_all(dst, chunk, offset + pos - start)
        pos += len(chunk)
    return end - start


def release(fd: int, size: int) -> None:
    """Close `fd`, the last descriptor of an unlinked file of `size` bytes, cutting the file down a
    chunk at a time first: freeing it all in the close is one system call of about 0.4 ms per MiB
    (10 ms for 25 MiB here) that takes a CPU the event loop's thread may be waiting for."""
    try:
        while size > RELEASE_CHUNK:
            size -= RELEASE_CHUNK
            os.ftruncate(fd, size)
            time.sleep(RELEASE_PAUSE)
    finally:
        os.close(fd)


def fsync_dir(directory: pathlib.Path) -> None:
    """Make a rename in `directory` durable; best effort (not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
