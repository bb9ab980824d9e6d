"""The TaskCommandRouter RPCs, each written once.

An RPC body is a generator: it yields `Wait(exec, ready)` when it must wait for an exec to change,
`Offload(fn)` for blocking work (the images' file walks and copies; the result is sent back in)
and, for TaskExecStdioRead, the frames to send; it returns the response. It never blocks and never
awaits, so the two servers (handlers.py) drive the same bodies: grpcio's threaded server by blocking
its thread, grpc.aio by awaiting (an Offload in a worker thread). Bodies raise RouterError for a status.
"""
from __future__ import annotations

import errno
import hashlib
import logging
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

import grpc
from google.protobuf import empty_pb2

from router._fastio import OffsetReleased, SegmentedLog
from router._proto import task_command_router_pb2 as pb
from router.config import ServerConfig
from router.engine.core import Engine
from router.engine.execs import Changes, Exec, read_limit
from router.engine.records import ExitStatus, StreamName
from router.errors import RouterError, not_found, throttled
from router.images.store import Images
from router.secretstore import MissingSecret, SecretError, SecretStore, secrets_dir

from . import validate
from .call_stats import ImageOps

logger = logging.getLogger(__name__)

SERVICE_NAME = "modal.task_command_router.TaskCommandRouter"


class Wait(NamedTuple):
    """Resume the body once `ready()` is true (called with the exec's lock held; it may act, as
    offering stdin does). A body whose call ended meanwhile is simply never resumed. `exec` is
    an Exec, or anything else that changes (a Watch's watcher)."""

    exec: Changes
    ready: Callable[[], bool]


class Offload(NamedTuple):
    """Run `fn()` where blocking is fine and resume the body with its result (or its exception)."""

    fn: Callable[[], Any]


Body = Generator[Wait | Offload | bytes, Any, Any]


class Method(NamedTuple):
    request: Any  # the request message class
    response: Any  # the response message class; None when the body yields encoded frames
    streaming: bool


METHODS: dict[str, Method] = {
    "TaskExecStart": Method(pb.TaskExecStartRequest, pb.TaskExecStartResponse, False),
    "TaskExecPoll": Method(pb.TaskExecPollRequest, pb.TaskExecPollResponse, False),
    "TaskExecWait": Method(pb.TaskExecWaitRequest, pb.TaskExecWaitResponse, False),
    "TaskExecStdinWrite": Method(pb.TaskExecStdinWriteRequest, pb.TaskExecStdinWriteResponse, False),
    "TaskMountDirectory": Method(pb.TaskMountDirectoryRequest, empty_pb2.Empty, False),
    "TaskUnmountDirectory": Method(pb.TaskUnmountDirectoryRequest, empty_pb2.Empty, False),
    "TaskSnapshotDirectory": Method(pb.TaskSnapshotDirectoryRequest, pb.TaskSnapshotDirectoryResponse, False),
    # No response class: the body yields TaskExecStdioReadResponse frames already encoded.
    "TaskExecStdioRead": Method(pb.TaskExecStdioReadRequest, None, True),
}


def fingerprint(request: pb.TaskExecStartRequest) -> bytes:
    """What makes two starts of one exec id the same request: a digest, so that no secret value a
    request carries is kept (or journaled) with the exec."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


def exit_message(cls: type, status: ExitStatus | None) -> Any:
    if status is None:
        return cls()
    if status.signal is not None:
        return cls(signal=status.signal)
    return cls(code=status.code)


class Service:
    """The bodies of the RPCs, by name (see METHODS)."""

    def __init__(self, config: ServerConfig, engine: Engine, images: Images) -> None:
        self._config = config
        self._engine = engine
        self._images = images
        self.image_ops = ImageOps()
        self._secrets = SecretStore(secrets_dir(config))
        self._base_env_bytes = validate.env_bytes(engine.base_env)  # the engine's base_env never changes

    def _secret(self, secret_id: str) -> dict[str, str]:
        """A secret's variables; NOT_FOUND naming the id, FAILED_PRECONDITION for a bad file."""
        try:
            return self._secrets.get(secret_id)
        except MissingSecret as e:
            raise not_found(str(e)) from None
        except SecretError as e:
            raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        except OSError as e:
            raise RouterError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"secret {secret_id!r} cannot be read: {e.strerror}") from None

    @property
    def engine(self) -> Engine:
        return self._engine

    def begin(self, request: pb.TaskExecStartRequest) -> Exec:
        """Validate a start and hand it to the engine; the exec's `started` says how it went."""
        spec = validate.exec_spec(request, self._engine.base_env, self._secret, self._config.max_arg_bytes,
                                  self._config.max_env_bytes, self._base_env_bytes)
        return self._engine.begin_exec(request.exec_id, fingerprint(request), spec)

    def TaskExecStart(self, request: pb.TaskExecStartRequest) -> Body:
        ex = self.begin(request)
        yield Wait(ex, ex.started.done)
        ex.started.result()  # raises why the start failed
        return pb.TaskExecStartResponse()

    def TaskExecPoll(self, request: pb.TaskExecPollRequest) -> Body:
        return exit_message(pb.TaskExecPollResponse, self._engine.get(validate.exec_id(request)).status)
        yield  # a body that never waits

    def TaskExecWait(self, request: pb.TaskExecWaitRequest) -> Body:
        ex = self._engine.get(validate.exec_id(request))
        yield Wait(ex, lambda: ex.status is not None)
        return exit_message(pb.TaskExecWaitResponse, ex.status)

    def TaskExecStdioRead(self, request: pb.TaskExecStdioReadRequest) -> Body:
        ex = self._engine.get(validate.exec_id(request))
        which = validate.stdio_stream(request)
        log = ex.log(which)
        if log is None:
            return None  # discarded or merged into stdout: a complete, empty stream
        cursor = ReadCursor(request, which, log, self._config.read_chunk_size, lambda: ex.read_limit(which, log))
        while True:
            frame = cursor.next_frame()
            if frame is None:
                if cursor.complete():
                    return None
                yield Wait(ex, cursor.ready)
            else:
                yield frame

    def TaskExecStdinWrite(self, request: pb.TaskExecStdinWriteRequest) -> Body:
        ex = self._engine.get(validate.exec_id(request))
        # A full buffer waits for room, until the call's deadline.
        yield Wait(ex, lambda: self._engine.offer_stdin(ex, request.offset, request.data, request.eof))
        return pb.TaskExecStdinWriteResponse()

    def TaskMountDirectory(self, request: pb.TaskMountDirectoryRequest) -> Body:
        args = validate.mount_args(request)
        yield Offload(lambda: self.image_ops.run("mount", lambda: self._images.mount(args)))
        return empty_pb2.Empty()

    def TaskUnmountDirectory(self, request: pb.TaskUnmountDirectoryRequest) -> Body:
        path = validate.unmount_path(request)
        yield Offload(lambda: self.image_ops.run("unmount", lambda: self._images.unmount(path)))
        return empty_pb2.Empty()

    def TaskSnapshotDirectory(self, request: pb.TaskSnapshotDirectoryRequest) -> Body:
        args = validate.snapshot_args(request)
        image_id = yield Offload(lambda: self.image_ops.run("snapshot", lambda: self._images.snapshot(args)))
        return pb.TaskSnapshotDirectoryResponse(image_id=image_id)


class ReadCursor:
    """Where one TaskExecStdioRead call is in its stream."""

    def __init__(self, request: pb.TaskExecStdioReadRequest, which: StreamName, log: SegmentedLog,
                 chunk: int, limit: Callable[[], tuple[int, bool]] | None = None) -> None:
        self.log = log
        # How far the reader may go, and whether that is the end (Exec.read_limit).
        self._limit = limit or (lambda: read_limit(log, None))
        self.offset = request.offset
        self._which = which
        self._exec_id = request.exec_id
        self._chunk = chunk

    def next_frame(self) -> bytes | None:
        """The next frame to send, or None if nothing readable lies past the offset yet."""
        limit, _ = self._limit()
        if self.offset >= limit:
            return None
        n = min(self._chunk, limit - self.offset)
        try:
            # One copy out of the log, already a TaskExecStdioReadResponse on the wire.
            frame = self.log.read_frame(self.offset, n)
        except OffsetReleased as e:
            # The per-exec cap (or a full log filesystem) released the middle of a running exec's
            # output: never skip silently, since clients count offsets themselves.
            raise RouterError(grpc.StatusCode.OUT_OF_RANGE,
                              f"offset {self.offset} of the {self._which} stream was released (the exec's "
                              f"output passed its cap, or the log filesystem filled); the first offset still "
                              f"held is {e.first_held}") from None
        except ValueError:
            # Closed under us: retention released the exec (the only reason a log closes early).
            raise not_found(f"exec {self._exec_id!r} not found: its output was released") from None
        except OSError as e:
            raise _log_error(e, f"the {self._which} of exec {self._exec_id!r}") from None
        # A read stops early at a range the cap released meanwhile: advance by what the frame holds.
        self.offset += _frame_data_length(frame)
        return frame

    def complete(self) -> bool:
        """True once everything up to the stream's end was sent; OUT_OF_RANGE past that end."""
        end, final = self._limit()
        if not final:
            return False  # the stream runs on, or its end is not journaled yet
        if self.offset > end:
            raise RouterError(grpc.StatusCode.OUT_OF_RANGE,
                              f"offset {self.offset} is past the end of the {self._which} stream ({end} bytes)")
        return self.offset == end

    def ready(self) -> bool:
        limit, final = self._limit()
        return limit > self.offset or final


def _frame_data_length(frame: bytes) -> int:
    """The length of `data` in an encoded TaskExecStdioReadResponse (tag 0x0A, then a varint)."""
    n = shift = 0
    for byte in frame[1:11]:
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n
        shift += 7
    raise ValueError("malformed frame")


def _log_error(e: OSError, what: str) -> RouterError:
    """A failed read of a log: throttle when out of descriptors or memory, DATA_LOSS if the disk failed."""
    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return throttled(f"cannot read {what}: {e.strerror}", retry_after=1.0)
    if e.errno == errno.EIO:
        return RouterError(grpc.StatusCode.DATA_LOSS, f"cannot read {what}: {e.strerror}")
    logger.exception("reading %s failed", what, extra={"event": "read_failed"})
    return RouterError(grpc.StatusCode.INTERNAL, f"cannot read {what}: {e!r}")
