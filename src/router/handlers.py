"""The TaskCommandRouter handlers: validate, authorise, hand work to the engine, map errors.

Two servicers share everything but how they wait: `ThreadServicer` (grpcio's thread-per-call
server; waits on the exec's condition variable) and `AsyncServicer` (grpc.aio on the engine's own
loop; awaits `Exec.changed()`). Handlers raise RouterError; the wrappers turn it into a status.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import grpc
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from . import requests
from ._fastio import SegmentedLog
from ._proto import api_pb2
from ._proto import task_command_router_pb2 as pb
from .auth import Authenticator
from .config import ServerConfig
from .engine import Engine, Exec, ExitStatus
from .errors import RouterError, throttled

log = logging.getLogger(__name__)

SERVICE_NAME = "modal.task_command_router.TaskCommandRouter"
# How long a waiting thread sleeps before it looks again at whether its call is still alive.
# A done-callback wakes it sooner; this only bounds the cost of a missed wake-up.
_RECHECK_SECS = 5.0
# Modal's client unpacks status details with this type URL prefix.
_RETRY_POLICY_TYPE_URL = "type.modal.com/modal.client.RPCRetryPolicy"

# name: (request type, response type or None for pre-encoded frames, streaming)
METHODS: dict[str, tuple[Any, Any, bool]] = {
    "TaskExecStart": (pb.TaskExecStartRequest, pb.TaskExecStartResponse, False),
    "TaskExecPoll": (pb.TaskExecPollRequest, pb.TaskExecPollResponse, False),
    "TaskExecWait": (pb.TaskExecWaitRequest, pb.TaskExecWaitResponse, False),
    "TaskExecStdinWrite": (pb.TaskExecStdinWriteRequest, pb.TaskExecStdinWriteResponse, False),
    "TaskMountDirectory": (pb.TaskMountDirectoryRequest, empty_pb2.Empty, False),
    "TaskSnapshotDirectory": (pb.TaskSnapshotDirectoryRequest, pb.TaskSnapshotDirectoryResponse, False),
    # No response serializer: the handler yields TaskExecStdioReadResponse frames already encoded.
    "TaskExecStdioRead": (pb.TaskExecStdioReadRequest, None, True),
}


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


def error_status(err: RouterError) -> grpc.Status | None:
    """The full status (with Modal's RPCRetryPolicy) for a throttling error; None for a plain one."""
    if err.retry_after is None:
        return None
    detail = any_pb2.Any(type_url=_RETRY_POLICY_TYPE_URL,
                         value=api_pb2.RPCRetryPolicy(retry_after_secs=err.retry_after).SerializeToString())
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=err.message, details=[detail])
    return rpc_status.to_status(status)


def _as_router_error(e: Exception, method: str) -> RouterError:
    if isinstance(e, RouterError):
        return e
    log.exception("%s failed", method)
    return RouterError(grpc.StatusCode.INTERNAL, f"internal error: {e!r}")


def remaining(context: Any) -> float | None:
    """Seconds left before the call's deadline; None if it has none (grpcio then says ~1e19)."""
    left = context.time_remaining()
    return None if left is None or left > threading.TIMEOUT_MAX else left


def deadline(context: Any) -> float | None:
    left = remaining(context)
    return None if left is None else time.monotonic() + left


def exit_message(cls: type, status: ExitStatus | None) -> Any:
    if status is None:
        return cls()
    if status.signal is not None:
        return cls(signal=status.signal)
    return cls(code=status.code)


def _log_error(e: OSError, what: str) -> RouterError:
    """A failed read of a log: throttle when out of descriptors or memory, DATA_LOSS if the disk failed."""
    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return throttled(f"cannot read {what}: {e.strerror}", retry_after=1.0)
    if e.errno == errno.EIO:
        return RouterError(grpc.StatusCode.DATA_LOSS, f"cannot read {what}: {e.strerror}")
    log.exception("reading %s failed", what)
    return RouterError(grpc.StatusCode.INTERNAL, f"cannot read {what}: {e!r}")


class ReadCursor:
    """Where one TaskExecStdioRead call is in its stream; `step()` says what to do next."""

    WAIT = object()

    def __init__(self, request: pb.TaskExecStdioReadRequest, which: Literal["stdout", "stderr"],
                 stream: SegmentedLog, chunk: int) -> None:
        self.stream = stream
        self.offset = request.offset
        self._which = which
        self._exec_id = request.exec_id
        self._chunk = chunk

    def step(self) -> bytes | object | None:
        """The next frame to send, WAIT for more output, or None: the stream is complete."""
        stream = self.stream
        # eof before committed: once eof is seen, the committed length read after it is final.
        eof = stream.eof
        committed = stream.committed
        if self.offset < committed:
            n = min(self._chunk, committed - self.offset)
            try:
                # One copy out of the log, already a TaskExecStdioReadResponse on the wire.
                frame = stream.read_frame(self.offset, n)
            except OSError as e:
                raise _log_error(e, f"the {self._which} of exec {self._exec_id!r}") from None
            self.offset += n
            return frame
        if not eof:
            return self.WAIT
        if self.offset > committed:
            raise RouterError(grpc.StatusCode.OUT_OF_RANGE,
                              f"offset {self.offset} is past the end of the {self._which} stream ({committed} bytes)")
        return None

    def ready(self) -> bool:
        return self.stream.committed > self.offset or self.stream.eof


class _Servicer:
    def __init__(self, config: ServerConfig, engine: Engine, auth: Authenticator) -> None:
        self._config = config
        self._engine = engine
        self._auth = auth

    def _authorise(self, request: Any, context: Any) -> None:
        granted = self._auth.token_task(context.invocation_metadata())
        if isinstance(request, MalformedRequest):
            raise RouterError(grpc.StatusCode.INVALID_ARGUMENT, f"request: cannot be parsed: {request.error}")
        self._auth.check_task(granted, request.task_id)

    def _begin(self, request: pb.TaskExecStartRequest) -> Exec:
        spec = requests.exec_spec(request, self._engine.base_env)
        return self._engine.begin_exec(request.exec_id, request.SerializeToString(deterministic=True), spec)

    def _poll(self, request: pb.TaskExecPollRequest) -> pb.TaskExecPollResponse:
        return exit_message(pb.TaskExecPollResponse, self._engine.get(requests.exec_id(request)).status)

    def _cursor(self, request: pb.TaskExecStdioReadRequest) -> tuple[Exec, ReadCursor | None]:
        ex = self._engine.get(requests.exec_id(request))
        which = requests.stdio_stream(request)
        stream = ex.stream(which)
        # No stream: discarded or merged into stdout, a complete and empty stream.
        return ex, None if stream is None else ReadCursor(request, which, stream, self._config.read_chunk_size)

    @staticmethod
    def _unimplemented(name: str) -> RouterError:
        return RouterError(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented yet")

    def generic_handler(self) -> grpc.GenericRpcHandler:
        handlers = {}
        for name, (request_type, response_type, streaming) in METHODS.items():
            fn = getattr(self, name)
            if streaming:
                handlers[name] = grpc.unary_stream_rpc_method_handler(
                    self._wrap_stream(fn), request_deserializer=_parser(request_type))
            else:
                handlers[name] = grpc.unary_unary_rpc_method_handler(
                    self._wrap_unary(fn), request_deserializer=_parser(request_type),
                    response_serializer=response_type.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def _wrap_unary(self, fn: Any) -> Any:
        raise NotImplementedError

    def _wrap_stream(self, fn: Any) -> Any:
        raise NotImplementedError


class ThreadServicer(_Servicer):
    """For grpcio's thread-per-call server: handlers block their thread on the exec's condition."""

    def _wrap_unary(self, fn: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
        @functools.wraps(fn)
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                self._authorise(request, context)
                return fn(request, context)
            except Exception as e:
                err = _as_router_error(e, fn.__name__)
            # Outside the except block: abort() raises, and must not be caught as a failure.
            self._abort(context, err)

        return handler

    def _wrap_stream(self, fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Any:
        @functools.wraps(fn)
        def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                self._authorise(request, context)
                yield from fn(request, context)
                return
            except Exception as e:
                err = _as_router_error(e, fn.__name__)
            self._abort(context, err)

        return handler

    @staticmethod
    def _abort(context: grpc.ServicerContext, err: RouterError) -> None:
        status = error_status(err)
        if status is None:
            context.abort(err.code, err.message)
        context.abort_with_status(status)

    @staticmethod
    def _wait(ex: Exec, context: grpc.ServicerContext, ready: Callable[[], bool]) -> bool:
        """Block until `ready()` or the call ends; returns ready(). The handler has registered
        `ex.notify` as the call's done-callback, so a call that ends wakes it at once."""
        with ex.cond:
            while not ready():
                if ex.failed is not None:
                    raise ex.failed  # its start failed after this call found it
                if not context.is_active():
                    return False
                ex.cond.wait(_RECHECK_SECS)
        return True

    def TaskExecStart(self, request: pb.TaskExecStartRequest, context: grpc.ServicerContext) -> Any:
        ex = self._begin(request)
        left = remaining(context)
        try:
            ex.started.result(left)
        except concurrent.futures.TimeoutError:
            raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED, "exec did not start in time") from None
        return pb.TaskExecStartResponse()

    def TaskExecPoll(self, request: pb.TaskExecPollRequest, context: grpc.ServicerContext) -> Any:
        return self._poll(request)

    def TaskExecWait(self, request: pb.TaskExecWaitRequest, context: grpc.ServicerContext) -> Any:
        ex = self._engine.get(requests.exec_id(request))
        context.add_callback(ex.notify)
        if not self._wait(ex, context, lambda: ex.status is not None):
            raise RouterError(grpc.StatusCode.CANCELLED, "call ended before the exec exited")
        return exit_message(pb.TaskExecWaitResponse, ex.status)

    def TaskExecStdioRead(self, request: pb.TaskExecStdioReadRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        ex, cursor = self._cursor(request)
        context.add_callback(ex.notify)
        while cursor is not None:
            frame = cursor.step()
            if frame is None:
                return
            if frame is ReadCursor.WAIT:
                if not self._wait(ex, context, cursor.ready):
                    return
                continue
            yield frame  # type: ignore[misc]

    def TaskExecStdinWrite(self, request: pb.TaskExecStdinWriteRequest, context: grpc.ServicerContext) -> Any:
        ex = self._engine.get(requests.exec_id(request))
        context.add_callback(ex.notify)
        self._engine.write_stdin(ex, request.offset, request.data, request.eof, deadline(context), context.is_active)
        return pb.TaskExecStdinWriteResponse()

    def TaskMountDirectory(self, request: pb.TaskMountDirectoryRequest, context: grpc.ServicerContext) -> Any:
        raise self._unimplemented("TaskMountDirectory")

    def TaskSnapshotDirectory(self, request: pb.TaskSnapshotDirectoryRequest, context: grpc.ServicerContext) -> Any:
        raise self._unimplemented("TaskSnapshotDirectory")


class AsyncServicer(_Servicer):
    """For grpc.aio on a loop of its own: one thread runs every handler, awaiting exec changes."""

    def _wrap_unary(self, fn: Any) -> Any:
        @functools.wraps(fn)
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                self._authorise(request, context)
                return await fn(request, context)
            except Exception as e:
                err = _as_router_error(e, fn.__name__)
            await self._abort(context, err)

        return handler

    def _wrap_stream(self, fn: Any) -> Any:
        @functools.wraps(fn)
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                self._authorise(request, context)
                async for item in fn(request, context):
                    yield item
                return
            except Exception as e:
                err = _as_router_error(e, fn.__name__)
            await self._abort(context, err)

        return handler

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, err: RouterError) -> None:
        status = error_status(err)
        if status is None:
            await context.abort(err.code, err.message)
        else:
            await context.abort(status.code, status.details, status.trailing_metadata)

    @staticmethod
    async def _until(ex: Exec, ready: Callable[[], bool]) -> None:
        """Wait until `ready()`. A call that ends meanwhile is cancelled here by grpc."""
        while True:
            fut = ex.changed()  # registered before the check: a change in between wakes it
            try:
                if ready():
                    return
                if ex.failed is not None:
                    raise ex.failed  # its start failed after this call found it
                await fut
            finally:
                ex.forget_waiter(fut)

    async def TaskExecStart(self, request: pb.TaskExecStartRequest, context: Any) -> Any:
        ex = self._begin(request)
        await asyncio.wrap_future(ex.started)  # grpc cancels this at the call's deadline
        return pb.TaskExecStartResponse()

    async def TaskExecPoll(self, request: pb.TaskExecPollRequest, context: Any) -> Any:
        return self._poll(request)

    async def TaskExecWait(self, request: pb.TaskExecWaitRequest, context: Any) -> Any:
        ex = self._engine.get(requests.exec_id(request))
        await self._until(ex, lambda: ex.status is not None)
        return exit_message(pb.TaskExecWaitResponse, ex.status)

    async def TaskExecStdioRead(self, request: pb.TaskExecStdioReadRequest, context: Any) -> AsyncIterator[bytes]:
        ex, cursor = self._cursor(request)
        while cursor is not None:
            frame = cursor.step()
            if frame is None:
                return
            if frame is ReadCursor.WAIT:
                await self._until(ex, cursor.ready)
                continue
            yield frame  # type: ignore[misc]

    async def TaskExecStdinWrite(self, request: pb.TaskExecStdinWriteRequest, context: Any) -> Any:
        ex = self._engine.get(requests.exec_id(request))
        # A full buffer waits for room; grpc cancels the wait at the call's deadline.
        await self._until(ex, lambda: self._engine.offer_stdin(ex, request.offset, request.data, request.eof))
        return pb.TaskExecStdinWriteResponse()

    async def TaskMountDirectory(self, request: pb.TaskMountDirectoryRequest, context: Any) -> Any:
        raise self._unimplemented("TaskMountDirectory")

    async def TaskSnapshotDirectory(self, request: pb.TaskSnapshotDirectoryRequest, context: Any) -> Any:
        raise self._unimplemented("TaskSnapshotDirectory")
