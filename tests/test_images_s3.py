"""Images in an S3-compatible bucket, against a real S3 server (SeaweedFS's `weed mini`, started here):
two stores with their own state directories share one bucket as two routers on two hosts would;
uploads only if absent, claims against gc, the bounded cache, and the bucket's failures as statuses."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from router.errors import RouterError
from router.images import collection, remote, s3
from router.images.opening import StoreFlags, open_images
from router.images.store import Images, MountMethod
from tests.helpers.processes import run_router
from tests.helpers.seaweed import ADMIN, READER, S3Server, s3_server
from tests.test_images import METHODS, code_of, describe, make_tree, mount, snap, unmounting

pytestmark = pytest.mark.timeout(120)

BUCKET = "router-images"
URL = f"s3://{BUCKET}/fleet"


@pytest.fixture
def bucket(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A fresh S3 server with an empty bucket; this process's (and its children's) AWS chain is its admin."""
    with s3_server(tmp_path / "s3") as server:
        server.make_bucket(BUCKET)
        for k, v in server.env(ADMIN).items():
            if k.startswith("AWS_"):
                monkeypatch.setenv(k, v)
        for k in [k for k in os.environ if k.startswith("AWS_") and k not in server.env(ADMIN)]:
            monkeypatch.delenv(k)
        yield server


@contextlib.contextmanager
def router_store(tmp_path: pathlib.Path, server: S3Server, name: str, method: MountMethod = "copy",
                 cache_bytes: int = 1 << 30, url: str = URL) -> Iterator[Images]:
    """An image store on the bucket, with a state directory of its own (a router on another host)."""
    images = open_images(tmp_path / name, method, StoreFlags(url, server.endpoint, "", cache_bytes))
    try:
        yield images
    finally:
        images.close()


def cached_blobs(images: Images) -> set[str]:
    return {p.name for p in images.root.joinpath("store", "blobs").glob("*/" + "?" * 64)}


def one_file(tmp_path: pathlib.Path) -> pathlib.Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a\n")
    return src


def big_file(path: pathlib.Path, mib: int, seed: bytes) -> None:
    """`mib` MiB that compress to nothing useful and differ per seed: more than one multipart part."""
    with open(path, "wb") as f:
        block = os.urandom(1 << 16) + seed
        for i in range(mib * 16):
            f.write(block[: 1 << 16] if i % 2 else block[-(1 << 16):])


# -- round trips between routers ----------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("key", [None, b"k" * 32], ids=["plain", "encrypted"])
def test_snapshot_on_one_router_mounts_on_another(tmp_path: pathlib.Path, bucket: S3Server, method: MountMethod,
                                                   key: bytes | None) -> None:
    src = tmp_path / "src"
    make_tree(src)
    big_file(src / "large.bin", 40, b"large")  # three parts of 16 MiB
    expected = describe(src)
    del expected[b"sock"]
    with router_store(tmp_path, bucket, "a", method) as a, router_store(tmp_path, bucket, "b", method) as b:
        image_id = snap(a, src, key=key)
        assert cached_blobs(a) == set()  # a snapshot uploads from the tree, it does not fill the cache
        target = tmp_path / "target"
        with unmounting(b, target):
            if key is not None:
                assert code_of(lambda: mount(b, target, image_id)) == grpc.StatusCode.PERMISSION_DENIED
                assert code_of(lambda: mount(b, target, image_id, b"j" * 32)) == grpc.StatusCode.PERMISSION_DENIED
            mount(b, target, image_id, key)
            assert describe(target) == expected
            assert cached_blobs(b)  # fetched into b's cache
        assert [r.id for r in b.records()] == [image_id]
    objects = bucket.keys(BUCKET)
    assert objects and all(k.startswith("fleet/") for k in objects)
    if key is not None:  # no plaintext in the bucket: not a file's bytes, not a name
        with bucket.client() as c:
            for k in objects:
                body = c.get_object(Bucket=BUCKET, Key=k)["Body"].read()
                assert b"odd\n" * 50 not in body and b"hello\n" not in body and b"big.bin" not in body, k


def test_two_routers_snapshotting_the_same_tree_at_once_both_succeed(tmp_path: pathlib.Path,
                                                                     bucket: S3Server) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big_file(src / "large.bin", 40, b"same")
    for i in range(50):
        (src / f"f{i}").write_bytes(b"small %d\n" % i)
    with router_store(tmp_path, bucket, "a") as a, router_store(tmp_path, bucket, "b") as b:
        ids: dict[str, str] = {}
        errors: list[BaseException] = []

        def run(name: str, images: Images) -> None:
            try:
                ids[name] = snap(images, src)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert ids["a"] != ids["b"]
        blobs = [k for k in bucket.keys(BUCKET, "fleet/blobs/")]
        assert len(blobs) == 51  # each content once
        with bucket.client() as c:
            assert not c.list_multipart_uploads(Bucket=BUCKET).get("Uploads")  # the loser's parts are gone
        with router_store(tmp_path, bucket, "c") as c_:
            for image_id in ids.values():
                target = tmp_path / image_id
                with unmounting(c_, target):
                    mount(c_, target, image_id)
                    assert (target / "large.bin").read_bytes() == (src / "large.bin").read_bytes()


def test_a_failed_upload_leaves_nothing_visible_and_no_parts(tmp_path: pathlib.Path, bucket: S3Server) -> None:
    b = s3.Bucket(s3.parse_url(URL), bucket.endpoint)
    try:
        def read(i: int) -> bytes:
            if i == 2:
                raise OSError(5, "the disk failed")
            return b"x" * s3.PART_BYTES

        with pytest.raises(OSError):
            b._multipart("blobs/broken", 3, read)
        assert [k for k in bucket.keys(BUCKET) if not k.startswith("fleet/gc/")] == []  # the generation stays
        with bucket.client() as c:
            assert not c.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    finally:
        b.close()


# -- gc ----------------------------------------------------------------------------------------------


def test_gc_racing_a_snapshot_never_loses_a_blob(tmp_path: pathlib.Path, bucket: S3Server) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data").write_bytes(b"content that outlives its first image\n")
    with router_store(tmp_path, bucket, "a") as a, router_store(tmp_path, bucket, "b") as b:
        first = snap(a, src)
        manifest = a.record(first).manifest_sha256
        a.remove(first)  # its blob and manifest are now unreferenced: gc may take them
        time.sleep(1.1)  # older than a grace of 0 (the store's times are in seconds)
        backend = a.backend
        assert isinstance(backend, remote.RemoteBackend)
        (name,) = {k.rsplit("/", 1)[1] for k in bucket.keys(BUCKET, "fleet/blobs/")}

        # A gc that marked before the snapshot's claim and swept after it: the snapshot sees it.
        with backend.claim() as claim:
            assert backend.has_blob(name)  # from the listing the claim began with
            assert b.gc(grace=0).blobs == 1
            with pytest.raises(RouterError) as raised:
                claim.confirm({name}, manifest)
            assert raised.value.code == grpc.StatusCode.UNAVAILABLE  # Modal's client retries it

        # A claim written before the gc marks: the gc keeps what it names.
        second = snap(a, src)
        manifest = a.record(second).manifest_sha256
        a.remove(second)
        time.sleep(1.1)
        with backend.claim() as claim:
            assert backend.has_blob(name)
            claim.confirm({name}, manifest)
            assert b.gc(grace=0).blobs == 0
        assert b.gc(grace=0).blobs == 1  # the claim ended without a record: now it goes

        # Snapshots reusing unreferenced content while gcs run in a loop: every image answered is
        # whole when it is answered (mounted at once through another router), whatever it took.
        for i in range(20):
            (src / f"f{i}").write_bytes(b"%d\n" % i)
        stop = threading.Event()
        collected = []

        def collect() -> None:
            while not stop.is_set():
                with contextlib.suppress(RouterError):
                    collected.append(b.gc(grace=0).blobs)

        collector = threading.Thread(target=collect)
        collector.start()
        retried = 0
        try:
            with router_store(tmp_path, bucket, "c") as c:
                for round_ in range(6):
                    (src / "data").write_bytes(b"round %d\n" % round_)
                    while True:
                        try:
                            image_id = snap(a, src)
                            break
                        except RouterError as e:
                            assert e.code == grpc.StatusCode.UNAVAILABLE, e.message
                            retried += 1
                    target = tmp_path / "t" / image_id
                    target.parent.mkdir(exist_ok=True)
                    with unmounting(c, target):
                        mount(c, target, image_id)
                        assert describe(target) == describe(src)
                    a.remove(image_id)  # its content unreferenced again, for the next round to reuse
                    time.sleep(1.1)
        finally:
            stop.set()
            collector.join()
        assert sum(collected) > 0  # the gcs did take what no image referenced meanwhile


def test_gc_keeps_young_content_and_expires_images(tmp_path: pathlib.Path, bucket: S3Server,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"expiring\n")
    with router_store(tmp_path, bucket, "a") as a:
        image_id = snap(a, src, ttl=1)
        with bucket.client() as c:  # an upload a router abandoned when it died
            c.create_multipart_upload(Bucket=BUCKET, Key="fleet/blobs/abandoned")
        time.sleep(1.5)
        assert code_of(lambda: a.record(image_id)) == grpc.StatusCode.NOT_FOUND
        done = a.gc(grace=3600)  # expired: its record goes; its blob is younger than the grace period
        assert (done.images, done.blobs) == (1, 0)
        with bucket.client() as c:
            assert c.list_multipart_uploads(Bucket=BUCKET).get("Uploads")  # younger than a day
        monkeypatch.setattr(collection, "ABANDONED_UPLOAD_SECS", 0.0)
        done = a.gc(grace=0)
        assert (done.images, done.blobs) == (0, 1)
        with bucket.client() as c:
            assert not c.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
        assert [k for k in bucket.keys(BUCKET) if not k.startswith("fleet/gc/")] == []  # the generation stays


# -- the cache ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_the_cache_evicts_least_recent_first_and_never_a_mounted_image(tmp_path: pathlib.Path, bucket: S3Server,
                                                                      method: MountMethod) -> None:
    images = {}
    for n in ("one", "two", "three"):
        d = tmp_path / n
        d.mkdir()
        (d / "data").write_bytes(os.urandom(600 << 10))
        images[n] = d
    with router_store(tmp_path, bucket, "a") as a, \
            router_store(tmp_path, bucket, "b", method, cache_bytes=1 << 20) as b:
        ids = {n: snap(a, d) for n, d in images.items()}
        t1, t2, t3 = (tmp_path / "m1", tmp_path / "m2", tmp_path / "m3")
        with unmounting(b, t1, t2, t3):
            mount(b, t1, ids["one"])
            mount(b, t2, ids["two"])  # 1.2 MiB cached: one's blob is mounted, two's in use
            unpinned = method == "copy"  # a copy mount reads nothing from the cache once made
            assert len(cached_blobs(b)) == (1 if unpinned else 2)
            b.unmount(bytes(t2))
            mount(b, t3, ids["three"])
            held = cached_blobs(b)
            assert held == ({b.manifest(b.record(ids["three"]), None).entries[-1].blob} if unpinned else
                            {b.manifest(b.record(ids[n]), None).entries[-1].blob for n in ("one", "three")})
            assert (t1 / "data").read_bytes() == (images["one"] / "data").read_bytes()
            b.unmount(bytes(t1))
            mount(b, t2, ids["two"])  # fetched again
            assert (t2 / "data").read_bytes() == (images["two"] / "data").read_bytes()


# -- the bucket's failures -------------------------------------------------------------------------


def test_a_bucket_down_is_unavailable_until_it_is_back(tmp_path: pathlib.Path, bucket: S3Server) -> None:
    src = one_file(tmp_path)
    with router_store(tmp_path, bucket, "a") as a:
        image_id = snap(a, src)
        bucket.stop()
        try:
            assert code_of(lambda: snap(a, src)) == grpc.StatusCode.UNAVAILABLE
            assert code_of(lambda: mount(a, tmp_path / "t", image_id)) == grpc.StatusCode.UNAVAILABLE
            assert code_of(lambda: a.records()) == grpc.StatusCode.UNAVAILABLE
        finally:
            bucket.start()
        with unmounting(a, tmp_path / "t"):
            mount(a, tmp_path / "t", image_id)
            assert (tmp_path / "t" / "a").read_bytes() == b"a\n"
        assert snap(a, src) != image_id


def test_refusals_are_failed_precondition_naming_the_bucket(tmp_path: pathlib.Path, bucket: S3Server,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RouterError) as raised, router_store(tmp_path, bucket, "a", url="s3://no-such-bucket"):
        pass
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION and "no-such-bucket" in raised.value.message
    src = one_file(tmp_path)
    for k, v in READER.items():
        monkeypatch.setenv(k, v)
    with router_store(tmp_path, bucket, "r") as r:
        with pytest.raises(RouterError) as raised:
            snap(r, src)
        assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert BUCKET in raised.value.message and "access denied" in raised.value.message


def test_serve_refuses_to_start_on_a_bucket_it_cannot_use(tmp_path: pathlib.Path, bucket: S3Server) -> None:
    for url, says in (("s3://missing-bucket", "'missing-bucket' does not exist"),
                      ("http://x", "is not s3://BUCKET")):
        done = run_router("serve", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "state"),
                          "--image-store", url, "--s3-endpoint", bucket.endpoint, timeout=60)
        err = done.stderr.decode()
        assert done.returncode != 0 and says in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_images_cli_works_on_the_bucket(tmp_path: pathlib.Path, bucket: S3Server) -> None:
    src = one_file(tmp_path)
    with router_store(tmp_path, bucket, "a") as a:
        image_id = snap(a, src)
    flags = ["--image-store", URL, "--s3-endpoint", bucket.endpoint, "--state-dir", str(tmp_path / "cli")]
    ls = run_router("images", "ls", *flags)
    assert ls.returncode == 0 and image_id in ls.stdout.decode(), ls
    assert run_router("images", "rm", image_id, *flags).returncode == 0
    gc = run_router("images", "gc", "--grace", "0", *flags)
    assert gc.returncode == 0 and "1 unreferenced blobs" in gc.stdout.decode(), gc
    assert bucket.keys(BUCKET, "fleet/blobs/") == []
    down = run_router("images", "ls", "--image-store", "s3://missing-bucket", "--s3-endpoint", bucket.endpoint,
                      "--state-dir", str(tmp_path / "cli"))
    assert down.returncode == 1 and "'missing-bucket' does not exist" in down.stderr.decode(), down


# -- through Modal's own client --------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("modal") is None, reason="Modal's client is part of the test extra")
@pytest.mark.parametrize("method", ["overlay", "copy"])
def test_modal_client_snapshots_on_one_router_and_mounts_on_another(tmp_path: pathlib.Path, bucket: S3Server,
                                                                     method: str) -> None:
    from tests.test_modal_images import KEY, PERMISSION_DENIED, WRONG_KEY, make_source, overlay_or_skip, session, tree

    overlay_or_skip(tmp_path, method)
    flags = ("--image-store", URL, "--s3-endpoint", bucket.endpoint, "--mount-method", method)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with session(tmp_path / "a", *flags) as (a, work_a), session(tmp_path / "b", *flags) as (b, work_b):
        src = make_source(work_a)
        plain = a.ok("snapshot", "sandbox", path=str(src))["image_id"]
        sealed = a.ok("snapshot", "client", path=str(src), key=KEY)["image_id"]
        for image_id, key in ((plain, None), (sealed, KEY)):
            target = work_b / image_id
            if key is not None:
                assert b.error("mount", "client", path=str(target), image_id=image_id) == PERMISSION_DENIED
                assert b.error("mount", "client", path=str(target), image_id=image_id,
                               key=WRONG_KEY) == PERMISSION_DENIED
            b.ok("mount", "client", path=str(target), image_id=image_id, **({"key": key} if key else {}))
            assert tree(target) == tree(src)
            b.ok("unmount", "client", path=str(target))


def test_an_image_mounted_through_any_router_is_never_collected(tmp_path: pathlib.Path, bucket: S3Server) -> None:
    src = one_file(tmp_path)
    with router_store(tmp_path, bucket, "a") as a, router_store(tmp_path, bucket, "b") as b:
        image_id = snap(a, src, ttl=1)
        target = tmp_path / "t"
        with unmounting(b, target):
            mount(b, target, image_id)
            time.sleep(2.1)  # expired, and its blob older than a grace of 1 s
            assert code_of(lambda: a.remove(image_id)) == grpc.StatusCode.FAILED_PRECONDITION
            assert a.gc(grace=1) == (0, 0, 0)
        assert bucket.keys(BUCKET, "fleet/mounted/") == []  # the unmount took its marker away
        assert a.gc(grace=1)[:2] == (1, 1)
    # A mount the state directory no longer has (gone with a reboot): its marker goes at the next start.
    store_id = (tmp_path / "b" / "images" / "store-id").read_text().strip()
    with bucket.client() as c:
        c.put_object(Bucket=BUCKET, Key=f"fleet/mounted/{store_id}/0123456789abcdef", Body=image_id.encode())
    with router_store(tmp_path, bucket, "b"):
        assert bucket.keys(BUCKET, "fleet/mounted/") == []


def test_a_manifest_this_router_cached_is_stored_again_once_gc_took_it(tmp_path: pathlib.Path,
                                                                        bucket: S3Server) -> None:
    src = one_file(tmp_path)
    with router_store(tmp_path, bucket, "a") as a, router_store(tmp_path, bucket, "b") as b:
        first = snap(a, src)
        with unmounting(a, tmp_path / "t"):
            mount(a, tmp_path / "t", first)  # a now holds the manifest in its cache
        a.remove(first)
        time.sleep(1.1)
        assert b.gc(grace=0)[:2] == (0, 1)
        assert bucket.keys(BUCKET, "fleet/docs/manifests/") == []
        again = snap(a, src)  # the same tree: the same manifest, sent again
        with unmounting(b, tmp_path / "u"):
            mount(b, tmp_path / "u", again)
            assert (tmp_path / "u" / "a").read_bytes() == b"a\n"


def test_an_encrypted_mount_of_many_files_past_the_cache_bound(tmp_path: pathlib.Path, bucket: S3Server) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):  # more files than one pass of the copy's threads
        (src / f"f{i}").write_bytes(b"%d\n" % i * 100)
    with router_store(tmp_path, bucket, "a") as a, \
            router_store(tmp_path, bucket, "b", "copy", cache_bytes=4096) as b:
        image_id = snap(a, src, key=b"k" * 32)
        with unmounting(b, tmp_path / "t"):
            mount(b, tmp_path / "t", image_id, b"k" * 32)
            assert len(os.listdir(tmp_path / "t")) == 300


def test_a_bucket_down_fails_a_mount_cleanly_and_never_an_unmount(tmp_path: pathlib.Path, bucket: S3Server) -> None:
    src = one_file(tmp_path)
    with router_store(tmp_path, bucket, "a") as a:
        image_id = snap(a, src)
        mount(a, tmp_path / "t", image_id)
        assert len(bucket.keys(BUCKET, "fleet/mounted/")) == 1
        bucket.stop()
        try:
            assert code_of(lambda: mount(a, tmp_path / "u", image_id)) == grpc.StatusCode.UNAVAILABLE
            assert not (tmp_path / "u").exists() and a.mount_paths() == [bytes(tmp_path / "t")]
            a.unmount(bytes(tmp_path / "t"))  # its mark stays in the bucket for now
            assert a.mount_paths() == []
        finally:
            bucket.start()
    assert len(bucket.keys(BUCKET, "fleet/mounted/")) == 1
    with router_store(tmp_path, bucket, "a"):  # the next start removes it
        assert bucket.keys(BUCKET, "fleet/mounted/") == []
