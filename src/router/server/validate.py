"""Request validation: each function returns a clean value or raises INVALID_ARGUMENT naming the field."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from router._proto import task_command_router_pb2 as pb
from router.engine.records import ExecSpec, PtySpec, StderrMode, StdoutMode, StreamName
from router.errors import invalid, not_found
from router.images.args import MountArgs, SnapshotArgs

MAX_ID_LENGTH = 256
_STDOUT: dict[int, StdoutMode] = {
    pb.TASK_EXEC_STDOUT_CONFIG_DEVNULL: "devnull",
    pb.TASK_EXEC_STDOUT_CONFIG_PIPE: "pipe",
}
_STDERR: dict[int, StderrMode] = {
    pb.TASK_EXEC_STDERR_CONFIG_DEVNULL: "devnull",
    pb.TASK_EXEC_STDERR_CONFIG_PIPE: "pipe",
    pb.TASK_EXEC_STDERR_CONFIG_STDOUT: "stdout",
}
_FDS: dict[int, StreamName] = {
    pb.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT: "stdout",
    pb.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR: "stderr",
}
_DEFAULT_TERM = "xterm-256color"


def exec_id(request: Any) -> str:
    value: str = request.exec_id
    if not value:
        raise invalid("exec_id", "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise invalid("exec_id", f"longer than {MAX_ID_LENGTH} characters")
    return value


def stdio_stream(request: pb.TaskExecStdioReadRequest) -> StreamName:
    try:
        return _FDS[request.file_descriptor]
    except KeyError:
        raise invalid("file_descriptor", f"unknown value {request.file_descriptor}") from None


def _env_entry(field: str, key: str, value: str) -> None:
    if not key or "=" in key or "\0" in key:
        raise invalid(field, f"bad variable name {key!r}: must be non-empty, without '=' or NUL")
    if "\0" in value:
        raise invalid(field, f"value of {key!r} contains a NUL byte")


SecretLookup = Callable[[str], dict[str, str]]


def no_secret_store(secret_id: str) -> dict[str, str]:
    raise not_found(f"secret {secret_id!r} not found (no secret store)")


def _overrides(request: pb.TaskExecStartRequest, secrets: SecretLookup) -> dict[str, str]:
    """What the request sets on top of the base environment: `env`, then `secret_ids`, then
    `secret_sources` in order; later wins. `secrets` gives a secret's variables, or raises
    RouterError (NOT_FOUND naming the id)."""
    env: dict[str, str] = {}
    if request.env:  # iterating an empty protobuf map still costs
        for key, value in request.env.items():
            _env_entry("env", key, value)
            env[key] = value
    for secret_id in request.secret_ids:
        env.update(secrets(secret_id))
    for i, source in enumerate(request.secret_sources):
        kind = source.WhichOneof("source")
        if kind == "secret_id":
            env.update(secrets(source.secret_id))
            continue
        if kind is None:
            raise invalid(f"secret_sources[{i}]", "sets neither secret_id nor env")
        for key, value in source.env.contents.items():
            _env_entry(f"secret_sources[{i}].env", key, value)
            env[key] = value
    return env


def env_bytes(env: dict[str, str]) -> int:
    """An environment's size as execve counts it: KEY=VALUE and a NUL per variable."""
    return sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())


# Args this short are one object with every equal arg (sys.intern): the router retains thousands of
# finished execs, most of them running the same few commands (`sh -c ...`).
SHARED_ARG_CHARS = 256


def exec_spec(request: pb.TaskExecStartRequest, base_env: dict[str, str], secrets: SecretLookup = no_secret_store,
              max_arg_bytes: int = 1 << 20, max_env_bytes: int = 1 << 20,
              base_env_bytes: int | None = None) -> ExecSpec:
    """The exec a start asks for, validated. `base_env_bytes` is env_bytes(base_env), if the
    caller keeps it (a batch of thousands need not count the same variables again each time)."""
    exec_id(request)
    if request.container_id:
        raise not_found(f"container {request.container_id!r} not found: this router serves only the main container")
    args = [sys.intern(a) if len(a) <= SHARED_ARG_CHARS else a for a in request.command_args]
    if not args:
        raise invalid("command_args", "must not be empty")
    if not args[0]:
        raise invalid("command_args[0]", "must not be empty")
    for i, arg in enumerate(args):
        if "\0" in arg:
            raise invalid(f"command_args[{i}]", "contains a NUL byte")
    arg_bytes = sum(len(a.encode()) + 1 for a in args)
    if arg_bytes > max_arg_bytes:
        raise invalid("command_args", f"{arg_bytes} bytes, more than the {max_arg_bytes} allowed (--max-arg-bytes)")
    stdout = _STDOUT.get(request.stdout_config)
    if stdout is None:
        raise invalid("stdout_config", f"unknown value {request.stdout_config}")
    stderr = _STDERR.get(request.stderr_config)
    if stderr is None:
        raise invalid("stderr_config", f"unknown value {request.stderr_config}")
    workdir = None
    if request.HasField("workdir"):
        workdir = request.workdir
        if not workdir.startswith("/"):
            raise invalid("workdir", f"must be an absolute path, got {workdir!r}")
        if "\0" in workdir:
            raise invalid("workdir", "contains a NUL byte")
    timeout = None
    if request.HasField("timeout_secs"):
        timeout = request.timeout_secs
        if timeout <= 0:
            raise invalid("timeout_secs", "must be greater than 0 when set")
    overrides = _overrides(request, secrets)
    pty = None
    if request.HasField("pty_info") and request.pty_info.enabled:
        info = request.pty_info
        for name in ("winsz_rows", "winsz_cols"):
            if getattr(info, name) > 0xFFFF:
                raise invalid(f"pty_info.{name}", "must fit in 16 bits")
        for name, var in (("env_term", "TERM"), ("env_colorterm", "COLORTERM"), ("env_term_program", "TERM_PROGRAM")):
            value = getattr(info, name)
            if "\0" in value:
                raise invalid(f"pty_info.{name}", "contains a NUL byte")
            if value:
                overrides[var] = value
        if "TERM" not in overrides and "TERM" not in base_env:
            overrides["TERM"] = _DEFAULT_TERM
        pty = PtySpec(rows=info.winsz_rows or 24, cols=info.winsz_cols or 80)
    env = {**base_env, **overrides}
    if base_env_bytes is None:
        base_env_bytes = env_bytes(base_env)
    size = base_env_bytes + env_bytes(overrides) - env_bytes({k: base_env[k] for k in overrides if k in base_env})
    if size > max_env_bytes:
        raise invalid("env", f"the environment would be {size} bytes, more than the {max_env_bytes} allowed "
                             "(--max-env-bytes)")
    return ExecSpec(args=args, env=env, workdir=workdir, stdout=stdout, stderr=stderr,
                    timeout_secs=timeout, pty=pty)


DEFAULT_IMAGE_TTL = 30 * 24 * 3600  # Modal's default for snapshot_directory
MAX_IMAGE_TTL = 2**31 - 1


def _main_container(request: Any) -> None:
    if request.container_id:
        raise not_found(f"container {request.container_id!r} not found: this router serves only the main container")


def directory_path(request: Any) -> bytes:
    """An absolute path, normalised (no `.`, `..` or repeated slashes left)."""
    path: bytes = request.path
    if not path.startswith(b"/"):
        raise invalid("path", f"must be an absolute path, got {path!r}")
    if b"\0" in path:
        raise invalid("path", "contains a NUL byte")
    if len(path) > 4096:
        raise invalid("path", "longer than 4096 bytes")
    if any(len(part) > 255 for part in path.split(b"/")):
        raise invalid("path", "has a component longer than 255 bytes")
    return os.path.normpath(path).replace(b"//", b"/")


def encryption_key(request: Any) -> bytes | None:
    if not request.HasField("customer_supplied_encryption_key"):
        return None
    key: bytes = request.customer_supplied_encryption_key
    if not 16 <= len(key) <= 512:
        raise invalid("customer_supplied_encryption_key", f"must be 16-512 bytes, got {len(key)}")
    return key


def snapshot_args(request: pb.TaskSnapshotDirectoryRequest) -> SnapshotArgs:
    _main_container(request)
    path = directory_path(request)
    if len(request.snapshot_id) > MAX_ID_LENGTH:
        raise invalid("snapshot_id", f"longer than {MAX_ID_LENGTH} characters")
    ttl: int | None = DEFAULT_IMAGE_TTL
    if request.HasField("ttl_seconds"):
        if request.ttl_seconds == -1:
            ttl = None
        elif request.ttl_seconds <= 0:
            raise invalid("ttl_seconds", f"must be positive, or -1 for no expiry; got {request.ttl_seconds}")
        else:
            ttl = request.ttl_seconds
    return SnapshotArgs(path, request.snapshot_id, ttl, encryption_key(request))


def mount_args(request: pb.TaskMountDirectoryRequest) -> MountArgs:
    _main_container(request)
    path = directory_path(request)
    if path == b"/":
        raise invalid("path", "cannot mount over /")
    if len(request.image_id) > MAX_ID_LENGTH:
        raise invalid("image_id", f"longer than {MAX_ID_LENGTH} characters")
    return MountArgs(path, request.image_id, encryption_key(request))


def unmount_path(request: pb.TaskUnmountDirectoryRequest) -> bytes:
    _main_container(request)
    path = directory_path(request)
    if path == b"/":
        raise invalid("path", "nothing is mounted at /")
    return path
