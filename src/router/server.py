"""The gRPC server: validate, authorise, hand work to the engine, map errors to status codes."""
from __future__ import annotations

import concurrent.futures
import errno
import functools
import logging
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from . import requests
from ._proto import api_pb2
from ._proto import task_command_router_pb2 as pb
from .auth import Authenticator
from .config import ServerConfig
from .engine import Engine, Exec, ExitStatus, raise_open_file_limit
from .errors import RouterError, throttled

log = logging.getLogger(__name__)

SERVICE_NAME = "modal.task_command_router.TaskCommandRouter"
# How long a waiting handler sleeps before it looks again at whether its call is still alive.
# A done-callback wakes it sooner; this only bounds the cost of a missed wake-up.
_RECHECK_SECS = 5.0
# Modal's client unpacks status details with this type URL prefix.
_RETRY_POLICY_TYPE_URL = "type.modal.com/modal.client.RPCRetryPolicy"



class MalformedRequest:
    """Stands in for a request whose bytes did not parse, so the handler can say INVALID_ARGUMENT.

    (grpcio answers a deserializer's exception with INTERNAL, which Modal's client retries forever.)
    """

    def __init__(self, error: str) -> None:
        self.error = error


def _parser(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return MalformedRequest(str(e))

    return parse


def _abort(context: grpc.ServicerContext, err: RouterError) -> None:
    if err.retry_after is None:
        context.abort(err.code, err.message)
    detail = any_pb2.Any(type_url=_RETRY_POLICY_TYPE_URL,
                         value=api_pb2.RPCRetryPolicy(retry_after_secs=err.retry_after).SerializeToString())
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=err.message, details=[detail])
    context.abort_with_status(rpc_status.to_status(status))


def _remaining(context: grpc.ServicerContext) -> float | None:
    """Seconds left before the call's deadline; None if it has none (grpcio then says ~1e19)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > threading.TIMEOUT_MAX else remaining


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = _remaining(context)
    return None if remaining is None else time.monotonic() + remaining


def _log_error(e: OSError, what: str) -> RouterError:
    """A failed read of a log: throttle when out of descriptors or memory, DATA_LOSS if the disk failed."""
    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return throttled(f"cannot read {what}: {e.strerror}", retry_after=1.0)
    if e.errno == errno.EIO:
        return RouterError(grpc.StatusCode.DATA_LOSS, f"cannot read {what}: {e.strerror}")
    log.exception("reading %s failed", what)
    return RouterError(grpc.StatusCode.INTERNAL, f"cannot read {what}: {e!r}")


class Servicer:
    """TaskCommandRouter. Each handler raises RouterError; `_unary`/`_stream` turn it into a status."""

    def __init__(self, config: ServerConfig, engine: Engine, auth: Authenticator) -> None:
        self._config = config
        self._engine = engine
        self._auth = auth

    # -- plumbing ------------------------------------------------------------------------------

    def _authorise(self, request: Any, context: grpc.ServicerContext) -> None:
        granted = self._auth.token_task(context.invocation_metadata())
        if isinstance(request, MalformedRequest):
            raise RouterError(grpc.StatusCode.INVALID_ARGUMENT, f"request: cannot be parsed: {request.error}")
        self._auth.check_task(granted, request.task_id)

    def _unary(self, fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
        @functools.wraps(fn)
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                self._authorise(request, context)
                return fn(request, context)
            except RouterError as e:
                err = e
            except Exception as e:
                log.exception("%s failed", fn.__name__)
                err = RouterError(grpc.StatusCode.INTERNAL, f"internal error: {e!r}")
            # Outside the except block: abort() raises, and must not be caught as a failure.
            _abort(context, err)

        return handler

    def _stream(self, fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        @functools.wraps(fn)
        def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                self._authorise(request, context)
                yield from fn(request, context)
                return
            except RouterError as e:
                err = e
            except Exception as e:
                log.exception("%s failed", fn.__name__)
                err = RouterError(grpc.StatusCode.INTERNAL, f"internal error: {e!r}")
            _abort(context, err)

        return handler

    def _wait(self, ex: Exec, context: grpc.ServicerContext, ready: Callable[[], bool]) -> bool:
        """Wait on the exec until `ready()` or the call ends; returns ready(). Called with ex.cond held."""
        while not ready():
            if ex.failed is not None:
                raise ex.failed  # its start failed after this call found it
            if not context.is_active():
                return False
            ex.cond.wait(_RECHECK_SECS)
        return True

    @staticmethod
    def _wake_on_done(ex: Exec, context: grpc.ServicerContext) -> None:
        context.add_callback(ex.notify)

    # -- RPCs ------------------------------------------------------------------------------------

    def TaskExecStart(self, request: pb.TaskExecStartRequest, context: grpc.ServicerContext) -> pb.TaskExecStartResponse:
        spec = requests.exec_spec(request, self._engine.base_env)
        fingerprint = request.SerializeToString(deterministic=True)
        self._engine.start_exec(request.exec_id, fingerprint, spec, _remaining(context))
        return pb.TaskExecStartResponse()

    def TaskExecPoll(self, request: pb.TaskExecPollRequest, context: grpc.ServicerContext) -> pb.TaskExecPollResponse:
        ex = self._engine.get(requests.exec_id(request))
        return _exit_message(pb.TaskExecPollResponse, ex.status)

    def TaskExecWait(self, request: pb.TaskExecWaitRequest, context: grpc.ServicerContext) -> pb.TaskExecWaitResponse:
        ex = self._engine.get(requests.exec_id(request))
        self._wake_on_done(ex, context)
        with ex.cond:
            if not self._wait(ex, context, lambda: ex.status is not None):
                raise RouterError(grpc.StatusCode.CANCELLED, "call ended before the exec exited")
            status = ex.status
        return _exit_message(pb.TaskExecWaitResponse, status)

    def TaskExecStdioRead(self, request: pb.TaskExecStdioReadRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        ex = self._engine.get(requests.exec_id(request))
        which = requests.stdio_stream(request)
        stream = ex.stream(which)
        offset = request.offset
        if stream is None:
            return  # discarded or merged into stdout: a complete, empty stream
        self._wake_on_done(ex, context)
        chunk = self._config.read_chunk_size
        while True:
            # eof before committed: once eof is seen, the committed length read after it is final.
            eof = stream.eof
            committed = stream.committed
            if offset < committed:
                # Frames are TaskExecStdioReadResponse already encoded: one copy out of the log.
                try:
                    frame = stream.read_frame(offset, min(chunk, committed - offset))
                except OSError as e:
                    raise _log_error(e, f"the {which} of exec {request.exec_id!r}") from None
                offset += min(chunk, committed - offset)
                yield frame
                continue
            if eof:
                if offset > committed:
                    raise RouterError(grpc.StatusCode.OUT_OF_RANGE,
                                      f"offset {offset} is past the end of the {which} stream ({committed} bytes)")
                return
            with ex.cond:
                if not self._wait(ex, context, lambda: stream.committed > offset or stream.eof):
                    return

    def TaskExecStdinWrite(self, request: pb.TaskExecStdinWriteRequest,
                           context: grpc.ServicerContext) -> pb.TaskExecStdinWriteResponse:
        ex = self._engine.get(requests.exec_id(request))
        self._wake_on_done(ex, context)
        self._engine.write_stdin(ex, request.offset, request.data, request.eof, _deadline(context), context.is_active)
        return pb.TaskExecStdinWriteResponse()

    def TaskMountDirectory(self, request: pb.TaskMountDirectoryRequest, context: grpc.ServicerContext) -> Any:
        raise RouterError(grpc.StatusCode.UNIMPLEMENTED, "TaskMountDirectory is not implemented yet")

    def TaskSnapshotDirectory(self, request: pb.TaskSnapshotDirectoryRequest,
                              context: grpc.ServicerContext) -> pb.TaskSnapshotDirectoryResponse:
        raise RouterError(grpc.StatusCode.UNIMPLEMENTED, "TaskSnapshotDirectory is not implemented yet")

    # -- registration ----------------------------------------------------------------------------

    def generic_handler(self) -> grpc.GenericRpcHandler:
        from google.protobuf import empty_pb2

        def unary(name: str, req: type, resp: type) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(getattr(self, name)), request_deserializer=_parser(req),
                response_serializer=resp.SerializeToString)

        handlers = {
            "TaskExecStart": unary("TaskExecStart", pb.TaskExecStartRequest, pb.TaskExecStartResponse),
            "TaskExecPoll": unary("TaskExecPoll", pb.TaskExecPollRequest, pb.TaskExecPollResponse),
            "TaskExecWait": unary("TaskExecWait", pb.TaskExecWaitRequest, pb.TaskExecWaitResponse),
            "TaskExecStdinWrite": unary("TaskExecStdinWrite", pb.TaskExecStdinWriteRequest,
                                        pb.TaskExecStdinWriteResponse),
            "TaskMountDirectory": unary("TaskMountDirectory", pb.TaskMountDirectoryRequest, empty_pb2.Empty),
            "TaskSnapshotDirectory": unary("TaskSnapshotDirectory", pb.TaskSnapshotDirectoryRequest,
                                           pb.TaskSnapshotDirectoryResponse),
            # No response serializer: the handler yields frames that are already encoded.
            "TaskExecStdioRead": grpc.unary_stream_rpc_method_handler(
                self._stream(self.TaskExecStdioRead), request_deserializer=_parser(pb.TaskExecStdioReadRequest)),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def _exit_message(cls: type, status: ExitStatus | None) -> Any:
    if status is None:
        return cls()
    if status.signal is not None:
        return cls(signal=status.signal)
    return cls(code=status.code)


def server_options(config: ServerConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", config.max_receive_message_size),
        ("grpc.max_send_message_length", config.max_receive_message_size),
        # Modal's client pings every 30 s, even with no call in flight.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # The default (1000) cancels a third of a 4000-call burst.
        ("grpc.server.max_pending_requests", 65_536),
        ("grpc.server.max_pending_requests_hard_limit", 65_536),
        ("grpc.so_reuseport", 0),
    ]


class RouterServer:
    """The engine plus a grpcio server on top of it. `start()`, then `stop()`."""

    def __init__(self, config: ServerConfig, key: bytes) -> None:
        self.config = config
        raise_open_file_limit()
        self.engine = Engine(
            pathlib.Path(config.state_dir) / "logs",
            segment_size=config.log_segment_size,
            stdin_buffer_limit=config.stdin_buffer_limit,
            kill_grace_secs=config.kill_grace_secs,
            max_running_execs=config.max_running_execs,
        )
        self.servicer = Servicer(config, self.engine, Authenticator(key, config.task_id))
        # Thread-per-call: small stacks, since thousands of calls may each hold a thread.
        threading.stack_size(256 * 1024)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=config.max_workers,
                                                           thread_name_prefix="router-rpc")
        self._grpc = grpc.server(self._pool, options=server_options(config))
        self._grpc.add_generic_rpc_handlers((self.servicer.generic_handler(),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc)
        self.port = self._grpc.add_insecure_port(config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")

    def start(self) -> None:
        self.engine.start()
        self._grpc.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting calls, end those in flight after `grace`, then kill and reap every exec."""
        self.health.enter_graceful_shutdown()
        self._grpc.stop(grace).wait()
        self.engine.stop()
        self._pool.shutdown(wait=True)
