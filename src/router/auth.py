"""Bearer tokens: JWTs that name the task they are for, verified as the configuration says.

The algorithm and key come from the configuration, never from the token's header: HS256 with the
key in the state directory (the default; `router token` mints those) or in a file of its own
(`--jwt-key-file`: a mounted Secret shared by a fleet), or RS256 / ES256 / EdDSA with
a public key (tokens minted by the operator's identity provider). `exp` is required; `nbf` and
`iat` are honoured with a leeway; audience and issuer are checked when configured; the claim that
names the task is configurable. Every refusal says why, never what the token was.
"""
from __future__ import annotations

import pathlib
import secrets
import time
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from router.config import DEFAULT_TOKEN_TTL_SECS, TokenPolicy, read_or_create_private
from router.errors import RouterError

ALGORITHM = "HS256"
_KEY_TYPES: dict[str, tuple[type, str]] = {
    "RS256": (rsa.RSAPublicKey, "an RSA public key"),
    "ES256": (ec.EllipticCurvePublicKey, "an EC P-256 public key"),
    "EdDSA": (ed25519.Ed25519PublicKey, "an Ed25519 public key"),
}


def load_or_create_key(state_dir: pathlib.Path) -> bytes:
    """The HS256 signing key, generated into the state directory on first use (mode 0600)."""
    return read_or_create_private(state_dir / "jwt.key", secrets.token_hex(32).encode())


# RFC 7518 3.2: an HS256 key as long as the hash's output at least.
MIN_KEY_BYTES = 32


def read_key_file(path: str) -> bytes:
    """The HS256 key in `path` (`--jwt-key-file`), less one trailing newline (`echo` and `openssl rand
    -hex` end with one; a Secret made from such a file keeps it). ValueError, one line naming the
    file, if it cannot be read or is too short."""
    try:
        key = pathlib.Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the token key file {path}: {e.strerror}") from None
    key = key[:-2] if key.endswith(b"\r\n") else key.removesuffix(b"\n")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the token key file {path} holds {len(key)} bytes; an HS256 key needs at least "
                         f"{MIN_KEY_BYTES} (e.g. openssl rand -hex 32 > {path})")
    return key


def mint_token(key: bytes, task_id: str, ttl_secs: int = DEFAULT_TOKEN_TTL_SECS) -> str:
    now = int(time.time())
    return jwt.encode({"task_id": task_id, "iat": now, "exp": now + ttl_secs}, key, algorithm=ALGORITHM)


def verification_key(policy: TokenPolicy, hs256_key: bytes) -> Any:
    """The key tokens are checked with; ValueError naming the problem if the configuration is wrong."""
    if policy.algorithm == "HS256":
        if policy.public_key:
            raise ValueError("a public key needs --jwt-alg RS256, ES256 or EdDSA")
        return hs256_key
    if not policy.public_key:
        raise ValueError(f"--jwt-alg {policy.algorithm} needs --jwt-public-key")
    try:
        key = serialization.load_pem_public_key(pathlib.Path(policy.public_key).read_bytes())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the public key {policy.public_key}: {e}") from None
    kind, name = _KEY_TYPES[policy.algorithm]
    if not isinstance(key, kind) or (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name != "secp256r1"):
        raise ValueError(f"--jwt-alg {policy.algorithm} needs {name}; {policy.public_key} holds another kind")
    return key


# Verified tokens remembered, so that a client's every call does not pay for the signature again.
_CACHE_SIZE = 4096


def _unauthenticated(why: str) -> RouterError:
    return RouterError(grpc.StatusCode.UNAUTHENTICATED, f"invalid token: {why}")


class Authenticator:
    def __init__(self, key: Any, task_id: str, policy: TokenPolicy = TokenPolicy()) -> None:
        self._key = key
        self.task_id = task_id
        self._policy = policy
        self._verified: dict[str, tuple[str, float]] = {}  # token -> (task id, expiry)

    def token_task(self, metadata: tuple[tuple[str, str | bytes], ...]) -> str:
        """The task id a call's bearer token grants; UNAUTHENTICATED, saying why, if there is none."""
        header = next((v for k, v in metadata if k == "authorization"), None)
        if not isinstance(header, str) or not header.startswith("Bearer "):
            raise RouterError(grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata")
        token = header[len("Bearer "):].strip()
        known = self._verified.get(token)
        if known is not None and known[1] + self._policy.leeway_secs > time.time():
            return known[0]
        claims = self._decode(token)
        task = claims.get(self._policy.task_claim)
        if not isinstance(task, str):
            raise _unauthenticated(f"claim {self._policy.task_claim!r} is missing or not a string")
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (task, float(claims["exp"]))
        return task

    def _decode(self, token: str) -> dict[str, Any]:
        p = self._policy
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _unauthenticated("malformed (not a signed JWT)") from None
        if header.get("alg") != p.algorithm:
            raise _unauthenticated(f"algorithm {header.get('alg')!r} is not accepted "
                                   f"(this router verifies {p.algorithm})")
        required = ["exp"] + (["aud"] if p.audience else []) + (["iss"] if p.issuer else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._key, algorithms=[p.algorithm], audience=p.audience or None, issuer=p.issuer or None,
                leeway=p.leeway_secs, options={"require": required, "verify_aud": bool(p.audience)})
        except jwt.ExpiredSignatureError:
            raise _unauthenticated("expired") from None
        except jwt.ImmatureSignatureError as e:
            raise _unauthenticated("not yet valid (nbf)" if "nbf" in str(e) else "issued in the future (iat)") from None
        except jwt.MissingRequiredClaimError as e:
            raise _unauthenticated(f"the {e.claim!r} claim is required") from None
        except jwt.InvalidAudienceError:
            raise _unauthenticated(f"not for this audience (expected {p.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise _unauthenticated(f"not from this issuer (expected {p.issuer!r})") from None
        except jwt.InvalidSignatureError:
            raise _unauthenticated("the signature does not verify") from None
        except jwt.InvalidTokenError as e:
            raise _unauthenticated(type(e).__name__) from None
        return claims

    def check_task(self, granted: str, task_id: str) -> None:
        """Authorise a call on `task_id` by a token for `granted`: do we serve the task, then is it theirs."""
        if task_id != self.task_id:
            raise RouterError(grpc.StatusCode.NOT_FOUND, f"task {task_id!r} is not served here")
        if granted != task_id:
            raise RouterError(grpc.StatusCode.PERMISSION_DENIED, f"token is for task {granted!r}, not {task_id!r}")
