"""Real file systems for a test: a tmpfs of a given size, unmounted when the test ends."""
from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def tmpfs(mount: pathlib.Path, size: int) -> Iterator[pathlib.Path]:
    """A tmpfs of `size` bytes at `mount` (made if missing). Skips the test without root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
