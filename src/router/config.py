"""Server configuration and the files a server keeps in its state directory."""
from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import secrets
import time
from collections.abc import Callable
from typing import Literal

import msgspec
import platformdirs

from router.engine import procs
from router.engine.retention import DEFAULT_EXECS, DEFAULT_SECS
from router.tls import TlsFiles

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_TOKEN_TTL_SECS = 24 * 3600  # tokens `router token` mints
MiB = 1024 * 1024


class TokenPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How bearer tokens are verified (auth.py): the algorithm and key come from here, never from a
    token's header."""

    algorithm: Literal["HS256", "RS256", "ES256", "EdDSA"] = "HS256"
    public_key: str = ""  # PEM file, for RS256 / ES256 / EdDSA; HS256 uses STATE_DIR/jwt.key
    audience: str = ""  # required `aud` when set
    issuer: str = ""  # required `iss` when set
    leeway_secs: float = 5.0  # for exp, nbf and iat: clocks differ a little
    task_claim: str = "task_id"


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    state_dir: str
    task_id: str
    listen: str = DEFAULT_LISTEN
    # Where output logs live; empty means <state_dir>/logs. A tmpfs (say /dev/shm/router) spares
    # the disk's writeback and keeps logs across a router crash, not a reboot, in memory.
    log_dir: str = ""
    # Largest data field in one TaskExecStdioRead message. A reader that stops reading leaves two
    # with the server (the one grpc's transport took and cannot send, the next one waiting to be
    # written): 256 KiB keeps that near 0.5 MiB per stream, and streams as fast as 1 MiB did
    # (benchmarks/RESULTS.md, "Readers that never read").
    read_chunk_size: int = MiB // 4
    log_segment_size: int = 32 * MiB
    # Bytes of stdin accepted but not yet taken by the child, per exec.
    stdin_buffer_limit: int = 64 * MiB
    # A single stdin write from Modal's client can carry 16 MiB.
    max_receive_message_size: int = 128 * MiB
    # Seconds between SIGTERM and SIGKILL when an exec's timeout fires; 0 sends SIGKILL at once.
    kill_grace_secs: float = 0.0
    # 0 means no count of its own: execs are admitted while their descriptors fit (descriptors.py).
    max_running_execs: int = 0
    # "aio": grpc.aio on an event loop thread of its own beside the engine's, one thread for every
    # call (the default: measured faster for many execs, benchmarks/HISTORY.md, "Server modes side
    # by side"); "threads": grpcio's thread-per-call server.
    server_mode: Literal["aio", "threads"] = "aio"
    # Reap orphaned processes (the router inherits them as PID 1 of a container or a subreaper).
    reap_orphans: bool = False
    # Threads mode only. A followed exec holds three calls (one Wait, two reads).
    max_workers: int = 13000
    # Finished execs' output kept (retention.py): total bytes (0: 10% of the logs' filesystem, at
    # most 4 GiB), seconds after exit, number of execs. Oldest released first.
    retain_bytes: int = 0
    retain_secs: float = DEFAULT_SECS
    retain_execs: int = DEFAULT_EXECS
    # Output a running exec keeps (0: as much as retain_bytes); past it, the head segment and the
    # latest output are kept and the middle released.
    max_exec_output: int = 0
    # When running execs fill the log filesystem: "trim" the ones holding the most output to head
    # and tail, or "block" (stop draining) the largest writers until there is room (log_space.py).
    on_log_full: Literal["trim", "block"] = "trim"
    # Journal exec records in the state directory, so a restarted router serves what it had.
    journal: bool = True
    # Answers wait for their records to be written ("process": survives the router's death) or
    # also synced to disk ("machine": survives a power cut); engine/durability.py.
    durability: Literal["process", "machine"] = "process"
    # How images are mounted: "overlay" (O(1), needs the privilege to mount), "copy", or "auto"
    # (overlay if a probe mount works, else copy).
    mount_method: Literal["auto", "overlay", "copy"] = "auto"
    # Images in a bucket (s3://BUCKET[/PREFIX], README "Images in object storage"), the local store
    # then a cache of at most image_cache_bytes; empty: in the state directory.
    image_store: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""
    image_cache_bytes: int = 10 << 30
    tokens: TokenPolicy = TokenPolicy()
    tls: TlsFiles = TlsFiles()
    # Serving a non-loopback address without TLS needs this, said explicitly.
    insecure: bool = False
    # HOST:PORT serving /metrics (server/metrics.py), no token asked; empty: none. Same TLS rule as `listen`.
    metrics_listen: str = ""
    # HOST:PORT serving grpc.health.v1 alone, always plaintext (Kubernetes' gRPC probes; README,
    # "Running a fleet"); empty: none (health is on `listen` anyway).
    health_listen: str = ""
    # One file per secret id (ID.json or ID.toml, owner-only); empty: STATE_DIR/secrets.
    secrets_dir: str = ""
    # USER[:GROUP] every exec runs as (with that user's groups and HOME); empty: the router's own.
    exec_user: str = ""
    # Limits (README, "Limits"): bytes of command_args and of the child's environment per exec,
    # HTTP/2 streams per connection, calls in flight per token.
    max_arg_bytes: int = 1 * MiB
    max_env_bytes: int = 1 * MiB
    max_streams_per_connection: int = 65_536
    max_calls_per_token: int = 65_536


class ServerInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Written by a running server so that local `router token` and `router exec` can find it."""

    listen: str
    task_id: str
    pid: int  # the serving process
    tls: bool = False
    keeper_pid: int = 0  # `router serve` itself (handover.keeper): SIGUSR2 there hands over
    metrics: str = ""  # the URL of /metrics, if served


_info_encoder = msgspec.json.Encoder()
_info_decoder = msgspec.json.Decoder(ServerInfo)


def default_state_dir() -> pathlib.Path:
    return pathlib.Path(platformdirs.user_state_dir("task-command-router"))


def state_dir_from(value: str | os.PathLike[str] | None) -> pathlib.Path:
    """`value` as an absolute path (~ expanded), or the default state directory when it is empty."""
    return pathlib.Path(value).expanduser().resolve() if value else default_state_dir()


def ensure_state_dir(path: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def load_or_create_id(path: pathlib.Path, new: Callable[[], str]) -> str:
    """The id kept in `path`: `new()`, written there (owner-only) the first time, then kept."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        made = new()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, made.encode() + b"\n")
        return made


def load_or_create_task_id(state_dir: pathlib.Path) -> str:
    """The task id this state directory serves: generated once, then kept."""
    return load_or_create_id(state_dir / "task_id", lambda: "ta-" + secrets.token_hex(12))


def write_server_info(state_dir: pathlib.Path, info: ServerInfo) -> None:
    write_private(state_dir / "server.json", _info_encoder.encode(info))


def read_server_info(state_dir: pathlib.Path) -> ServerInfo | None:
    try:
        return _info_decoder.decode((state_dir / "server.json").read_bytes())
    except (FileNotFoundError, msgspec.DecodeError):
        return None


# A lock whose keeper is gone is free within this (handover/keeper.py).
HOLDER_GONE_SECS = 5.0


class StateDirBusy(Exception):
    """Another server holds the state directory."""


def lock_state_dir(state_dir: pathlib.Path) -> int:
    """Hold STATE_DIR/serve.lock for as long as the returned descriptor is open: one server per state
    directory (two would append to one journal and hand out the same log slots). The kernel drops
    the lock when its holder dies, so a restart after `kill -9` takes it at once. StateDirBusy,
    naming the holder, if another server has it."""
    fd = os.open(state_dir / "serve.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _flock_once_holder_gone(fd)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        info = read_server_info(state_dir)
        ours = info is not None and holder in (str(info.pid), str(info.keeper_pid))
        where = f", listening on {info.listen}" if info is not None and ours else ""
        raise StateDirBusy(f"{state_dir} is served by another router (pid {holder}{where})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _flock_once_holder_gone(fd: int) -> None:
    """flock, waiting a moment if the keeper that took the lock is gone: its serving process, which
    holds the lock too, dies with it (PDEATHSIG) a moment later."""
    deadline = time.monotonic() + HOLDER_GONE_SECS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if not holder.isdigit() or procs.alive(int(holder)) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def remove_server_info(state_dir: pathlib.Path) -> None:
    (state_dir / "server.json").unlink(missing_ok=True)


def write_private(path: pathlib.Path, data: bytes) -> None:
    """Write a file readable only by its owner, atomically and durably (tmp, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_or_create_private(path: pathlib.Path, make: bytes) -> bytes:
    """Return the file's bytes; create it with `make` (mode 0600) if it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        write_private(path, make)
        return make
