"""Making a manifest's tree on disk: as an overlay metadata tree, or as a full copy.

`metadata_tree` builds what an overlay mount shows, without copying any data: directories,
symlinks and special files as they are, and for each regular file an empty sparse file of the
right size whose `trusted.overlay.redirect` xattr names its blob in the store, which the mount
takes as a data-only lower layer (`lowerdir=TREE::BLOBS`, `metacopy=on`; the composefs layout).
Writes through the mount copy a file up into the mount's own upper layer, so nothing ever writes
into the store. `copy_tree` writes the files' contents (for a store without overlay, or an
encrypted image whose blobs are sealed).

Either starts from a validated manifest (manifest.validate): every entry lies under a directory
this code created itself, so nothing is reached through a symlink and nothing lands outside the
root. Entries are created with O_EXCL/O_NOFOLLOW all the same.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator

from .blobs import copy_range
from .manifest import Entry, Manifest

Opener = Callable[[Entry], Iterator[bytes]]  # a file entry's content


def metadata_tree(manifest: Manifest, root: bytes, redirect: Callable[[str], bytes]) -> list[int]:
    """Build the overlay metadata tree at root (which must not exist). Returns the inode of each
    "file" entry in manifest order, so that a snapshot through the mount finds an untouched file's
    blob without reading it."""
    inodes: list[int] = []

    def make_file(entry: Entry, path: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, entry.size)  # sparse: the size shows through the mount
            os.setxattr(fd, "trusted.overlay.metacopy", b"")
            os.setxattr(fd, "trusted.overlay.redirect", redirect(entry.blob))
            inodes.append(os.fstat(fd).st_ino)
        finally:
            os.close(fd)

    _build(manifest, root, make_file)
    return inodes


def copy_tree(manifest: Manifest, root: bytes, content: Opener,
              local: Callable[[Entry], str | None] = lambda e: None) -> None:
    """Write the manifest's tree with its files' contents at root (which must not exist, or be an
    empty directory whose metadata the root entry then sets). A file whose content `local` names
    as a plain local file is copied in the kernel (a clone where the filesystem has reflinks)."""

    def make_file(entry: Entry, path: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            source = local(entry)
            if source is not None:
                src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    copy_range(src, fd, entry.size)
                finally:
                    os.close(src)
                return
            for piece in content(entry):
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    _build(manifest, root, make_file)


def _build(manifest: Manifest, root: bytes, make_file: Callable[[Entry, bytes], None]) -> None:
    dirs: list[tuple[Entry, bytes]] = []
    for entry in manifest.entries:
        path = os.path.join(root, entry.path) if entry.path else root
        if entry.kind == "dir":
            if entry.path or not os.path.isdir(root):
                os.mkdir(path, 0o700)
            dirs.append((entry, path))
            continue  # metadata once its contents exist (their creation changes its mtime)
        if entry.kind == "file":
            make_file(entry, path)
        elif entry.kind == "hardlink":
            os.link(os.path.join(root, entry.target), path, follow_symlinks=False)
            continue  # shares the first name's inode, and so its metadata
        elif entry.kind == "symlink":
            os.symlink(entry.target, path)
        elif entry.kind == "fifo":
            os.mkfifo(path, 0o600)
        else:
            kind = stat.S_IFCHR if entry.kind == "char" else stat.S_IFBLK
            os.mknod(path, kind | 0o600, entry.rdev)
        _set_metadata(entry, path)
    for entry, path in reversed(dirs):  # deepest first
        _set_metadata(entry, path)


def _set_metadata(entry: Entry, path: bytes) -> None:
    for name, value in entry.xattrs.items():
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError:
            pass  # a namespace this filesystem or identity cannot set: documented as best effort
    try:
        os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
    except PermissionError:
        pass  # not root: files stay the router's own
    if entry.kind != "symlink":
        os.chmod(path, entry.mode)  # after chown, which clears setuid/setgid
    os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
