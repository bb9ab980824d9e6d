"""Images: snapshot and mount of a tree of many small files and of a tree of one big file,
each against `cp -a` and `tar c | tar x` of the same tree; a second snapshot of the unchanged tree
against the first; the store after two snapshots against the tree's size.

Measured through the router's RPCs (TaskSnapshotDirectory, TaskMountDirectory, then an untimed
TaskUnmountDirectory) with the sync client and a token, against `router serve --mount-method
overlay` and `--mount-method copy` in their own processes: that is what users get. A call that
does nothing (a snapshot of a path that does not exist: NOT_FOUND) takes about 0.8 ms here, against
3 ms and more for the smallest operation measured (an overlay mount of the tiny trees) and 0.1 s
and more at full size, so the figures are the image code's, not the RPC's.

The trees (SIZE.images; built untimed under BENCH_TMP, on the same filesystem as the routers' state
directories and every copy):
- files: N files (full 20,000, quick 2,000, tiny 200) of 2-6 KiB, 4 KiB on average, 100 to a
  directory two levels deep (d00/s00/f000 ...: 210 directories at full size), each with content of
  its own from one seeded generator: no two files are equal, so deduplication saves nothing.
- big_file: one file (full 1 GiB, quick 128 MiB, tiny 8 MiB): a seeded random MiB repeated, each
  MiB stamped with its index (no two blocks equal, no zeros for cp or tar to make holes of).

Each round, every side once, in this order (alternating, as the other suites do):
- snapshot_overlay, snapshot_copy: a fresh router with that --mount-method (started untimed, warmed
  with a snapshot of a path that does not exist), the first snapshot of the tree into its empty
  store, then a second snapshot of the unchanged tree (its stat cache skips reading the files),
  then the store's growth (allocated blocks of STATE_DIR/images/ after the two snapshots minus
  before the first, metadata trees, documents and stat cache included; compare's series show it
  by part). With overlay the first snapshot also builds the image's metadata tree.
- mount_overlay, mount_copy: one router per method for the whole run, the tree snapshotted once
  (untimed); a mount of that image at a new directory (the router creates it), then untimed: the
  top-level names and one file's size checked through the mount, the unmount, the directory removed.
- cp: `cp -a SRC DST` into a new directory; tar: `tar -C SRC -cf - . | tar -C DST -xf -` into a new
  empty directory. The copy is deleted untimed. Nothing is dropped from caches: the sides alternate.

The filesystem under BENCH_TMP matters more than noise. On ext4 without a journal (the root
filesystem of these machines, /tmp included) a new inode is never one deleted in the last 60 s
(360 s while its inode-table block is dirty), and a file created in a block group holding such
inodes looks each of them up first (ext4's recently_deleted(): 60 % of `cp -a`'s samples in `perf
record`). After the untimed deletes between sides, `cp -a` of the 20,000 files takes 8-20 s there
instead of about 1 s; every side that creates files slows the same way, while an overlay mount
creates none. BENCH_TMP (compare's --tmp) on a journaled filesystem gives figures that hold
elsewhere (HISTORY.md, "Two filesystems, and why" under "Images": measured both ways).

Overlay is used where this machine can make overlay mounts with a data-only layer (the probe the
router's `--mount-method auto` makes); elsewhere the overlay benchmarks are skipped. Every mount
is undone: after each timed mount, and at the end a check of /proc/self/mountinfo that detaches
whatever is still mounted under the run's directory and then fails the run (a kill by asv's
timeout cannot be caught: the routers die with their parent, their mounts do not).

asv calls setup_cache once for the class (compare does too); it runs every round of both trees and
the tracks read medians of its series (seconds, or MiB).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pathlib
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import grpc

from router.images import mounts

from . import alternating
from .common import (
    SIZE,
    TMP,
    BenchError,
    MiB,
    RouterProcess,
    SyncRouter,
    Target,
    human_size,
    reap,
    stop_process,
    stream_timeout,
    unique,
)
from .rows import Axis, Row, Section, tracks_of

TREES = ("files", "big_file")
METHODS = ("overlay", "copy")
PER_DIR = 100  # files to a directory
DIRS_PER_TOP = 20  # directories to a top-level directory


# -- the trees ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tree:
    """A tree built for the run: its top-level names and one file (path, size) to check a mount by."""

    root: pathlib.Path
    content_bytes: int
    names: list[str]
    probe: str
    probe_size: int

    @property
    def path(self) -> bytes:
        return bytes(self.root)

    def check(self, where: bytes) -> None:
        """What a mount shows at `where`: the same top-level names, the probe file's size."""
        names = sorted(os.fsdecode(n) for n in os.listdir(where))
        size = os.stat(os.path.join(where, os.fsencode(self.probe))).st_size
        if names != self.names or size != self.probe_size:
            raise BenchError(f"mount at {where!r} shows {names[:5]}..., {self.probe} of {size} bytes; "
                             f"expected {self.names[:5]}..., {self.probe_size} bytes")


def build_files(root: pathlib.Path, count: int) -> Tree:
    """`count` files of 2-6 KiB with content of their own, 100 to a directory (d00/s00/f000 ...)."""
    rng = random.Random(8)
    total = size = 0
    rel = ""
    for i in range(count):
        if i % PER_DIR == 0:
            leaf = root / f"d{i // (PER_DIR * DIRS_PER_TOP):02d}" / f"s{(i // PER_DIR) % DIRS_PER_TOP:02d}"
            leaf.mkdir(parents=True)
        size = rng.randint(2048, 6144)
        rel = str((leaf / f"f{i % PER_DIR:03d}").relative_to(root))
        (root / rel).write_bytes(rng.randbytes(size))
        total += size
    return Tree(root, total, sorted(os.listdir(root)), rel, size)


def build_big_file(root: pathlib.Path, size: int) -> Tree:
    """One file of `size` bytes: a random MiB repeated, each MiB stamped with its index."""
    root.mkdir()
    block = random.Random(9).randbytes(MiB)
    with open(root / "big", "wb") as f:
        for i in range(size // MiB):
            f.write(i.to_bytes(8, "little") + block[8:])
    return Tree(root, size, ["big"], "big", size)


def allocated_bytes(top: pathlib.Path) -> int:
    """What `du -s --block-size=1 top` says: allocated blocks of every directory and file under it,
    a file with several names (the store's short names of blobs) counted once."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(top):
        names = [dirpath] + [os.path.join(dirpath, n) for n in filenames]
        names += [os.path.join(dirpath, n) for n in dirnames if os.path.islink(os.path.join(dirpath, n))]
        for n in names:
            st = os.lstat(n)
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


# Where the store's growth goes (under STATE_DIR/images; "other": the stat cache, the mount table...).
STORE_PARTS = ("store/blobs", "store/docs", "trees")


def store_parts(images: pathlib.Path) -> dict[str, int]:
    """Allocated bytes under `images` by part: STORE_PARTS, and "other" for the rest."""
    parts = {part: allocated_bytes(images / part) for part in STORE_PARTS}
    parts["other"] = allocated_bytes(images) - sum(parts.values())
    return parts


# -- the sides ------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def warm(client: SyncRouter) -> None:
    """The channel, the handler and its worker thread: a snapshot of a path that does not exist."""
    try:
        client.snapshot(b"/nonexistent-" + unique("warm").encode(), timeout=60)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
    else:
        raise BenchError("a snapshot of a path that does not exist succeeded")


class SnapshotSide:
    """Each call: a fresh router with this --mount-method, the first snapshot of the tree (timed,
    returned), a second one of the unchanged tree (timed, kept in `again`), and the store's growth
    over the two (kept in `store`)."""

    def __init__(self, method: str, tree: Tree) -> None:
        self.method, self.tree = method, tree
        self.timeout = stream_timeout(tree.content_bytes)
        self.again: list[float] = []
        self.store: list[float] = []
        self.parts: dict[str, list[float]] = {part: [] for part in (*STORE_PARTS, "other")}

    def __call__(self) -> float:
        with RouterProcess(args=["--mount-method", self.method]) as router:
            client = SyncRouter(router)
            warm(client)
            images = router.dir / "images"
            before = store_parts(images)
            first = timed(lambda: client.snapshot(self.tree.path, self.timeout))
            self.again.append(timed(lambda: client.snapshot(self.tree.path, self.timeout)))
            after = store_parts(images)
        for part in self.parts:
            self.parts[part].append(after[part] - before[part])
        self.store.append(sum(after.values()) - sum(before.values()))
        return first


class MountSide:
    """Each call: a mount of the image at a new directory (timed), then untimed: the tree checked
    through it, the unmount, the directory removed."""

    def __init__(self, client: SyncRouter, image_id: str, tree: Tree, work: pathlib.Path) -> None:
        self.client, self.image_id, self.tree, self.work = client, image_id, tree, work
        self.timeout = stream_timeout(tree.content_bytes)

    def __call__(self) -> float:
        where = bytes(self.work / unique("mnt"))
        elapsed = timed(lambda: self.client.mount(where, self.image_id, self.timeout))
        try:
            self.tree.check(where)
        finally:
            self.client.unmount(where, self.timeout)
        os.rmdir(where)
        return elapsed


def cp_a(tree: Tree, work: pathlib.Path) -> float:
    """`cp -a SRC DST` (DST new); the copy is deleted untimed."""
    dst = work / unique("cp")
    try:
        t0 = time.perf_counter()
        subprocess.run(["cp", "-a", str(tree.root), str(dst)], check=True, timeout=stream_timeout(tree.content_bytes))
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(dst, ignore_errors=True)


def tar_pipe(tree: Tree, work: pathlib.Path) -> float:
    """`tar -C SRC -cf - . | tar -C DST -xf -` (DST a new empty directory); deleted untimed."""
    dst = work / unique("tar")
    dst.mkdir()
    timeout = stream_timeout(tree.content_bytes)
    try:
        t0 = time.perf_counter()
        create = subprocess.Popen(["tar", "-C", str(tree.root), "-cf", "-", "."], stdout=subprocess.PIPE)
        procs = [create]
        try:
            assert create.stdout is not None
            with create.stdout:  # the pipe's other end stays with the two tars only
                procs.append(subprocess.Popen(["tar", "-C", str(dst), "-xf", "-"], stdin=create.stdout))
            codes = [reap(p, timeout) for p in reversed(procs)]
        finally:
            for p in procs:
                stop_process(p, 5)
        elapsed = time.perf_counter() - t0
        if codes != [0, 0]:
            raise BenchError(f"tar x, tar c exited {codes}")
        return elapsed
    finally:
        shutil.rmtree(dst, ignore_errors=True)


def undo_mounts(work: pathlib.Path) -> None:
    """Nothing may stay mounted under `work`: detach what did, then fail."""
    top = os.path.realpath(work).encode()
    left = sorted(p for p in mounts.mounted_points() if p == top or p.startswith(top + b"/"))
    for point in reversed(left):
        with contextlib.suppress(OSError):
            mounts.unmount(point)
    if left:
        raise BenchError(f"mounts left behind under {work}: {left!r} (detached now)")


def measure(overlay: bool) -> dict[str, dict]:
    """Every round of both trees, one tree after the other (see the module's docstring): by tree,
    series of seconds by side, the store's growth by method (in all and by part), the tree's size."""
    files, big = SIZE.images
    methods = [m for m in METHODS if overlay or m != "overlay"]
    out = {}
    with contextlib.ExitStack() as stack:
        work = pathlib.Path(tempfile.mkdtemp(prefix="router-images-", dir=TMP))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        trees = {"files": build_files(work / "files", files), "big_file": build_big_file(work / "big_file", big)}
        clients = {m: SyncRouter(stack.enter_context(RouterProcess(args=["--mount-method", m]))) for m in methods}
        stack.callback(undo_mounts, work)  # before the routers stop
        for name, tree in trees.items():
            snapshots = {m: SnapshotSide(m, tree) for m in methods}
            sides: dict[str, Callable[[], float]] = {f"snapshot_{m}": snapshots[m] for m in methods}
            for m, client in clients.items():
                mount = MountSide(client, client.snapshot(tree.path, stream_timeout(tree.content_bytes)), tree, work)
                mount()  # the first mount's lazy work: not measured
                sides[f"mount_{m}"] = mount
            sides["cp"] = functools.partial(cp_a, tree, work)
            sides["tar"] = functools.partial(tar_pipe, tree, work)
            series = alternating.alternate(sides, SIZE.rounds["images"])
            for m, snapshot in snapshots.items():
                series[f"snapshot_again_{m}"] = snapshot.again
            out[name] = {"seconds": series, "store_bytes": {m: s.store for m, s in snapshots.items()},
                         "store_parts": {m: s.parts for m, s in snapshots.items()},
                         "tree_bytes": allocated_bytes(tree.root), "content_bytes": tree.content_bytes}
    return out


# -- the suite ------------------------------------------------------------------------------------------


def _seconds_track(side: str, doc: str) -> Callable[..., float]:
    """An Images track: the median seconds of `side` ({m}: the method's own side)."""
    def track(self: Images, result: dict, tree: str, method: str) -> float:
        return statistics.median(self.tree["seconds"][side.format(m=method)])
    track.__doc__ = doc
    track.unit = "s"  # type: ignore[attr-defined]
    return track


class Images:
    """One setup_cache for every round of both trees (the module's docstring says how each
    side is measured); tree: files | big_file, method: the router's --mount-method (overlay is
    skipped where this machine cannot make overlay mounts). The tracks are medians, in seconds or
    MiB (lower is better); cp, tar and the tree's size are the same for both methods. There are
    no ratio tracks: a ratio is the division of two of these medians, which compare does."""

    params = [list(TREES), list(METHODS)]
    param_names = ["tree", "method"]
    timeout = 3600

    target_mount_over_cp = {"overlay": Target("<=", 0.1), "copy": Target("<=", 1.0)}  # 10x / 1x as fast
    target_again_over_first = Target("<=", 0.3)
    target_store_over_tree = Target("<=", 1.05)

    def setup_cache(self) -> dict:
        probe = pathlib.Path(tempfile.mkdtemp(prefix="router-images-probe-", dir=TMP))
        try:
            overlay = mounts.can_mount(probe)
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        return {"overlay": overlay, "trees": measure(overlay)}

    def setup(self, result: dict, tree: str, method: str) -> None:
        if method == "overlay" and not result["overlay"]:
            raise NotImplementedError("this machine cannot make overlay mounts (router.images.mounts.can_mount)")
        self.tree: dict = result["trees"][tree]

    def series_table(self, result: dict, tree: str, method: str) -> dict[str, tuple[list[float], str]]:
        """For compare: every round of this tree's sides (cp and tar under names both methods share),
        and the store's growth, in all and by part."""
        out = {f"Images({tree!r}) {side}": (rounds, "s") for side, rounds in self.tree["seconds"].items()
               if side.endswith("_" + method) or side in ("cp", "tar")}
        out[f"Images({tree!r}) store growth, {method}"] = ([b / MiB for b in self.tree["store_bytes"][method]], "MiB")
        for part, sizes in self.tree["store_parts"][method].items():
            out[f"Images({tree!r}) store growth, {method}: {part}"] = ([b / MiB for b in sizes], "MiB")
        return out

    track_snapshot = _seconds_track("snapshot_{m}", "the first snapshot of the tree into an empty store")
    track_snapshot_again = _seconds_track("snapshot_again_{m}", "a second snapshot of the unchanged tree")
    track_mount = _seconds_track("mount_{m}", "a mount of the tree's image at a new directory")
    track_cp = _seconds_track("cp", "`cp -a` of the tree into a new directory")
    track_tar = _seconds_track("tar", "`tar c | tar x` of the tree into a new directory")

    def track_store_mib(self, result: dict, tree: str, method: str) -> float:
        """The store's growth over two snapshots of the tree (allocated blocks under STATE_DIR/images)."""
        return statistics.median(self.tree["store_bytes"][method]) / MiB

    track_store_mib.unit = "MiB"  # type: ignore[attr-defined]

    def track_tree_mib(self, result: dict, tree: str, method: str) -> float:
        """The tree's own allocated blocks (du -s)."""
        return self.tree["tree_bytes"] / MiB

    track_tree_mib.unit = "MiB"  # type: ignore[attr-defined]


# -- compare's table --------------------------------------------------------------------------------


def images_rows(axis: Axis) -> list[list[Row]]:
    files, big = SIZE.images
    rows = []  # one group: the class's setup_cache measures both trees
    for tree in axis(Images):
        what = f"{files:,} files of 2-6 KiB" if tree == "files" else f"one {human_size(big)} file"
        ov, cp = tracks_of(Images, tree, "overlay"), tracks_of(Images, tree, "copy")
        rows += [Row(f"{what}: first snapshot (`--mount-method overlay`, which also builds the metadata tree) vs "
                     "`cp -a`", ov("track_snapshot"), cp("track_cp")),
                 Row(f"{what}: first snapshot (overlay) vs `tar c` piped into `tar x`", ov("track_snapshot"),
                     cp("track_tar")),
                 Row(f"{what}: first snapshot (`--mount-method copy`) vs `cp -a`", cp("track_snapshot"),
                     cp("track_cp"))]
        rows += [Row(f"{what}: second snapshot of the unchanged tree vs the first ({method})",
                     t("track_snapshot_again"), t("track_snapshot"), Images.target_again_over_first)
                 for method, t in (("overlay", ov), ("copy", cp))]
        for method, t in (("overlay", ov), ("copy", cp)):
            target = Images.target_mount_over_cp[method] if tree == "files" else None
            rows += [Row(f"{what}: mount ({method}) vs `cp -a`", t("track_mount"), cp("track_cp"), target),
                     Row(f"{what}: mount ({method}) vs `tar c` piped into `tar x`", t("track_mount"), cp("track_tar"))]
        rows += [Row(f"{what}: the store's growth over two snapshots ({method}; allocated blocks under "
                     "STATE_DIR/images) vs the tree's (du)", t("track_store_mib"), cp("track_tree_mib"),
                     Images.target_store_over_tree)
                 for method, t in (("overlay", ov), ("copy", cp))]
    return [rows]


# One round: Images' setup_cache alternates its own rounds, and the tracks read them.
COMPARE = {"images": Section(images_rows, None)}
