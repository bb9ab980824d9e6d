"""Encryption at rest of images made with a customer-supplied key (never stored).

The key (16-512 bytes) is stretched with HKDF-SHA256 and the image's random salt into a 256-bit
AES-GCM key. Files and the manifest are sealed in 1 MiB chunks, each with its own nonce (the
file's random 8-byte prefix + the chunk's index) and its index and last-chunk flag as associated
data, so chunks cannot be dropped, reordered or cut without the open failing. A blob's name is an
HMAC of its content's SHA-256 under the key: equal content dedups within the image, and nothing
about the plaintext shows.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CHUNK = 1024 * 1024
_MAGIC = b"RIMG1"
_TAG = 16
MIN_KEY, MAX_KEY = 16, 512


class WrongKey(Exception):
    """Sealed data did not open with this key (or was tampered with)."""


class ImageKey:
    """A derived key for one image."""

    def __init__(self, customer_key: bytes, salt: bytes) -> None:
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                         info=b"task-command-router image v1").derive(customer_key)
        self._aead = AESGCM(self._key)

    def blob_name(self, sha256_hex: str) -> str:
        return hmac.new(self._key, sha256_hex.encode(), hashlib.sha256).hexdigest()

    def seal(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """The sealed form of the concatenated plaintext pieces (any sizes)."""
        prefix = os.urandom(8)
        yield _MAGIC + prefix
        index = 0
        buf = bytearray()
        for piece in pieces:
            buf += piece
            # Keep at least one byte back: only the last chunk may be short, and it must be flagged.
            while len(buf) > CHUNK:
                yield self._seal_chunk(prefix, index, bytes(buf[:CHUNK]), False)
                del buf[:CHUNK]
                index += 1
        yield self._seal_chunk(prefix, index, bytes(buf), True)

    def _seal_chunk(self, prefix: bytes, index: int, data: bytes, last: bool) -> bytes:
        return self._aead.encrypt(prefix + struct.pack(">I", index), data, struct.pack(">Q?", index, last))

    def open(self, sealed: Iterator[bytes]) -> Iterator[bytes]:
        """Plaintext chunks of sealed data read as a stream of any-sized pieces; WrongKey if it fails."""
        header = len(_MAGIC) + 8
        buf = bytearray()
        prefix: bytes | None = None
        index = 0
        for piece in sealed:
            buf += piece
            if prefix is None:
                if len(buf) < header:
                    continue
                if bytes(buf[:len(_MAGIC)]) != _MAGIC:
                    raise WrongKey("not sealed data")
                prefix = bytes(buf[len(_MAGIC):header])
                del buf[:header]
            while len(buf) > CHUNK + _TAG:  # a full chunk with more after it: not the last
                yield self._open_chunk(prefix, index, bytes(buf[:CHUNK + _TAG]), False)
                del buf[:CHUNK + _TAG]
                index += 1
        if prefix is None or len(buf) < _TAG:
            raise WrongKey("sealed data cut short")
        yield self._open_chunk(prefix, index, bytes(buf), True)

    def _open_chunk(self, prefix: bytes, index: int, chunk: bytes, last: bool) -> bytes:
        try:
            return self._aead.decrypt(prefix + struct.pack(">I", index), chunk, struct.pack(">Q?", index, last))
        except InvalidTag:
            raise WrongKey("the key does not open this image") from None

    def seal_bytes(self, data: bytes) -> bytes:
        return b"".join(self.seal(iter([data])))

    def open_bytes(self, sealed: bytes) -> bytes:
        return b"".join(self.open(iter([sealed])))


def check_key(key: bytes) -> None:
    if not MIN_KEY <= len(key) <= MAX_KEY:
        raise ValueError(f"must be {MIN_KEY}-{MAX_KEY} bytes, got {len(key)}")
