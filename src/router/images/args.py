"""What the image store is asked to do: its own argument types (the server validates requests into them)."""
from __future__ import annotations

from typing import NamedTuple


class SnapshotArgs(NamedTuple):
    path: bytes  # absolute, normalised
    snapshot_id: str  # the client's idempotency key ("" for none)
    ttl_secs: int | None  # None: never expires
    key: bytes | None  # the customer's encryption key, never stored


class MountArgs(NamedTuple):
    path: bytes  # absolute, normalised, not /
    image_id: str  # "" mounts an empty directory
    key: bytes | None
