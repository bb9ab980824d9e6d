"""Bearer tokens: HS256 JWTs that name the task they are for."""
from __future__ import annotations

import pathlib
import secrets
import time

import grpc
import jwt

from .config import read_or_create_private
from .errors import RouterError

ALGORITHM = "HS256"
DEFAULT_TTL_SECS = 24 * 3600


def load_or_create_key(state_dir: pathlib.Path) -> bytes:
    """The signing key, generated into the state directory on first use (mode 0600)."""
    return read_or_create_private(state_dir / "jwt.key", secrets.token_hex(32).encode())


def mint_token(key: bytes, task_id: str, ttl_secs: int = DEFAULT_TTL_SECS) -> str:
    now = int(time.time())
    return jwt.encode({"task_id": task_id, "iat": now, "exp": now + ttl_secs}, key, algorithm=ALGORITHM)


# Verified tokens remembered, so that a client's every call does not pay for HMAC and JSON again.
_CACHE_SIZE = 4096


class Authenticator:
    def __init__(self, key: bytes, task_id: str) -> None:
        self._key = key
        self.task_id = task_id
        self._verified: dict[str, tuple[str, float]] = {}  # token -> (task id, expiry)

    def token_task(self, metadata: tuple[tuple[str, str | bytes], ...]) -> str:
        """The task id a call's bearer token grants; UNAUTHENTICATED if there is no valid token."""
        header = next((v for k, v in metadata if k == "authorization"), None)
        if not isinstance(header, str) or not header.startswith("Bearer "):
            raise RouterError(grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata")
        token = header[len("Bearer ") :].strip()
        known = self._verified.get(token)
        if known is not None and known[1] > time.time():
            return known[0]
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "task_id"]},
            )
        except jwt.ExpiredSignatureError:
            raise RouterError(grpc.StatusCode.UNAUTHENTICATED, "token expired") from None
        except jwt.InvalidTokenError as e:
            raise RouterError(grpc.StatusCode.UNAUTHENTICATED, f"invalid token: {e}") from None
        task = claims["task_id"]
        if not isinstance(task, str):
            raise RouterError(grpc.StatusCode.UNAUTHENTICATED, "invalid token: task_id is not a string")
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (task, float(claims["exp"]))
        return task

    def check_task(self, granted: str, task_id: str) -> None:
        """Authorise a call on `task_id` by a token for `granted`: do we serve the task, then is it theirs."""
        if task_id != self.task_id:
            raise RouterError(grpc.StatusCode.NOT_FOUND, f"task {task_id!r} is not served here")
        if granted != task_id:
            raise RouterError(grpc.StatusCode.PERMISSION_DENIED, f"token is for task {granted!r}, not {task_id!r}")
