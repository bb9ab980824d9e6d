"""The image RPCs (TaskSnapshotDirectory, TaskMountDirectory, TaskUnmountDirectory) driven by Modal's own
client from a driver process (helpers/drivers/modal_images_driver.py), against a router in its own process; what they do
is checked on the filesystem here (the router is local)."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import select
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from router.images import mounts
from tests.helpers.drivers import MODAL_IMAGES_DRIVER
from tests.helpers.servers import TASK_ID, router_process, state_token

# Only look for it: importing Modal here would clash with router's protos in this process.
pytestmark = [pytest.mark.skipif(importlib.util.find_spec("modal") is None,
                                 reason="Modal's client is part of the test extra"),
              pytest.mark.timeout(60)]

KEY = (b"k" * 32).hex()
WRONG_KEY = (b"j" * 32).hex()
UNKNOWN_IMAGE = "im-" + "0" * 24
NOT_FOUND = "modal.exception.NotFoundError"
PERMISSION_DENIED = "modal.exception.PermissionDeniedError"
CONFLICT = "modal.exception.ConflictError"  # what Modal maps FAILED_PRECONDITION to


class Driver:
    """modal_images_driver.py in its own process: each call sends it one command and returns its answer."""

    def __init__(self, url: str, token: str, log: pathlib.Path) -> None:
        self._log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(MODAL_IMAGES_DRIVER), url, token, TASK_ID],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        self._buffer = b""

    def call(self, op: str, via: str, timeout: float = 30.0, **args: object) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, "via": via, **args}).encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                why = "driver exited" if ready else f"no answer in {timeout} s"
                raise AssertionError(f"{op} via {via}: {why}; driver's stderr:\n{self._log.read_text()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ok(self, op: str, via: str, **args: Any) -> dict[str, Any]:
        answer = self.call(op, via, **args)
        assert "error" not in answer, f"{op} via {via} {args}: {answer}"
        return answer

    def error(self, op: str, via: str, **args: Any) -> str:
        """The Modal exception class (module.Class) the call raised."""
        answer = self.call(op, via, **args)
        assert "error" in answer, f"{op} via {via} {args} succeeded: {answer}"
        return str(answer["error"])

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()  # the driver detaches its Sandbox and exits at end of input
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        assert self.proc.returncode == 0, self._log.read_text()


def mount_points_under(root: pathlib.Path) -> list[str]:
    """Mount points at or below root, oldest first (as /proc/self/mountinfo lists them)."""
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = line.split(b" ")[4].decode("unicode_escape")
            if point == str(root) or point.startswith(f"{root}/"):
                points.append(point)
    return points


def unmount_all_under(root: pathlib.Path) -> None:
    for point in reversed(mount_points_under(root)):
        if subprocess.run(["umount", point], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@contextlib.contextmanager
def session(tmp_path: pathlib.Path, *serve_args: str) -> Iterator[tuple[Driver, pathlib.Path]]:
    """A router in its own process (state in tmp_path/state), the Modal driver on it, and an empty work
    directory outside the router's state. Whatever is still mounted under tmp_path afterwards is
    unmounted here, pass or fail."""
    state, work = tmp_path / "state", tmp_path / "work"
    work.mkdir()
    try:
        with router_process(state, *serve_args) as (_, listen):
            token = state_token(state)
            driver = Driver(f"http://{listen}", token, tmp_path / "driver.log")
            try:
                yield driver, work
            finally:
                driver.close()
    finally:
        unmount_all_under(tmp_path)


def tree(root: pathlib.Path) -> dict[str, tuple[object, ...]]:
    """What a directory holds: relative path -> ("file", mode, bytes), ("dir", mode) or ("link", target)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = pathlib.Path(dirpath, name)
            rel = str(path.relative_to(root))
            mode = stat.S_IMODE(path.lstat().st_mode)
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", mode)
            else:
                out[rel] = ("file", mode, path.read_bytes())
    return out


def make_source(work: pathlib.Path) -> pathlib.Path:
    """A small tree to snapshot: files (one executable, one private, one binary), a subdirectory, a symlink."""
    src = work / "src"
    (src / "sub").mkdir(parents=True)
    (src / "hello.txt").write_bytes(b"hello from the image\n")
    (src / "run.sh").write_bytes(b"#!/bin/sh\necho run\n")
    (src / "run.sh").chmod(0o755)
    (src / "sub" / "data.bin").write_bytes(bytes(range(256)) * 64)
    (src / "sub" / "secret").write_bytes(b"shh")
    (src / "sub" / "secret").chmod(0o600)
    (src / "link").symlink_to("hello.txt")
    return src


def make_target(work: pathlib.Path) -> pathlib.Path:
    """A non-empty directory to mount over."""
    target = work / "target"
    (target / "old-dir").mkdir(parents=True)
    (target / "old.txt").write_bytes(b"old content\n")
    (target / "old-dir" / "x").write_bytes(b"x")
    return target


def overlay_or_skip(tmp_path: pathlib.Path, method: str) -> None:
    if method == "overlay" and not mounts.can_mount(tmp_path):
        pytest.skip("this process may not make overlay mounts")


# (server mode, mount method): the default, the copy fallback, and the other server mode.
MODES = [("aio", "overlay"), ("aio", "copy"), ("threads", "overlay")]


@pytest.mark.parametrize("via", ["client", "sandbox"])
@pytest.mark.parametrize(("server_mode", "method"), MODES)
def test_snapshot_mount_unmount(tmp_path: pathlib.Path, via: str, server_mode: str, method: str) -> None:
    overlay_or_skip(tmp_path, method)
    with session(tmp_path, "--server-mode", server_mode, "--mount-method", method) as (driver, work):
        src, target = make_source(work), make_target(work)
        image, old = tree(src), tree(target)
        names = sorted(os.listdir(work))
        mounted_here = [str(target)] if method == "overlay" else []

        snap = driver.ok("snapshot", via, path=str(src))
        image_id = snap["image_id"]
        assert image_id.startswith("im-")
        assert snap["type"] == ("Image" if via == "sandbox" else "TaskSnapshotDirectoryResponse")

        driver.ok("mount", via, path=str(target), image_id=image_id)
        assert tree(target) == image  # the old content is hidden, the image's is there byte for byte
        assert mount_points_under(work) == mounted_here
        driver.ok("mount", via, path=str(target), image_id=image_id)  # the same image again: a no-op
        assert tree(target) == image
        assert mount_points_under(work) == mounted_here

        (target / "scratch").write_bytes(b"written into the mount")
        driver.ok("unmount", via, path=str(target))
        assert tree(target) == old
        assert mount_points_under(work) == []
        assert sorted(os.listdir(work)) == names

        # What was written into the mount did not change the image.
        driver.ok("mount", via, path=str(target), image_id=image_id)
        assert tree(target) == image
        driver.ok("unmount", via, path=str(target))
        assert tree(target) == old

        driver.ok("mount", via, path=str(target), image_id="")  # sandbox: modal.Image.from_scratch()
        assert os.listdir(target) == []
        assert mount_points_under(work) == mounted_here
        driver.ok("unmount", via, path=str(target))
        assert tree(target) == old
        assert mount_points_under(work) == []
        assert sorted(os.listdir(work)) == names
        assert tree(src) == image  # the source was only read


def test_snapshot_retried_with_the_same_snapshot_id_answers_the_same_image(tmp_path: pathlib.Path) -> None:
    with session(tmp_path) as (driver, work):
        src, target = make_source(work), work / "target"
        first = driver.ok("snapshot", "client", path=str(src), snapshot_id="snap-1")["image_id"]
        original = tree(src)
        (src / "hello.txt").write_bytes(b"changed after the first call\n")
        # The client sending the same request again (a retry) gets the image the first call made.
        assert driver.ok("snapshot", "client", path=str(src), snapshot_id="snap-1")["image_id"] == first
        second = driver.ok("snapshot", "client", path=str(src), snapshot_id="snap-2")["image_id"]
        assert second.startswith("im-") and second != first
        # Modal's Sandbox path makes a new snapshot_id each call: a new image each time (ttl=None is
        # Modal's "never expires", sent as -1).
        a = driver.ok("snapshot", "sandbox", path=str(src), ttl=None)["image_id"]
        b = driver.ok("snapshot", "sandbox", path=str(src), ttl=3600)["image_id"]
        assert len({a, b, first, second}) == 4

        driver.ok("mount", "client", path=str(target), image_id=first)
        assert tree(target) == original
        driver.ok("unmount", "client", path=str(target))
        driver.ok("mount", "client", path=str(target), image_id=second)
        assert tree(target) == tree(src)
        driver.ok("unmount", "client", path=str(target))
        assert mount_points_under(work) == []


@pytest.mark.parametrize("method", ["overlay", "copy"])
def test_snapshot_of_a_mounted_image_keeps_what_was_changed_in_it(tmp_path: pathlib.Path, method: str) -> None:
    overlay_or_skip(tmp_path, method)
    with session(tmp_path, "--mount-method", method) as (driver, work):
        src, target, other = make_source(work), make_target(work), work / "other"
        old = tree(target)
        first = driver.ok("snapshot", "sandbox", path=str(src))["image_id"]
        driver.ok("mount", "sandbox", path=str(target), image_id=first)
        (target / "new.txt").write_bytes(b"new")
        (target / "hello.txt").write_bytes(b"edited")
        (target / "sub" / "secret").unlink()
        (target / "run.sh").chmod(0o700)
        changed = tree(target)
        second = driver.ok("snapshot", "sandbox", path=str(target))["image_id"]
        driver.ok("mount", "sandbox", path=str(other), image_id=second)
        assert tree(other) == changed
        driver.ok("unmount", "sandbox", path=str(other))
        driver.ok("unmount", "sandbox", path=str(target))
        assert mount_points_under(work) == []
        assert tree(target) == old


@pytest.mark.parametrize("method", ["overlay", "copy"])
def test_encrypted_snapshot_mounts_only_with_its_key(tmp_path: pathlib.Path, method: str) -> None:
    overlay_or_skip(tmp_path, method)
    with session(tmp_path, "--mount-method", method) as (driver, work):
        src, target = make_source(work), make_target(work)
        image, old = tree(src), tree(target)
        image_id = driver.ok("snapshot", "sandbox", path=str(src), key=KEY)["image_id"]
        assert image_id.startswith("im-")

        assert driver.error("mount", "sandbox", path=str(target), image_id=image_id) == PERMISSION_DENIED
        assert driver.error("mount", "sandbox", path=str(target), image_id=image_id, key=WRONG_KEY) == PERMISSION_DENIED
        assert driver.error("mount", "client", path=str(target), image_id=image_id, key=WRONG_KEY) == PERMISSION_DENIED
        assert tree(target) == old  # the refused mounts left nothing behind
        assert mount_points_under(work) == []

        driver.ok("mount", "sandbox", path=str(target), image_id=image_id, key=KEY)
        assert tree(target) == image
        driver.ok("unmount", "sandbox", path=str(target))
        assert tree(target) == old
        assert mount_points_under(work) == []


@pytest.mark.parametrize("via", ["client", "sandbox"])
def test_errors_map_to_modal_exceptions(tmp_path: pathlib.Path, via: str) -> None:
    with session(tmp_path) as (driver, work):
        src, target = make_source(work), make_target(work)
        old = tree(target)
        assert driver.error("snapshot", via, path=str(work / "missing")) == NOT_FOUND
        assert driver.error("snapshot", via, path=str(src / "hello.txt")) == CONFLICT  # FAILED_PRECONDITION
        assert driver.error("mount", via, path=str(target), image_id=UNKNOWN_IMAGE) == NOT_FOUND
        assert tree(target) == old
        assert mount_points_under(work) == []
