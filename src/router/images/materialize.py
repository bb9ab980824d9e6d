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
from concurrent.futures import ThreadPoolExecutor

from .blobs import copy_range
from .manifest import Entry, Manifest

Opener = Callable[[Entry], Iterator[bytes]]  # a file entry's content


def metadata_tree(manifest: Manifest, root: bytes, redirect: Callable[[str], bytes]) -> list[int]:
    """Build the overlay metadata tree at root (which must not exist). Returns the inode of each
    "file" entry in manifest order, so that a snapshot through the mount finds an untouched file's
    blob without reading it."""

    def make_file(entry: Entry, fd: int) -> None:
        os.ftruncate(fd, entry.size)  # sparse: the size shows through the mount
        os.setxattr(fd, "trusted.overlay.metacopy", b"")
        os.setxattr(fd, "trusted.overlay.redirect", redirect(entry.blob))

    return _build(manifest, root, make_file, inodes=True)


def copy_tree(manifest: Manifest, root: bytes, content: Opener,
              local: Callable[[Entry], str | None] = lambda e: None) -> None:
    """Write the manifest's tree with its files' contents at root (which must not exist, or be an
    empty directory whose metadata the root entry then sets). A file whose content `local` names
    as a plain local file is copied in the kernel (a clone where the filesystem has reflinks)."""

    def make_file(entry: Entry, fd: int) -> None:
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

    _build(manifest, root, make_file)


FILE_WORKERS = 2
_FILES_PER_TASK = 256


def _build(manifest: Manifest, root: bytes, fill: Callable[[Entry, int], None], inodes: bool = False) -> list[int]:
    """Directories first (in manifest order, so parents before children), then the regular files
    (`fill` writes each one's content through its descriptor) in FILE_WORKERS threads, then hard
    links, symlinks and special files in manifest order, and last each directory's metadata,
    deepest first (making what it holds changes its mtime). Returns the files' inodes in order if
    asked (else an empty list)."""
    dirs: list[tuple[Entry, bytes]] = []
    files: list[tuple[Entry, bytes]] = []
    others: list[tuple[Entry, bytes]] = []
    for entry in manifest.entries:
        path = root + b"/" + entry.path if entry.path else root
        if entry.kind == "dir":
            if entry.path or not os.path.isdir(root):
                os.mkdir(path, 0o700)
            dirs.append((entry, path))
        else:
            (files if entry.kind == "file" else others).append((entry, path))
    # A new file is the process's own unless a setgid directory hands it its group; the
    # directories made here have no setgid bit (modes come last) unless the root passes one down.
    ids = None if os.stat(root).st_mode & stat.S_ISGID else (os.geteuid(), os.getegid())
    umask = _umask()

    def make_files(chunk: list[tuple[Entry, bytes]]) -> list[int]:
        made = []
        for entry, path in chunk:
            # Created with its mode where the umask keeps it whole and no xattr needs write access
            # first (no fchmod then); the descriptor is writable whatever the mode says.
            exact = umask is not None and not entry.mode & (umask | ~0o777) and not entry.xattrs
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         entry.mode if exact else 0o600)
            try:
                fill(entry, fd)
                _set_metadata(entry, fd, ids, mode_set=exact)
                if inodes:
                    made.append(os.fstat(fd).st_ino)
            finally:
                os.close(fd)
        return made

    # Two threads make the files (each syscall lets go of the GIL, so the kernel's work overlaps):
    # 0.95 against 1.08 s for one on 20,000 files (benchmarks/HISTORY.md, "The copy mount again, on a
    # quiet machine"); three were no faster.
    chunks = [files[i:i + _FILES_PER_TASK] for i in range(0, len(files), _FILES_PER_TASK)]
    if len(chunks) > 1:
        with ThreadPoolExecutor(FILE_WORKERS, thread_name_prefix="materialize") as pool:
            made = [ino for part in pool.map(make_files, chunks) for ino in part]
    else:
        made = make_files(files)
    for entry, path in others:
        if entry.kind == "hardlink":
            os.link(os.path.join(root, entry.target), path, follow_symlinks=False)
            continue  # shares the first name's inode, and so its metadata
        if entry.kind == "symlink":
            os.symlink(entry.target, path)
        elif entry.kind == "fifo":
            os.mkfifo(path, 0o600)
        else:
            kind = stat.S_IFCHR if entry.kind == "char" else stat.S_IFBLK
            os.mknod(path, kind | 0o600, entry.rdev)
        _set_metadata(entry, path)
    for entry, path in reversed(dirs):  # deepest first
        _set_metadata(entry, path)
    return made


def _umask() -> int | None:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return None


def _set_metadata(entry: Entry, where: bytes | int, ids: tuple[int, int] | None = None, mode_set: bool = False) -> None:
    """xattrs, owner, mode and mtime of a path (never followed) or an open descriptor; `ids`: the
    owner it has already, if known (saves a chown per file); `mode_set`: it was created with its
    mode (saves a chmod, unless a chown clears setuid/setgid, which such a mode does not have)."""
    follow = isinstance(where, int)  # a descriptor is the file itself; a path is never followed
    for name, value in entry.xattrs.items():
        try:
            os.setxattr(where, name, value, follow_symlinks=follow)
        except OSError:
            pass  # a namespace this filesystem or identity cannot set: documented as best effort
    if (entry.uid, entry.gid) != ids:
        try:
            os.chown(where, entry.uid, entry.gid, follow_symlinks=follow)
        except PermissionError:
            pass  # not root: files stay the router's own
    if entry.kind != "symlink" and not mode_set:
        os.chmod(where, entry.mode)  # after chown, which clears setuid/setgid
    os.utime(where, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=follow)
