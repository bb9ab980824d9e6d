"""Overlay metadata trees, one per manifest (shared by images with equal manifests), built once.

A tree holds the manifest's directories and links, and for each file an empty sparse file whose
`trusted.overlay.redirect` names its blob (materialize.metadata_tree); `H.inodes` beside tree `H`
lists the inode of each of its files in manifest order (zlib'd msgpack), so that a snapshot of a
mounted image can find which blob an untouched file came from.
"""
from __future__ import annotations

import errno
import os
import pathlib
import secrets
import shutil
import zlib
from collections.abc import Callable

import msgspec

from router.config import write_private

from .manifest import Manifest
from .materialize import metadata_tree

_inodes_dec = msgspec.msgpack.Decoder(list[int])


class Trees:
    def __init__(self, root: pathlib.Path, redirect: Callable[[str], bytes]) -> None:
        self.root = root
        self._redirect = redirect
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> pathlib.Path:
        return self.root / digest

    def build(self, digest: str, manifest: Manifest) -> pathlib.Path:
        """The metadata tree of this manifest (whose SHA-256 is `digest`), built if missing."""
        tree = self.root / digest
        if tree.exists():
            return tree
        tmp = self.root / f"{digest}.tmp-{secrets.token_hex(4)}"
        try:
            inodes = metadata_tree(manifest, bytes(tmp), self._redirect)
            write_private(self.root / f"{digest}.inodes", zlib.compress(msgspec.msgpack.encode(inodes)))
            os.rename(tmp, tree)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and tree.exists():
                return tree  # built meanwhile by another call
            raise
        return tree

    def inodes(self, digest: str) -> list[int]:
        """The inode of each file of tree `digest`, in manifest order; raises if unreadable."""
        return _inodes_dec.decode(zlib.decompress((self.root / f"{digest}.inodes").read_bytes()))

    def remove_all_but(self, keep: set[str]) -> None:
        """Remove every tree (and its inode list, and leftovers of a build) not in `keep`."""
        for path in self.root.iterdir():
            if path.name.split(".", 1)[0] not in keep:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
