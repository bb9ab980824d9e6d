"""An image's record: what a snapshot made, when it expires, and where its manifest and blobs are."""
from __future__ import annotations

import secrets
from typing import NamedTuple

import msgspec


class ImageRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    snapshot_id: str
    created: float
    expires: float | None  # unix time; None: never
    source: bytes  # the directory snapshotted
    entries: int
    content_bytes: int  # the files' total size
    added_bytes: int  # bytes this snapshot added to the store
    manifest_sha256: str  # an unencrypted manifest is stored under this name, shared by equal ones
    blobs: list[str]  # a sealed image's blobs, for gc (its manifest cannot be read without the key)
    encrypted: bool = False
    salt: bytes = b""

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now


class GcResult(NamedTuple):
    images: int
    blobs: int
    bytes: int


encode_record = msgspec.msgpack.Encoder().encode
decode_record = msgspec.msgpack.Decoder(ImageRecord).decode


def new_image_id() -> str:
    return "im-" + secrets.token_hex(12)


def valid_image_id(image_id: str) -> bool:
    return image_id.startswith("im-") and len(image_id) == 27 and all(c in "0123456789abcdef" for c in image_id[3:])
