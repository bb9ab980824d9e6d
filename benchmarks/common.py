"""Shared setup for the asv suite and `benchmarks.compare`.

Servers under measurement run in their own processes (`router serve`, the bare grpcio server,
sshd), so that the benchmark process's own work never shows up in their figures. Every helper
here has a deadline: nothing waits forever.

Names in this module must not start with asv's benchmark prefixes (time_, timeraw_, track_,
mem_, peakmem_): asv imports every module of the package and would take them for benchmarks.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import grpc

from router import auth
from router._proto import task_command_router_pb2 as pb
from router._proto import task_command_router_pb2_grpc as pb_grpc
from router.client import exit_code
from router.config import ServerConfig

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

TASK_ID = "ta-bench"
BENCH_DIR = pathlib.Path(__file__).resolve().parent
# Both the router (engine.PIPE_SIZE) and the drain references use 1 MiB pipes.
PIPE_SIZE = 1 * MiB
# What the router's event loop takes from one pipe per readiness event (engine.DRAIN_BUDGET).
DRAIN_BUDGET = 4 * MiB
SEGMENT_SIZE = ServerConfig(state_dir="", task_id="").log_segment_size
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 128 * MiB),
    ("grpc.max_send_message_length", 128 * MiB),
]
STDOUT = pb.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT
STDERR = pb.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR
PIPE = 1  # TASK_EXEC_STDOUT_CONFIG_PIPE == TASK_EXEC_STDERR_CONFIG_PIPE
READ_METHOD = "/modal.task_command_router.TaskCommandRouter/TaskExecStdioRead"


class BenchError(RuntimeError):
    """A benchmark could not do what it measures (server did not start, bytes wrong, calls failed)."""


# -- process-wide ---------------------------------------------------------------------------------


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit."""
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


def parse_size(text: str) -> int:
    """'64M', '2G', '65536', '1.5G' -> bytes (binary units)."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMGT" else text
    return int(float(number) * scale)


def human_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % (size // 16) == 0:
            return f"{n / size:g} {unit}"
    return f"{n} B"


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


def meminfo(*keys: str) -> dict[str, int]:
    """Fields of /proc/meminfo in bytes (e.g. Dirty, Writeback: page-cache data not yet on disk)."""
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = int(value.split()[0]) * KiB
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children of all its threads, recursively)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                    found.extend(kids)
                    todo.extend(kids)
    return found


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


def stop_process(proc: subprocess.Popen, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
    """Signal, wait up to `timeout`, then SIGKILL and wait again. Returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
    return proc.returncode


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


def tail(path: pathlib.Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def wait_channel_ready(channel: grpc.Channel, timeout: float = 15.0) -> None:
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise BenchError(f"channel not ready within {timeout} s") from None


class RouterProcess:
    """`router serve` in its own process on a free loopback port, with a state directory of its own.

    Use as a context manager, or call `stop()` in a finally block. Output goes to `server.log` in the
    state directory (a pipe nobody reads could fill and block the server).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, extra: Sequence[str] = (),
                 startup_timeout: float = 30.0) -> None:
        self.state_dir = pathlib.Path(tempfile.mkdtemp(prefix="router-bench-", dir=root))
        self.log_path = self.state_dir / "server.log"
        key = auth.load_or_create_key(self.state_dir)
        self.token = auth.mint_token(key, TASK_ID, 7 * 24 * 3600)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {self.token}"),)
        self.task_id = TASK_ID
        argv = [sys.executable, "-m", "router.cli", "serve", "--listen", "127.0.0.1:0",
                "--state-dir", str(self.state_dir), "--task-id", TASK_ID, *extra]
        self._channels: list[grpc.Channel] = []
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(with_parent_death_signal(argv), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            line = wait_for_line(self.log_path, "router listening on ", self.proc, startup_timeout)
            self.target = line.split()[-1]
            self.port = int(self.target.rsplit(":", 1)[1])
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict[str, int]:
        return proc_status(self.pid)

    def channel(self, ready_timeout: float = 15.0) -> grpc.Channel:
        """A sync channel to the server, connected; closed by stop()."""
        ch = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._channels.append(ch)
        wait_channel_ready(ch, ready_timeout)
        return ch

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the server kills its execs and removes its logs), SIGKILL after `timeout`."""
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        try:
            return stop_process(self.proc, timeout) if hasattr(self, "proc") else None
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> RouterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BareGrpcProcess:
    """benchmarks/bare_grpc.py in its own process: one unary-stream method streaming raw 1 MiB messages."""

    def __init__(self, chunk: int = MiB, startup_timeout: float = 30.0) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="bare-grpc-"))
        self.log_path = self.dir / "server.log"
        argv = [sys.executable, str(BENCH_DIR / "bare_grpc.py"), "--listen", "127.0.0.1:0", "--chunk", str(chunk)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(with_parent_death_signal(argv), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            self.target = wait_for_line(self.log_path, "bare listening on ", self.proc, startup_timeout).split()[-1]
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        try:
            stop_process(self.proc, timeout)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> BareGrpcProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- router calls (sync) ------------------------------------------------------------------------------


def start_request(exec_id: str, args: Sequence[str], stdout: int = PIPE, stderr: int = PIPE) -> pb.TaskExecStartRequest:
    return pb.TaskExecStartRequest(task_id=TASK_ID, exec_id=exec_id, command_args=list(args),
                                   stdout_config=stdout, stderr_config=stderr)


def wait_request(exec_id: str) -> pb.TaskExecWaitRequest:
    return pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id=exec_id)


def read_request(exec_id: str, offset: int = 0, fd: int = STDOUT) -> pb.TaskExecStdioReadRequest:
    return pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id=exec_id, offset=offset, file_descriptor=fd)


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

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self.stub = pb_grpc.TaskCommandRouterStub(channel)
        self.metadata = metadata
        # Raw reads: the client does not parse 1 MiB messages, so the figure is the server's.
        self.read_raw = channel.unary_stream(
            READ_METHOD, request_serializer=pb.TaskExecStdioReadRequest.SerializeToString, response_deserializer=None)

    def start(self, exec_id: str, args: Sequence[str], stdout: int = PIPE, stderr: int = PIPE,
              timeout: float = 60.0) -> None:
        self.stub.TaskExecStart(start_request(exec_id, args, stdout, stderr), metadata=self.metadata, timeout=timeout)

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

    def start_wait(self, args: Sequence[str], timeout: float = 60.0) -> int | None:
        exec_id = unique("ex")
        self.start(exec_id, args, timeout=timeout)
        return self.wait(exec_id, timeout=timeout)


# -- pipes and draining -----------------------------------------------------------------------------------


def spawn_zero_writer(nbytes: int, pipe_size: int = PIPE_SIZE) -> tuple[subprocess.Popen, int]:
    """`head -c N /dev/zero` writing into a pipe of `pipe_size` (F_SETPIPE_SZ); returns (child, read end).

    The read end is non-blocking, as the router's event loop has it.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, pipe_size)
        proc = subprocess.Popen(["head", "-c", str(nbytes), "/dev/zero"], stdin=subprocess.DEVNULL, stdout=w)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    os.set_blocking(r, False)
    return proc, r


def drain_until_eof(fd: int, step: Callable[[int], tuple[int, bool]], timeout: float) -> int:
    """Call `step(fd) -> (n, eof)` once per readiness event (poll between calls) until EOF; returns bytes."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    total = 0
    while True:
        n, eof = step(fd)
        total += n
        if eof:
            return total
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"pipe not at EOF after {timeout} s ({total} bytes so far)")
        poller.poll(min(remaining, 1.0) * 1000)


class ReadvSink:
    """The ceiling: os.readv into one reused 1 MiB buffer, data thrown away."""

    def __init__(self, size: int = MiB, budget: int = DRAIN_BUDGET) -> None:
        self.buf = bytearray(size)
        self.budget = budget

    def __call__(self, fd: int) -> tuple[int, bool]:
        drained = 0
        bufs = [self.buf]
        while drained < self.budget:
            try:
                n = os.readv(fd, bufs)
            except BlockingIOError:
                return drained, False
            except InterruptedError:
                continue
            if n == 0:
                return drained, True
            self._keep(n)
            drained += n
        return drained, False

    def _keep(self, n: int) -> None:
        """What happens to the n bytes just read into the buffer: nothing, for the ceiling."""


class ReadvPwriteSink(ReadvSink):
    """The ceiling for a log that keeps its data: readv into a reused buffer, then os.pwrite into
    segment files `seg-00000000`, ... of `segment_size` in `directory` (the log keeps its segments
    as slots of shared arena files; a file per 32 MiB costs one creation per 32 MiB, nothing here)."""

    def __init__(self, directory: str | os.PathLike[str], segment_size: int = SEGMENT_SIZE, size: int = MiB,
                 budget: int = DRAIN_BUDGET) -> None:
        super().__init__(size, budget)
        self.dir = os.fspath(directory)
        self.segment_size = segment_size
        self.offset = 0
        self._seg = -1
        self._fd = -1
        self._view = memoryview(self.buf)

    def _segment_fd(self, idx: int) -> int:
        if idx != self._seg:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._fd = os.open(os.path.join(self.dir, f"seg-{idx:08d}"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            self._seg = idx
        return self._fd

    def _keep(self, n: int) -> None:
        done = 0
        while done < n:
            idx, pos = divmod(self.offset, self.segment_size)
            k = min(n - done, self.segment_size - pos)
            w = os.pwrite(self._segment_fd(idx), self._view[done:done + k], pos)
            done += w
            self.offset += w

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def log_sink(log) -> Callable[[int], tuple[int, bool]]:  # type: ignore[no-untyped-def]
    """SegmentedLog.drain as a drain step."""
    def step(fd: int) -> tuple[int, bool]:
        return log.drain(fd, DRAIN_BUDGET)
    return step


def reap(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise BenchError(f"{proc.args!r} did not exit within {timeout} s") from None


def close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# -- OpenSSH -------------------------------------------------------------------------------------------


def ensure_openssh(install: bool = True, log: Callable[[str], None] = print) -> str | None:
    """None if sshd and ssh are available (installing Debian's packages if allowed); else why not."""
    if shutil.which("sshd") is None and not os.path.exists("/usr/sbin/sshd") or shutil.which("ssh") is None:
        if not install:
            return "OpenSSH not installed (sshd/ssh missing; run apt-get install -y openssh-server openssh-client)"
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            return "OpenSSH not installed and cannot install it here (needs root and apt-get)"
        log("installing openssh-server and openssh-client with apt-get ...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "install", "-y", "-q", "openssh-server", "openssh-client"],
                     ["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "openssh-server", "openssh-client"]):
            try:
                done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, timeout=600)
            except subprocess.TimeoutExpired:
                return f"{' '.join(argv)} timed out"
            if argv[1] == "install" and done.returncode == 0:
                break
        if not os.path.exists("/usr/sbin/sshd") or shutil.which("ssh") is None:
            return "apt-get could not install OpenSSH: " + done.stderr.decode(errors="replace")[-300:]
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SSHServer:
    """An sshd on a loopback port with throwaway host and user keys, and ssh command lines for it.

    `start_master()` opens one ControlMaster connection that `argv(..., mux=True)` commands share.
    """

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-sshd-"))
        self.proc: subprocess.Popen | None = None
        self.master: subprocess.Popen | None = None
        self.control = self.dir / "cm.sock"
        try:
            self._start(startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, startup_timeout: float) -> None:
        d = self.dir
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                           check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=30)
        shutil.copy(d / "user_key.pub", d / "authorized_keys")
        (d / "home").mkdir()
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        self.port = free_port()
        config = d / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress 127.0.0.1:{self.port}",
            f"HostKey {d / 'host_key'}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}",
            f"PidFile {d / 'sshd.pid'}",
            "StrictModes no",
            "PermitRootLogin yes",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            # Multiplexed sessions over one ControlMaster connection: the default 10 limits fan-out.
            "MaxSessions 1000",
            "MaxStartups 1000",
            "LogLevel ERROR",
            # The remote command runs as `$SHELL -c CMD`, and bash started by sshd sources ~/.bashrc: this
            # machine's root .bashrc runs `pyenv init` (~120 ms a session). An empty HOME keeps the
            # reference OpenSSH's cost, not the account's.
            f"SetEnv HOME={d / 'home'}",
            "",
        ]))
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.log_path = d / "sshd.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                with_parent_death_signal([sshd, "-D", "-e", "-f", str(config), "-p", str(self.port)]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"sshd exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            with socket.socket() as s:
                s.settimeout(1.0)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"sshd did not listen within {startup_timeout} s:\n{tail(self.log_path)}")
            time.sleep(0.05)
        argv = self.argv("true")
        done = subprocess.run([argv[0], "-v", *argv[1:]], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        if done.returncode != 0:
            raise BenchError(f"ssh to the benchmark sshd failed ({done.returncode}): "
                             f"{done.stderr.decode(errors='replace')[-2000:]}\n{tail(self.log_path)}")
        self.cipher = "?"
        self.version = done.stderr.decode(errors="replace").splitlines()[0].split(",")[0]
        for line in done.stderr.decode(errors="replace").splitlines():
            if "kex: server->client cipher:" in line:
                self.cipher = line.split("cipher:", 1)[1].split()[0]

    def base_argv(self) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.dir / "user_key"),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes"]

    def argv(self, remote: str, mux: bool = False) -> list[str]:
        extra = ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control}"] if mux else []
        return [*self.base_argv(), *extra, "root@127.0.0.1", remote]

    def start_master(self, timeout: float = 30.0) -> None:
        """One ControlMaster connection, a child of ours (ssh -M -N), that mux commands share."""
        if self.master is not None and self.master.poll() is None:
            return
        self.master = subprocess.Popen(
            [*self.base_argv(), "-M", "-N", "-o", f"ControlPath={self.control}", "-o", "ControlPersist=no",
             "root@127.0.0.1"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self.control.exists():
            if self.master.poll() is not None:
                raise BenchError("ssh ControlMaster exited: " + self.master.stderr.read().decode(errors="replace"))
            if time.monotonic() > deadline:
                raise BenchError(f"ssh ControlMaster not up within {timeout} s")
            time.sleep(0.02)
        done = subprocess.run(self.argv("true", mux=True), stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        if done.returncode != 0:
            raise BenchError("ssh over the ControlMaster failed: " + done.stderr.decode(errors="replace"))

    def stop(self) -> None:
        if self.master is not None:
            stop_process(self.master, 10)
            if self.master.stderr is not None:
                self.master.stderr.close()
        if self.proc is not None:
            stop_process(self.proc, 10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SSHServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def temp_dir(root: str | None = None, prefix: str = "bench-") -> Iterator[pathlib.Path]:
    path = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
