"""Where a client connects, and as whom: the target, token, task id and TLS found as `router exec` finds them."""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from router import config
from router.tls import client_credentials

# Where `from_env` looks for a token when none is given.
TOKEN_ENV = "ROUTER_TOKEN"


# -- where to connect, and as whom -----------------------------------------------------------------

@dataclass(frozen=True)
class Connection:
    target: str
    token: str
    task_id: str
    credentials: grpc.ChannelCredentials | None  # None: plaintext
    token_source: str = "given"  # where the token came from, for a refused one's message


def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unchecked (the server checks them): its middle part, base64url'd JSON. Not
    through PyJWT, whose import (with cryptography's) costs a CLI call ~0.1 s. {} if malformed."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def find_connection(target: str | None = None, token: str | None = None, *, task_id: str | None = None,
                    state_dir: str | os.PathLike[str] | None = None, tls_ca: str = "", tls_cert: str = "",
                    tls_key: str = "") -> Connection:
    """The usual places, the first that has it winning:
    - target: `target`, else the local server's (from its state directory), else 127.0.0.1:50051;
    - token: `token`, else $ROUTER_TOKEN, else one minted (valid 1 h) with the state directory's key;
    - task id: `task_id`, else the token's `task_id` claim, else the local server's;
    - TLS: when any of the files is given, or for the local server when it serves TLS.
    `state_dir` defaults to the user's (`router serve`'s default)."""
    directory = config.state_dir_from(state_dir)
    info = config.read_server_info(directory)
    source = "given" if token else f"${TOKEN_ENV}"
    token = token or os.environ.get(TOKEN_ENV)
    if token and not task_id:
        task_id = unverified_claims(token).get("task_id")
    if not task_id:
        task_id = info.task_id if info else config.load_or_create_task_id(config.ensure_state_dir(directory))
    if not token:
        from router.auth import load_or_create_key, mint_token  # jwt and cryptography: ~0.1 s, only when minting

        token = mint_token(load_or_create_key(config.ensure_state_dir(directory)), task_id, 3600)
        source = f"minted with {directory / 'jwt.key'}"
    credentials = None
    if tls_ca or tls_cert or (not target and info is not None and info.tls):
        credentials = client_credentials(tls_ca, tls_cert, tls_key)
    return Connection(target or (info.listen if info else config.DEFAULT_LISTEN), token, task_id, credentials,
                      source)
