"""Clients for the router over both its services: `RouterClient` (blocking; used by `router exec`,
the tests and the benchmarks) and `AsyncRouterClient` (asyncio), with the same methods.

Each method's logic (its request, retries, offset resume, wait's give-up rule) is written once, as a
generator of steps (_Call, _Sleep, _Open, _NEXT, _Emit) that does no I/O itself; each client has one
small driver that performs the steps, blocking or awaiting. So the two clients cannot drift apart.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

import grpc
import grpc.aio

from router import config
from router._proto import exec_control_pb2 as ec
from router._proto import exec_control_pb2_grpc as ec_grpc
from router._proto import task_command_router_pb2 as pb
from router._proto import task_command_router_pb2_grpc as pb_grpc
from router.tls import client_credentials

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
# Where `from_env` looks for a token when none is given.
TOKEN_ENV = "ROUTER_TOKEN"

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


# -- where to connect, and as whom -----------------------------------------------------------------

@dataclass(frozen=True)
class Connection:
    target: str
    token: str
    task_id: str
    credentials: grpc.ChannelCredentials | None  # None: plaintext


def _unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unchecked (the server checks them): its middle part, base64url'd JSON. Not
    through PyJWT, whose import (with cryptography's) costs a CLI call ~0.1 s. {} if malformed."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def find_connection(target: str | None = None, token: str | None = None, *, task_id: str | None = None,
                    state_dir: str | os.PathLike[str] | None = None, tls_ca: str = "", tls_cert: str = "",
                    tls_key: str = "") -> Connection:
    """The usual places, the first that has it winning:
    - target: `target`, else the local server's (from its state directory), else 127.0.0.1:50051;
    - token: `token`, else $ROUTER_TOKEN, else one minted (valid 1 h) with the state directory's key;
    - task id: `task_id`, else the token's `task_id` claim, else the local server's;
    - TLS: when any of the files is given, or for the local server when it serves TLS.
    `state_dir` defaults to the user's (`router serve`'s default)."""
    directory = config.state_dir_from(state_dir)
    info = config.read_server_info(directory)
    token = token or os.environ.get(TOKEN_ENV)
    if token and not task_id:
        task_id = _unverified_claims(token).get("task_id")
    if not task_id:
        task_id = info.task_id if info else config.load_or_create_task_id(config.ensure_state_dir(directory))
    if not token:
        from router.auth import load_or_create_key, mint_token  # jwt and cryptography: ~0.1 s, only when minting

        token = mint_token(load_or_create_key(config.ensure_state_dir(directory)), task_id, 3600)
    credentials = None
    if tls_ca or tls_cert or (not target and info is not None and info.tls):
        credentials = client_credentials(tls_ca, tls_cert, tls_key)
    return Connection(target or (info.listen if info else config.DEFAULT_LISTEN), token, task_id, credentials)


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


class _Retries:
    """A call may fail with a RETRYABLE status `limit` times in a row, retried after `backoff`;
    any other failure, or one more, is raised."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures = 0

    def answered(self) -> None:
        self.failures = 0

    def delay(self, error: grpc.RpcError) -> float:
        self.failures += 1
        if error.code() not in RETRYABLE or self.failures > self.limit:
            raise error
        return backoff(self.failures)


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
                 credentials: grpc.ChannelCredentials | None = None, server_name: str = "") -> None:
        """`credentials` (tls.client_credentials) make it a TLS channel; `server_name` overrides the
        name expected in the server's certificate. `retries`: how often a call failing with a
        RETRYABLE status is made again (in a row; a stream's resumes count the same)."""
        self.task_id = task_id
        self.target = target
        if credentials is None:
            self._channel = self._grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        else:
            options = CHANNEL_OPTIONS + ([("grpc.ssl_target_name_override", server_name)] if server_name else [])
            self._channel = self._grpc.secure_channel(target, credentials, options=options)
        stubs = (pb_grpc.TaskCommandRouterStub(self._channel), ec_grpc.ExecControlStub(self._channel))
        # Every RPC of both services by name (no name is in both).
        self._rpcs: dict[str, Any] = {name: rpc for stub in stubs for name, rpc in vars(stub).items()}
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._retries = retries

    @classmethod
    def from_env(cls, target: str | None = None, token: str | None = None, *, task_id: str | None = None,
                 state_dir: str | os.PathLike[str] | None = None, tls_ca: str = "", tls_cert: str = "",
                 tls_key: str = "", server_name: str = "", retries: int = 10) -> Self:
        """A client for what is given, the rest found in the usual places (`find_connection`)."""
        found = find_connection(target, token, task_id=task_id, state_dir=state_dir, tls_ca=tls_ca,
                                tls_cert=tls_cert, tls_key=tls_key)
        return cls(found.target, found.token, found.task_id, retries=retries, credentials=found.credentials,
                   server_name=server_name)

    def _unary(self, rpc: str, request: Any, timeout: float | None = 30.0) -> _Steps[Any]:
        retries = _Retries(self._retries)
        while True:
            try:
                return (yield _Call(rpc, request, timeout))
            except grpc.RpcError as e:
                delay = retries.delay(e)
            yield _Sleep(delay)

    def _stream(self, rpc: str, progress: _Resumable) -> _Steps[None]:
        """A server stream to its end, called again after a RETRYABLE failure from where it got to."""
        retries = _Retries(self._retries)
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
            try:
                response: pb.TaskExecWaitResponse = yield _Call("TaskExecWait", wait, call_timeout)
                return response
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    raise
            try:
                polled: pb.TaskExecPollResponse = yield _Call("TaskExecPoll", poll, min(call_timeout, 10.0))
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

    def _batch_start(self, items: Sequence[pb.TaskExecStartRequest]) -> _Steps[list[ec.BatchItemResult]]:
        response = yield from self._unary("BatchStart", ec.BatchStartRequest(task_id=self.task_id, items=items), 300)
        return list(response.results)

    def _watch(self, exec_ids: Sequence[str], output_limit: int, include_started: bool) -> _Steps[None]:
        return self._stream("Watch", _WatchFor(self.task_id, exec_ids, output_limit, include_started))


class RouterClient(_Client):
    """The blocking client. Every call is retried after a RETRYABLE failure (`retries` times in a row)."""

    def close(self) -> None:
        self._channel.close()

    def reachable(self, timeout: float) -> bool:
        """Whether a connection is up within `timeout` seconds (no call is made)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drive(self, run: _Run[Any]) -> Iterator[Any]:
        try:
            while (step := run.step()) is not None:
                if isinstance(step, _Emit):
                    yield step.value
                    continue
                try:
                    run.reply = self._perform(step, run)
                except grpc.RpcError as e:
                    run.error = e
        finally:
            run.close()

    def _perform(self, step: _Call | _Sleep | _Open | _Next, run: _Run[Any]) -> Any:
        if isinstance(step, _Call):
            return self._rpcs[step.rpc](step.request, timeout=step.timeout, metadata=self._metadata)
        if isinstance(step, _Sleep):
            time.sleep(step.secs)
        elif isinstance(step, _Open):
            run.stream = self._rpcs[step.rpc](step.request, metadata=self._metadata)
        else:
            return next(run.stream, None)
        return None

    def _run(self, steps: _Steps[T]) -> T:
        run = _Run(steps)
        for _ in self._drive(run):
            pass  # a unary method's steps emit nothing
        return run.result

    def start(self, exec_id: str, args: Sequence[str], **fields: Any) -> None:
        """TaskExecStart; `fields` are the request's other fields (stdout_config, pty_info, ...)."""
        self._run(self._start(exec_id, args, fields))

    def poll(self, exec_id: str, timeout: float = 30.0) -> pb.TaskExecPollResponse:
        return self._run(self._poll(exec_id, timeout))

    def wait(self, exec_id: str, call_timeout: float = 60.0, unreachable_secs: float = UNREACHABLE_SECS) -> WaitResult:
        """Wait for exit, calling again every `call_timeout` seconds as Modal's client does, for as
        long as the command runs. Raises the last error once the router has not answered for
        `unreachable_secs` (dead, or hung): a call that ends without the exit status is followed
        by a Poll, which says whether the router is still there."""
        return self._run(self._wait(exec_id, call_timeout, unreachable_secs))

    def write_stdin(self, exec_id: str, offset: int, data: bytes, eof: bool = False) -> None:
        self._run(self._write_stdin(exec_id, offset, data, eof))

    def read(self, exec_id: str, fd: pb.TaskExecStdioFileDescriptor = STDOUT, offset: int = 0) -> Iterator[bytes]:
        """The stream's bytes from `offset` to its end, reconnecting at the last offset on failure."""
        return self._drive(_Run(self._read(exec_id, fd, offset)))

    # -- the router's own service (ExecControl) --------------------------------------------------

    def inspect(self, exec_id: str) -> ec.ExecInfo:
        return self._run(self._inspect(exec_id))

    def execs(self, state: ec.ExecState = ec.EXEC_STATE_ANY) -> Iterator[ec.ExecInfo]:
        """Every exec in that state, page by page."""
        return self._drive(_Run(self._execs(state)))

    def kill(self, exec_id: str, grace_secs: float = 0.0, timeout: float | None = None) -> ec.ExitInfo:
        """TERM, `grace_secs`, KILL to the exec's group; returns once it is gone."""
        return self._run(self._kill(exec_id, grace_secs, timeout))

    def signal(self, exec_id: str, signal: int, target: ec.SignalTarget = ec.SIGNAL_TARGET_GROUP) -> None:
        self._run(self._signal(exec_id, signal, target))

    def resize(self, exec_id: str, rows: int, cols: int) -> None:
        self._run(self._resize(exec_id, rows, cols))

    def batch_start(self, items: Sequence[pb.TaskExecStartRequest]) -> list[ec.BatchItemResult]:
        return self._run(self._batch_start(items))

    def watch(self, exec_ids: Sequence[str] = (), output_limit: int = 0,
              include_started: bool = False) -> Iterator[ec.WatchEvent]:
        """Exit events (and start events, if asked), each exec's once; after a broken stream,
        resumes for the execs whose exit has not come."""
        return self._drive(_Run(self._watch(exec_ids, output_limit, include_started)))


class AsyncRouterClient(_Client):
    """RouterClient's methods on a grpc.aio channel, to await (and `async for` the iterating ones).
    Make it inside the event loop that uses it; `await client.close()`, or `async with`."""
    _grpc = grpc.aio

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _drive(self, run: _Run[Any]) -> AsyncIterator[Any]:
        try:
            while (step := run.step()) is not None:
                if isinstance(step, _Emit):
                    yield step.value
                    continue
                try:
                    run.reply = await self._perform(step, run)
                except grpc.RpcError as e:
                    run.error = e
        finally:
            run.close()

    async def _perform(self, step: _Call | _Sleep | _Open | _Next, run: _Run[Any]) -> Any:
        if isinstance(step, _Call):
            return await self._rpcs[step.rpc](step.request, timeout=step.timeout, metadata=self._metadata)
        if isinstance(step, _Sleep):
            await asyncio.sleep(step.secs)
        elif isinstance(step, _Open):
            run.stream = self._rpcs[step.rpc](step.request, metadata=self._metadata)
        else:
            message = await run.stream.read()
            return None if message is grpc.aio.EOF else message
        return None

    async def _run(self, steps: _Steps[T]) -> T:
        run = _Run(steps)
        async for _ in self._drive(run):
            pass  # a unary method's steps emit nothing
        return run.result

    async def start(self, exec_id: str, args: Sequence[str], **fields: Any) -> None:
        await self._run(self._start(exec_id, args, fields))

    async def poll(self, exec_id: str, timeout: float = 30.0) -> pb.TaskExecPollResponse:
        return await self._run(self._poll(exec_id, timeout))

    async def wait(self, exec_id: str, call_timeout: float = 60.0,
                   unreachable_secs: float = UNREACHABLE_SECS) -> WaitResult:
        return await self._run(self._wait(exec_id, call_timeout, unreachable_secs))

    async def write_stdin(self, exec_id: str, offset: int, data: bytes, eof: bool = False) -> None:
        await self._run(self._write_stdin(exec_id, offset, data, eof))

    def read(self, exec_id: str, fd: pb.TaskExecStdioFileDescriptor = STDOUT,
             offset: int = 0) -> AsyncIterator[bytes]:
        return self._drive(_Run(self._read(exec_id, fd, offset)))

    async def inspect(self, exec_id: str) -> ec.ExecInfo:
        return await self._run(self._inspect(exec_id))

    def execs(self, state: ec.ExecState = ec.EXEC_STATE_ANY) -> AsyncIterator[ec.ExecInfo]:
        return self._drive(_Run(self._execs(state)))

    async def kill(self, exec_id: str, grace_secs: float = 0.0, timeout: float | None = None) -> ec.ExitInfo:
        return await self._run(self._kill(exec_id, grace_secs, timeout))

    async def signal(self, exec_id: str, signal: int, target: ec.SignalTarget = ec.SIGNAL_TARGET_GROUP) -> None:
        await self._run(self._signal(exec_id, signal, target))

    async def resize(self, exec_id: str, rows: int, cols: int) -> None:
        await self._run(self._resize(exec_id, rows, cols))

    async def batch_start(self, items: Sequence[pb.TaskExecStartRequest]) -> list[ec.BatchItemResult]:
        return await self._run(self._batch_start(items))

    def watch(self, exec_ids: Sequence[str] = (), output_limit: int = 0,
              include_started: bool = False) -> AsyncIterator[ec.WatchEvent]:
        return self._drive(_Run(self._watch(exec_ids, output_limit, include_started)))
