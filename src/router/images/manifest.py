"""An image's manifest: every entry of a snapshotted tree, as data (msgspec).

Paths are bytes relative to the tree's root, so names with spaces, newlines and non-UTF-8 bytes
round-trip. A manifest comes from disk, and a disk can be tampered with: `validate()` refuses any
manifest that could make materialising it write outside its target (absolute paths, `..`, `.`,
empty or NUL components, an entry under anything but a directory of the manifest, duplicates, a
hard link to anything but an earlier regular file). Symlink targets are kept as they are (absolute
ones too): a link is created, never followed.
"""
from __future__ import annotations

import re
import stat
import zlib
from typing import Literal

import msgspec

Kind = Literal["dir", "file", "symlink", "hardlink", "fifo", "char", "block"]

# The kinds a snapshot records, by st_mode type; sockets are skipped (they belong to a process).
KIND_OF_MODE: dict[int, Kind] = {
    stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "char", stat.S_IFBLK: "block",
}


class Entry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True, gc=False):
    """One name in the tree. `mode` holds the permission bits (with setuid/setgid/sticky).

    file: `blob` names its content, `size` its length. hardlink: `target` is the path of the earlier
    "file" entry it shares an inode with. symlink: `target` is the link's text. char/block:
    `rdev`. The root directory itself is the entry with path b"".
    """

    path: bytes
    kind: Kind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    blob: str = ""
    target: bytes = b""
    rdev: int = 0
    xattrs: dict[str, bytes] = {}


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Entries in walk order: every directory before what it holds, the root (path b"") first."""

    entries: list[Entry]

    def blobs(self) -> set[str]:
        return {e.blob for e in self.entries if e.kind == "file"}

    def content_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == "file")


_BLOB = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest that is malformed or could write outside its target."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Manifest)


# A stored manifest is zlib'd msgpack: half the size (paths and hex names compress); for trees of
# small files the manifest is a visible part of the store. Inflating stops at this size, so a
# tampered document cannot exhaust memory (a million entries take about 110 MB).
MAX_MANIFEST_BYTES = 1 << 30


def encode(manifest: Manifest) -> bytes:
    return zlib.compress(_encoder.encode(manifest))


def decode(data: bytes, trusted: bool = False) -> Manifest:
    """Decode and validate (not when `trusted`: the caller knows these bytes were validated);
    ManifestError if either fails."""
    try:
        inflate = zlib.decompressobj()
        raw = inflate.decompress(data, MAX_MANIFEST_BYTES)
        if inflate.unconsumed_tail:
            raise ManifestError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = _decoder.decode(raw)
    except (msgspec.DecodeError, zlib.error) as e:
        raise ManifestError(f"undecodable manifest: {e}") from None
    if not trusted:
        validate(manifest)
    return manifest


def _check_path(path: bytes) -> None:
    if path == b"":
        return
    if path.startswith(b"/") or b"\0" in path:
        raise ManifestError(f"path {path!r} is absolute or holds NUL")
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise ManifestError(f"path {path!r} has an empty, '.' or '..' component")


def validate(manifest: Manifest) -> None:
    """ManifestError unless every entry lands inside the target, under a directory of its own."""
    kinds: dict[bytes, Kind] = {}
    for i, e in enumerate(manifest.entries):
        _check_path(e.path)
        if (i == 0) != (e.path == b""):
            raise ManifestError("the root (path b'') must be the first entry, and only it")
        if e.path == b"":
            if e.kind != "dir":
                raise ManifestError("the root must be a directory")
        elif kinds.get(e.path.rpartition(b"/")[0]) != "dir":
            raise ManifestError(f"{e.path!r} is not under a directory listed before it")
        if e.path in kinds:
            raise ManifestError(f"{e.path!r} is listed twice")
        if e.kind == "hardlink" and kinds.get(e.target) != "file":
            raise ManifestError(f"hard link {e.path!r} names {e.target!r}, not an earlier regular file")
        if e.kind == "file" and not _BLOB.fullmatch(e.blob):
            raise ManifestError(f"{e.path!r} has a malformed blob name {e.blob!r}")
        if e.kind == "symlink" and (not e.target or b"\0" in e.target):
            raise ManifestError(f"symlink {e.path!r} has an empty target or one with NUL")
        if not 0 <= e.mode <= 0o7777 or e.size < 0:
            raise ManifestError(f"{e.path!r} has mode {e.mode:o} or size {e.size} out of range")
        kinds[e.path] = e.kind
