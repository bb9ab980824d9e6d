"""The local cache of a bucket's blobs: what mounts read from, bounded, least recently used evicted first.

Mounts need local files (an overlay's data layer, a copy's source): a mount fetches its blobs
(fetched()), in parallel, each checked against its hash as its ranges land. Past `cache_bytes`
the least recently used blobs go, never one in use by a mount under way and never one an overlay
mount reads from (pinned by the store, per mount; a mount whose blobs could not be known pins
everything). Eviction takes only this cache's own lock.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from router.errors import RouterError

from .blobs import LocalBackend, read_pieces
from .s3 import Bucket

logger = logging.getLogger(__name__)

EVERYTHING = None  # pin(): the blobs of this mount are unknown: keep them all


class BlobCache:
    def __init__(self, bucket: Bucket, local: LocalBackend, cache_bytes: int) -> None:
        self._bucket = bucket
        self.local = local
        self.cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._in_use: dict[str, int] = {}  # blobs fetched for a mount under way
        self._pins: dict[str, frozenset[str] | None] = {}  # per mount: its blobs, or EVERYTHING
        self._sizes: dict[str, tuple[int, float]] = {}  # local blobs: size, last use
        for name in local.blob_names():
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(local.blob_path(name) or "")
                self._sizes[name] = (st.st_size, st.st_mtime)

    def pin(self, mount: str, names: set[str] | None) -> None:
        with self._lock:
            self._pins[mount] = EVERYTHING if names is None else frozenset(names)

    def unpin(self, mount: str) -> None:
        with self._lock:
            self._pins.pop(mount, None)

    def held_bytes(self) -> int:
        with self._lock:
            return sum(size for size, _ in self._sizes.values())

    @contextlib.contextmanager
    def fetched(self, names: set[str], verify: bool) -> Iterator[int]:
        """Every blob named a local file until the block ends; how many had to be fetched."""
        with self._lock:
            for n in names:
                self._in_use[n] = self._in_use.get(n, 0) + 1
        try:
            missing = sorted(n for n in names if not self.local.has_blob(n))
            self._bucket.each(lambda n: self._fetch(n, verify), missing)
            now = time.time()
            with self._lock:
                for n in names:
                    self._sizes[n] = (self._sizes.get(n, (0, 0.0))[0], now)
            if missing:
                self._evict()
            yield len(missing)
        finally:
            with self._lock:
                for n in names:
                    if self._in_use[n] == 1:
                        del self._in_use[n]
                    else:
                        self._in_use[n] -= 1

    def _fetch(self, name: str, verify: bool) -> None:
        tmp, fd = self.local.tmpfile()
        try:
            try:
                digest = hashlib.sha256()  # hashed range by range as they land, beside the download
                size = self._bucket.download("blobs/" + name, fd,
                                             (lambda at, n: _hash_range(digest, fd, at, n)) if verify else None)
                if size is None:
                    raise RouterError(grpc.StatusCode.DATA_LOSS,
                                      f"blob {name} is missing from the image store {self._bucket.url}")
                if verify and digest.hexdigest() != name:
                    raise RouterError(grpc.StatusCode.DATA_LOSS,
                                      f"blob {name} in the image store {self._bucket.url} does not match its hash")
            finally:
                os.close(fd)
            self.local.publish(tmp, name)
            self.local.redirect(name)  # its short second name, which eviction took with it: trees redirect to it
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            self._sizes[name] = (size, time.time())

    def _evict(self) -> None:
        with self._lock:
            total = sum(size for size, _ in self._sizes.values())
            if total <= self.cache_bytes:
                return
            if any(p is EVERYTHING for p in self._pins.values()):
                logger.warning("the image cache is over --image-cache-bytes, but what a mount reads is unknown: "
                               "nothing evicted", extra={"event": "image_cache_over"})
                return
            keep = set(self._in_use).union(*(p for p in self._pins.values() if p is not None))
            for _, name in sorted((used, name) for name, (_, used) in self._sizes.items() if name not in keep):
                if total <= self.cache_bytes:
                    break
                total -= self._sizes.pop(name)[0]
                self.local.delete_blob(name)
        if total > self.cache_bytes:
            logger.warning("the image cache holds %d bytes, over --image-cache-bytes %d: all of it is in use",
                           total, self.cache_bytes, extra={"event": "image_cache_over"})


def _hash_range(digest: Any, fd: int, offset: int, size: int) -> None:
    for piece in read_pieces(fd, size, offset):
        digest.update(piece)
