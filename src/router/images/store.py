"""The image store: snapshots of directories, mounts of them, expiry and garbage collection.

Layout under STATE_DIR/images/ (README, "Images"):

    store/         the Backend (blobs.py): content blobs by SHA-256, records and manifests
    trees/H/       overlay metadata tree of the manifest whose SHA-256 is H (shared by equal images)
    trees/H.inodes the inode of each file of manifest H in that tree, in manifest order (zlib'd msgpack)
    mounts/ID/     a mount's own upper and work directories
    mounts.msgpack the mount table (mounts.MountTable)
    statcache      (device, inode, size, mtime, ctime, SHA-256) of files snapshots have read (zlib'd msgpack)
    lock           flock: snapshots hold it shared, gc and rm exclusive (the CLI uses it too)

Every method raises RouterError with the status the RPC answers.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import pathlib
import secrets
import shutil
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Literal

import grpc
import msgspec

from router.config import write_private
from router.errors import RouterError, invalid, not_found

from . import collection, mounts
from . import manifest as manifests
from .args import MountArgs, SnapshotArgs
from .blobs import Backend, LocalBackend
from .crypt import ImageKey, WrongKey
from .fs import empty_dir, outside_state, store_error
from .manifest import Entry, Manifest, ManifestError
from .materialize import copy_tree
from .records import GcResult, ImageRecord, decode_record, encode_record, new_image_id, valid_image_id
from .snapshot import FileChanging, OverlayBase, StatCache, Walk, load_stat_cache, save_stat_cache
from .trees import Trees

logger = logging.getLogger(__name__)

MountMethod = Literal["auto", "overlay", "copy"]
_RECORDS, _MANIFESTS = collection.RECORDS, collection.MANIFESTS
_STAT_CACHE_LIMIT = 1_000_000


class Images:
    def __init__(self, state_dir: pathlib.Path, method: MountMethod = "auto",
                 backend: Callable[[LocalBackend], Backend] | None = None, serving: bool = True) -> None:
        """`backend(local)`: where images live, given the local store (for a cache); by default the
        local store itself. `serving`: a server's (the CLI's leaves the mount marks alone)."""
        self.root = state_dir / "images"
        self._state_dir = os.path.realpath(state_dir).encode()
        local = LocalBackend(self.root / "store")
        self.backend: Backend = backend(local) if backend else local
        self._trees = Trees(self.root / "trees", self.backend.redirect)
        self._mounts = self.root / "mounts"
        self._empty = self.root / "empty"
        for d in (self._mounts, self._empty):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / "lock"
        self._lock = threading.Lock()  # the mount table, the stat cache, the snapshot index
        self._snapshot_locks: dict[str, threading.Lock] = {}
        self._validated: set[str] = set()  # hashes of manifests validated since this store opened
        self._table_path = self.root / "mounts.msgpack"
        self._cache_path = self.root / "statcache"
        self._table = mounts.load_table(self._table_path)
        self._cache: StatCache = load_stat_cache(self._cache_path)
        if method == "auto":
            method = "overlay" if mounts.can_mount(self.root) else "copy"
        self.method: mounts.Method = method
        self._by_snapshot = {r.snapshot_id: r.id for r in self.records() if r.snapshot_id}
        if serving and not self.backend.keeps_blobs:
            self.backend.mounts_are(mounts.image_mounts(self._table))
            for m in self._table.mounts:  # the cache keeps what the overlay mounts of an earlier run read
                if m.method == "overlay" and m.image_id:
                    try:
                        record = self.record_any(m.image_id)
                        self.backend.pin(m.mount_id, set() if record.encrypted else self.manifest(record, None).blobs())
                    except RouterError:
                        self.backend.pin(m.mount_id, None)  # unknown now: keep everything

    # -- persistence ---------------------------------------------------------------------------

    def _save_table(self) -> None:
        write_private(self._table_path, msgspec.msgpack.encode(self._table))

    @contextlib.contextmanager
    def _flock(self, exclusive: bool) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- records -------------------------------------------------------------------------------

    def records(self) -> list[ImageRecord]:
        docs = self.backend.get_docs(_RECORDS, self.backend.doc_names(_RECORDS))
        return sorted((decode_record(d) for d in docs if d is not None), key=lambda r: r.created)

    def record(self, image_id: str) -> ImageRecord:
        """The live record of image_id; NOT_FOUND if unknown or expired."""
        record = self.record_any(image_id)
        if record.expired(time.time()):
            raise not_found(f"image {image_id!r} not found: it expired")
        return record

    def manifest(self, record: ImageRecord, key: bytes | None) -> Manifest:
        data = self.backend.get_doc(_MANIFESTS, record.id if record.encrypted else record.manifest_sha256)
        if data is None:
            raise RouterError(grpc.StatusCode.DATA_LOSS, f"image {record.id!r} has lost its manifest")
        if record.encrypted:
            if key is None:
                raise RouterError(grpc.StatusCode.PERMISSION_DENIED,
                                  f"image {record.id!r} is encrypted: mounting it needs its key")
            try:
                data = ImageKey(key, record.salt).open_bytes(data)
            except WrongKey:
                raise RouterError(grpc.StatusCode.PERMISSION_DENIED,
                                  f"the key given does not open image {record.id!r}") from None
        digest = None
        if not record.encrypted:  # (a sealed one is authenticated by its key)
            digest = hashlib.sha256(data).hexdigest()
            if digest != record.manifest_sha256:
                raise RouterError(grpc.StatusCode.DATA_LOSS,
                                  f"image {record.id!r} has a manifest that does not match its hash")
        try:
            # One that matches a hash validated before is the same manifest: validating it again
            # would cost a copy mount of 20,000 files 50 ms.
            manifest = manifests.decode(data, trusted=digest in self._validated)
        except ManifestError as e:
            raise RouterError(grpc.StatusCode.DATA_LOSS, f"image {record.id!r} has a bad manifest: {e}") from None
        if digest is not None:
            with self._lock:
                self._validated.add(digest)
        return manifest

    # -- snapshot ------------------------------------------------------------------------------

    def snapshot(self, args: SnapshotArgs) -> str:
        if args.snapshot_id:
            with self._lock:
                lock = self._snapshot_locks.setdefault(args.snapshot_id, threading.Lock())
            with lock:  # a retry while the first call still runs waits for it, then answers the same
                known = self._by_snapshot.get(args.snapshot_id)
                if known is not None and self.backend.get_doc(_RECORDS, known) is not None:
                    return known
                image_id = self._snapshot(args)
                with self._lock:
                    self._by_snapshot[args.snapshot_id] = image_id
                return image_id
        return self._snapshot(args)

    def _snapshot(self, args: SnapshotArgs) -> str:
        try:
            st = os.lstat(args.path)
        except FileNotFoundError:
            raise not_found(f"{args.path!r} does not exist") from None
        except NotADirectoryError:
            raise not_found(f"{args.path!r} does not exist (a component is not a directory)") from None
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise invalid("path", f"{args.path!r}: {e.strerror}") from None
            raise store_error(e, f"snapshot of {args.path!r}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, f"{args.path!r} is not a directory")
        outside_state(self._state_dir, args.path)
        image_id = new_image_id()
        key = salt = None
        if args.key is not None:
            salt = os.urandom(16)
            key = ImageKey(args.key, salt)
        with self._lock:
            cache = dict(self._cache)
        walk = Walk(self.backend, cache, key, self._overlay_base(args.path) if key is None else None)
        with self._flock(exclusive=False), self.backend.claim() as claim:
            try:
                manifest = walk.manifest(args.path)
            except FileChanging as e:
                raise RouterError(grpc.StatusCode.ABORTED, f"snapshot of {args.path!r}: {e}") from None
            except PermissionError as e:
                raise RouterError(grpc.StatusCode.PERMISSION_DENIED, f"snapshot of {args.path!r}: {e}") from None
            except OSError as e:
                raise store_error(e, f"snapshot of {args.path!r}") from None
            data = manifests.encode(manifest)
            digest = hashlib.sha256(data).hexdigest()
            try:
                if key is None and self.method == "overlay" and self.backend.keeps_blobs:
                    self._trees.build(digest, manifest)
                if key is not None:
                    self.backend.put_doc(_MANIFESTS, image_id, key.seal_bytes(data))
                else:
                    self.backend.put_doc_once(_MANIFESTS, digest, data)  # equal trees share one manifest
                now = time.time()
                record = ImageRecord(
                    id=image_id, snapshot_id=args.snapshot_id, created=now,
                    expires=None if args.ttl_secs is None else now + args.ttl_secs, source=args.path,
                    entries=len(manifest.entries), content_bytes=manifest.content_bytes(),
                    added_bytes=walk.stored, manifest_sha256=digest,
                    blobs=sorted(manifest.blobs()) if key is not None else [],
                    encrypted=key is not None, salt=salt or b"")
                claim.confirm(manifest.blobs(), image_id if key is not None else digest)
                self.backend.put_doc(_RECORDS, image_id, encode_record(record))
            except OSError as e:
                raise store_error(e, f"storing the snapshot of {args.path!r}") from None
        if walk.seen:
            with self._lock:
                if len(self._cache) > _STAT_CACHE_LIMIT:
                    self._cache.clear()
                self._cache.update(walk.seen)
                save_stat_cache(self._cache_path, self._cache)
        logger.info("snapshot %s of %r: %d entries, %d bytes read, %d bytes added", image_id, args.path,
                    len(manifest.entries), walk.read, walk.stored,
                    extra={"event": "image_snapshot", "image_id": image_id, "bytes_added": walk.stored})
        return image_id

    def _overlay_base(self, path: bytes) -> OverlayBase | None:
        """The walked directory's own overlay mount of an unencrypted image, if it is the newest mount there."""
        top = self._top(os.path.realpath(path))
        if top is None or top.method != "overlay" or not top.image_id:
            return None
        try:
            record = self.record(top.image_id)
        except RouterError:
            return None
        if record.encrypted:
            return None
        try:
            inodes = self._trees.inodes(record.manifest_sha256)
            files = [e.blob for e in self.manifest(record, None).entries if e.kind == "file"]
        except (FileNotFoundError, msgspec.DecodeError, zlib.error, RouterError):
            return None
        if len(inodes) != len(files):
            return None
        return OverlayBase(upper=bytes(self._mounts / top.mount_id / "upper"),
                           blobs_by_inode=dict(zip(inodes, files, strict=True)))

    # -- mount and unmount -----------------------------------------------------------------------

    def _top(self, path: bytes) -> mounts.MountRecord | None:
        with self._lock:
            for m in reversed(self._table.mounts):
                if m.path == path:
                    return m
        return None

    def mount(self, args: MountArgs) -> None:
        # Mounts are known by the directory itself: a path through a symlink names the same mount
        # (the kernel's mount table lists resolved paths, and a restart reads that table).
        target = os.path.realpath(args.path)
        if target == b"/":
            raise invalid("path", f"{args.path!r} resolves to /")
        outside_state(self._state_dir, target)
        if self._mounted_there(target, args.image_id):  # a retry: already mounted there
            return
        mount_id = secrets.token_hex(8)
        if args.image_id:
            self.backend.mark_mount(mount_id, args.image_id)  # first: from now on no gc or rm elsewhere takes it
        entry = None
        try:
            record = self.record(args.image_id) if args.image_id else None
            manifest = None
            if record is not None and (record.encrypted or self.method != "overlay" or not self.backend.keeps_blobs
                                       or not self._trees.path(record.manifest_sha256).is_dir()):
                manifest = self.manifest(record, args.key)  # else the tree, built from it, is all a mount needs
            blobs = manifest.blobs() if manifest is not None else set()
            plain = record is not None and not record.encrypted
            # gc must not collect the image meanwhile; a remote store's blobs come to the cache first.
            with self._flock(exclusive=False), self.backend.fetched(blobs, verify=plain), self._lock:
                if self._mounted_there(target, args.image_id, locked=True):
                    return  # mounted by a call that ran meanwhile
                entry = self._mount_new(target, mount_id, record, manifest, args.key, blobs if plain else set())
                self._table.mounts.append(entry)
                self._save_table()
        finally:
            if entry is None and args.image_id:
                self.backend.unmark_mount(mount_id)
        logger.info("mounted %s at %r (%s)", args.image_id or "an empty directory", target, self.method,
                    extra={"event": "image_mounted", "image_id": args.image_id, "method": self.method})

    def _mounted_there(self, target: bytes, image_id: str, locked: bool = False) -> bool:
        with contextlib.nullcontext() if locked else self._lock:
            top = next((m for m in reversed(self._table.mounts) if m.path == target), None)
            return top is not None and top.image_id == image_id

    def _mount_new(self, target: bytes, mount_id: str, record: ImageRecord | None, manifest: Manifest | None,
                   key: bytes | None, plain_blobs: set[str]) -> mounts.MountRecord:
        created = False  # (the lock held, the blobs local)
        if os.path.lexists(target):
            if not os.path.isdir(target):
                raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, f"{target!r} exists and is not a directory")
        else:
            try:
                os.makedirs(target, 0o755)
            except OSError as e:
                raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot create {target!r}: {e.strerror}") \
                    from None
            created = True
        try:
            if self.method == "overlay":
                self.backend.pin(mount_id, plain_blobs)  # the overlay reads them from the cache
                self._mount_overlay(target, mount_id, record, manifest, key)
                hidden = b""
            else:
                hidden = self._mount_copy(target, mount_id, record, manifest, key)
            return mounts.MountRecord(target, record.id if record else "", self.method, mount_id, hidden=hidden,
                                      created=created)
        except BaseException as e:
            self.backend.unpin(mount_id)
            shutil.rmtree(self._mounts / mount_id, ignore_errors=True)
            if isinstance(e, OSError):
                raise store_error(e, f"mount at {target!r}") from None
            raise

    def _content(self, record: ImageRecord, key: bytes | None) -> Callable[[Entry], Iterator[bytes]]:
        if record.encrypted:
            assert key is not None
            image_key = ImageKey(key, record.salt)
            return lambda e: image_key.open(self.backend.read_blob(e.blob))
        return lambda e: self.backend.read_blob(e.blob)

    def _mount_overlay(self, target: bytes, mount_id: str, record: ImageRecord | None, manifest: Manifest | None,
                       key: bytes | None) -> None:
        own = self._mounts / mount_id
        upper, work = own / "upper", own / "work"
        own.mkdir()
        work.mkdir()
        lowers, data_only = [bytes(self._empty)], None
        if record is None:
            upper.mkdir(0o755)
        elif record.encrypted:
            assert manifest is not None
            copy_tree(manifest, bytes(upper), self._content(record, key))  # sealed blobs: no data layer
        else:
            tree = (self._trees.path(record.manifest_sha256) if manifest is None
                    else self._trees.build(record.manifest_sha256, manifest))
            lowers, data_only = [bytes(tree)], self.backend.blob_root()
            upper.mkdir()
            root = os.stat(tree)  # the tree's root holds the manifest's root entry
            os.chown(upper, root.st_uid, root.st_gid)
            os.chmod(upper, stat.S_IMODE(root.st_mode))
            os.utime(upper, ns=(root.st_mtime_ns, root.st_mtime_ns))
        mounts.overlay_mount(target, lowers, data_only.encode() if data_only else None, bytes(upper), bytes(work))

    def _mount_copy(self, target: bytes, mount_id: str, record: ImageRecord | None, manifest: Manifest | None,
                    key: bytes | None) -> bytes:
        hidden = b""
        if os.listdir(target):
            hidden = mounts.hide(target, mount_id)
            os.mkdir(target, 0o755)
        if record is not None and manifest is not None:
            local = (lambda e: None) if record.encrypted else (lambda e: self.backend.blob_path(e.blob))
            try:
                copy_tree(manifest, target, self._content(record, key), local)
            except BaseException:
                empty_dir(target)
                if hidden:
                    os.rmdir(target)
                    os.rename(hidden, target)
                raise
        return hidden

    def unmount(self, path: bytes) -> None:
        path = os.path.realpath(path)
        with self._lock:
            top = next((m for m in reversed(self._table.mounts) if m.path == path), None)
            if top is None:
                raise not_found(f"no image is mounted at {path!r}")
            try:
                if top.method == "overlay":
                    detached = mounts.unmount(path)
                    own = self._mounts / top.mount_id
                    if detached:  # still in use: its upper layer goes once the last user does
                        logger.warning("%r was busy: detached lazily", path, extra={"event": "unmount_lazy"})
                    else:
                        shutil.rmtree(own, ignore_errors=True)
                else:
                    empty_dir(path)
                    if top.hidden:
                        os.rmdir(path)
                        os.rename(top.hidden, path)
            except OSError as e:
                raise store_error(e, f"unmount of {path!r}") from None
            self._table.mounts.remove(top)
            self.backend.unpin(top.mount_id)
            self._save_table()
        self.backend.unmark_mount(top.mount_id)  # a bucket's round trip, outside the lock

    def mounted_images(self) -> set[str]:
        with self._lock:
            return {m.image_id for m in self._table.mounts if m.image_id}

    def mount_paths(self) -> list[bytes]:
        """Where images are mounted now, oldest mount first."""
        with self._lock:
            return [m.path for m in self._table.mounts]

    # -- maintenance ---------------------------------------------------------------------------

    def remove(self, image_id: str) -> None:
        record = self.record_any(image_id)
        if image_id in self.mounted_images() | mounts.table_images(self._table_path) | self.backend.mounted_anywhere():
            raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, f"image {image_id!r} is mounted")
        with self._flock(exclusive=True):
            self.backend.delete_doc(_RECORDS, record.id)
            if record.encrypted:
                self.backend.delete_doc(_MANIFESTS, record.id)  # a shared one goes at gc, once unused

    def record_any(self, image_id: str) -> ImageRecord:
        """The record, expired or not; NOT_FOUND if there is none."""
        data = self.backend.get_doc(_RECORDS, image_id) if valid_image_id(image_id) else None
        if data is None:
            raise not_found(f"image {image_id!r} not found")
        return decode_record(data)

    def gc(self, grace: float = 0.0) -> GcResult:
        """Remove expired images (unless mounted), then what no image references (collection.py)."""
        mounted = self.mounted_images() | mounts.table_images(self._table_path) | self.backend.mounted_anywhere()
        with self._flock(exclusive=True):
            return collection.collect(self.backend, self.records, lambda r: self.manifest(r, None), mounted,
                                      self._trees, grace)

    def startup(self) -> None:
        """At a server's start: what a crash left half-written; expired images, in a local store
        (a bucket's are an operator's `router images gc`, not every router's start)."""
        if self.backend.keeps_blobs:
            self.gc()
        else:
            self.backend.drop_partial()

    def close(self) -> None:
        self.backend.close()
