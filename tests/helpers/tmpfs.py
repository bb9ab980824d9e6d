"""A real tmpfs of a few MiB, for tests of a full filesystem (mounting one needs root)."""
from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def tmpfs(mount: pathlib.Path, size: int) -> Iterator[pathlib.Path]:
    """`mount` (made if missing) with a tmpfs of `size` bytes on it, unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(directory: pathlib.Path) -> pathlib.Path:
    """A file in `directory` written until its filesystem has no room left; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = 1 << 20
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError:
                chunk //= 2  # down to the last byte that fits
    finally:
        os.close(fd)
    return filler
