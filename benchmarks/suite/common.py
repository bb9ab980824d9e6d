"""What every benchmark shares: sizes, settings, /proc readings, servers in their own processes, and
the sync router client.

Servers under measurement run in their own processes (`router serve`, the bare grpcio server,
sshd), so that the benchmark process's own work never shows up in their figures. Every helper
here has a deadline: nothing waits forever.

Settings come from the environment, so that `asv run` and `python -m benchmarks.tools.compare` pick the
same parameters:

- BENCH_SIZE: tiny (CI: every benchmark once, in seconds), quick (small but meaningful), full
  (the sizes of the figures in RESULTS.md; the default).
- BENCH_SERVER_MODE: the router's `--server-mode` (aio, the default, or threads).
- BENCH_TMP: where state directories, logs and drain files go (default /tmp).
- BENCH_LOG_ROOT: give each router a log directory under this one (say /dev/shm) instead of its
  state directory's.

Names in this module must not start with asv's benchmark prefixes (time_, timeraw_, track_,
mem_, peakmem_): asv imports every module of the package and would take them for benchmarks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Self

import grpc

from router import auth
from router._proto import task_command_router_pb2 as pb
from router._proto import task_command_router_pb2_grpc as pb_grpc
from router.client import CHANNEL_OPTIONS, STDOUT, exit_code
from router.config import ServerConfig, read_server_info, write_private

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

TASK_ID = "ta-bench"
BENCH_DIR = pathlib.Path(__file__).resolve().parent
# Both the router (engine.PIPE_SIZE) and the drain references use 1 MiB pipes.
PIPE_SIZE = 1 * MiB
# What the router's event loop takes from one pipe per readiness event (engine.log_space.DRAIN_BUDGET).
DRAIN_BUDGET = 4 * MiB
SEGMENT_SIZE = ServerConfig(state_dir="", task_id="").log_segment_size
# Concurrent clients use this many grpc.aio channels (separate connections).
CHANNELS = 4
# The exec-rate target is stated for 64 execs in flight.
IN_FLIGHT = 64
READ_METHOD = "/modal.task_command_router.TaskCommandRouter/TaskExecStdioRead"


class BenchError(RuntimeError):
    """A benchmark could not do what it measures (server did not start, bytes wrong, calls failed)."""


# -- sizes and settings -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Parameters of the suite for one BENCH_SIZE. `rounds` is how many alternating rounds a
    comparison runs (the *Ratio classes and `benchmarks.tools.compare`)."""

    drain: list[int]  # bytes through one pipe
    stream: list[int]  # bytes of one exec's stdout
    fanout: list[int]  # concurrent execs
    fanout_ssh_max: int  # largest N run over one ssh ControlMaster (sshd's MaxSessions is 1000)
    exec_sequential: int  # execs per sequential rate measurement
    exec_in_flight: int  # execs per rate measurement with IN_FLIGHT in flight
    rpc_calls: int  # unary calls per gRPC floor measurement
    seek: int  # bytes of the finished log read at its start and near its end
    memory: int  # bytes streamed while watching the server's RSS
    idle: int  # idle execs held open
    recycle: tuple[int, int]  # stream rounds through one server: (rounds, bytes per round)
    restart_execs: int  # finished execs in the journal a restarted router replays
    soak: int  # short execs pushed through one router (its default retention) while watching its RSS
    images: tuple[int, int]  # the trees snapshotted and mounted: (files of ~4 KiB, bytes of the one big file)
    rounds: dict[str, int]


SIZES = {
    "tiny": Sizes(drain=[8 * MiB], stream=[8 * MiB], fanout=[16], fanout_ssh_max=16,
                  exec_sequential=10, exec_in_flight=40, rpc_calls=400, seek=16 * MiB, memory=16 * MiB,
                  idle=16, recycle=(3, 8 * MiB), restart_execs=10_000, soak=400, images=(200, 8 * MiB),
                  rounds={"drain": 2, "stream": 2, "fanout": 2, "exec": 2, "seek": 3, "journal": 2, "restart": 2,
                          "images": 1, "batch": 2}),
    "quick": Sizes(drain=[64 * MiB], stream=[128 * MiB], fanout=[64, 256], fanout_ssh_max=64,
                   exec_sequential=50, exec_in_flight=200, rpc_calls=5000, seek=256 * MiB, memory=256 * MiB,
                   idle=256, recycle=(12, 128 * MiB), restart_execs=10_000, soak=20_000,
                   images=(2_000, 128 * MiB),
                   rounds={"drain": 3, "stream": 3, "fanout": 2, "exec": 3, "seek": 15, "journal": 15, "restart": 5,
                           "images": 5, "batch": 3}),
    "full": Sizes(drain=[2 * GiB], stream=[1 * GiB], fanout=[256, 1024, 4096], fanout_ssh_max=256,
                  exec_sequential=200, exec_in_flight=1000, rpc_calls=20000, seek=4 * GiB, memory=4 * GiB,
                  idle=4096, recycle=(12, 1 * GiB), restart_execs=10_000, soak=100_000,
                  images=(20_000, 1 * GiB),
                  rounds={"drain": 5, "stream": 3, "fanout": 3, "exec": 5, "seek": 31, "journal": 9, "restart": 7,
                          "images": 5, "batch": 5}),
}


def env_choice(name: str, choices: Sequence[str], default: str) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(choices)}")
    return value


SIZE_NAME = env_choice("BENCH_SIZE", list(SIZES), "full")
SIZE = SIZES[SIZE_NAME]
SERVER_MODE = env_choice("BENCH_SERVER_MODE", ["aio", "threads"], "aio")
TMP = os.environ.get("BENCH_TMP") or "/tmp"
LOG_ROOT = os.environ.get("BENCH_LOG_ROOT") or None


@dataclasses.dataclass(frozen=True)
class Target:
    """A target for a ratio (or a value): `op` is '>=' or '<='."""

    op: str
    value: float
    unit: str = ""

    def met(self, x: float) -> bool:
        return x >= self.value if self.op == ">=" else x <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}" + (f" {self.unit}" if self.unit else "")


# -- process-wide ---------------------------------------------------------------------------------


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (fan-out holds thousands of pipes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    """Prefix argv so the child gets SIGTERM if this process dies without stopping it.

    asv ends each benchmark process with os._exit (no atexit, no finally after a timeout kill); this
    keeps a server started in `setup` from outliving it. setpriv is in util-linux (Essential in Debian).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *argv] if setpriv else list(argv)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def human_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % (size // 16) == 0:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def closing_on_error(stack: contextlib.ExitStack) -> Iterator[contextlib.ExitStack]:
    """For `setup`: if preparing fails half way, undo what was prepared (asv skips teardown then)."""
    try:
        yield stack
    except BaseException:
        stack.close()
        raise


# -- /proc ----------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile (bytes), Threads, and fds (open descriptors) of a process."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * KiB
            elif key == "Threads":
                out[key] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def cpu_seconds(pid: int, own: bool = True, children: bool = True) -> float:
    """utime + stime, from /proc/PID/stat, of the process (`own`) and of its reaped `children`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    ticks = (int(fields[11]) + int(fields[12]) if own else 0) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def processes_with_arg(marker: str) -> list[int]:
    """Pids whose command line contains `marker` as one argument (to find execs left behind)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
            if marker.encode() in f.read().split(b"\0"):
                pids.append(int(entry))
    return pids


# -- child processes --------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen, timeout: float = 15.0, sig: int = signal.SIGTERM,
                 again_after: float | None = None) -> int | None:
    """Signal, wait up to `timeout` (signalling again after `again_after`, if given), then SIGKILL
    and wait again. Returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            if again_after is not None and again_after < timeout:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(again_after)
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    return proc.returncode


def reap(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """Wait for a child that should be exiting; kill it and fail after `timeout`."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc, 0, signal.SIGKILL)
        raise BenchError(f"{proc.args!r} did not exit within {timeout} s") from None


def close_fd(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def tail(path: pathlib.Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def wait_for_line(path: pathlib.Path, prefix: str, proc: subprocess.Popen, timeout: float) -> str:
    """Poll a child's log file until a line starting with `prefix` appears; return that line."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
        if proc.poll() is not None:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode} before saying {prefix!r}:\n"
                             + tail(path))
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.args!r} did not say {prefix!r} within {timeout} s:\n" + tail(path))
        time.sleep(0.02)


def wait_channel_ready(channel: grpc.Channel, timeout: float = 15.0) -> None:
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise BenchError(f"channel not ready within {timeout} s") from None


class ServerProcess:
    """A server in its own process, in a directory of its own, that prints `<ready> HOST:PORT` once
    it listens. Output goes to `server.log` there (a pipe nobody reads could fill and block it).
    Use as a context manager, or call `stop()` in a finally block."""

    ready = "listening on "

    def __init__(self, argv: Sequence[str], directory: pathlib.Path, startup_timeout: float = 30.0) -> None:
        self.dir = directory
        self.log_path = directory / "server.log"
        self._channels: list[grpc.Channel] = []
        try:
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(with_parent_death_signal(argv), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        try:
            self.target = wait_for_line(self.log_path, self.ready, self.proc, startup_timeout).split()[-1]
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict[str, int]:
        return proc_status(self.pid)

    credentials: grpc.ChannelCredentials | None = None  # TLS servers set it

    def channel(self, ready_timeout: float = 15.0) -> grpc.Channel:
        """A sync channel to the server, connected; closed by stop()."""
        ch = grpc.secure_channel(self.target, self.credentials, options=CHANNEL_OPTIONS) if self.credentials \
            else grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._channels.append(ch)
        wait_channel_ready(ch, ready_timeout)
        return ch

    # A server whose first SIGTERM only starts a drain (a router), signalled again after this long.
    drains_for: float | None = None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, SIGKILL after `timeout`; then remove the directory."""
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        try:
            return stop_process(self.proc, timeout, again_after=self.drains_for)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def self_signed_tls(directory: pathlib.Path) -> tuple[bytes, str, str]:
    """(CA certificate PEM, server certificate file, key file) for 127.0.0.1, EC P-256, a day long."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: x509.Name, public: Any) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(issuer).public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = build("bench CA", ca_name, ca_key.public_key()).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    cert = build("router", ca_name, key.public_key()).add_extension(
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
    ).sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / "tls.pem", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM), str(cert_path), str(key_path)


def token_metadata(state_dir: pathlib.Path, task_id: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata with a bearer token signed by the key in a router's state directory."""
    token = auth.mint_token(auth.load_or_create_key(state_dir), task_id, 7 * 24 * 3600)
    return (("authorization", f"Bearer {token}"),)


def serve_argv(state_dir: pathlib.Path, listen: str = "127.0.0.1:0") -> list[str]:
    """`router serve` on `listen` with this state directory, the bench task id and BENCH_SERVER_MODE."""
    return [sys.executable, "-m", "router.cli", "serve", "--listen", listen, "--state-dir", str(state_dir),
            "--task-id", TASK_ID, "--server-mode", SERVER_MODE]


class RouterProcess(ServerProcess):
    """`router serve` on a free loopback port, with a state directory of its own under BENCH_TMP,
    in BENCH_SERVER_MODE (and a log directory under `log_root`, by default BENCH_LOG_ROOT, if
    set), with `args` added to its command line. The directories go on stop (SIGTERM, and another
    after `drains_for` if it still runs: the server kills its execs first)."""

    ready = "router listening on "
    # Execs still running at the end of a benchmark are not waited for: the second SIGTERM ends
    # the drain (and a router from before drains stops at the first).
    drains_for = 1.0

    def __init__(self, startup_timeout: float = 30.0, args: Sequence[str] = (),
                 log_root: str | None = LOG_ROOT, tls: bool = False, token_key: bytes = b"") -> None:
        """`token_key`: the key to serve with (one token for several routers), else one made for it."""
        self.log_dir: str | None = None
        state_dir = pathlib.Path(tempfile.mkdtemp(prefix="router-bench-", dir=TMP))
        try:
            if token_key:
                write_private(state_dir / "jwt.key", token_key)
            self.metadata = token_metadata(state_dir, TASK_ID)
            argv = [*serve_argv(state_dir), *args]
            if tls:  # a certificate for 127.0.0.1 from a CA made here, which the channels trust
                ca, cert, key = self_signed_tls(state_dir)
                argv += ["--tls-cert", cert, "--tls-key", key]
                self.credentials = grpc.ssl_channel_credentials(root_certificates=ca)
            if log_root:
                self.log_dir = tempfile.mkdtemp(prefix="router-logs-", dir=log_root)
                argv += ["--log-dir", self.log_dir]
            super().__init__(argv, state_dir, startup_timeout)
        except BaseException:
            shutil.rmtree(state_dir, ignore_errors=True)
            if self.log_dir:
                shutil.rmtree(self.log_dir, ignore_errors=True)
            raise

    @property
    def pid(self) -> int:
        """The serving process's (what CPU, memory and descriptor figures are of): `router serve`
        is its keeper (router.handover), which does nothing per call."""
        info = read_server_info(self.dir)
        return info.pid if info is not None else self.proc.pid

    @property
    def logs(self) -> pathlib.Path:
        """The server's log directory: --log-dir, else STATE_DIR/logs."""
        return pathlib.Path(self.log_dir) if self.log_dir else self.dir / "logs"

    def arena_bytes(self) -> int:
        """What the log's arena files occupy (allocated blocks: the files are sparse)."""
        return sum(p.stat().st_blocks * 512 for p in self.logs.glob("arena-*"))

    def stop(self, timeout: float = 60.0) -> int | None:
        try:
            return super().stop(timeout)
        finally:
            if self.log_dir:
                shutil.rmtree(self.log_dir, ignore_errors=True)


def router_from(src: str, **kwargs: Any) -> RouterProcess:
    """A RouterProcess of the package in source tree `src` (PYTHONPATH; a git worktree built in
    place, say), for side-by-side runs of two builds; "" for the installed one."""
    saved = os.environ.get("PYTHONPATH")
    if src:
        os.environ["PYTHONPATH"] = os.path.abspath(src)
    try:
        return RouterProcess(**kwargs)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


class BareGrpcProcess(ServerProcess):
    """benchmarks/suite/bare_grpc.py: the same grpcio stack with no router behind it (raw 1 MiB messages,
    and an empty unary call), as a sync, aio or aio + uvloop server."""

    ready = "bare listening on "

    def __init__(self, mode: str = "sync", startup_timeout: float = 30.0) -> None:
        argv = [sys.executable, str(BENCH_DIR / "bare_grpc.py"), "--listen", "127.0.0.1:0", "--mode", mode]
        super().__init__(argv, pathlib.Path(tempfile.mkdtemp(prefix="bare-grpc-", dir=TMP)), startup_timeout)


# -- router calls (sync) ------------------------------------------------------------------------------


def start_request(exec_id: str, args: Sequence[str], task_id: str = TASK_ID) -> pb.TaskExecStartRequest:
    """Start `args` with stdout and stderr piped (kept in the exec's logs)."""
    return pb.TaskExecStartRequest(task_id=task_id, exec_id=exec_id, command_args=list(args),
                                   stdout_config=pb.TASK_EXEC_STDOUT_CONFIG_PIPE,
                                   stderr_config=pb.TASK_EXEC_STDERR_CONFIG_PIPE)


def wait_request(exec_id: str, task_id: str = TASK_ID) -> pb.TaskExecWaitRequest:
    return pb.TaskExecWaitRequest(task_id=task_id, exec_id=exec_id)


def read_request(exec_id: str, offset: int = 0, task_id: str = TASK_ID) -> pb.TaskExecStdioReadRequest:
    return pb.TaskExecStdioReadRequest(task_id=task_id, exec_id=exec_id, offset=offset, file_descriptor=STDOUT)


def frame_payload_len(frame: bytes) -> int:
    """Data bytes in a raw TaskExecStdioReadResponse (b'\\x0a' + varint(n) + data)."""
    n = shift = 0
    i = 1
    while True:
        b = frame[i]
        n |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            break
        shift += 7
    if frame[0] != 0x0A or i + n != len(frame):
        raise BenchError(f"unexpected TaskExecStdioRead frame: {frame[:8]!r}... ({len(frame)} bytes)")
    return n


class SyncRouter:
    """The generated stub plus a raw (no deserializer) reader, on one connected channel."""

    def __init__(self, router: RouterProcess) -> None:
        channel = router.channel()
        self.stub = pb_grpc.TaskCommandRouterStub(channel)
        self.metadata = router.metadata
        # Raw reads: the client does not parse 1 MiB messages, so the figure is the server's.
        self.read_raw = channel.unary_stream(
            READ_METHOD, request_serializer=pb.TaskExecStdioReadRequest.SerializeToString, response_deserializer=None)

    def start(self, exec_id: str, args: Sequence[str], timeout: float = 60.0) -> None:
        self.stub.TaskExecStart(start_request(exec_id, args), metadata=self.metadata, timeout=timeout)

    def wait(self, exec_id: str, timeout: float = 300.0) -> int | None:
        return exit_code(self.stub.TaskExecWait(wait_request(exec_id), metadata=self.metadata, timeout=timeout))

    def read_all(self, exec_id: str, offset: int = 0, timeout: float = 600.0) -> int:
        """Read stdout from `offset` to its end; returns the number of data bytes."""
        total = 0
        for frame in self.read_raw(read_request(exec_id, offset), metadata=self.metadata, timeout=timeout):
            total += frame_payload_len(frame)
        return total

    def first_message(self, exec_id: str, offset: int, timeout: float = 60.0) -> int:
        """Open a read at `offset`, take its first message, cancel; returns the message's data bytes."""
        call = self.read_raw(read_request(exec_id, offset), metadata=self.metadata, timeout=timeout)
        try:
            return frame_payload_len(next(call))
        finally:
            call.cancel()

    def run_output(self, args: Sequence[str], expect: int, timeout: float = 600.0) -> None:
        """Start an exec, read its stdout to the end, wait for it; check the byte count and exit code."""
        exec_id = unique("ex")
        self.start(exec_id, args)
        got = self.read_all(exec_id, timeout=timeout)
        code = self.wait(exec_id, timeout=timeout)
        if got != expect or code != 0:
            raise BenchError(f"{args!r}: read {got} bytes (expected {expect}), exit {code}")

    def start_wait(self, args: Sequence[str], timeout: float = 60.0) -> None:
        exec_id = unique("ex")
        self.start(exec_id, args, timeout=timeout)
        code = self.wait(exec_id, timeout=timeout)
        if code != 0:
            raise BenchError(f"{args!r} exited {code}")

    def snapshot(self, path: bytes, timeout: float = 600.0) -> str:
        """TaskSnapshotDirectory of `path` with a snapshot id of its own (the default expiry); the image id."""
        request = pb.TaskSnapshotDirectoryRequest(task_id=TASK_ID, path=path, snapshot_id=unique("snap"))
        image_id: str = self.stub.TaskSnapshotDirectory(request, metadata=self.metadata, timeout=timeout).image_id
        return image_id

    def mount(self, path: bytes, image_id: str, timeout: float = 600.0) -> None:
        request = pb.TaskMountDirectoryRequest(task_id=TASK_ID, path=path, image_id=image_id)
        self.stub.TaskMountDirectory(request, metadata=self.metadata, timeout=timeout)

    def unmount(self, path: bytes, timeout: float = 600.0) -> None:
        request = pb.TaskUnmountDirectoryRequest(task_id=TASK_ID, path=path)
        self.stub.TaskUnmountDirectory(request, metadata=self.metadata, timeout=timeout)


def zeros_command(nbytes: int) -> list[str]:
    """The child every output benchmark runs: `head -c N /dev/zero`."""
    return ["head", "-c", str(nbytes), "/dev/zero"]


def stream_timeout(nbytes: int, floor: float = 120.0) -> float:
    """A deadline for moving `nbytes` that a healthy run never reaches (20 MB/s)."""
    return max(floor, nbytes / (20 * MiB))
