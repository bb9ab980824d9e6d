"""Opening the image store a server or the CLI names: the state directory's own, or a bucket's."""
from __future__ import annotations

import pathlib
import secrets
from typing import NamedTuple

from router.config import load_or_create_id

from .store import Images, MountMethod

DEFAULT_CACHE_BYTES = 10 << 30


class StoreFlags(NamedTuple):
    url: str = ""  # s3://BUCKET[/PREFIX]; empty: the state directory's store
    endpoint: str = ""  # an S3-compatible server's URL; empty: AWS's, from the region
    region: str = ""
    cache_bytes: int = DEFAULT_CACHE_BYTES  # the local cache of a bucket's blobs


def open_images(state_dir: pathlib.Path, method: MountMethod, flags: StoreFlags, serving: bool = True) -> Images:
    """The store; with a bucket, checked first (RouterError naming it if it cannot be used).
    `serving`: a server's, not the CLI's (images/store.py)."""
    if not flags.url:
        return Images(state_dir, method, serving=serving)
    from .remote import RemoteBackend
    from .s3 import Bucket, parse_url

    url = parse_url(flags.url)
    bucket = Bucket(url, flags.endpoint, flags.region)
    try:
        bucket.check()
        # This state directory's name among the routers sharing the bucket (its mounts are marked under it).
        store_id = load_or_create_id(state_dir / "images" / "store-id", lambda: secrets.token_hex(8))
        return Images(state_dir, method, lambda local: RemoteBackend(bucket, local, flags.cache_bytes, store_id),
                      serving)
    except BaseException:
        bucket.close()
        raise
