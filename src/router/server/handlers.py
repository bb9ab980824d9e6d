"""The two servers' handlers: thin adapters that drive the RPC bodies of service.py.

Both authorise the call, run the body, and turn a RouterError (or a bug) into a status, the same
way. They differ only in how they wait on an exec: `threaded_handler` blocks its thread in
`Exec.wait_until` (grpcio's thread-per-call server); `aio_handler` awaits `Exec.until` (grpc.aio).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from router._proto import api_pb2
from router.auth import Authenticator
from router.errors import RouterError, invalid, throttled

from .call_stats import RpcStats
from .service import Body, Method, Offload, Wait

logger = logging.getLogger(__name__)

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


def error_trailers(err: RouterError) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata for an error: a throttling error carries Modal's RPCRetryPolicy."""
    if err.retry_after is None:
        return ()
    detail = any_pb2.Any(type_url=_RETRY_POLICY_TYPE_URL,
                         value=api_pb2.RPCRetryPolicy(retry_after_secs=err.retry_after).SerializeToString())
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=err.message, details=[detail])
    return tuple(rpc_status.to_status(status).trailing_metadata)


def _as_router_error(e: Exception, method: str) -> RouterError:
    if isinstance(e, RouterError):
        return e
    if isinstance(e, TimeoutError):  # the engine's loop did not take the call in time (frozen for a handover)
        return RouterError(grpc.StatusCode.UNAVAILABLE, "the router's engine did not answer in time: retry")
    logger.exception("%s failed", method, extra={"event": "rpc_failed", "method": method})
    return RouterError(grpc.StatusCode.INTERNAL, f"internal error: {e!r}")


def _ended_by(e: BaseException, context: Any) -> grpc.StatusCode:
    """The status a call that raised `e` ends with: its RouterError's; CANCELLED (or DEADLINE_EXCEEDED,
    past its deadline) when grpc ended it under the handler; INTERNAL for a bug."""
    if isinstance(e, RouterError):
        return e.code
    if isinstance(e, TimeoutError):
        return grpc.StatusCode.UNAVAILABLE  # as _as_router_error answers it
    if isinstance(e, asyncio.CancelledError | GeneratorExit):
        left = context.time_remaining()
        return grpc.StatusCode.DEADLINE_EXCEEDED if left is not None and left <= 0 else grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def _deadline(context: Any) -> float | None:
    """The call's deadline on the monotonic clock; None if it has none (grpcio then says ~1e19 s)."""
    left = context.time_remaining()
    return None if left is None or left > threading.TIMEOUT_MAX else time.monotonic() + left


class Handlers:
    """grpc method handlers for the services, for one of the two servers."""

    def __init__(self, services: dict[str, tuple[dict[str, Method], Any]], auth: Authenticator,
                 max_calls_per_token: int = 65_536, rpcs: RpcStats | None = None) -> None:
        """`services`: service name -> (its methods, the object whose same-named methods are their bodies);
        `rpcs`: where each call's duration and status go, for metrics (None: not timed)."""
        self._services = services
        self._rpcs = rpcs
        self._auth = auth
        self._max_calls = max_calls_per_token
        self._calls: dict[str, int] = {}  # calls in flight, by token
        self._calls_lock = threading.Lock()

    @contextlib.contextmanager
    def _call(self, name: str, make: Callable[[Any], Body], request: Any, context: Any) -> Iterator[Body]:
        """Authorise the call, count it against its token while it runs, and give its body; with
        metrics on, time it to its end (a stream's last frame) with the status it ends with."""
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            metadata = context.invocation_metadata()
            granted = self._auth.token_task(metadata)
            if isinstance(request, MalformedRequest):
                raise invalid("request", f"cannot be parsed: {request.error}")
            self._auth.check_task(granted, request.task_id)
            token = next(v for k, v in metadata if k == "authorization")
            with self._calls_lock:
                n = self._calls.get(token, 0)
                if n >= self._max_calls:
                    raise throttled(f"{n} calls of this token are in flight, the most allowed "
                                    f"(--max-calls-per-token {self._max_calls})", retry_after=1.0)
                self._calls[token] = n + 1
            try:
                yield make(request)
            finally:
                with self._calls_lock:
                    if self._calls[token] == 1:
                        del self._calls[token]
                    else:
                        self._calls[token] -= 1
        except BaseException as e:
            code = _ended_by(e, context)
            raise
        finally:
            if self._rpcs is not None:
                self._rpcs.observe(name, code, time.perf_counter() - started)

    def generic_handlers(self, aio: bool) -> list[grpc.GenericRpcHandler]:
        out = []
        for service_name, (methods, impl) in self._services.items():
            handlers = {}
            for name, method in methods.items():
                parse = _parser(method.request)
                make = getattr(impl, name)
                if method.streaming:
                    fn = self._aio_stream(name, make) if aio else self._threaded_stream(name, make)
                    handlers[name] = grpc.unary_stream_rpc_method_handler(fn, request_deserializer=parse)
                else:
                    fn = self._aio_unary(name, make) if aio else self._threaded_unary(name, make)
                    handlers[name] = grpc.unary_unary_rpc_method_handler(
                        fn, request_deserializer=parse, response_serializer=method.response.SerializeToString)
            out.append(grpc.method_handlers_generic_handler(service_name, handlers))
        return out

    # -- grpcio's threaded server: block the call's thread ---------------------------------------

    def _threaded_unary(self, name: str, make: Callable[[Any], Body]) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                with self._call(name, make, request, context) as body:
                    frames = _drive_threaded(body, context)
                    try:
                        next(frames)
                    except StopIteration as done:
                        return done.value
                    raise AssertionError(f"{name} yielded a frame")
            except Exception as e:
                err = _as_router_error(e, name)
            # Outside the except block: abort() raises, and must not be caught as a failure.
            if trailers := error_trailers(err):
                context.set_trailing_metadata(trailers)
            context.abort(err.code, err.message)

        return handler

    def _threaded_stream(self, name: str,
                         make: Callable[[Any], Body]) -> Callable[[Any, grpc.ServicerContext], Iterator[bytes]]:
        def handler(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
            try:
                with self._call(name, make, request, context) as body:
                    yield from _drive_threaded(body, context)
                return
            except Exception as e:
                err = _as_router_error(e, name)
            if trailers := error_trailers(err):
                context.set_trailing_metadata(trailers)
            context.abort(err.code, err.message)

        return handler

    # -- grpc.aio: await the exec ------------------------------------------------------------------

    def _aio_unary(self, name: str, make: Callable[[Any], Body]) -> Callable[[Any, grpc.aio.ServicerContext], Any]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                with self._call(name, make, request, context) as body:
                    returned: list[Any] = []
                    async for _ in _drive_aio(body, returned):
                        raise AssertionError(f"{name} yielded a frame")
                    return returned[0]
            except Exception as e:
                err = _as_router_error(e, name)
            await context.abort(err.code, err.message, error_trailers(err))

        return handler

    def _aio_stream(self, name: str,
                    make: Callable[[Any], Body]) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[bytes]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            try:
                with self._call(name, make, request, context) as body:
                    async for frame in _drive_aio(body, []):
                        yield frame
                return
            except Exception as e:
                err = _as_router_error(e, name)
            await context.abort(err.code, err.message, error_trailers(err))

        return handler


async def _drive_aio(body: Body, returned: list[Any]) -> AsyncIterator[bytes]:
    """Run a body on the event loop: await its waits (grpc cancels them when the call ends), run
    its offloads in a worker thread, yield its frames; its response goes into `returned`."""
    result = None
    while True:
        try:
            step = body.send(result)
        except StopIteration as done:
            returned.append(done.value)
            return
        result = None
        if isinstance(step, Offload):
            result = await asyncio.to_thread(step.fn)
        elif isinstance(step, Wait):
            await step.exec.until(step.ready)
        else:
            yield step


def _drive_threaded(body: Body, context: grpc.ServicerContext) -> Generator[bytes, None, Any]:
    """Run a body on this thread: block on its waits, yield its frames, return its response."""
    deadline = _deadline(context)
    watched: set[int] = set()
    try:
        step = next(body)
        while True:
            if isinstance(step, Offload):
                step = body.send(step.fn())
                continue
            if isinstance(step, Wait):
                if id(step.exec) not in watched:
                    watched.add(id(step.exec))
                    context.add_callback(step.exec.notify)  # a call that ends wakes the wait at once
                if not step.exec.wait_until(step.ready, context.is_active, deadline):
                    # Over: cancelled (nobody reads the status, but metrics do) or past its deadline.
                    expired = deadline is not None and time.monotonic() >= deadline
                    raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED,
                                      "the call ended while waiting")
            else:
                yield step
            step = next(body)
    except StopIteration as done:
        return done.value
