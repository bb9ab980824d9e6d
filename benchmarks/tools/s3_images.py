"""Images through a bucket against boto3's own parallel transfer of the same bytes, in one run.

A real S3 server (SeaweedFS's `weed mini`, as the tests start it) on loopback. Per round and per
tree: router A snapshots the tree into the bucket (an empty prefix of its own: nothing is already
there), router B, another state directory with an empty cache, mounts it (both after one small snapshot
and mount, as a running router's client is warm); then boto3 moves the same
files up (`upload_file`, a TransferConfig of 16 MiB parts and 8 threads, as the store's own) and
down (`download_file`), the files of a tree 8 at a time. Medians over rounds, and their ratios
(reference seconds / router seconds: 1.0 is as fast as boto3 alone).

    python -m benchmarks.tools.s3_images [--mib 1024] [--files 20000] [--rounds 3] [--method copy|overlay]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import time

from router.images.args import MountArgs, SnapshotArgs
from router.images.opening import StoreFlags, open_images
from tests.helpers.seaweed import ADMIN, s3_server

BUCKET = "bench"


def make_file(root: pathlib.Path, mib: int) -> pathlib.Path:
    root.mkdir(parents=True)
    with open(root / "big.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    return root


def make_tree(root: pathlib.Path, files: int) -> pathlib.Path:
    for i in range(files):
        d = root / f"d{i // 500}"
        if i % 500 == 0:
            d.mkdir(parents=True)
        (d / f"f{i}").write_bytes(os.urandom(1024 + (i * 37) % 7168))
    return root


def through_router(tmp: pathlib.Path, endpoint: str, src: pathlib.Path, prefix: str,
                   method: str) -> tuple[float, float]:
    flags = StoreFlags(f"s3://{BUCKET}/{prefix}", endpoint, "", 64 << 30)
    a = open_images(tmp / f"a-{prefix}", "copy", flags)
    b = open_images(tmp / f"b-{prefix}", method, flags)  # type: ignore[arg-type]
    target = tmp / f"mnt-{prefix}"
    try:
        # A router's client is long-lived: its first calls (botocore's models, connections) are not timed.
        warm = tmp / f"warm-{prefix}"
        warm.mkdir()
        (warm / "w").write_bytes(b"warm")
        b.mount(MountArgs(bytes(target), a.snapshot(SnapshotArgs(bytes(warm), "", None, None)), None))
        b.unmount(bytes(target))
        t0 = time.perf_counter()
        image_id = a.snapshot(SnapshotArgs(bytes(src), "", None, None))
        t1 = time.perf_counter()
        b.mount(MountArgs(bytes(target), image_id, None))
        t2 = time.perf_counter()
        b.unmount(bytes(target))
        return t1 - t0, t2 - t1
    finally:
        a.close()
        b.close()
        for d in (tmp / f"a-{prefix}", tmp / f"b-{prefix}", target, tmp / f"warm-{prefix}"):
            shutil.rmtree(d, ignore_errors=True)


def through_boto3(tmp: pathlib.Path, endpoint: str, src: pathlib.Path, prefix: str) -> tuple[float, float]:
    import boto3
    from boto3.s3.transfer import TransferConfig

    s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
    config = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=8)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    out = tmp / f"down-{prefix}"
    try:
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}-warm", Body=b"warm")  # as the router's: not timed
        s3.get_object(Bucket=BUCKET, Key=f"{prefix}-warm")["Body"].read()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda p: s3.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(src)}", Config=config),
                          files))
            t1 = time.perf_counter()

            def down(p: pathlib.Path) -> None:
                dest = out / p.relative_to(src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(BUCKET, f"{prefix}/{p.relative_to(src)}", str(dest), Config=config)

            list(pool.map(down, files))
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1
    finally:
        s3.close()
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--files", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--method", choices=("copy", "overlay"), default="overlay")
    args = p.parse_args()
    os.environ.update({**ADMIN, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                       "AWS_EC2_METADATA_DISABLED": "true"})
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        tmp = pathlib.Path(d)
        trees = {f"{args.mib} MiB file": make_file(tmp / "file", args.mib),
                 f"{args.files} files": make_tree(tmp / "tree", args.files)}
        with s3_server(tmp / "s3") as server:
            server.make_bucket(BUCKET)
            rows: dict[str, dict[str, list[float]]] = {t: {k: [] for k in ("snap", "mount", "up", "down")}
                                                        for t in trees}
            for r in range(args.rounds):
                for name, src in trees.items():
                    tag = f"r{r}-{abs(hash(name)) % 10_000}"
                    subprocess.run(["sync"], check=False)
                    snap, mount = through_router(tmp, server.endpoint, src, f"router-{tag}", args.method)
                    up, down = through_boto3(tmp, server.endpoint, src, f"boto3-{tag}")
                    for k, v in (("snap", snap), ("mount", mount), ("up", up), ("down", down)):
                        rows[name][k].append(v)
                    print(f"round {r + 1} {name}: snapshot {snap:.2f} s, mount {mount:.2f} s; "
                          f"boto3 up {up:.2f} s, down {down:.2f} s", flush=True)
            print(f"\nmedians of {args.rounds} rounds, mount method {args.method} (ratio: boto3 s / router s)")
            for name, r_ in rows.items():
                med = {k: statistics.median(v) for k, v in r_.items()}
                print(f"{name}: snapshot {med['snap']:.2f} s vs upload {med['up']:.2f} s "
                      f"({med['up'] / med['snap']:.2f}); mount {med['mount']:.2f} s vs download "
                      f"{med['down']:.2f} s ({med['down'] / med['mount']:.2f})")


if __name__ == "__main__":
    main()
