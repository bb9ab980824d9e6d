"""What both clients share: constants, exit codes, and each method written once as a generator of
steps (_Call, _Sleep, _Open, _NEXT, _Emit) that does no I/O itself; `_Client` holds those methods."""
from __future__ import annotations

import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router._proto import exec_control_pb2 as ec
from router._proto import exec_control_pb2_grpc as ec_grpc
from router._proto import task_command_router_pb2 as pb
from router._proto import task_command_router_pb2_grpc as pb_grpc

from .connection import find_connection

# Statuses after which a call may be retried as it was (Modal's client retries the same set).
RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
})
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 128 * 1024 * 1024),
    ("grpc.max_send_message_length", 128 * 1024 * 1024),
]
STDOUT = pb.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT
STDERR = pb.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR
# How long `wait` keeps trying while the router cannot be reached before it gives up.
UNREACHABLE_SECS = 30.0

T = TypeVar("T")
WaitResult = pb.TaskExecWaitResponse | pb.TaskExecPollResponse


def exit_code(response: WaitResult) -> int | None:
    """The shell's view of an exit status: the code, or 128+N for signal N; None while running."""
    kind = response.WhichOneof("exit_status")
    if kind == "code":
        return response.code
    if kind == "signal":
        return 128 + response.signal
    return None


def backoff(failure: int) -> float:
    """Seconds to wait before retry number `failure` (1, 2, ...): 50 ms, doubling, at most 2 s."""
    return min(0.05 * 2.0 ** (failure - 1), 2.0)


# -- the steps a method is made of -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Call:
    """A unary call: the step's value is the response; a failure is raised at the yield."""
    rpc: str
    request: Any
    timeout: float | None = 30.0


@dataclass(frozen=True, slots=True)
class _Sleep:
    secs: float


@dataclass(frozen=True, slots=True)
class _Open:
    """Open a server stream (in place of the one open before), for _NEXT to read."""
    rpc: str
    request: Any


class _Next:
    """Read the open stream: the next message, None at its end; a failure is raised at the yield."""


_NEXT = _Next()


@dataclass(frozen=True, slots=True)
class _Emit:
    """Hand `value` to whoever iterates the method."""
    value: Any


_Step = _Call | _Sleep | _Open | _Next | _Emit
_Steps = Generator[_Step, Any, T]


def _time_left(window: float, since: float) -> float:
    """What is left of `window` seconds counted from `since` (monotonic), at least a sliver for one
    more try: a call with no time at all would fail without asking."""
    return max(0.05, window - (time.monotonic() - since))


class _Retries:
    """A call may fail with a RETRYABLE status `limit` times in a row, retried after `backoff`;
    any other failure, or one more, is raised; so is one that would retry after the router has not
    answered for `give_up` seconds (None: no such limit), whose calls are cut short to fit it."""

    def __init__(self, limit: int, give_up: float | None = None) -> None:
        self.limit = limit
        self.failures = 0
        self._give_up = give_up
        self.token_source = "given"  # where the token came from (from_env says), for error messages
        self._since = time.monotonic()  # the last answer, or the first try

    def answered(self) -> None:
        self.failures = 0
        self._since = time.monotonic()

    def timeout(self, timeout: float | None) -> float | None:
        """A call's timeout, cut to what is left of `give_up` (a call without one is left alone:
        it waits for something other than the router's answer, such as room for stdin)."""
        if timeout is None or self._give_up is None:
            return timeout
        return min(timeout, _time_left(self._give_up, self._since))

    def delay(self, error: grpc.RpcError) -> float:
        self.failures += 1
        if error.code() not in RETRYABLE or self.failures > self.limit:
            raise error
        pause = backoff(self.failures)
        if self._give_up is not None and time.monotonic() + pause - self._since > self._give_up:
            raise error
        return pause


class _Resumable(Protocol):
    """A server stream's progress, so that a new call picks up where a broken one stopped."""

    def request(self) -> Any | None:
        """The call to make from here; None when nothing is left to ask for."""

    def take(self, message: Any) -> list[Any]:
        """Note `message` as received; what of it to hand on, in order."""


class _ReadFrom:
    def __init__(self, task_id: str, exec_id: str, fd: pb.TaskExecStdioFileDescriptor, offset: int) -> None:
        self._request = pb.TaskExecStdioReadRequest(task_id=task_id, exec_id=exec_id, file_descriptor=fd)
        self.offset = offset

    def request(self) -> pb.TaskExecStdioReadRequest:
        self._request.offset = self.offset
        return self._request

    def take(self, message: pb.TaskExecStdioReadResponse) -> list[bytes]:
        self.offset += len(message.data)
        return [message.data]


class _WatchFor:
    """Resumes for the execs whose exit has not come. All execs (`exec_ids` empty): a fresh call
    sends what happened already again, skipped here (each exec's start and exit are handed on once)."""

    def __init__(self, task_id: str, exec_ids: Sequence[str], output_limit: int, include_started: bool) -> None:
        self._request = ec.WatchRequest(task_id=task_id, output_limit=output_limit, include_started=include_started)
        self._exec_ids = exec_ids
        self.seen: set[tuple[str, int]] = set()
        self.exited: set[str] = set()

    def request(self) -> ec.WatchRequest | None:
        wanted = [i for i in self._exec_ids if i not in self.exited]
        if self._exec_ids and not wanted:
            return None
        request = ec.WatchRequest()
        request.CopyFrom(self._request)
        request.exec_ids.extend(wanted)
        return request

    def take(self, message: ec.WatchResponse) -> list[ec.WatchEvent]:
        new = []
        for event in message.events:
            if (event.exec_id, event.kind) not in self.seen:
                self.seen.add((event.exec_id, event.kind))
                if event.kind == ec.WATCH_EVENT_KIND_EXITED:
                    self.exited.add(event.exec_id)
                new.append(event)
        return new


class _Run(Generic[T]):
    """One method's steps as a driver performs them: the last step's outcome, the open stream, and
    the method's result once its steps end."""
    result: T

    def __init__(self, steps: _Steps[T]) -> None:
        self._steps = steps
        self.reply: Any = None
        self.error: grpc.RpcError | None = None
        self.stream: Any = None

    def step(self) -> _Step | None:
        """The next step, given the last one's outcome; None once the steps have ended."""
        reply, error = self.reply, self.error
        self.reply, self.error = None, None
        try:
            return self._steps.send(reply) if error is None else self._steps.throw(error)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def close(self) -> None:
        """However the driving ends: an iteration abandoned mid-stream cancels its call."""
        self._steps.close()
        if self.stream is not None:
            self.stream.cancel()


# -- what both clients share -----------------------------------------------------------------------

class _Client:
    """The channel, credentials and every method's steps; the subclasses drive them."""
    _grpc: Any = grpc  # the module whose channels this client uses: grpc, or grpc.aio

    def __init__(self, target: str, token: str, task_id: str, *, retries: int = 10,
                 credentials: grpc.ChannelCredentials | None = None, server_name: str = "",
                 give_up: float | None = None, reconnect_secs: float | None = None) -> None:
        """`credentials` (tls.client_credentials) make it a TLS channel; `server_name` overrides the
        name expected in the server's certificate. `retries`: how often a call failing with a
        RETRYABLE status is made again (in a row; a stream's resumes count the same). `give_up`:
        a call fails once the router has not answered it for this many seconds, retries included.
        `reconnect_secs`: the longest wait between attempts to reconnect to a router gone away
        (grpc's own: doubling to 120 s), so that one back after a restart is found soon."""
        self._give_up = give_up
        self.token_source = "given"  # where the token came from (from_env says), for error messages
        self.task_id = task_id
        self.target = target
        options: list[tuple[str, Any]] = list(CHANNEL_OPTIONS)
        if give_up is not None:
            # A frozen router keeps its connections open and answers nothing, so a stream (a read
            # that follows a running exec) would wait for ever: HTTP/2 pings that go unanswered
            # for half of `give_up` close the connection, a new one is given as long to complete
            # its handshake (not grpc's 20 s), and the stream's retries then give up.
            half = max(1000, int(give_up * 500))
            options += [(name, half) for name in (
                "grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms", "grpc.http2.min_time_between_pings_ms",
                "grpc.http2.min_sent_ping_interval_without_data_ms", "grpc.http2.ping_timeout_ms",
                "grpc.min_reconnect_backoff_ms")]
            options.append(("grpc.http2.max_pings_without_data", 0))
        if reconnect_secs is not None:
            options += [("grpc.initial_reconnect_backoff_ms", min(1000, int(reconnect_secs * 1000))),
                        ("grpc.max_reconnect_backoff_ms", int(reconnect_secs * 1000))]
        if credentials is None:
            self._channel = self._grpc.insecure_channel(target, options=options)
        else:
            options += [("grpc.ssl_target_name_override", server_name)] if server_name else []
            self._channel = self._grpc.secure_channel(target, credentials, options=options)
        stubs = (pb_grpc.TaskCommandRouterStub(self._channel), ec_grpc.ExecControlStub(self._channel))
        # Every RPC of both services by name (no name is in both).
        self._rpcs: dict[str, Any] = {name: rpc for stub in stubs for name, rpc in vars(stub).items()}
        self._rpcs["HealthCheck"] = health_pb2_grpc.HealthStub(self._channel).Check  # its Watch is not ours
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._retries = retries

    @classmethod
    def from_env(cls, target: str | None = None, token: str | None = None, *, task_id: str | None = None,
                 state_dir: str | os.PathLike[str] | None = None, tls_ca: str = "", tls_cert: str = "",
                 tls_key: str = "", server_name: str = "", retries: int = 10, give_up: float | None = None,
                 reconnect_secs: float | None = None) -> Self:
        """A client for what is given, the rest found in the usual places (`find_connection`)."""
        found = find_connection(target, token, task_id=task_id, state_dir=state_dir, tls_ca=tls_ca,
                                tls_cert=tls_cert, tls_key=tls_key)
        client = cls(found.target, found.token, found.task_id, retries=retries, credentials=found.credentials,
                     server_name=server_name, give_up=give_up, reconnect_secs=reconnect_secs)
        client.token_source = found.token_source
        return client

    def _unary(self, rpc: str, request: Any, timeout: float | None = 30.0) -> _Steps[Any]:
        retries = _Retries(self._retries, self._give_up)
        while True:
            try:
                return (yield _Call(rpc, request, retries.timeout(timeout)))
            except grpc.RpcError as e:
                delay = retries.delay(e)
            yield _Sleep(delay)

    def _stream(self, rpc: str, progress: _Resumable) -> _Steps[None]:
        """A server stream to its end, called again after a RETRYABLE failure from where it got to."""
        retries = _Retries(self._retries, self._give_up)
        while (request := progress.request()) is not None:
            try:
                yield _Open(rpc, request)
                while (message := (yield _NEXT)) is not None:
                    retries.answered()
                    for value in progress.take(message):
                        yield _Emit(value)
                return
            except grpc.RpcError as e:
                delay = retries.delay(e)
            yield _Sleep(delay)

    def _start(self, exec_id: str, args: Sequence[str], fields: dict[str, Any]) -> _Steps[None]:
        yield from self._unary("TaskExecStart", pb.TaskExecStartRequest(
            task_id=self.task_id, exec_id=exec_id, command_args=list(args), **fields))

    def _poll(self, exec_id: str, timeout: float) -> _Steps[pb.TaskExecPollResponse]:
        response: pb.TaskExecPollResponse = yield from self._unary(
            "TaskExecPoll", pb.TaskExecPollRequest(task_id=self.task_id, exec_id=exec_id), timeout)
        return response

    def _wait(self, exec_id: str, call_timeout: float, unreachable_secs: float) -> _Steps[WaitResult]:
        wait = pb.TaskExecWaitRequest(task_id=self.task_id, exec_id=exec_id)
        poll = pb.TaskExecPollRequest(task_id=self.task_id, exec_id=exec_id)
        last_answer = time.monotonic()
        while True:
            # No call outlasts what is left of `unreachable_secs`: a frozen router answers nothing,
            # not even DEADLINE_EXCEEDED, so a longer call would wait past the promise.
            left = _time_left(unreachable_secs, last_answer)
            try:
                response: pb.TaskExecWaitResponse = yield _Call("TaskExecWait", wait, min(call_timeout, left))
                return response
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    raise
            left = _time_left(unreachable_secs, last_answer)
            try:
                polled: pb.TaskExecPollResponse = yield _Call("TaskExecPoll", poll, min(call_timeout, 10.0, left))
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or time.monotonic() - last_answer > unreachable_secs:
                    raise
                yield _Sleep(min(1.0, unreachable_secs / 10))
                continue
            last_answer = time.monotonic()
            if polled.WhichOneof("exit_status") is not None:
                return polled

    def _write_stdin(self, exec_id: str, offset: int, data: bytes, eof: bool) -> _Steps[None]:
        yield from self._unary("TaskExecStdinWrite", pb.TaskExecStdinWriteRequest(
            task_id=self.task_id, exec_id=exec_id, offset=offset, data=data, eof=eof), timeout=None)

    def _read(self, exec_id: str, fd: pb.TaskExecStdioFileDescriptor, offset: int) -> _Steps[None]:
        return self._stream("TaskExecStdioRead", _ReadFrom(self.task_id, exec_id, fd, offset))

    def _inspect(self, exec_id: str) -> _Steps[ec.ExecInfo]:
        info: ec.ExecInfo = yield from self._unary("Inspect", ec.InspectRequest(task_id=self.task_id, exec_id=exec_id))
        return info

    def _status(self) -> _Steps[ec.StatusResponse]:
        status: ec.StatusResponse = yield from self._unary("Status", ec.StatusRequest(task_id=self.task_id))
        return status

    def _execs(self, state: ec.ExecState) -> _Steps[None]:
        token = ""
        while True:
            page = yield from self._unary("List", ec.ListRequest(task_id=self.task_id, state=state, page_token=token))
            for info in page.execs:
                yield _Emit(info)
            token = page.next_page_token
            if not token:
                return

    def _kill(self, exec_id: str, grace_secs: float, timeout: float | None) -> _Steps[ec.ExitInfo]:
        done = yield from self._unary("Kill", ec.KillRequest(task_id=self.task_id, exec_id=exec_id,
                                                             grace_secs=grace_secs), timeout)
        exit: ec.ExitInfo = done.exit
        return exit

    def _signal(self, exec_id: str, signal: int, target: ec.SignalTarget) -> _Steps[None]:
        yield from self._unary("Signal", ec.SignalRequest(task_id=self.task_id, exec_id=exec_id, signal=signal,
                                                          target=target))

    def _resize(self, exec_id: str, rows: int, cols: int) -> _Steps[None]:
        yield from self._unary("Resize", ec.ResizeRequest(task_id=self.task_id, exec_id=exec_id, rows=rows, cols=cols))

    def _ready(self, timeout: float) -> _Steps[bool]:
        """Readiness (grpc.health.v1, service ""), asked once: a failure is raised, not retried."""
        response = yield _Call("HealthCheck", health_pb2.HealthCheckRequest(service=""), timeout)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def _batch_start(self, items: Sequence[pb.TaskExecStartRequest]) -> _Steps[list[ec.BatchItemResult]]:
        response = yield from self._unary("BatchStart", ec.BatchStartRequest(task_id=self.task_id, items=items), 300)
        return list(response.results)

    def _watch(self, exec_ids: Sequence[str], output_limit: int, include_started: bool) -> _Steps[None]:
        return self._stream("Watch", _WatchFor(self.task_id, exec_ids, output_limit, include_started))
