"""Token verification under each configuration (HS256, RS256, ES256, EdDSA): every kind of bad token
is refused with a status and a message naming the reason, never the token."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pathlib
import time
from typing import Any, Literal

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from router import auth
from router._proto import task_command_router_pb2 as pb
from router.config import TokenPolicy
from router.errors import RouterError
from tests.helpers.grpc_raw import Raw, bearer
from tests.helpers.servers import TASK_ID, running

Algorithm = Literal["HS256", "RS256", "ES256", "EdDSA"]
ALGS: list[Algorithm] = ["HS256", "RS256", "ES256", "EdDSA"]
AUD, ISS = "router-tests", "https://issuer.example"


class Signer:
    """A configuration and the means to mint tokens for it."""

    def __init__(self, alg: Algorithm, tmp_path: pathlib.Path) -> None:
        self.alg = alg
        if alg == "HS256":
            self.private: Any = b"k" * 32
            self.verify: Any = self.private
            self.policy = TokenPolicy(audience=AUD, issuer=ISS, leeway_secs=0)
            self.public_pem = b""
            return
        self.private = {"RS256": lambda: rsa.generate_private_key(65537, 2048),
                        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
                        "EdDSA": ed25519.Ed25519PrivateKey.generate}[alg]()
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        path = tmp_path / f"{alg}.pub.pem"
        path.write_bytes(self.public_pem)
        self.policy = TokenPolicy(algorithm=alg, public_key=str(path), audience=AUD, issuer=ISS, leeway_secs=0)
        self.verify = auth.verification_key(self.policy, b"unused")

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"task_id": TASK_ID, "exp": now + 60, "iat": now, "aud": AUD, "iss": ISS}
        claims.update(overrides)
        return jwt.encode({k: v for k, v in claims.items() if v is not None}, self.private, algorithm=self.alg)

    def authenticator(self) -> auth.Authenticator:
        return auth.Authenticator(self.verify, TASK_ID, self.policy)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand: `alg: none`, or HS256 keyed with bytes PyJWT would never accept as a secret."""
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    if key is None:
        return head + "."
    return head + "." + _b64(hmac.new(key, head.encode(), hashlib.sha256).digest())


def bad_tokens(s: Signer) -> dict[str, tuple[str, grpc.StatusCode, str]]:
    """kind -> (token, status, words the message must hold)."""
    now = int(time.time())
    good = {"task_id": TASK_ID, "exp": now + 60, "aud": AUD, "iss": ISS}
    unauth = grpc.StatusCode.UNAUTHENTICATED
    cases = {
        "alg none": (_hand_made({"alg": "none", "typ": "JWT"}, good, None), unauth, "algorithm 'none'"),
        "malformed": ("not.a.jwt", unauth, "malformed"),
        "garbage": ("x" * 40, unauth, "malformed"),
        "expired": (s.token(exp=now - 10), unauth, "expired"),
        "not yet valid": (s.token(nbf=now + 600), unauth, "not yet valid"),
        "issued in the future": (s.token(iat=now + 600), unauth, "future"),
        "no exp": (s.token(exp=None), unauth, "'exp' claim is required"),
        "wrong audience": (s.token(aud="someone-else"), unauth, "audience"),
        "no audience": (s.token(aud=None), unauth, "'aud' claim is required"),
        "wrong issuer": (s.token(iss="https://evil.example"), unauth, "issuer"),
        "no task claim": (s.token(task_id=None), unauth, "'task_id'"),
        "other task": (s.token(task_id="ta-other"), grpc.StatusCode.PERMISSION_DENIED, "ta-other"),
    }
    if s.alg == "HS256":
        cases["wrong key"] = (jwt.encode(good, b"w" * 32, algorithm="HS256"), unauth, "signature")
        cases["RS256 for HS256"] = (jwt.encode(good, rsa.generate_private_key(65537, 2048), algorithm="RS256"),
                                    unauth, "algorithm 'RS256'")
    else:
        # Algorithm confusion: HS256 "signed" with the public key's bytes.
        cases["HS256 keyed with the public key"] = (
            _hand_made({"alg": "HS256", "typ": "JWT"}, good, s.public_pem), unauth, "algorithm 'HS256'")
        wrong = Signer(s.alg, pathlib.Path(s.policy.public_key).parent / "wrong")
        cases["another key"] = (wrong.token(), unauth, "signature")
    return cases


@pytest.fixture(params=ALGS)
def signer(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Signer:
    (tmp_path / "wrong").mkdir()
    return Signer(request.param, tmp_path)


def test_a_good_token_passes(signer: Signer) -> None:
    assert signer.authenticator().token_task((("authorization", f"Bearer {signer.token()}"),)) == TASK_ID


def test_every_bad_token_is_refused_saying_why(signer: Signer) -> None:
    checker = signer.authenticator()
    for kind, (token, code, words) in bad_tokens(signer).items():
        with pytest.raises(RouterError) as info:
            checker.check_task(checker.token_task((("authorization", f"Bearer {token}"),)), TASK_ID)
        assert info.value.code == code, kind
        assert words in info.value.message, (kind, info.value.message)
        assert token not in info.value.message and (len(token) < 20 or token[-16:] not in info.value.message), kind


def test_over_grpc_each_configuration_refuses_and_serves(signer: Signer, tmp_path: pathlib.Path) -> None:
    if signer.alg == "HS256":  # the server's own key is the one the signer holds
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / "jwt.key").write_bytes(signer.private)
    with running(tmp_path, tokens=signer.policy) as (server, _), Raw(server.port, signer.token()) as raw:
        poll = pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="absent")
        assert raw.code("TaskExecPoll", poll) == grpc.StatusCode.NOT_FOUND  # through auth
        for kind, (token, code, words) in bad_tokens(signer).items():
            with pytest.raises(grpc.RpcError) as info:
                raw.call("TaskExecPoll", poll, metadata=bearer(token))
            assert info.value.code() == code and words in info.value.details(), kind


def test_configuration_mistakes_are_named(tmp_path: pathlib.Path) -> None:
    rsa_pub = tmp_path / "rsa.pem"
    rsa_pub.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ValueError, match="needs an EC P-256 public key"):
        auth.verification_key(TokenPolicy(algorithm="ES256", public_key=str(rsa_pub)), b"")
    with pytest.raises(ValueError, match="needs --jwt-public-key"):
        auth.verification_key(TokenPolicy(algorithm="RS256"), b"")
    with pytest.raises(ValueError, match="RS256, ES256 or EdDSA"):
        auth.verification_key(TokenPolicy(public_key=str(rsa_pub)), b"")
    with pytest.raises(ValueError, match="cannot load"):
        auth.verification_key(TokenPolicy(algorithm="EdDSA", public_key=str(tmp_path / "missing.pem")), b"")


def test_a_configured_task_claim_and_leeway(tmp_path: pathlib.Path) -> None:
    key = b"k" * 32
    checker = auth.Authenticator(key, TASK_ID, TokenPolicy(task_claim="sub", leeway_secs=30))
    now = int(time.time())
    token = jwt.encode({"sub": TASK_ID, "exp": now - 10, "nbf": now + 10}, key, algorithm="HS256")
    assert checker.token_task((("authorization", f"Bearer {token}"),)) == TASK_ID  # within the leeway
