"""How snapshots and gc through many routers share one bucket without locking each other out.

Objects, under the store's prefix:

    claims/ID        what a snapshot's record will reference (blob and manifest keys), written
                     before the record, removed after it
    gc/running/ID    a gc in progress, written again every GC_BEAT_SECS, each time after the gc has
                     read the claims again; stale (the gc died) after GC_STALE_SECS, on the store's clock
    gc/started       written by every gc as it starts: its ETag is the gc generation

A gc writes its marker, then gc/started, then reads the claims; it deletes an object only if no
record it read and no claim it has read (ever, in this pass) names it, it is older than the grace
period, and its marker is fresh. A snapshot writes its claim, then reads gc/started and the
markers. Each side writes before it reads the other's, so one of them always sees the other:
- no gc started or ran since the snapshot began (same generation, no marker then or now): nothing
  was deleted meanwhile, so what the snapshot saw in the bucket (its listing, its uploads, writes
  answered "already there") is there; anything else it names is looked up;
- otherwise it waits until each running gc has read the claims since the claim was written (its
  marker is newer) or has ended, then looks every key up; one missing (a gc took it before it read
  the claim) is UNAVAILABLE, which clients retry.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import NamedTuple

import grpc

from router.errors import RouterError

from .s3 import Bucket

logger = logging.getLogger(__name__)

GC_BEAT_SECS = 5.0
GC_STALE_SECS = 60.0
CLAIM_STALE_SECS = 3600.0  # a claim older than this belongs to a snapshot that died
GC_WAIT_SECS = 120.0  # a snapshot waits this long for an overlapping gc to read its claim
RUNNING, STARTED, CLAIMS = "gc/running/", "gc/started", "claims/"


class Generation(NamedTuple):
    started: str  # gc/started's ETag ("" before any gc)
    running: dict[str, float]  # live gcs' markers: name -> last written (the store's clock)


def generation(bucket: Bucket) -> Generation:
    started = bucket.head(STARTED)
    now = bucket.now()
    running = {o.name: o.modified for o in bucket.list(RUNNING) if now - o.modified < GC_STALE_SECS}
    return Generation(started.etag if started else "", running)


class Listing(NamedTuple):
    generation: str
    names: frozenset[str]  # blobs present when it was taken, with no gc running


class Claim:
    """One snapshot's protection against gc: what it saw (`seen`), then `confirm()` before its record."""

    def __init__(self, bucket: Bucket, at_start: Generation, listing: Listing | None) -> None:
        self._bucket = bucket
        self._at_start = at_start
        self.listing = listing.names if listing is not None else frozenset()
        self.name = CLAIMS + uuid.uuid4().hex
        self.written = False
        self.unbroken = False  # confirmed with no gc since it began: what it saw is there still
        self.seen: set[str] = set()  # keys this snapshot sent or was told were there, while it ran
        self._seen_lock = threading.Lock()

    def saw(self, key: str) -> None:
        with self._seen_lock:
            self.seen.add(key)

    def confirm(self, keys: set[str]) -> None:
        bucket = self._bucket
        bucket.put(self.name, "\n".join(sorted(keys)).encode())
        self.written = True
        head = bucket.head(self.name)
        claimed_at = head.modified if head else bucket.now()
        after = generation(bucket)
        if after.started == self._at_start.started and not self._at_start.running and not after.running:
            unsure = sorted(k for k in keys if k not in self.seen and k[len("blobs/"):] not in self.listing)
            self.unbroken = True
        else:
            self._wait_for(after, claimed_at)
            unsure = sorted(keys)
        missing: list[str] = []
        bucket.each(lambda k: None if bucket.head(k) else missing.append(k), unsure)
        if missing:
            raise RouterError(grpc.StatusCode.UNAVAILABLE,
                              f"the image store {bucket.url} lost {len(missing)} objects this snapshot reuses while "
                              f"it ran (a garbage collection took {missing[0]}): retry the snapshot")

    def _wait_for(self, gcs: Generation, claimed_at: float) -> None:
        """Until every gc running now has read the claims since ours was written, or ended."""
        deadline = time.monotonic() + GC_WAIT_SECS
        waiting = set(gcs.running)
        while True:
            now = generation(self._bucket).running
            waiting = {m for m in waiting if m in now and now[m] <= claimed_at}
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise RouterError(grpc.StatusCode.UNAVAILABLE, f"a garbage collection of {self._bucket.url} did not "
                                                               "read this snapshot's claim in time: retry")
            time.sleep(0.5)


class Sweep:
    """One gc pass: which blobs and documents it may delete, decided under its beat's lock."""

    def __init__(self, bucket: Bucket, marker: str, cutoff: float) -> None:
        self._bucket = bucket
        self._marker = marker
        self._cutoff = cutoff
        self._protected: set[str] = set()  # every key a claim named since the pass began: it only grows
        self._lock = threading.Lock()  # a deletion's decision and a beat's new claims never interleave
        self._beaten = time.monotonic()
        self._stop = threading.Event()
        self._beat_thread = threading.Thread(target=self._beats, name="router-gc-beat", daemon=True)

    def read_claims(self, now: float) -> None:
        for o in list(self._bucket.list(CLAIMS)):
            if now - o.modified > CLAIM_STALE_SECS:
                self._bucket.delete(o.name)
            else:
                self._protected |= set((self._bucket.get(o.name) or b"").decode().split())

    def _beat(self) -> None:
        with self._lock:
            self.read_claims(self._bucket.now())
            self._bucket.put(self._marker, b"")  # written after the read: what a waiting snapshot looks for
            self._beaten = time.monotonic()

    def _beats(self) -> None:
        while not self._stop.wait(GC_BEAT_SECS):
            try:
                self._beat()
            except RouterError as e:
                logger.warning("gc: cannot refresh its marker: %s", e.message, extra={"event": "gc_beat_failed"})

    def start(self) -> None:
        self._beat_thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._beat_thread.is_alive():
            self._beat_thread.join()

    def candidates(self, kind: str) -> Iterator[tuple[str, int]]:
        under = "blobs/" if kind == "blobs" else f"docs/{kind}/"
        for o in list(self._bucket.list(under)):
            if o.modified >= self._cutoff:
                continue
            with self._lock:
                if time.monotonic() - self._beaten > GC_STALE_SECS / 2:
                    raise RouterError(grpc.StatusCode.UNAVAILABLE,
                                      f"gc of {self._bucket.url} stopped: its marker could not be refreshed")
                if o.name in self._protected:
                    continue
                yield o.name[len(under):], o.size  # deleted by the caller before the lock is let go


class Coordinator:
    """A store's side of the protocol: listings shared by the snapshots of one generation, claims, gc passes."""

    def __init__(self, bucket: Bucket) -> None:
        self._bucket = bucket
        self._lock = threading.Lock()
        self._listing: Listing | None = None
        self._tickets = 0  # a listing is installed only over one begun before it
        self._installed = 0

    def _listing_for(self, gen: Generation) -> Listing | None:
        if gen.running:
            return None  # a listing taken while a gc deletes proves nothing
        with self._lock:
            if self._listing is not None and self._listing.generation == gen.started:
                return self._listing
            self._tickets += 1
            ticket = self._tickets
        listing = Listing(gen.started, frozenset(o.name[len("blobs/"):] for o in self._bucket.list("blobs/")))
        with self._lock:
            if ticket > self._installed:
                self._listing, self._installed = listing, ticket
        return listing

    @contextlib.contextmanager
    def claim(self) -> Iterator[Claim]:
        gen = generation(self._bucket)
        claim = Claim(self._bucket, gen, self._listing_for(gen))
        try:
            yield claim
        finally:
            if claim.unbroken:  # the next snapshot of this generation knows what this one sent
                sent = {k[len("blobs/"):] for k in claim.seen if k.startswith("blobs/")}
                with self._lock:
                    if self._listing is not None and self._listing.generation == gen.started:
                        self._listing = self._listing._replace(names=self._listing.names | sent)
            if claim.written:
                with contextlib.suppress(RouterError):  # a leftover goes stale, and the next gc removes it
                    self._bucket.delete(claim.name)

    @contextlib.contextmanager
    def gc_pass(self, grace: float) -> Iterator[Sweep]:
        marker = RUNNING + uuid.uuid4().hex
        self._bucket.put(marker, b"")
        try:
            head = self._bucket.head(marker)
            start = head.modified if head else self._bucket.now()
            self._bucket.put(STARTED, marker.encode())
            sweep = Sweep(self._bucket, marker, start - grace)
            sweep.read_claims(start)
            for o in list(self._bucket.list(RUNNING)):
                if start - o.modified > GC_STALE_SECS:
                    self._bucket.delete(o.name)
            sweep.start()
            try:
                yield sweep
            finally:
                sweep.stop()
        finally:
            with contextlib.suppress(RouterError):
                self._bucket.delete(marker)
