"""`--jwt-key-file`: the HS256 key from a file outside the state directory (a mounted Kubernetes
Secret shared by a fleet), for `router serve` and `router token`; a bad file is one line, no start."""
from __future__ import annotations

import pathlib
import secrets

import grpc
import jwt
import pytest

from router.client import RouterClient
from tests.helpers.processes import one_line
from tests.helpers.processes import run_router as router
from tests.helpers.servers import TASK_ID, router_process


def test_a_router_verifies_with_the_key_file_and_router_token_mints_for_it(tmp_path: pathlib.Path) -> None:
    key_file = tmp_path / "secret" / "jwt.key"
    key_file.parent.mkdir()
    key = secrets.token_hex(32).encode()
    key_file.write_bytes(key + b"\n")  # as `openssl rand -hex 32 >FILE` leaves it: the newline is not the key's
    state = tmp_path / "state"
    with router_process(state, "--jwt-key-file", str(key_file)) as (proc, listen):
        assert proc.stdout is not None
        hint = next(line for line in proc.stdout if line.startswith("get a token with: "))
        assert f"--jwt-key-file {key_file} --task-id {TASK_ID}" in hint
        minted = router("token", "--jwt-key-file", str(key_file), "--task-id", TASK_ID)
        assert minted.returncode == 0, minted.stderr
        by_hand = jwt.encode({"task_id": TASK_ID, "exp": 2**31}, key, algorithm="HS256")
        for token in (minted.stdout.decode().strip(), by_hand):
            with RouterClient(listen, token, TASK_ID, retries=0) as client:
                assert list(client.execs()) == []
        other = jwt.encode({"task_id": TASK_ID, "exp": 2**31}, secrets.token_hex(32), algorithm="HS256")
        with RouterClient(listen, other, TASK_ID, retries=0) as client, pytest.raises(grpc.RpcError) as refused:
            list(client.execs())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "signature does not verify" in (refused.value.details() or "")
    assert not (state / "jwt.key").exists()  # the state directory's own key is neither made nor used


@pytest.mark.parametrize("case", ["missing", "a directory", "too short", "another algorithm"])
def test_an_unusable_key_file_is_one_line_and_no_start(tmp_path: pathlib.Path, case: str) -> None:
    key_file = tmp_path / "jwt.key"
    extra: tuple[str, ...] = ()
    expected = {"missing": "No such file", "a directory": "Is a directory", "too short": "holds 31 bytes",
                "another algorithm": "--jwt-alg RS256"}[case]
    if case == "a directory":
        key_file.mkdir()
    elif case == "too short":
        key_file.write_bytes(b"k" * 31 + b"\n")
    elif case == "another algorithm":
        key_file.write_bytes(b"k" * 32)
        extra = ("--jwt-alg", "RS256")
    state = tmp_path / "state"
    served = router("serve", "--listen", "127.0.0.1:0", "--state-dir", str(state), "--jwt-key-file", str(key_file),
                    *extra, timeout=30)
    line = one_line(served)
    assert served.returncode == 2 and expected in line and (case == "another algorithm" or str(key_file) in line)
    assert not (state / "jwt.key").exists() and not (state / "server.json").exists()
    if case != "another algorithm":
        minted = router("token", "--jwt-key-file", str(key_file), "--task-id", TASK_ID)
        assert minted.returncode == 1 and expected in one_line(minted) and not minted.stdout


def test_router_token_with_a_key_file_needs_the_task(tmp_path: pathlib.Path) -> None:
    key_file = tmp_path / "jwt.key"
    key_file.write_bytes(b"k" * 32)
    minted = router("token", "--jwt-key-file", str(key_file))
    assert minted.returncode == 2 and "needs --task-id" in one_line(minted) and not minted.stdout
