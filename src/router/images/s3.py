"""An S3-compatible bucket as the image store uses it: objects under one prefix, written only if
absent, large ones in parallel parts, read in parallel ranges. Every failure is a RouterError that
names the bucket: UNAVAILABLE when it cannot be reached (clients retry it), FAILED_PRECONDITION
when it refuses (access denied, no such bucket), never INTERNAL.

Credentials come from boto3's standard chain (environment, shared config files, instance roles).
boto3's managed transfer cannot send If-None-Match, so multipart uploads are written here: a part
list completed with If-None-Match: * is how two routers storing the same blob at once both
succeed (the second gets 412, "already there"), and an upload that fails is aborted.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import email.utils
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import grpc

from router.errors import RouterError

from .blobs import write_at

PART_BYTES = 16 << 20  # at or below this a blob is one PUT; above, parts of this size
THREADS = 8  # parts and ranges in flight per bucket
T = TypeVar("T")


class BucketUrl(NamedTuple):
    bucket: str
    prefix: str  # "" or ending in "/"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def parse_url(url: str) -> BucketUrl:
    """s3://BUCKET[/PREFIX]; ValueError saying what is wrong."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not s3://BUCKET[/PREFIX]")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket")
    prefix = prefix.strip("/")
    return BucketUrl(bucket, prefix + "/" if prefix else "")


class StoredObject(NamedTuple):
    name: str  # relative to the prefix
    size: int
    modified: float  # the store's clock, unix time
    etag: str = ""


def _status(e: Exception) -> tuple[str, int]:
    response: dict[str, Any] = getattr(e, "response", {}) or {}
    return (str(response.get("Error", {}).get("Code", "")),
            int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)))


class Bucket:
    def __init__(self, url: BucketUrl, endpoint: str | None = None, region: str | None = None,
                 threads: int = THREADS) -> None:
        import boto3  # only a router with a bucket pays for importing it
        from botocore.config import Config

        logging.getLogger("botocore").setLevel(logging.WARNING)  # not a line per credential lookup
        self.url = url
        self._threads = threads
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                        max_pool_connections=2 * threads)
        with self._calling("be configured"):  # a profile named in the environment that does not exist, say
            self._client = boto3.session.Session().client("s3", endpoint_url=endpoint or None,
                                                         region_name=region or None, config=config)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self._client.close()

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise RouterError(grpc.StatusCode.UNAVAILABLE, "the router is stopping")
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="router-s3")
            return self._pool

    def submit(self, fn: Callable[[], None]) -> concurrent.futures.Future[None]:
        """fn() on one of the bucket's threads."""
        return self._executor().submit(fn)

    def each(self, fn: Callable[[T], None], items: list[T], then: Callable[[T], None] | None = None) -> None:
        """fn(item) for every item, `threads` at once; then(item), if given, on this thread in the
        items' order as each is done (a download's hash follows its ranges). The first failure is
        raised once all stopped. Inline from one of the pool's own threads (a blob's ranges inside
        a fetch of many blobs)."""
        if len(items) <= 1 or threading.current_thread().name.startswith("router-s3"):
            for item in items:
                fn(item)
                if then is not None:
                    then(item)
            return
        pool = self._executor()
        futures = [pool.submit(fn, item) for item in items]
        try:
            for item, f in zip(items, futures, strict=True):
                f.result()
                if then is not None:
                    then(item)
        finally:
            for f in futures:
                f.cancel()
            concurrent.futures.wait(futures)

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError, ProfileNotFound

        try:
            yield
        except ClientError as e:
            code, http = _status(e)
            if http == 501 or code == "NotImplemented":  # a store without what the router needs (If-None-Match)
                raise RouterError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"the image store {self.url} cannot {what}: {code or http}") from None
            # 409: conditional writes of one key racing (AWS); 429: too many requests. Both pass.
            if http >= 500 or http in (409, 429) or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable",
                                                             "InternalError", "ConditionalRequestConflict"):
                raise RouterError(grpc.StatusCode.UNAVAILABLE,
                                  f"the image store {self.url} failed to {what} ({code or http}): retry") from None
            if code == "NoSuchBucket" or (http == 404 and code in ("", "404")):
                raise RouterError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"the image store's bucket {self.url.bucket!r} does not exist") from None
            if http == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, f"the image store {self.url} refused to "
                                  f"{what}: access denied ({code or http})") from None
            raise RouterError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"the image store {self.url} refused to {what}: {code or http}") from None
        except NoCredentialsError:
            raise RouterError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"no credentials for the image store {self.url} (AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, a shared config file or an instance role)") from None
        except (ProfileNotFound, NoRegionError) as e:
            raise RouterError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"the image store {self.url} cannot {what}: {e}") from None
        except BotoCoreError as e:
            raise RouterError(grpc.StatusCode.UNAVAILABLE,
                              f"the image store {self.url} cannot be reached to {what}: {e}") from None

    def _key(self, name: str) -> str:
        return self.url.prefix + name

    def check(self) -> None:
        """That the bucket exists and answers us."""
        with self._calling("be reached"):
            self._client.head_bucket(Bucket=self.url.bucket)

    def now(self) -> float:
        """The store's clock (its Date header): staleness is judged on it, as LastModified is."""
        with self._calling("be reached"):
            r = self._client.head_bucket(Bucket=self.url.bucket)
        date = r.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        return email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()

    def head(self, name: str) -> StoredObject | None:
        from botocore.exceptions import ClientError

        with self._calling(f"look up {name}"):
            try:
                r = self._client.head_object(Bucket=self.url.bucket, Key=self._key(name))
            except ClientError as e:
                code, http = _status(e)
                if http == 404 and code in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        return StoredObject(name, int(r["ContentLength"]), _unix(r["LastModified"]), r.get("ETag", ""))

    def _get_object(self, name: str) -> dict[str, Any] | None:
        """GetObject's answer (call in `_calling`), None if there is no such object."""
        from botocore.exceptions import ClientError

        try:
            r: dict[str, Any] = self._client.get_object(Bucket=self.url.bucket, Key=self._key(name))
        except ClientError as e:
            if _status(e)[0] == "NoSuchKey":
                return None
            raise
        return r

    def get(self, name: str) -> bytes | None:
        with self._calling(f"read {name}"):
            r = self._get_object(name)
            data: bytes | None = None if r is None else r["Body"].read()
            return data

    def put(self, name: str, data: bytes, if_absent: bool = False) -> bool:
        """Store `data` under name; with if_absent, False (nothing written) if it is there already."""
        from botocore.exceptions import ClientError

        extra = {"IfNoneMatch": "*"} if if_absent else {}
        with self._calling(f"write {name}"):
            try:
                self._client.put_object(Bucket=self.url.bucket, Key=self._key(name), Body=data, **extra)
            except ClientError as e:
                if if_absent and _status(e)[1] == 412:
                    return False
                raise
        return True

    def delete(self, name: str) -> None:
        with self._calling(f"delete {name}"):
            self._client.delete_object(Bucket=self.url.bucket, Key=self._key(name))

    def list(self, under: str) -> Iterator[StoredObject]:
        """Every object whose name starts with `under`, by name."""
        start = len(self.url.prefix)
        with self._calling(f"list {under}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.url.bucket, Prefix=self._key(under))
            for page in pages:
                for o in page.get("Contents", []):
                    yield StoredObject(o["Key"][start:], int(o["Size"]), _unix(o["LastModified"]))

    def upload_from(self, name: str, fd: int, size: int, settled: Callable[[], None] = lambda: None) -> bool:
        """`size` bytes of fd from offset 0 under name, unless there already (then False).
        settled() is called once every byte was read and before the object becomes visible: it
        raises if the file changed meanwhile (nothing is then stored)."""
        if size <= PART_BYTES:
            data = os.pread(fd, size, 0) if size else b""
            settled()
            return self.put(name, data, if_absent=True)
        offsets = list(range(0, size, PART_BYTES))
        return self._multipart(name, len(offsets), lambda i: os.pread(fd, min(PART_BYTES, size - offsets[i]),
                                                                      offsets[i]), settled)

    def upload_pieces(self, name: str, pieces: Iterator[bytes], spool: Callable[[], int],
                      settled: Callable[[], None] = lambda: None) -> tuple[int, bool]:
        """The concatenated pieces under name, unless there already: their size, and whether written.
        Pieces are spooled into the file `spool()` opens (and this closes) so that parts can go in
        parallel and be read again by a retry."""
        fd = spool()
        try:
            at = 0
            for piece in pieces:
                at += write_at(fd, piece, at)
            settled()
            return at, self.upload_from(name, fd, at)
        finally:
            os.close(fd)

    def _multipart(self, name: str, parts: int, read: Callable[[int], bytes],
                   settled: Callable[[], None] = lambda: None) -> bool:
        from botocore.exceptions import ClientError

        key = self._key(name)
        with self._calling(f"write {name}"):
            upload = self._client.create_multipart_upload(Bucket=self.url.bucket, Key=key)["UploadId"]
        etags: list[str] = [""] * parts

        def send(i: int) -> None:
            with self._calling(f"write part {i + 1} of {name}"):
                r = self._client.upload_part(Bucket=self.url.bucket, Key=key, UploadId=upload,
                                             PartNumber=i + 1, Body=read(i))
            etags[i] = r["ETag"]

        done = False
        try:
            self.each(send, list(range(parts)))
            settled()
            with self._calling(f"write {name}"):
                try:
                    self._client.complete_multipart_upload(
                        Bucket=self.url.bucket, Key=key, UploadId=upload, IfNoneMatch="*",
                        MultipartUpload={"Parts": [{"ETag": t, "PartNumber": i + 1} for i, t in enumerate(etags)]})
                except ClientError as e:
                    if _status(e)[1] == 412:
                        return False
                    raise
            done = True
            return True
        finally:
            if not done:  # never leave parts behind: they cost storage and are invisible
                with contextlib.suppress(RouterError), self._calling(f"abort the upload of {name}"):
                    self._client.abort_multipart_upload(Bucket=self.url.bucket, Key=key, UploadId=upload)

    def download(self, name: str, fd: int, landed: Callable[[int, int], None] | None = None) -> int | None:
        """The object into fd from offset 0, in parallel ranges: its size, None if absent. The first
        range's answer says the whole size (Content-Range), so no request is spent on asking.
        landed(offset, length) is called for each range, in order, as soon as it and those before
        it are written."""
        from botocore.exceptions import ClientError

        with self._calling(f"read {name}"):
            try:
                r = self._client.get_object(Bucket=self.url.bucket, Key=self._key(name),
                                            Range=f"bytes=0-{PART_BYTES - 1}")
            except ClientError as e:
                code = _status(e)[0]
                if code == "NoSuchKey":
                    return None
                if code == "InvalidRange":  # an empty object has no first byte
                    return 0
                raise
            size = int(str(r.get("ContentRange", "")).rpartition("/")[2] or r["ContentLength"])

        def fetch(offset: int) -> None:
            end = min(offset + PART_BYTES, size)
            with self._calling(f"read {name}"):
                body = r["Body"] if offset == 0 else self._client.get_object(
                    Bucket=self.url.bucket, Key=self._key(name), Range=f"bytes={offset}-{end - 1}")["Body"]
                self._receive(name, body, fd, offset, end - offset)

        # The first range's body is read beside the others, not before them.
        self.each(fetch, list(range(0, size, PART_BYTES)) or [0],
                  None if landed is None else lambda offset: landed(offset, min(PART_BYTES, size - offset)))
        return size

    def _receive(self, name: str, body: Any, fd: int, offset: int, size: int) -> None:
        at = offset
        while piece := body.read(1 << 20):
            at += write_at(fd, piece, at)
        if at != offset + size:
            raise RouterError(grpc.StatusCode.UNAVAILABLE,
                              f"the image store {self.url} sent {at - offset} of {size} bytes of {name}: retry")

    def abort_uploads(self, older_than: float) -> int:
        """Abort multipart uploads under the prefix started before `older_than` (the store's clock):
        what a router that died mid-upload left. The count aborted."""
        n = 0
        with self._calling("list unfinished uploads"):
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.url.bucket, Prefix=self.url.prefix)
            for page in pages:
                for u in page.get("Uploads", []):
                    if _unix(u["Initiated"]) < older_than:
                        self._client.abort_multipart_upload(Bucket=self.url.bucket, Key=u["Key"],
                                                            UploadId=u["UploadId"])
                        n += 1
        return n


def _unix(t: datetime.datetime) -> float:
    return t.timestamp()
