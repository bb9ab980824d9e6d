"""Images in an S3-compatible bucket, with the state directory's store as a bounded read-through cache.

The bucket, under its prefix (README, "Images in object storage"):

    blobs/NAME          content blobs by name (SHA-256, or a sealed image's keyed name), written once
    docs/KIND/NAME      records and manifests, as the local store keeps them
    claims/ID           the blobs a snapshot in progress relies on, until its record is written
    gc/running/ID       a gc in progress (refreshed while it runs; stale after GC_STALE_SECS)
    gc/started          rewritten by every gc as it starts: its ETag is the gc generation
    mounted/STORE/MOUNT the image a mount through the store with this id holds (an id kept in its
                        state directory): gc through any router keeps it

Snapshots and gc never lock each other out. A gc marks what records reference and what claims
name, then deletes only unmarked blobs older than its grace period. A snapshot that reuses a blob
another router stored can lose it to a gc that marked before the snapshot's claim was written: so
once its claim is written, a snapshot looks at the gc generation and the running gcs; if none ran
during the snapshot (the usual case) it is safe; if one did, it waits for that gc to end and checks
that every blob it names is still there, and answers UNAVAILABLE (clients retry) if one is not.
Both sides write their marker before they read the other's, so one of them always sees the other.

The local cache holds blobs for mounts (an overlay's data layer and a copy's source must be local
files): fetched on a mount, least recently used evicted past `cache_bytes`, never a blob of an
image mounted here (`pinned`). Snapshots upload from the walked files and do not fill the cache.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import grpc

from router.errors import RouterError

from .blobs import COPY_CHUNK, LocalBackend
from .s3 import Bucket

logger = logging.getLogger(__name__)

GC_STALE_SECS = 600.0  # a gc whose marker is older than this died: ignored, and removed by the next
GC_REFRESH_SECS = 60.0
CLAIM_STALE_SECS = 3600.0  # a claim older than this belongs to a snapshot that died
GC_WAIT_SECS = 300.0  # how long a snapshot waits for a gc that overlapped it
UPLOADS_IN_FLIGHT = 32  # small blobs a snapshot sends in the background at once
BACKGROUND_MAX = 1 << 20  # a blob up to this size is sent in the background
DEFAULT_GRACE_SECS = 3600.0
_RUNNING, _STARTED, _CLAIMS, _MOUNTED = "gc/running/", "gc/started", "claims/", "mounted/"


class Claim:
    """A snapshot's protection against gc: `confirm(names)` before its record is written."""

    def __init__(self, remote: RemoteBackend, generation: tuple[str, frozenset[str]]) -> None:
        self._remote = remote
        self._before = generation
        self.name = _CLAIMS + uuid.uuid4().hex
        self.written = False
        # The small blobs this snapshot is uploading in the background: done before it confirms.
        self.uploads: list[concurrent.futures.Future[None]] = []
        self.in_flight = threading.Semaphore(UPLOADS_IN_FLIGHT)

    def uploaded(self) -> None:
        """Wait for the background uploads; raise the first that failed."""
        concurrent.futures.wait(self.uploads)
        for f in self.uploads:
            f.result()

    def confirm(self, blobs: set[str], manifest: str) -> None:
        self.uploaded()
        bucket = self._remote.bucket
        keys = sorted({"blobs/" + b for b in blobs} | {f"docs/manifests/{manifest}"})
        bucket.put(self.name, "\n".join(keys).encode())
        self.written = True
        after = self._remote.generation()
        if after[0] == self._before[0] and not self._before[1] and not after[1]:
            return  # no gc marked while this snapshot ran: everything it saw is still there
        deadline = time.monotonic() + GC_WAIT_SECS
        while self._remote.generation()[1] & after[1]:  # the gcs that may have missed the claim
            if time.monotonic() > deadline:
                raise RouterError(grpc.StatusCode.UNAVAILABLE,
                                  f"a garbage collection of {bucket.url} is running: retry the snapshot")
            time.sleep(0.2)
        self._remote.forget_presence()
        missing: list[str] = []
        bucket.each(lambda k: None if bucket.head(k) else missing.append(k), keys)
        if missing:
            raise RouterError(grpc.StatusCode.UNAVAILABLE,
                              f"a garbage collection of {bucket.url} removed {len(missing)} objects this snapshot "
                              f"reuses while it ran (e.g. {missing[0]}): retry the snapshot")


class Sweep:
    """One gc pass over the bucket: which blobs it may delete, if nothing references them."""

    def __init__(self, remote: RemoteBackend, marker: str, cutoff: float, protected: set[str]) -> None:
        self._remote = remote
        self._marker = marker
        self._cutoff = cutoff
        self._protected = protected  # what claims name, as keys under the prefix
        self._refreshed = time.monotonic()

    def candidates(self, kind: str) -> Iterator[tuple[str, int]]:
        """(name, size) of every blob, or document of `kind`, old enough to go and not claimed,
        refreshing this gc's marker as it goes."""
        under = "blobs/" if kind == "blobs" else f"docs/{kind}/"
        for o in list(self._remote.bucket.list(under)):
            if time.monotonic() - self._refreshed > GC_REFRESH_SECS:
                self._remote.bucket.put(self._marker, b"")
                self._refreshed = time.monotonic()
            if o.modified < self._cutoff and o.name not in self._protected:
                yield o.name[len(under):], o.size


class RemoteBackend:
    """The Backend of an image store in a bucket (blobs.Backend); `local` is the cache."""

    keeps_blobs = False  # snapshots do not leave their blobs in the local store

    def __init__(self, bucket: Bucket, local: LocalBackend, cache_bytes: int,
                 pinned: Callable[[], set[str] | None] = set, store_id: str = "") -> None:
        self.bucket = bucket
        self._mounts_under = f"{_MOUNTED}{store_id or uuid.uuid4().hex}/"
        self.local = local
        self.cache_bytes = cache_bytes
        self.pinned = pinned
        self._lock = threading.Lock()
        self._present: set[str] = set()  # blobs seen in the bucket in this gc generation
        self._present_generation: str | None = None
        self._in_use: dict[str, int] = {}  # blobs fetched for a mount under way
        self._claims = threading.local()  # the claim of the snapshot this thread runs, if any
        self._cache: dict[str, tuple[int, float]] = {}  # local blobs: size, last use
        for name in local.blob_names():
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(local.blob_path(name) or "")
                self._cache[name] = (st.st_size, st.st_mtime)

    def close(self) -> None:
        self.bucket.close()

    # -- gc generations, claims and sweeps ---------------------------------------------------------

    def generation(self) -> tuple[str, frozenset[str]]:
        """The gc generation (gc/started's ETag, "" before any gc) and the gcs running now."""
        started = self.bucket.head(_STARTED)
        now = time.time()
        running = frozenset(o.name for o in self.bucket.list(_RUNNING) if now - o.modified < GC_STALE_SECS)
        return (started.etag if started else ""), running

    def forget_presence(self) -> None:
        with self._lock:
            self._present.clear()
            self._present_generation = None

    @contextlib.contextmanager
    def claim(self) -> Iterator[Claim]:
        generation = self.generation()
        with self._lock:
            stale = generation[1] or generation[0] != self._present_generation
        if stale:
            # One listing answers a whole tree's "is this blob there?" until the next gc (a blob
            # another router adds meanwhile is asked for by name).
            present = set() if generation[1] else {o.name[len("blobs/"):] for o in self.bucket.list("blobs/")}
            with self._lock:
                self._present = present
                self._present_generation = None if generation[1] else generation[0]
        claim = Claim(self, generation)
        self._claims.claim = claim
        try:
            yield claim
        finally:
            self._claims.claim = None
            concurrent.futures.wait(claim.uploads)  # none left running after a failed snapshot
            if claim.written:
                with contextlib.suppress(RouterError):  # a leftover goes stale, and the next gc removes it
                    self.bucket.delete(claim.name)

    @contextlib.contextmanager
    def gc_pass(self, grace: float) -> Iterator[Sweep]:
        marker = _RUNNING + uuid.uuid4().hex
        self.bucket.put(marker, b"")
        try:
            head = self.bucket.head(marker)
            start = head.modified if head else time.time()  # the store's clock, as the blobs' times are
            self.bucket.put(_STARTED, marker.encode())
            self.forget_presence()
            protected: set[str] = set()
            for o in list(self.bucket.list(_CLAIMS)):
                if start - o.modified > CLAIM_STALE_SECS:
                    self.bucket.delete(o.name)
                else:
                    protected |= set((self.bucket.get(o.name) or b"").decode().split())
            for o in list(self.bucket.list(_RUNNING)):
                if start - o.modified > GC_STALE_SECS:
                    self.bucket.delete(o.name)
            yield Sweep(self, marker, start - grace, protected)
        finally:
            with contextlib.suppress(RouterError):
                self.bucket.delete(marker)

    # -- mounts ----------------------------------------------------------------------------------------

    def mounts_are(self, mounted: dict[str, str]) -> None:
        marked = {o.name[len(self._mounts_under):] for o in self.bucket.list(self._mounts_under)}
        for mount_id, image_id in mounted.items():
            if mount_id not in marked:
                self.bucket.put(self._mounts_under + mount_id, image_id.encode())
        for mount_id in marked - set(mounted):
            self.bucket.delete(self._mounts_under + mount_id)

    def mounted_anywhere(self) -> set[str]:
        return {(self.bucket.get(o.name) or b"").decode() for o in self.bucket.list(_MOUNTED)} - {""}

    # -- the local cache -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def fetched(self, names: set[str], verify: bool) -> Iterator[int]:
        """Every blob named local (fetched in parallel; with `verify`, each checked against its
        name's SHA-256) and not evicted until the block ends; gives how many were fetched."""
        with self._lock:
            for n in names:
                self._in_use[n] = self._in_use.get(n, 0) + 1
        try:
            missing = sorted(n for n in names if not self.local.has_blob(n))
            self.bucket.each(lambda n: self._fetch(n, verify), missing)
            now = time.time()
            with self._lock:
                for n in names:
                    size = self._cache.get(n, (0, 0.0))[0]
                    self._cache[n] = (size, now)
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
                size = self.bucket.download("blobs/" + name, fd)
                if size is None:
                    raise RouterError(grpc.StatusCode.DATA_LOSS,
                                      f"blob {name} is missing from the image store {self.bucket.url}")
                if verify and _sha256(fd, size) != name:
                    raise RouterError(grpc.StatusCode.DATA_LOSS,
                                      f"blob {name} in the image store {self.bucket.url} does not match its hash")
            finally:
                os.close(fd)
            self.local.publish(tmp, name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            self._cache[name] = (size, time.time())

    def _evict(self) -> None:
        with self._lock:
            total = sum(size for size, _ in self._cache.values())
            if total <= self.cache_bytes:
                return
        keep = self.pinned()
        if keep is None:
            logger.warning("the image cache is over --image-cache-bytes, but what is mounted is unknown: "
                           "nothing evicted", extra={"event": "image_cache_over"})
            return
        with self._lock:
            keep |= set(self._in_use)
            victims = sorted((used, name) for name, (_, used) in self._cache.items() if name not in keep)
            for _, name in victims:
                if total <= self.cache_bytes:
                    break
                total -= self._cache.pop(name)[0]
                self.local.delete_blob(name)
        if total > self.cache_bytes:
            logger.warning("the image cache holds %d bytes, over --image-cache-bytes %d: all of it is mounted",
                           total, self.cache_bytes, extra={"event": "image_cache_over"})

    # -- Backend -------------------------------------------------------------------------------------

    def has_blob(self, name: str) -> bool:
        with self._lock:
            if name in self._present:
                return True
        if getattr(self._claims, "claim", None) is not None:
            # A snapshot listed the bucket as it began: a blob not listed is sent, and a conditional
            # write says "already there" if another router added it since (one request, not two).
            return False
        if self.bucket.head("blobs/" + name) is None:
            return False
        with self._lock:
            self._present.add(name)
        return True

    def _stored(self, name: str, written: bool, size: int) -> int:
        with self._lock:
            self._present.add(name)
        return size if written else 0

    def put_blob(self, name: str, pieces: Iterator[bytes]) -> int:
        size, written = self.bucket.upload_pieces("blobs/" + name, pieces, self.local.spool)
        return self._stored(name, written, size)

    def put_blob_from(self, name: str, fd: int, size: int) -> int:
        claim: Claim | None = getattr(self._claims, "claim", None)
        if claim is None or size > BACKGROUND_MAX:  # a large one goes at once (in parallel parts)
            return self._stored(name, self.bucket.upload_from("blobs/" + name, fd, size), size)
        # A small one is read now and sent while the walk goes on, a few at a time: a tree of
        # small files is as many round trips as files (its confirm() waits for them all).
        data = os.pread(fd, size, 0)
        claim.in_flight.acquire()

        def send() -> None:
            try:
                self._stored(name, self.bucket.put("blobs/" + name, data, if_absent=True), size)
            finally:
                claim.in_flight.release()

        claim.uploads.append(self.bucket.submit(send))
        return size  # sent, unless the bucket turns out to have it already

    def read_blob(self, name: str) -> Iterator[bytes]:
        with self.fetched({name}, verify=False):
            yield from self.local.read_blob(name)

    def blob_path(self, name: str) -> str | None:
        return self.local.blob_path(name) if self.local.has_blob(name) else None

    def blob_root(self) -> str | None:
        return self.local.blob_root()

    def redirect(self, name: str) -> bytes:
        return self.local.redirect(name)

    def delete_blob(self, name: str) -> int:
        self.bucket.delete("blobs/" + name)
        with self._lock:
            self._present.discard(name)
        # Not from the cache: a mount here may read it (an image that expired elsewhere); eviction frees it.
        return 0

    def blob_names(self) -> Iterator[str]:
        for o in self.bucket.list("blobs/"):
            yield o.name[len("blobs/"):]

    def put_doc(self, kind: str, name: str, data: bytes) -> None:
        self.bucket.put(f"docs/{kind}/{name}", data)

    def get_doc(self, kind: str, name: str) -> bytes | None:
        if kind == "manifests":  # immutable: cached once read (a record is not: another router may remove it)
            data = self.local.get_doc(kind, name)
            if data is not None:
                return data
        data = self.bucket.get(f"docs/{kind}/{name}")
        if data is not None and kind == "manifests":
            self.local.put_doc(kind, name, data)
        return data

    def get_docs(self, kind: str, names: list[str]) -> list[bytes | None]:
        docs: dict[str, bytes | None] = {}
        self.bucket.each(lambda n: docs.__setitem__(n, self.get_doc(kind, n)), names)
        return [docs[n] for n in names]

    def delete_doc(self, kind: str, name: str) -> None:
        self.bucket.delete(f"docs/{kind}/{name}")
        self.local.delete_doc(kind, name)

    def doc_names(self, kind: str) -> list[str]:
        start = len(f"docs/{kind}/")
        return sorted(o.name[start:] for o in self.bucket.list(f"docs/{kind}/"))

    def stored_bytes(self) -> int:
        """This host's share: the cache's blobs (the bucket's size is the store's to report)."""
        with self._lock:
            return sum(size for size, _ in self._cache.values())

    def drop_partial(self) -> int:
        return self.local.drop_partial()

    def abort_uploads(self, older_than: float) -> int:
        return self.bucket.abort_uploads(older_than)


def _sha256(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    at = 0
    while at < size:
        piece = os.pread(fd, min(COPY_CHUNK * 4, size - at), at)
        if not piece:
            break
        digest.update(piece)
        at += len(piece)
    return digest.hexdigest()

