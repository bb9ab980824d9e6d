"""Images in an S3-compatible bucket, with the state directory's store as a bounded read-through cache.

The bucket, under its prefix (README, "Images in object storage"):

    blobs/NAME          content blobs by name (SHA-256, or a sealed image's keyed name), written once
    docs/KIND/NAME      records and manifests, as the local store keeps them
    claims/, gc/        how snapshots and gc share the bucket (bucket_gc.py)
    mounted/STORE/MOUNT the image a mount through the store with this id holds (an id kept in its
                        state directory): gc and rm through any router leave it alone

Snapshots upload from the walked files, small blobs in the background while the walk goes on; every
write is conditional (If-None-Match), so routers storing the same content at once all succeed.
Mounts read from the local cache (blob_cache.py).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator

from router.errors import RouterError

from .blob_cache import BlobCache
from .blobs import LocalBackend
from .bucket_gc import Claim, Coordinator, Sweep
from .s3 import Bucket

logger = logging.getLogger(__name__)

UPLOADS_IN_FLIGHT = 32  # small blobs a snapshot sends in the background at once
BACKGROUND_MAX = 1 << 20  # a blob up to this size is sent in the background
_MOUNTED = "mounted/"


class SnapshotClaim:
    """A snapshot's claim (bucket_gc.Claim) and the uploads it has in flight."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.uploads: list[concurrent.futures.Future[None]] = []
        self.in_flight = threading.Semaphore(UPLOADS_IN_FLIGHT)

    def uploaded(self) -> None:
        """Wait for the background uploads; raise the first that failed."""
        concurrent.futures.wait(self.uploads)
        for f in self.uploads:
            f.result()

    def confirm(self, blobs: set[str], manifest: str) -> None:
        self.uploaded()
        self.claim.confirm({"blobs/" + b for b in blobs} | {f"docs/manifests/{manifest}"})


class RemoteBackend:
    """The Backend of an image store in a bucket (blobs.Backend); `local` is the cache's store."""

    keeps_blobs = False  # snapshots do not leave their blobs in the local store

    def __init__(self, bucket: Bucket, local: LocalBackend, cache_bytes: int, store_id: str) -> None:
        self.bucket = bucket
        self.local = local
        self.cache = BlobCache(bucket, local, cache_bytes)
        self._gc = Coordinator(bucket)
        self._mounts_under = f"{_MOUNTED}{store_id}/"
        self._claims = threading.local()  # the claim of the snapshot this thread runs, if any

    def close(self) -> None:
        self.bucket.close()

    def _claim(self) -> SnapshotClaim | None:
        claim: SnapshotClaim | None = getattr(self._claims, "claim", None)
        return claim

    # -- snapshots and gc (bucket_gc.py) -------------------------------------------------------------

    @contextlib.contextmanager
    def claim(self) -> Iterator[SnapshotClaim]:
        with self._gc.claim() as claim:
            snapshot = SnapshotClaim(claim)
            self._claims.claim = snapshot
            try:
                yield snapshot
            finally:
                self._claims.claim = None
                concurrent.futures.wait(snapshot.uploads)  # none outlives a failed snapshot, nor its claim

    @contextlib.contextmanager
    def gc_pass(self, grace: float) -> Iterator[Sweep]:
        with self._gc.gc_pass(grace) as sweep:
            yield sweep

    # -- mounts --------------------------------------------------------------------------------------

    def mark_mount(self, mount_id: str, image_id: str) -> None:
        """Before a mount is made: from then on no router's gc or rm takes the image."""
        self.bucket.put(self._mounts_under + mount_id, image_id.encode())

    def unmark_mount(self, mount_id: str) -> None:
        """Once a mount is gone (or was never made). Best effort: a bucket that cannot be reached
        now loses the mark at this router's next start (mounts_are)."""
        try:
            self.bucket.delete(self._mounts_under + mount_id)
        except RouterError as e:
            logger.warning("cannot remove mount %s's mark: %s", mount_id, e.message,
                           extra={"event": "image_marks_failed"})

    def mounts_are(self, mounted: dict[str, str]) -> None:
        """At a start: marks for exactly these mounts, those of mounts gone removed (best effort)."""
        try:
            marked = {o.name[len(self._mounts_under):] for o in self.bucket.list(self._mounts_under)}
            for mount_id in set(mounted) - marked:
                self.mark_mount(mount_id, mounted[mount_id])
        except RouterError as e:
            logger.warning("cannot update this router's mount marks: %s", e.message,
                           extra={"event": "image_marks_failed"})
            return
        for mount_id in marked - set(mounted):
            self.unmark_mount(mount_id)

    def mounted_anywhere(self) -> set[str]:
        return {(self.bucket.get(o.name) or b"").decode() for o in self.bucket.list(_MOUNTED)} - {""}

    def pin(self, mount_id: str, names: set[str] | None) -> None:
        self.cache.pin(mount_id, names)

    def unpin(self, mount_id: str) -> None:
        self.cache.unpin(mount_id)

    def fetched(self, names: set[str], verify: bool) -> contextlib.AbstractContextManager[int]:
        return self.cache.fetched(names, verify)

    # -- Backend -------------------------------------------------------------------------------------

    def has_blob(self, name: str) -> bool:
        snapshot = self._claim()
        if snapshot is not None:
            # The snapshot's listing answers; a blob not listed is sent, and the conditional write
            # says "already there" if another router added it since (one request, not two).
            return name in snapshot.claim.listing or "blobs/" + name in snapshot.claim.seen
        return self.bucket.head("blobs/" + name) is not None

    def _stored(self, name: str, written: bool, size: int) -> int:
        snapshot = self._claim()
        if snapshot is not None:
            snapshot.claim.saw("blobs/" + name)
        return size if written else 0

    def put_blob(self, name: str, pieces: Iterator[bytes], settled: Callable[[], None] = lambda: None) -> int:
        size, written = self.bucket.upload_pieces("blobs/" + name, pieces, self.local.spool, settled)
        return self._stored(name, written, size)

    def put_blob_from(self, name: str, fd: int, size: int, settled: Callable[[], None] = lambda: None) -> int:
        snapshot = self._claim()
        if snapshot is None or size > BACKGROUND_MAX:  # a large one goes at once (in parallel parts)
            return self._stored(name, self.bucket.upload_from("blobs/" + name, fd, size, settled), size)
        # A small one is read now and sent while the walk goes on, a few at a time: a tree of
        # small files is as many round trips as files (its confirm() waits for them all).
        data = os.pread(fd, size, 0)
        settled()
        snapshot.in_flight.acquire()

        def send() -> None:
            try:
                self.bucket.put("blobs/" + name, data, if_absent=True)  # False: there already, as good
                snapshot.claim.saw("blobs/" + name)
            finally:
                snapshot.in_flight.release()

        try:
            snapshot.uploads.append(self.bucket.submit(send))
        except BaseException:
            snapshot.in_flight.release()
            raise
        return size  # sent, unless the bucket turns out to have it already

    def read_blob(self, name: str) -> Iterator[bytes]:
        if self.local.has_blob(name):  # a mount's blobs are fetched (and held) before it reads them
            yield from self.local.read_blob(name)
            return
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
        return 0  # not from the cache: a mount here may read it; eviction frees it

    def blob_names(self) -> Iterator[str]:
        for o in self.bucket.list("blobs/"):
            yield o.name[len("blobs/"):]

    def put_doc(self, kind: str, name: str, data: bytes) -> None:
        self.bucket.put(f"docs/{kind}/{name}", data)

    def put_doc_once(self, kind: str, name: str, data: bytes) -> None:
        self.bucket.put(f"docs/{kind}/{name}", data, if_absent=True)  # False: there already, as good
        snapshot = self._claim()
        if snapshot is not None:
            snapshot.claim.saw(f"docs/{kind}/{name}")

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
        return self.cache.held_bytes()

    def drop_partial(self) -> int:
        return self.local.drop_partial()

    def abort_uploads(self, older_than: float) -> int:
        return self.bucket.abort_uploads(older_than)
