"""The secret store: injection and precedence, refusals, and values that never leak."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import grpc
import pytest

from router import auth
from router._proto import api_pb2
from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient, exit_code
from router.config import ServerConfig
from router.secretstore import SecretError, SecretStore
from router.server.grpc_server import RouterServer
from tests.helpers.execs import PIPES
from tests.helpers.servers import TASK_ID, router_process, serving, state_token

VALUE = "s3cr3t-value-that-must-not-leak"


def env_of(client: RouterClient, exec_id: str, **fields: object) -> dict[str, str]:
    client.start(exec_id, ["env"], **PIPES, **fields)
    out = b"".join(client.read(exec_id)).decode()
    assert exit_code(client.wait(exec_id)) == 0
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def source(secret_id: str = "", **env: str) -> api_pb2.SecretSource:
    if secret_id:
        return api_pb2.SecretSource(secret_id=secret_id)
    return api_pb2.SecretSource(env=api_pb2.StringMap(contents=env))


def test_secrets_are_injected_in_order(tmp_path: pathlib.Path) -> None:
    store = SecretStore(tmp_path / "state" / "secrets")
    store.set("st-a", {"A": "from-a", "SHARED": "a", "DB": VALUE})
    store.set("st-b", {"SHARED": "b"})
    (tmp_path / "state" / "secrets" / "st-toml.toml").write_text('SHARED = "toml"\nT = "t"\n')
    (tmp_path / "state" / "secrets" / "st-toml.toml").chmod(0o600)
    with serving(tmp_path) as (_, client, raw):
        env = env_of(client, "e1", env={"SHARED": "env", "E": "e"}, secret_ids=["st-a", "st-b"],
                     secret_sources=[source(SHARED="inline"), source("st-toml")])
        assert env["A"] == "from-a" and env["DB"] == VALUE and env["E"] == "e" and env["T"] == "t"
        assert env["SHARED"] == "toml"  # base, env, secret_ids in order, then secret_sources in order
        env = env_of(client, "e2", env={"SHARED": "env"}, secret_ids=["st-b", "st-a"])
        assert env["SHARED"] == "a"
        with pytest.raises(grpc.RpcError) as info:
            raw.call("TaskExecStart", pb.TaskExecStartRequest(task_id=TASK_ID, exec_id="e3", command_args=["env"],
                                                               secret_ids=["st-missing"]))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "st-missing" in info.value.details()
        for bad in ("../etc/passwd", "a/b", ""):
            code = raw.code("TaskExecStart", pb.TaskExecStartRequest(
                task_id=TASK_ID, exec_id="e4", command_args=["env"], secret_sources=[source(bad)] if bad else []))
            assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK), bad
        # A file made readable by others after the start is refused when used, naming it, not its values.
        (tmp_path / "state" / "secrets" / "st-a.json").chmod(0o640)
        with pytest.raises(grpc.RpcError) as info:
            raw.call("TaskExecStart", pb.TaskExecStartRequest(task_id=TASK_ID, exec_id="e5", command_args=["env"],
                                                               secret_ids=["st-a"]))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "st-a.json" in info.value.details() and "chmod 600" in info.value.details()
        assert VALUE not in info.value.details()


def test_a_store_with_an_exposed_or_broken_file_does_not_start(tmp_path: pathlib.Path) -> None:
    secrets = tmp_path / "secrets"
    store = SecretStore(secrets)
    store.set("st-ok", {"K": VALUE})
    (secrets / "st-ok.json").chmod(0o644)
    state = tmp_path / "state"
    state.mkdir()
    config = ServerConfig(state_dir=str(state), task_id=TASK_ID, listen="127.0.0.1:0", secrets_dir=str(secrets))
    with pytest.raises(ValueError, match="st-ok.json is accessible to group or others"):
        RouterServer(config, auth.load_or_create_key(state))
    (secrets / "st-ok.json").chmod(0o600)
    (secrets / "st-bad.json").write_text('{"K": ' + f'["{VALUE}"]' + "}")
    (secrets / "st-bad.json").chmod(0o600)
    with pytest.raises(ValueError) as info:
        RouterServer(config, auth.load_or_create_key(state))
    assert "st-bad.json" in str(info.value) and VALUE not in str(info.value)
    with pytest.raises(SecretError, match="bad variable name"):
        store.set("st-x", {"A=B": "v"})
    with pytest.raises(SecretError, match="not a valid secret id"):
        store.set("../x", {"A": "v"})


def test_values_never_reach_logs_journal_or_the_command_line(tmp_path: pathlib.Path) -> None:
    key_file = tmp_path / "jwt.key"
    run = [sys.executable, "-m", "router.cli", "secrets", "--state-dir", str(tmp_path)]
    subprocess.run([*run, "set", "st-db", "PASSWORD"], input=VALUE + "\n", text=True, check=True, timeout=30)
    assert subprocess.run([*run, "ls"], capture_output=True, text=True, check=True, timeout=30).stdout == \
        "st-db\tPASSWORD\n"
    with router_process(tmp_path) as (server, listen):
        token = state_token(tmp_path)
        with RouterClient(listen, token, TASK_ID, retries=0) as client:
            env = env_of(client, "uses", secret_ids=["st-db"])
            assert env["PASSWORD"] == VALUE
            assert not any(k.startswith("ROUTER_") for k in env)
            assert key_file.read_text().strip() not in "".join(env.values())
            client.start("fails", ["/no/such/program"], **PIPES, secret_ids=["st-db"])
            client.wait("fails")
            client.start("times-out", ["sleep", "10"], **PIPES, secret_ids=["st-db"], timeout_secs=1)
            client.wait("times-out")
        with open(f"/proc/{server.pid}/cmdline", "rb") as f:
            assert VALUE.encode() not in f.read()
        with open(f"/proc/{server.pid}/environ", "rb") as f:
            assert VALUE.encode() not in f.read()
        server.terminate()
        log, _ = server.communicate(timeout=30)
    assert VALUE not in log
    journal = (tmp_path / "journal").read_bytes()
    assert b"PASSWORD" in journal and VALUE.encode() not in journal  # names kept, values never
    for dirpath, _, files in os.walk(tmp_path):
        if dirpath.endswith(("/secrets", "/logs")):
            continue  # the store itself, and the output of the exec that printed its environment
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                assert VALUE.encode() not in fh.read(), name


def test_exec_user_runs_execs_as_that_user_who_cannot_touch_the_router(tmp_path: pathlib.Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    with serving(tmp_path, exec_user="nobody") as (_, client, _raw):
        client.start("id", ["sh", "-c", "id -u; id -g; echo $HOME"], **PIPES)
        out = b"".join(client.read("id")).decode().split()
        assert out == [str(nobody.pw_uid), str(nobody.pw_gid), nobody.pw_dir]
        script = (f"kill -0 {os.getpid()} || echo cannot-signal; cat {tmp_path}/state/jwt.key || echo cannot-read-key; "
                  f"cat /proc/{os.getpid()}/environ >/dev/null || echo cannot-read-environ")
        client.start("probe", ["sh", "-c", script], **PIPES)
        said = b"".join(client.read("probe")).decode()
        assert "cannot-signal" in said and "cannot-read-key" in said and "cannot-read-environ" in said, said
        client.start("term", ["id", "-u"], **PIPES, pty_info=api_pb2.PTYInfo(enabled=True))
        assert b"".join(client.read("term")).decode().strip() == str(nobody.pw_uid)
    state = tmp_path / "other"
    state.mkdir()
    with pytest.raises(ValueError, match="no user"):
        RouterServer(ServerConfig(state_dir=str(state), task_id=TASK_ID, listen="127.0.0.1:0",
                                  exec_user="no-such-user-here"), auth.load_or_create_key(state))
