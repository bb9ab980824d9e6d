"""Images: snapshots into the content-addressed store, mounts (overlay and copy), keys, expiry, gc.

Real trees on disk, real mounts (the machines run as root), real gRPC calls for the status codes.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router._proto import task_command_router_pb2 as pb
from router.errors import RouterError
from router.images import manifest as manifests
from router.images import mounts
from router.images.args import MountArgs, SnapshotArgs
from router.images.manifest import Entry, Kind, Manifest, ManifestError
from router.images.materialize import copy_tree
from router.images.store import Images, MountMethod
from tests.helpers.execs import PIPES
from tests.helpers.servers import TASK_ID, serving


def _overlay_possible() -> bool:
    with tempfile.TemporaryDirectory() as d:
        return mounts.can_mount(pathlib.Path(d))


# These machines run as root, where overlay mounts work; elsewhere the copy method is still tested.
OVERLAY = pytest.mark.skipif(not _overlay_possible(), reason="no privilege to make overlay mounts here")
METHODS = [pytest.param("overlay", marks=OVERLAY), "copy"]
ODD = b"odd name \n\xff\xfe"  # a space, a newline, bytes that are not UTF-8


def _images(tmp_path: pathlib.Path, method: MountMethod) -> Images:
    return Images(tmp_path / "state", method)


def snap(images: Images, path: pathlib.Path | bytes, snapshot_id: str = "", ttl: int | None = None,
         key: bytes | None = None) -> str:
    return images.snapshot(SnapshotArgs(bytes(path), snapshot_id, ttl, key))


def mount(images: Images, path: pathlib.Path | bytes, image_id: str, key: bytes | None = None) -> None:
    images.mount(MountArgs(bytes(path), image_id, key))


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except RouterError as e:
        return e.code
    return grpc.StatusCode.OK


def snapshot_bytes_read(records: list[logging.LogRecord]) -> list[int]:
    """What each snapshot read, in bytes: the fourth argument of the store's "snapshot ..." log lines."""
    out = []
    for r in records:
        if r.getMessage().startswith("snapshot "):
            assert isinstance(r.args, tuple) and isinstance(r.args[3], int), r.args
            out.append(r.args[3])
    return out


def make_tree(root: pathlib.Path) -> None:
    """Every entry type the store records, odd names, modes, owners, mtimes, xattrs, and a socket."""
    b = bytes(root)
    os.mkdir(b)
    os.mkdir(b + b"/sub")
    os.mkdir(b + b"/sub/empty-dir")
    os.mkdir(b + b"/sticky", 0o1777)
    os.chmod(b + b"/sticky", 0o1777)
    for name, data in ((b"/a.txt", b"hello\n"), (b"/sub/" + ODD, b"odd\n" * 1000), (b"/empty", b""),
                       (b"/sub/big.bin", hashlib.sha256(b"x").digest() * 70_000), (b"/copy-of-a", b"hello\n")):
        with open(b + name, "wb") as f:
            f.write(data)
    os.link(b + b"/a.txt", b + b"/sub/hard-a")
    os.symlink(b"../a.txt", b + b"/sub/rel-link")
    os.symlink(b"/etc/passwd", b + b"/abs-link")
    os.symlink(b"nowhere/at/all", b + b"/dangling")
    os.mkfifo(b + b"/fifo", 0o640)
    os.mknod(b + b"/null-dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(b + b"/sub/big.bin", 0o4755)
    os.chmod(b + b"/empty", 0o000)
    os.chown(b + b"/copy-of-a", 1234, 5678)
    os.setxattr(b + b"/a.txt", "user.color", b"blue")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fsdecode(b + b"/sock"))  # skipped by rule
    for i, path in enumerate((b"/a.txt", b"/sub/" + ODD, b"/abs-link", b"/sub/empty-dir", b"/sub", b"")):
        os.utime(b + path, ns=(10**9, 1_234_567_890_123_456_789 + i), follow_symlinks=False)


def describe(root: pathlib.Path) -> dict[bytes, tuple]:
    """Everything a round trip must keep, per relative path; hard links by the first name seen."""
    out: dict[bytes, tuple] = {}
    inodes: dict[int, bytes] = {}
    base = bytes(root)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(dirnames + filenames) + ([b"."] if dirpath == base else []):
            full = dirpath if name == b"." else os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st_ = os.lstat(full)
            kind = stat.S_IFMT(st_.st_mode)
            link = inodes.setdefault(st_.st_ino, rel) if stat.S_ISREG(st_.st_mode) and st_.st_nlink > 1 else None
            data = b""
            if stat.S_ISREG(st_.st_mode):
                with open(full, "rb") as f:
                    data = hashlib.sha256(f.read()).digest()
            target = os.readlink(full) if stat.S_ISLNK(st_.st_mode) else b""
            xattrs = {} if stat.S_ISLNK(st_.st_mode) else {n: os.getxattr(full, n) for n in os.listxattr(full)
                                                           if n.startswith("user.")}
            mode = stat.S_IMODE(st_.st_mode) if not stat.S_ISLNK(st_.st_mode) else 0
            # A directory's mtime changes when the walk's own reads do not; the root's as mounts set it.
            out[rel] = (kind, mode, st_.st_uid, st_.st_gid, st_.st_size if not stat.S_ISDIR(st_.st_mode) else 0,
                        st_.st_mtime_ns, data, target, st_.st_rdev, xattrs, link)
    # A link counts only between names of this tree (an overlay copy-up can leave one name of a pair).
    shared = {v[-1] for p, v in out.items() if v[-1] is not None and v[-1] != p}
    return {p: v[:-1] + ((v[-1] if v[-1] in shared else None),) for p, v in out.items()}


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "tree"
    make_tree(root)
    return root


@contextlib.contextmanager
def unmounting(images: Images, *paths: pathlib.Path) -> Iterator[None]:
    """Undo every mount at these paths, newest first, however the test ends."""
    try:
        yield
    finally:
        for path in paths:
            while True:
                try:
                    images.unmount(bytes(path))
                except RouterError:
                    break


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_keeps_every_entry(tmp_path: pathlib.Path, tree: pathlib.Path, method: MountMethod) -> None:
    images = _images(tmp_path, method)
    image = snap(images, tree)
    assert image.startswith("im-")
    target = tmp_path / "mnt"
    with unmounting(images, target):
        mount(images, target, image)
        expected = describe(tree)
        del expected[b"sock"]  # sockets are skipped
        got = describe(target)
        assert got.keys() == expected.keys()
        for path in expected:
            assert got[path] == expected[path], path
    assert os.listdir(target) == []  # the mount created it; unmounting leaves it empty


def test_manifest_records_each_kind_and_skips_sockets(tmp_path: pathlib.Path, tree: pathlib.Path) -> None:
    images = _images(tmp_path, "copy")
    record = images.record(snap(images, tree))
    entries = {e.path: e for e in images.manifest(record, None).entries}
    assert b"sock" not in entries
    assert {entries[p].kind for p in (b"", b"sub", b"a.txt", b"sub/hard-a", b"abs-link", b"fifo", b"null-dev")} == \
        {"dir", "file", "hardlink", "symlink", "fifo", "char"}
    assert entries[b"sub/hard-a"].target == b"a.txt" and entries[b"abs-link"].target == b"/etc/passwd"
    assert entries[b"sub/" + ODD].mtime_ns == 1_234_567_890_123_456_790
    assert entries[b"a.txt"].xattrs == {"user.color": b"blue"}
    assert entries[b"a.txt"].blob == entries[b"copy-of-a"].blob  # one content, stored once


# -- the store ----------------------------------------------------------------------------------


def _allocated(root: pathlib.Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, _, fs in os.walk(root) for f in fs)


@OVERLAY
def test_two_snapshots_of_one_tree_store_its_content_once(tmp_path: pathlib.Path, tree: pathlib.Path) -> None:
    images = _images(tmp_path, "overlay")
    snap(images, tree)
    first = images.backend.stored_bytes()
    snap(images, tree)
    second = images.backend.stored_bytes()
    assert first >= 0.9 * _allocated(tree)
    assert second - first < 0.05 * _allocated(tree), (first, second)


def _metadata_files(images: Images) -> list[str]:
    trees = [str(t) for t in (images.root / "trees").iterdir() if t.is_dir()]
    return [os.path.join(d, f) for t in trees for d, _, fs in os.walk(t) for f in fs
            if stat.S_ISREG(os.lstat(os.path.join(d, f)).st_mode)]


@OVERLAY
def test_metadata_tree_redirects_fit_in_the_inode(tmp_path: pathlib.Path, tree: pathlib.Path) -> None:
    """Each redirect names a short second link of its blob (at most 24 bytes, which ext4 keeps in a
    256-byte inode beside metacopy; a 68-byte one costs a 4 KiB block per file)."""
    images = _images(tmp_path, "overlay")
    snap(images, tree)
    blobs = images.root / "store" / "blobs"
    files = _metadata_files(images)
    assert len(files) >= 5
    for f in files:
        redirect = os.getxattr(f, "trusted.overlay.redirect")
        assert len(redirect) <= 24, redirect
        short = os.lstat(bytes(blobs) + redirect)
        full = [n for n in os.listdir(blobs / os.fsdecode(redirect[1:3]))
                if len(n) == 64 and n[2:22] == os.fsdecode(redirect[4:])]
        assert len(full) == 1 and os.path.samestat(short, os.lstat(blobs / full[0][:2] / full[0]))
        if len(os.listxattr(f)) == 2:  # only the overlay's own (a.txt carries user.color too)
            assert os.lstat(f).st_blocks == 0, f  # sparse, and no xattr block (ext4's 256-byte inodes, tmpfs)


@OVERLAY
def test_a_short_name_taken_by_other_content_falls_back_to_the_full_name(tmp_path: pathlib.Path,
                                                                          tree: pathlib.Path) -> None:
    images = _images(tmp_path, "overlay")
    blob = hashlib.sha256((tree / "a.txt").read_bytes()).hexdigest()
    squatter = images.root / "store" / "blobs" / blob[:2] / blob[2:22]
    squatter.parent.mkdir(parents=True, exist_ok=True)
    squatter.write_bytes(b"another blob whose hash starts the same")
    image = snap(images, tree)
    target = tmp_path / "m"
    with unmounting(images, target):
        mount(images, target, image)
        assert (target / "a.txt").read_bytes() == (tree / "a.txt").read_bytes()
    images.remove(image)
    images.gc()
    assert squatter.exists()  # not the image's to delete
    squatter.unlink()
    # The short names went with their blobs.
    assert [f for _, _, fs in os.walk(images.root / "store" / "blobs") for f in fs] == []


def test_a_manifest_that_inflates_past_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    data = manifests.encode(Manifest([_entry(b"", "dir")] + [_entry(b"f%d" % i) for i in range(200)]))
    assert len(manifests.decode(data).entries) == 201
    monkeypatch.setattr(manifests, "MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(ManifestError, match="larger than"):
        manifests.decode(data)


def test_a_second_snapshot_reads_nothing_unchanged(tmp_path: pathlib.Path, tree: pathlib.Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    images = _images(tmp_path, "copy")
    caplog.set_level(logging.INFO, "router.images.store")
    snap(images, tree)
    (tree / "a.txt").write_bytes(b"changed\n")
    snap(images, tree)
    read = snapshot_bytes_read(caplog.records)
    assert read[0] > 2_000_000 and read[1] == len(b"changed\n"), read


def test_snapshot_id_makes_a_retry_return_the_same_image(tmp_path: pathlib.Path, tree: pathlib.Path) -> None:
    images = _images(tmp_path, "copy")
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(snap(images, tree, "key-1"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (tree / "new").write_bytes(b"later")
    results.append(snap(images, tree, "key-1"))
    assert len(set(results)) == 1 and len(images.records()) == 1
    assert snap(images, tree, "key-2") != results[0]
    # The key survives a restart of the store.
    assert snap(_images(tmp_path, "copy"), tree, "key-1") == results[0]


@pytest.mark.parametrize("method", METHODS)
def test_snapshot_of_a_mounted_image_stores_only_what_changed(tmp_path: pathlib.Path, tree: pathlib.Path,
                                                              method: MountMethod,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    images = _images(tmp_path, method)
    caplog.set_level(logging.INFO, "router.images.store")
    base = snap(images, tree)
    target = tmp_path / "mnt"
    with unmounting(images, target):
        mount(images, target, base)
        (target / "added").write_bytes(b"new file\n")
        (target / "a.txt").write_bytes(b"rewritten\n")
        os.chmod(target / "sub" / "big.bin", 0o600)  # metadata only: its data stays the image's
        os.unlink(target / "copy-of-a")
        before = images.backend.stored_bytes()
        changed = snap(images, target)
        added = images.backend.stored_bytes() - before
        expected = describe(target)
    assert added < 100_000, added  # the 2.2 MB file was not stored again
    if method == "overlay":
        read = snapshot_bytes_read(caplog.records)
        assert read[-1] == len(b"new file\n") + len(b"rewritten\n"), read
    with unmounting(images, target):
        mount(images, target, changed)
        got = describe(target)
    assert got.keys() == expected.keys() and b"copy-of-a" not in got
    for path in expected:
        if path != b".":  # the root's mtime moved when the files changed under the first mount
            assert got[path] == expected[path], path


# -- mounts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_mount_hides_what_was_there_and_unmount_shows_it_again(tmp_path: pathlib.Path, tree: pathlib.Path,
                                                               method: MountMethod) -> None:
    images = _images(tmp_path, method)
    image = snap(images, tree)
    target = tmp_path / "busy"
    target.mkdir()
    (target / "mine").write_bytes(b"keep me")
    with unmounting(images, target):
        mount(images, target, image)
        mount(images, target, image)  # a retry: OK, nothing stacked
        assert not (target / "mine").exists() and (target / "a.txt").read_bytes() == b"hello\n"
        mount(images, target, "")  # an empty image over it: stacks
        assert os.listdir(target) == []
        images.unmount(bytes(target))
        assert (target / "a.txt").exists()
        images.unmount(bytes(target))
        assert sorted(os.listdir(target)) == ["mine"] and (target / "mine").read_bytes() == b"keep me"
        assert code_of(lambda: images.unmount(bytes(target))) == grpc.StatusCode.NOT_FOUND


@OVERLAY
def test_mounts_outlive_a_restart_of_the_store(tmp_path: pathlib.Path, tree: pathlib.Path) -> None:
    images = _images(tmp_path, "overlay")
    image = snap(images, tree)
    target = tmp_path / "mnt"
    mount(images, target, image)
    again = _images(tmp_path, "overlay")
    with unmounting(again, target):
        assert (target / "a.txt").read_bytes() == b"hello\n"
        assert code_of(lambda: again.remove(image)) == grpc.StatusCode.FAILED_PRECONDITION
        again.unmount(bytes(target))
        assert os.listdir(target) == []


@pytest.mark.parametrize("method", METHODS)
def test_a_path_through_a_symlink_names_the_same_mount_across_a_restart(tmp_path: pathlib.Path, tree: pathlib.Path,
                                                                        method: MountMethod) -> None:
    images = _images(tmp_path, method)
    image = snap(images, tree)
    (tmp_path / "work" / "target").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "work" / "target")
    (tmp_path / "walias").symlink_to(tmp_path / "work")
    mount(images, tmp_path / "alias", image)
    again = _images(tmp_path, method)  # a restarted router reads the table back
    with unmounting(again, tmp_path / "work" / "target"):
        mount(again, tmp_path / "walias" / "target", image)  # the same mount: a retry, nothing stacked
        again.unmount(bytes(tmp_path / "alias"))
        assert os.listdir(tmp_path / "work" / "target") == []
        assert code_of(lambda: again.unmount(bytes(tmp_path / "work" / "target"))) == grpc.StatusCode.NOT_FOUND
    (tmp_path / "root-link").symlink_to("/")
    assert code_of(lambda: mount(images, tmp_path / "root-link", image)) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("method", METHODS)
def test_a_tree_of_many_files_round_trips_through_the_file_threads(tmp_path: pathlib.Path, method: MountMethod) -> None:
    """More files than one thread's share: made by several threads, every mode kept (those a
    file is created with, and those that need a chmod: setuid, and under the umask)."""
    src = tmp_path / "many"
    modes = [0o644, 0o400, 0o4755, 0o666, 0o2750, 0o1777, 0o600]
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(300):
            f = src / f"d{d}" / f"f{i}"
            f.write_bytes(f"{d}/{i}".encode() * (i % 50))
            f.chmod(modes[i % len(modes)])
            os.utime(f, ns=(i, 1_000_000_000 * i + d))
    images = _images(tmp_path, method)
    image = snap(images, src)
    target = tmp_path / "mnt"
    with unmounting(images, target):
        mount(images, target, image)
        assert describe(target) == describe(src)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory another group")
def test_a_copy_into_a_setgid_directory_keeps_the_images_groups(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"x")
    images = _images(tmp_path, "copy")
    image = snap(images, src)
    target = tmp_path / "sg"
    target.mkdir()
    os.chown(target, -1, 4321)
    target.chmod(0o2775)  # new files and directories below would take group 4321
    with unmounting(images, target):
        mount(images, target, image)
        assert (target / "sub" / "f").stat().st_gid == os.getegid()
        assert (target / "sub").stat().st_gid == os.getegid()


@OVERLAY
def test_mount_rejects_bad_targets(tmp_path: pathlib.Path, tree: pathlib.Path) -> None:
    images = _images(tmp_path, "overlay")
    image = snap(images, tree)
    (tmp_path / "file").write_bytes(b"x")
    assert code_of(lambda: mount(images, tmp_path / "file", image)) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: mount(images, tmp_path / "state" / "logs", image)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: mount(images, tmp_path / "x", "im-" + "0" * 24)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: mount(images, tmp_path / "x", "nonsense")) == grpc.StatusCode.NOT_FOUND
    assert not (tmp_path / "x").exists()


# -- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_encrypted_image_mounts_only_with_its_key(tmp_path: pathlib.Path, tree: pathlib.Path,
                                                  method: MountMethod) -> None:
    images = _images(tmp_path, method)
    marker = b"plaintext-marker-" + os.urandom(8).hex().encode()
    (tree / "secret").write_bytes(marker * 100)
    key = os.urandom(32)
    image = snap(images, tree, key=key)
    for dirpath, _, files in os.walk(images.root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                assert marker not in fh.read(), f"plaintext in {f}"
    target = tmp_path / "mnt"
    assert code_of(lambda: mount(images, target, image)) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: mount(images, target, image, os.urandom(32))) == grpc.StatusCode.PERMISSION_DENIED
    with unmounting(images, target):
        mount(images, target, image, key)
        assert (target / "secret").read_bytes() == marker * 100
        expected = describe(tree)
        del expected[b"sock"]
        got = describe(target)
        assert {p: v for p, v in got.items() if p != b"."} == {p: v for p, v in expected.items() if p != b"."}


# -- hostile manifests --------------------------------------------------------------------------


def _entry(path: bytes, kind: Kind = "file", **kw: Any) -> Entry:
    defaults: dict[str, Any] = dict(mode=0o644, uid=0, gid=0, mtime_ns=0)
    if kind == "file":
        defaults["blob"] = "0" * 64
    return Entry(path=path, kind=kind, **{**defaults, **kw})


ROOT = _entry(b"", "dir", mode=0o755)
HOSTILE = {
    "absolute": [ROOT, _entry(b"/etc/evil")],
    "dotdot": [ROOT, _entry(b"../evil")],
    "dotdot inside": [ROOT, _entry(b"a", "dir"), _entry(b"a/../../evil")],
    "under a symlink": [ROOT, _entry(b"up", "symlink", target=b".."), _entry(b"up/evil")],
    "under an absolute symlink": [ROOT, _entry(b"etc", "symlink", target=b"/etc"), _entry(b"etc/evil")],
    "parent missing": [ROOT, _entry(b"nodir/evil")],
    "duplicate": [ROOT, _entry(b"a"), _entry(b"a")],
    "hard link out": [ROOT, _entry(b"h", "hardlink", target=b"../../etc/passwd")],
    "hard link to a later name": [ROOT, _entry(b"h", "hardlink", target=b"z"), _entry(b"z")],
    "no root": [_entry(b"a")],
    "nul": [ROOT, _entry(b"a\0b")],
    "bad blob": [ROOT, _entry(b"a", blob="../../x")],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_manifest_is_refused(name: str) -> None:
    with pytest.raises(ManifestError):
        manifests.decode(manifests.encode(Manifest(entries=HOSTILE[name])))


def test_a_tampered_manifest_in_the_store_cannot_write_outside(tmp_path: pathlib.Path, tree: pathlib.Path) -> None:
    images = _images(tmp_path, "copy")
    image = snap(images, tree)
    evil = Manifest(entries=[ROOT, _entry(b"up", "symlink", target=str(tmp_path).encode()),
                             _entry(b"up/canary", blob=images.manifest(images.record(image), None).entries[1].blob)])
    record = images.record(image)  # its manifest was read (and validated) above
    images.backend.put_doc("manifests", record.manifest_sha256, manifests.encode(evil))
    assert code_of(lambda: mount(images, tmp_path / "mnt", image)) == grpc.StatusCode.DATA_LOSS  # not its hash
    # The record changed too, to name the evil manifest by its own hash: validated, and refused.
    evil_digest = hashlib.sha256(manifests.encode(evil)).hexdigest()
    images.backend.put_doc("manifests", evil_digest, manifests.encode(evil))
    forged = msgspec.structs.replace(record, manifest_sha256=evil_digest)
    images.backend.put_doc("images", image, msgspec.msgpack.encode(forged))
    assert code_of(lambda: mount(images, tmp_path / "mnt2", image)) == grpc.StatusCode.DATA_LOSS
    assert not (tmp_path / "canary").exists()


_component = st.sampled_from([b"a", b"b", b"..", b".", b"", b"/", b"c d", b"\n", b"\xff"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(st.lists(_component, min_size=1, max_size=4).map(b"/".join), max_size=8),
       kinds=st.lists(st.sampled_from(["dir", "file", "symlink", "hardlink"]), min_size=8, max_size=8))
def test_whatever_validates_stays_inside_its_target(tmp_path_factory: pytest.TempPathFactory,
                                                    paths: list[bytes], kinds: list[Kind]) -> None:
    entries = [ROOT] + [_entry(p, k, target=b"../../../x" if k == "symlink" else paths[0], blob="0" * 64)
                        for p, k in zip(paths, kinds, strict=False)]  # kinds may outnumber paths
    try:
        manifests.validate(Manifest(entries=entries))
    except ManifestError:
        return
    base = tmp_path_factory.mktemp("prop")
    root = base / "root"
    copy_tree(Manifest(entries=entries), bytes(root), lambda e: iter([b"data"]))
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.realpath(os.path.join(dirpath, name)) if not os.path.islink(os.path.join(dirpath, name)) \
                else os.path.join(dirpath, name)
            assert full.startswith(str(root)), full


# -- expiry, removal, gc ------------------------------------------------------------------------


@OVERLAY
def test_expired_images_are_not_found_and_gc_frees_their_content(tmp_path: pathlib.Path, tree: pathlib.Path) -> None:
    images = _images(tmp_path, "overlay")
    keep = snap(images, tree)
    (tree / "only-in-short").write_bytes(os.urandom(100_000))
    short = snap(images, tree, ttl=1)
    with_unique = images.backend.stored_bytes()
    time.sleep(1.1)
    assert code_of(lambda: images.record(short)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: mount(images, tmp_path / "m", short)) == grpc.StatusCode.NOT_FOUND
    done = images.gc()
    assert done.images == 1 and done.blobs == 1 and done.bytes == 100_000
    assert images.backend.stored_bytes() < with_unique - 90_000
    assert [r.id for r in images.records()] == [keep]
    target = tmp_path / "m"
    with unmounting(images, target):
        mount(images, target, keep)  # its content is all still there
        assert (target / "sub" / "big.bin").stat().st_size == 32 * 70_000
    images.remove(keep)
    assert images.gc().blobs >= 3 and images.backend.stored_bytes() < 10_000
    assert list((images.root / "trees").iterdir()) == []


@OVERLAY
def test_gc_keeps_a_mounted_expired_image(tmp_path: pathlib.Path, tree: pathlib.Path) -> None:
    images = _images(tmp_path, "overlay")
    image = snap(images, tree, ttl=1)
    target = tmp_path / "m"
    with unmounting(images, target):
        mount(images, target, image)
        time.sleep(1.1)
        assert images.gc().images == 0
        assert (target / "sub" / "big.bin").read_bytes()[:32] == hashlib.sha256(b"x").digest()


def test_cli_lists_removes_and_collects(tmp_path: pathlib.Path, tree: pathlib.Path) -> None:
    images = _images(tmp_path, "copy")
    image = snap(images, tree)
    state = str(tmp_path / "state")

    def router(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "router.cli", "images", "--state-dir", state, *args],
                              capture_output=True, text=True, timeout=60)

    ls = router("ls")
    assert ls.returncode == 0 and image in ls.stdout and str(tree) in ls.stdout and "never" in ls.stdout
    bad = router("rm", "im-nothing")
    assert bad.returncode == 1 and "not found" in bad.stderr
    assert router("rm", image).returncode == 0
    gc_ = router("gc")
    assert gc_.returncode == 0 and "unreferenced blobs" in gc_.stdout
    assert image not in router("ls").stdout and images.backend.stored_bytes() < 10_000


# -- consistency --------------------------------------------------------------------------------


def test_a_file_that_keeps_changing_aborts_the_snapshot(tmp_path: pathlib.Path) -> None:
    images = _images(tmp_path, "copy")
    root = tmp_path / "live"
    root.mkdir()
    path = root / "growing"
    path.write_bytes(os.urandom(16 << 20))
    stop = threading.Event()

    def writer() -> None:
        with open(path, "r+b") as f:
            while not stop.is_set():
                f.seek(0)
                f.write(os.urandom(4096))
                f.flush()

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert code_of(lambda: snap(images, root)) == grpc.StatusCode.ABORTED
    finally:
        stop.set()
        t.join()
    snap(images, root)  # once it is quiet, it works


# -- over gRPC ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_rpcs_answer_with_the_right_codes(tmp_path: pathlib.Path, tree: pathlib.Path, mode: str) -> None:
    def S(**kw: Any) -> pb.TaskSnapshotDirectoryRequest:
        return pb.TaskSnapshotDirectoryRequest(task_id=TASK_ID, **kw)

    def M(**kw: Any) -> pb.TaskMountDirectoryRequest:
        return pb.TaskMountDirectoryRequest(task_id=TASK_ID, **kw)

    target = bytes(tmp_path / "mnt")
    with serving(tmp_path, server_mode=mode) as (server, _, raw):
        image = raw.call("TaskSnapshotDirectory", S(path=bytes(tree), snapshot_id="s1")).image_id
        assert image.startswith("im-")
        assert raw.call("TaskSnapshotDirectory", S(path=bytes(tree), snapshot_id="s1")).image_id == image
        codes = {
            "snapshot missing": raw.code("TaskSnapshotDirectory", S(path=bytes(tmp_path / "missing"))),
            "snapshot file": raw.code("TaskSnapshotDirectory", S(path=bytes(tree / "a.txt"))),
            "snapshot relative": raw.code("TaskSnapshotDirectory", S(path=b"tree")),
            "snapshot ttl 0": raw.code("TaskSnapshotDirectory", S(path=bytes(tree), ttl_seconds=0)),
            "snapshot short key": raw.code("TaskSnapshotDirectory", S(path=bytes(tree),
                                                                      customer_supplied_encryption_key=b"short")),
            "snapshot container": raw.code("TaskSnapshotDirectory", S(path=bytes(tree), container_id="other")),
            "snapshot state dir": raw.code("TaskSnapshotDirectory", S(path=bytes(tmp_path / "state"))),
            "snapshot long name": raw.code("TaskSnapshotDirectory", S(path=bytes(tmp_path) + b"/" + b"x" * 300)),
            "mount root": raw.code("TaskMountDirectory", M(path=b"/", image_id=image)),
            "mount unknown": raw.code("TaskMountDirectory", M(path=target, image_id="im-" + "1" * 24)),
            "mount file": raw.code("TaskMountDirectory", M(path=bytes(tree / "a.txt"), image_id=image)),
            "mount nul": raw.code("TaskMountDirectory", M(path=b"/tmp/a\0b", image_id=image)),
            "unmount nothing": raw.code("TaskUnmountDirectory",
                                        pb.TaskUnmountDirectoryRequest(task_id=TASK_ID, path=target)),
        }
        assert codes == {
            "snapshot missing": grpc.StatusCode.NOT_FOUND,
            "snapshot file": grpc.StatusCode.FAILED_PRECONDITION,
            "snapshot relative": grpc.StatusCode.INVALID_ARGUMENT,
            "snapshot ttl 0": grpc.StatusCode.INVALID_ARGUMENT,
            "snapshot short key": grpc.StatusCode.INVALID_ARGUMENT,
            "snapshot container": grpc.StatusCode.NOT_FOUND,
            "snapshot state dir": grpc.StatusCode.INVALID_ARGUMENT,
            "snapshot long name": grpc.StatusCode.INVALID_ARGUMENT,
            "mount root": grpc.StatusCode.INVALID_ARGUMENT,
            "mount unknown": grpc.StatusCode.NOT_FOUND,
            "mount file": grpc.StatusCode.FAILED_PRECONDITION,
            "mount nul": grpc.StatusCode.INVALID_ARGUMENT,
            "unmount nothing": grpc.StatusCode.NOT_FOUND,
        }
        with unmounting(server.images, tmp_path / "mnt"):
            raw.call("TaskMountDirectory", M(path=target, image_id=image))
            raw.call("TaskMountDirectory", M(path=target, image_id=image))  # the client's retry
            assert (tmp_path / "mnt" / "a.txt").read_bytes() == b"hello\n"
            raw.call("TaskUnmountDirectory", pb.TaskUnmountDirectoryRequest(task_id=TASK_ID, path=target))
            assert os.listdir(target) == []


def test_an_exec_sees_the_mount(tmp_path: pathlib.Path, tree: pathlib.Path) -> None:
    with serving(tmp_path) as (server, client, raw):
        image = raw.call("TaskSnapshotDirectory",
                         pb.TaskSnapshotDirectoryRequest(task_id=TASK_ID, path=bytes(tree))).image_id
        target = tmp_path / "work"
        with unmounting(server.images, target):
            raw.call("TaskMountDirectory", pb.TaskMountDirectoryRequest(task_id=TASK_ID, path=bytes(target),
                                                                        image_id=image))
            client.start("cat", ["cat", "a.txt"], workdir=str(target), **PIPES)
            assert b"".join(client.read("cat")) == b"hello\n"
            client.wait("cat")

