"""Walking a directory into a manifest and the blobs it names.

Rules (README, "Images"):
- Symlinks are recorded, never followed; the walk does not leave a directory through one.
- Regular files, directories, symlinks, fifos and device nodes are recorded; sockets are skipped
  (they belong to a process and cannot be recreated meaningfully).
- Hard links within the tree are kept as links to the first name walked.
- Xattrs are recorded where readable, except overlayfs' own `trusted.overlay.*`.
- Consistency is per file: a file is read through one descriptor, and its size, mtime and ctime
  are compared before and after; if it changed meanwhile it is read again, up to three times, and
  then the snapshot fails (FileChanging) rather than store a torn file.
- A file whose (device, inode, size, mtime, ctime) matches the last snapshot that read it is not
  read again (the stat cache), so a second snapshot of an unchanged tree costs a walk.
- Under an overlay mount of an image, a file whose data the upper layer does not hold (absent
  there, or a metadata-only copy) still has its image's blob, found through its inode: only what
  changed is read.
"""
from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import stat
import zlib
from typing import NamedTuple

import msgspec

from router.config import write_private

from .blobs import Backend, SourceChanged, read_pieces
from .crypt import ImageKey
from .manifest import KIND_OF_MODE, Entry, Manifest

READ_ATTEMPTS = 3
_OVERLAY_XATTR = "trusted.overlay."


class FileChanging(Exception):
    """A file kept changing while it was read."""


class CacheEntry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str


StatCache = dict[tuple[int, int], CacheEntry]


class OverlayBase(NamedTuple):
    """The overlay mount of an image at the walked directory: its upper layer and, by the inode a
    lower file shows through the mount, the blob that holds its data."""

    upper: bytes
    blobs_by_inode: dict[int, str]


class Walk:
    """One snapshot's walk. `stored` counts bytes this walk added to the store."""

    def __init__(self, backend: Backend, cache: StatCache, key: ImageKey | None = None,
                 base: OverlayBase | None = None) -> None:
        self._backend = backend
        self._cache = cache
        self._key = key
        self._base = base
        self.seen: StatCache = {}
        self.stored = 0
        self.read = 0

    def manifest(self, root: bytes) -> Manifest:
        st = os.lstat(root)
        entries = [self._entry(root, b"", st, {})]
        links: dict[tuple[int, int], bytes] = {}
        self._walk(root, b"", entries, links)
        return Manifest(entries=entries)

    def _walk(self, top: bytes, rel: bytes, out: list[Entry], links: dict[tuple[int, int], bytes]) -> None:
        """Depth first, names sorted, each directory before what it holds; a stack, not recursion,
        so no depth of tree can exhaust Python's."""
        stack: list[tuple[bytes, bytes]] = [(top, rel)]
        while stack:
            top, rel = stack.pop()
            try:
                with os.scandir(top) as it:
                    children = sorted(it, key=lambda d: d.name)
            except FileNotFoundError:
                continue  # removed since it was listed
            subdirs = []
            for child in children:
                path = rel + b"/" + child.name if rel else child.name
                try:
                    st = child.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_IFMT(st.st_mode) not in KIND_OF_MODE:
                    continue  # a socket
                try:
                    out.append(self._entry(child.path, path, st, links))
                except FileNotFoundError:
                    continue  # removed while it was read: as if the walk came later
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append((child.path, path))
            stack.extend(reversed(subdirs))

    def _entry(self, full: bytes, path: bytes, st: os.stat_result, links: dict[tuple[int, int], bytes]) -> Entry:
        kind = KIND_OF_MODE[stat.S_IFMT(st.st_mode)]
        common = dict(path=path, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                      mtime_ns=st.st_mtime_ns, xattrs=_xattrs(full))
        if kind == "file":
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:
                return Entry(kind="hardlink", target=first, **common)  # type: ignore[arg-type]
            blob, size = self._blob(full, path, st)
            if st.st_nlink > 1:  # only once recorded: a link must name a file the manifest holds
                links[(st.st_dev, st.st_ino)] = path
            return Entry(kind="file", size=size, blob=blob, **common)  # type: ignore[arg-type]
        if kind == "symlink":
            return Entry(kind="symlink", target=os.readlink(full), **common)  # type: ignore[arg-type]
        if kind in ("char", "block"):
            return Entry(kind=kind, rdev=st.st_rdev, **common)  # type: ignore[arg-type]
        return Entry(kind=kind, **common)  # type: ignore[arg-type]

    def _blob(self, full: bytes, path: bytes, st: os.stat_result) -> tuple[str, int]:
        if self._base is not None and self._key is None:
            blob = self._base_blob(path, st)
            if blob is not None:
                return blob, st.st_size
        ident = (st.st_dev, st.st_ino)
        # Not for an encrypted image: the cache keeps plaintext hashes in the clear.
        cached = self._cache.get(ident) if self._key is None else None
        if cached is not None and (cached.size, cached.mtime_ns, cached.ctime_ns) == _identity(st):
            name = self._name(cached.sha256)
            if self._backend.has_blob(name):
                self.seen[ident] = cached
                return name, cached.size
        for _ in range(READ_ATTEMPTS):
            got = self._read_and_store(full)
            if got is not None:
                entry, name = got
                if self._key is None:
                    self.seen[ident] = entry
                return name, entry.size
        raise FileChanging(f"{os.fsdecode(full)!r} kept changing while it was read")

    def _base_blob(self, path: bytes, st: os.stat_result) -> str | None:
        """The image's blob for a file whose data the upper layer does not hold."""
        assert self._base is not None
        try:
            upper = os.path.join(self._base.upper, path)
            if os.getxattr(upper, "trusted.overlay.metacopy", follow_symlinks=False) is not None:
                return self._base.blobs_by_inode.get(st.st_ino)  # metadata changed, data not
        except OSError as e:
            if e.errno == errno.ENOENT:
                return self._base.blobs_by_inode.get(st.st_ino)  # untouched since the mount
            if e.errno != errno.ENODATA:
                raise
        return None  # the upper layer holds its own data

    def _name(self, sha256: str) -> str:
        return sha256 if self._key is None else self._key.blob_name(sha256)

    def _read_and_store(self, full: bytes) -> tuple[CacheEntry, str] | None:
        """Hash the file, store it if new; None if it changed meanwhile."""
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                return None  # replaced by something else since the walk saw it
            digest = hashlib.sha256()
            for piece in read_pieces(fd, before.st_size):
                digest.update(piece)
            self.read += before.st_size
            name = self._name(digest.hexdigest())

            def settled() -> None:  # before the blob can be seen: not stored under a hash it no longer has
                if _identity(os.fstat(fd)) != _identity(before):
                    raise SourceChanged(os.fsdecode(full))

            if not self._backend.has_blob(name):
                try:
                    if self._key is None:
                        self.stored += self._backend.put_blob_from(name, fd, before.st_size, settled)
                    else:
                        self.stored += self._backend.put_blob(name, self._key.seal(read_pieces(fd, before.st_size)),
                                                              settled)
                except SourceChanged:
                    return None
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if _identity(before) != _identity(after):
            return None
        return CacheEntry(before.st_size, before.st_mtime_ns, before.st_ctime_ns, digest.hexdigest()), name


def _xattrs(path: bytes) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.startswith(_OVERLAY_XATTR):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue  # not readable: skipped
    return out


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    """What says a file's content is unchanged: its size, mtime and ctime."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


_cache_dec = msgspec.msgpack.Decoder(list[tuple[int, int, int, int, int, bytes]])


def load_stat_cache(path: pathlib.Path) -> StatCache:
    """The stat cache saved at `path` (zlib'd msgpack rows); empty if missing or unreadable."""
    try:
        rows = _cache_dec.decode(zlib.decompress(path.read_bytes()))
    except (FileNotFoundError, msgspec.DecodeError, zlib.error):
        return {}
    return {(dev, ino): CacheEntry(size, mtime, ctime, sha256.hex()) for dev, ino, size, mtime, ctime, sha256 in rows}


def save_stat_cache(path: pathlib.Path, cache: StatCache) -> None:
    rows = [(dev, ino, e.size, e.mtime_ns, e.ctime_ns, bytes.fromhex(e.sha256)) for (dev, ino), e in cache.items()]
    write_private(path, zlib.compress(msgspec.msgpack.encode(rows)))
