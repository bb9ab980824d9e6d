"""Where images live: content-addressed blobs and small named documents, behind one interface.

`Backend` is everything the image store asks of storage, so a later object-store backend
(S3-compatible: blobs as objects named by hash, documents as small objects) can hold images for
routers on many hosts. `LocalBackend` keeps them in the state directory:

    images/blobs/ab/abcdef...   one file per content hash, read-only, written once (tmp + rename)
    images/blobs/ab/cdef...     a short second name (hash characters 2-22) of a blob that an overlay
                                metadata tree redirects to: a redirect of at most 24 bytes fits in
                                a 256-byte ext4 inode beside `metacopy`; a longer one costs the
                                metadata file a 4 KiB xattr block, as much as the blob itself
    images/docs/KIND/NAME       records, manifests, indexes (tmp + rename)
    images/tmp/                 files being written; anything left there is removed at startup

A blob is only ever written under its final name by rename, complete, so a crash leaves either the
whole blob or a temp file. Nothing outside the store hard-links into it; the short names are the
store's own second links to read-only blobs.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import secrets
from collections.abc import Callable, Iterator
from typing import Protocol

COPY_CHUNK = 1024 * 1024
SHORT_NAME_END = 22  # a short name is hash characters 2 to 22: `/ab/` + 20 = 24 bytes
NAME_LENGTH = 64  # a blob's own name: its SHA-256 in hex (a short name is shorter)


class SourceChanged(Exception):
    """Raised by a `settled` check: the file being stored changed while it was read (nothing is stored)."""


class Claim(Protocol):
    def confirm(self, blobs: set[str], manifest: str) -> None:
        """Before a snapshot's record is written: its blobs and manifest are there, and stay."""


class Sweep(Protocol):
    def candidates(self, kind: str) -> Iterator[tuple[str, int]]:
        """(name, size) of the blobs ("blobs") or documents of a kind a gc may delete if no image
        references them (size 0 where the listing does not say)."""


class Backend(Protocol):
    keeps_blobs: bool  # snapshots leave their blobs here, local: an overlay tree can be built at once

    def claim(self) -> contextlib.AbstractContextManager[Claim]:
        """Held by a snapshot from its start to its record (remote.py: what keeps gc off its blobs)."""
    def gc_pass(self, grace: float) -> contextlib.AbstractContextManager[Sweep]: ...
    def fetched(self, names: set[str], verify: bool) -> contextlib.AbstractContextManager[int]:
        """The blobs named local files (blob_path) until the block ends; how many had to be fetched."""
    def close(self) -> None: ...
    def mark_mount(self, mount_id: str, image_id: str) -> None:
        """Before a mount of `image_id` is made (remote.py: so that no router's gc or rm takes it)."""
    def pin(self, mount_id: str, names: set[str] | None) -> None:
        """The blobs a mount reads from stay local until unpin() (None: unknown, keep all)."""
    def unpin(self, mount_id: str) -> None: ...
    def unmark_mount(self, mount_id: str) -> None:
        """Once the mount is gone, or was never made."""
    def mounts_are(self, mounted: dict[str, str]) -> None:
        """At a start: this store's mounts, mount id -> image id (remote.py: so that no router's gc collects them)."""
    def mounted_anywhere(self) -> set[str]:
        """Images mounted through any router that shares this backend."""
    def abort_uploads(self, older_than: float) -> int: ...
    def has_blob(self, name: str) -> bool: ...
    def put_blob(self, name: str, pieces: Iterator[bytes], settled: Callable[[], None] = ...) -> int:
        """Store the blob unless present; bytes written (0 if it was there). `settled()`, once every
        piece was read and before the blob can be seen, raises SourceChanged if the source changed."""
    def put_blob_from(self, name: str, fd: int, size: int, settled: Callable[[], None] = ...) -> int:
        """Store `size` bytes read from fd at offset 0 (the backend may clone them), unless present;
        `settled` as for put_blob."""
    def read_blob(self, name: str) -> Iterator[bytes]: ...
    def blob_path(self, name: str) -> str | None:
        """A local file holding the blob, if the backend has one (overlay's data layer, cloning)."""
    def blob_root(self) -> str | None:
        """The local directory overlay redirects (redirect()) are relative to."""
    def redirect(self, name: str) -> bytes:
        """The blob's path under blob_root() as an overlay redirect, as short as the backend can make it."""
    def delete_blob(self, name: str) -> int: ...
    def blob_names(self) -> Iterator[str]: ...
    def put_doc(self, kind: str, name: str, data: bytes) -> None: ...
    def put_doc_once(self, kind: str, name: str, data: bytes) -> None:
        """Store an immutable document unless there (a manifest by its hash)."""
    def get_doc(self, kind: str, name: str) -> bytes | None: ...
    def get_docs(self, kind: str, names: list[str]) -> list[bytes | None]:
        """get_doc of each name (a bucket's in parallel)."""
    def delete_doc(self, kind: str, name: str) -> None: ...
    def doc_names(self, kind: str) -> list[str]: ...
    def stored_bytes(self) -> int: ...
    def drop_partial(self) -> int: ...


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_at(fd: int, data: bytes, offset: int) -> int:
    """All of `data` into fd at `offset` (pwrite may write less than asked); its length."""
    view = memoryview(data)
    while view:
        view = view[os.pwrite(fd, view, offset + len(data) - len(view)):]
    return len(data)


def read_pieces(fd: int, size: int, offset: int = 0) -> Iterator[bytes]:
    """`size` bytes of fd from `offset`, in pieces (fewer only if the file is shorter)."""
    end = offset + size
    while offset < end:
        piece = os.pread(fd, min(COPY_CHUNK, end - offset), offset)
        if not piece:
            return
        offset += len(piece)
        yield piece


def copy_range(src: int, dst: int, size: int) -> None:
    """size bytes from src to dst, both from offset 0: in the kernel (a clone where the filesystem
    has reflinks), or through a buffer where the two filesystems cannot (overlay to ext4: EXDEV)."""
    done = 0
    kernel = True
    while done < size:
        if kernel:
            try:
                n = os.copy_file_range(src, dst, size - done, done, done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                kernel = False
                continue
        else:
            n = write_at(dst, os.pread(src, min(COPY_CHUNK, size - done), done), done)
        if n == 0:
            raise OSError(errno.EIO, f"the file shrank while it was stored ({done} of {size} bytes)")
        done += n


class _Confirmed:
    def confirm(self, blobs: set[str], manifest: str) -> None:
        pass  # the store's flock keeps gc out of a snapshot on this host


class _LocalSweep:
    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend

    def candidates(self, kind: str) -> Iterator[tuple[str, int]]:
        names = self._backend.blob_names() if kind == "blobs" else self._backend.doc_names(kind)
        return ((name, 0) for name in list(names))


class LocalBackend:
    keeps_blobs = True

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._docs = root / "docs"
        self._tmp = root / "tmp"
        for d in (self._blobs, self._docs, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def claim(self) -> Iterator[Claim]:
        yield _Confirmed()

    @contextlib.contextmanager
    def gc_pass(self, grace: float) -> Iterator[Sweep]:
        yield _LocalSweep(self)  # no grace: the store's flock keeps snapshots out while gc runs

    @contextlib.contextmanager
    def fetched(self, names: set[str], verify: bool) -> Iterator[int]:
        yield 0

    def close(self) -> None:
        pass

    def mark_mount(self, mount_id: str, image_id: str) -> None:
        pass  # the mount table, in the state directory, is all a local gc reads

    def pin(self, mount_id: str, names: set[str] | None) -> None:
        pass  # nothing is evicted from a local store

    def unpin(self, mount_id: str) -> None:
        pass

    def unmark_mount(self, mount_id: str) -> None:
        pass

    def mounts_are(self, mounted: dict[str, str]) -> None:
        pass

    def mounted_anywhere(self) -> set[str]:
        return set()

    def abort_uploads(self, older_than: float) -> int:
        return 0

    def drop_partial(self) -> int:
        """Remove what writes cut short by a crash left behind (callers exclude writers meanwhile)."""
        n = 0
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
            n += 1
        return n

    def _blob(self, name: str) -> pathlib.Path:
        return self._blobs / name[:2] / name

    def _short(self, name: str) -> pathlib.Path:
        return self._blobs / name[:2] / name[2:SHORT_NAME_END]

    def tmpfile(self) -> tuple[pathlib.Path, int]:
        path = self._tmp / secrets.token_hex(8)
        return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)

    def _publish(self, tmp: pathlib.Path, final: pathlib.Path) -> None:
        final.parent.mkdir(exist_ok=True)
        os.rename(tmp, final)

    def publish(self, tmp: pathlib.Path, name: str) -> None:
        """A complete temp file (tmpfile()) becomes blob `name`."""
        self._publish(tmp, self._blob(name))

    def spool(self) -> int:
        """A read-write file that vanishes when closed, on the store's filesystem."""
        return os.open(self._tmp, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)

    def has_blob(self, name: str) -> bool:
        return self._blob(name).exists()

    def put_blob(self, name: str, pieces: Iterator[bytes], settled: Callable[[], None] = lambda: None) -> int:
        if self.has_blob(name):
            return 0
        tmp, fd = self.tmpfile()
        written = 0
        try:
            with open(fd, "wb", closefd=True) as f:
                for piece in pieces:
                    f.write(piece)
                    written += len(piece)
            settled()
            self._publish(tmp, self._blob(name))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return written

    def put_blob_from(self, name: str, fd: int, size: int, settled: Callable[[], None] = lambda: None) -> int:
        if self.has_blob(name):
            return 0
        tmp, out = self.tmpfile()
        try:
            try:
                copy_range(fd, out, size)
            finally:
                os.close(out)
            settled()
            self._publish(tmp, self._blob(name))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    def read_blob(self, name: str) -> Iterator[bytes]:
        with open(self._blob(name), "rb") as f:
            while piece := f.read(COPY_CHUNK):
                yield piece

    def blob_path(self, name: str) -> str | None:
        return f"{self._blobs}/{name[:2]}/{name}"  # a str, not a Path: called once per file of a copy

    def blob_root(self) -> str | None:
        return str(self._blobs)

    def redirect(self, name: str) -> bytes:
        full = self._blob(name)
        short = self._short(name)
        try:
            os.link(full, short)
        except FileExistsError:
            if not os.path.samestat(os.lstat(full), os.lstat(short)):
                # Another blob shares these 88 bits (made on purpose: they are no defence against
                # collisions); the full name still works, at the cost of an xattr block.
                return f"/{name[:2]}/{name}".encode()
        return f"/{name[:2]}/{short.name}".encode()

    def delete_blob(self, name: str) -> int:
        path = self._blob(name)
        short = self._short(name)
        try:
            st = path.stat()
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(st, short.stat()):
                    short.unlink()
            path.unlink()
        except FileNotFoundError:
            return 0
        return st.st_size

    def blob_names(self) -> Iterator[str]:
        for d in self._blobs.iterdir():
            for f in d.iterdir():
                if len(f.name) == NAME_LENGTH:  # not a short name
                    yield f.name

    def put_doc(self, kind: str, name: str, data: bytes) -> None:
        tmp, fd = self.tmpfile()
        try:
            with open(fd, "wb", closefd=True) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # documents are few and small: make them durable
            final = self._docs / kind / name
            final.parent.mkdir(exist_ok=True)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get_doc(self, kind: str, name: str) -> bytes | None:
        try:
            return (self._docs / kind / name).read_bytes()
        except FileNotFoundError:
            return None

    def get_docs(self, kind: str, names: list[str]) -> list[bytes | None]:
        return [self.get_doc(kind, name) for name in names]

    def put_doc_once(self, kind: str, name: str, data: bytes) -> None:
        if not (self._docs / kind / name).exists():
            self.put_doc(kind, name, data)

    def delete_doc(self, kind: str, name: str) -> None:
        (self._docs / kind / name).unlink(missing_ok=True)

    def doc_names(self, kind: str) -> list[str]:
        try:
            return sorted(p.name for p in (self._docs / kind).iterdir())
        except FileNotFoundError:
            return []

    def stored_bytes(self) -> int:
        """Disk the store's blobs and documents occupy (allocated blocks)."""
        total = 0
        for top in (self._blobs, self._docs):
            for dirpath, _, files in os.walk(top):
                for f in files:
                    if top is self._docs or len(f) == NAME_LENGTH:  # a short name shares its blob's blocks
                        total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
        return total
