"""Garbage collection of an image store: expired images, then what no image references.

Mark and sweep: the records left after expiry mark their blobs and manifests; the backend's gc pass
(blobs.Backend.gc_pass) says which blobs and manifests may go (in a bucket: older than the grace
period and claimed by no snapshot in progress, remote.py); the rest of those go.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from router.errors import RouterError

from .blobs import Backend
from .manifest import Manifest
from .records import GcResult, ImageRecord
from .trees import Trees

logger = logging.getLogger(__name__)

RECORDS, MANIFESTS = "images", "manifests"
ABANDONED_UPLOAD_SECS = 24 * 3600.0  # a multipart upload this old was left by a router that died


def collect(backend: Backend, records: Callable[[], list[ImageRecord]], manifest: Callable[[ImageRecord], Manifest],
            mounted: set[str], trees: Trees, grace: float) -> GcResult:
    """Called with the store's exclusive lock held; `mounted`: images that must stay."""
    now = time.time()
    images = blobs = freed = 0
    with backend.gc_pass(grace) as sweep:
        backend.drop_partial()
        backend.abort_uploads(now - max(grace, ABANDONED_UPLOAD_SECS))
        live = []
        for record in records():
            if record.expired(now) and record.id not in mounted:
                backend.delete_doc(RECORDS, record.id)
                images += 1
            else:
                live.append(record)
        wanted = {b for r in live for b in r.blobs}
        for record in {r.manifest_sha256: r for r in live if not r.encrypted}.values():
            try:
                wanted |= manifest(record).blobs()
            except RouterError:
                logger.error("gc: the manifest %s cannot be read; all content is kept", record.manifest_sha256)
                return GcResult(images, blobs, freed)  # keep everything rather than guess
        manifests_wanted = {r.id if r.encrypted else r.manifest_sha256 for r in live}
        for name, _ in sweep.candidates(MANIFESTS):
            if name not in manifests_wanted:
                backend.delete_doc(MANIFESTS, name)
        for name, size in sweep.candidates("blobs"):
            if name not in wanted:
                deleted = backend.delete_blob(name)
                freed += size or deleted
                blobs += 1
        trees.remove_all_but({r.manifest_sha256 for r in live})
    return GcResult(images, blobs, freed)
