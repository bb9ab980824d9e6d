"""A small synchronous client for the router, used by `router exec`, the tests and the benchmarks."""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from ._proto import task_command_router_pb2 as pb
from ._proto import exec_control_pb2 as ec
from ._proto import exec_control_pb2_grpc as ec_grpc
from ._proto import task_command_router_pb2_grpc as pb_grpc

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



def exit_code(response: pb.TaskExecWaitResponse | pb.TaskExecPollResponse) -> int | None:
    """The shell's view of an exit status: the code, or 128+N for signal N; None while running."""
    kind = response.WhichOneof("exit_status")
    if kind == "code":
        return response.code
    if kind == "signal":
        return 128 + response.signal
    return None


class RouterClient:
    def __init__(self, target: str, token: str, task_id: str, *, retries: int = 10,
                 credentials: grpc.ChannelCredentials | None = None, server_name: str = "") -> None:
        """`credentials` (tls.client_credentials) make it a TLS channel; `server_name` overrides the
        name expected in the server's certificate."""
        self.task_id = task_id
        self.target = target
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        else:
            options = CHANNEL_OPTIONS + ([("grpc.ssl_target_name_override", server_name)] if server_name else [])
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.TaskCommandRouterStub(self._channel)
        self._control = ec_grpc.ExecControlStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._retries = retries

    def close(self) -> None:
        self._channel.close()

    def reachable(self, timeout: float) -> bool:
        """Whether a connection is up within `timeout` seconds (no call is made)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
        return True

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None = 30.0) -> Any:
        delay = 0.05
        for attempt in range(self._retries + 1):
            try:
                return method(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or attempt == self._retries:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def start(self, exec_id: str, args: Sequence[str], **fields: Any) -> None:
        self._call(self._stub.TaskExecStart,
                   pb.TaskExecStartRequest(task_id=self.task_id, exec_id=exec_id, command_args=list(args), **fields))

    def poll(self, exec_id: str, timeout: float = 30.0) -> pb.TaskExecPollResponse:
        response: pb.TaskExecPollResponse = self._call(
            self._stub.TaskExecPoll, pb.TaskExecPollRequest(task_id=self.task_id, exec_id=exec_id), timeout)
        return response

    def wait(self, exec_id: str, call_timeout: float = 60.0,
             unreachable_secs: float = UNREACHABLE_SECS) -> pb.TaskExecWaitResponse | pb.TaskExecPollResponse:
        """Wait for exit, calling again every `call_timeout` seconds as Modal's client does, for as
        long as the command runs. Raises the last error once the router has not answered for
        `unreachable_secs` (dead, or hung): a call that ends without the exit status is followed
        by a Poll, which says whether the router is still there."""
        request = pb.TaskExecWaitRequest(task_id=self.task_id, exec_id=exec_id)
        last_answer = time.monotonic()
        while True:
            try:
                response: pb.TaskExecWaitResponse = self._stub.TaskExecWait(
                    request, timeout=call_timeout, metadata=self._metadata)
                return response
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    raise
            try:
                polled: pb.TaskExecPollResponse = self._stub.TaskExecPoll(pb.TaskExecPollRequest(task_id=self.task_id, exec_id=exec_id),
                                                 timeout=min(call_timeout, 10.0), metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or time.monotonic() - last_answer > unreachable_secs:
                    raise
                time.sleep(min(1.0, unreachable_secs / 10))
                continue
            last_answer = time.monotonic()
            if polled.WhichOneof("exit_status") is not None:
                return polled

    def write_stdin(self, exec_id: str, offset: int, data: bytes, eof: bool = False) -> None:
        self._call(self._stub.TaskExecStdinWrite, pb.TaskExecStdinWriteRequest(
            task_id=self.task_id, exec_id=exec_id, offset=offset, data=data, eof=eof), timeout=None)

    def read(self, exec_id: str, fd: pb.TaskExecStdioFileDescriptor = STDOUT,
             offset: int = 0) -> Iterator[bytes]:
        """Yield the stream's bytes from `offset` to its end, reconnecting at the last offset on failure."""
        failures = 0
        while True:
            request = pb.TaskExecStdioReadRequest(task_id=self.task_id, exec_id=exec_id, offset=offset,
                                                  file_descriptor=fd)
            try:
                for message in self._stub.TaskExecStdioRead(request, metadata=self._metadata):
                    failures = 0
                    offset += len(message.data)
                    yield message.data
                return
            except grpc.RpcError as e:
                failures += 1
                if e.code() not in RETRYABLE or failures > self._retries:
                    raise
            time.sleep(min(0.05 * 2**failures, 2.0))

    # -- the router's own service (ExecControl) --------------------------------------------------

    def inspect(self, exec_id: str) -> ec.ExecInfo:
        info: ec.ExecInfo = self._call(self._control.Inspect, ec.InspectRequest(task_id=self.task_id, exec_id=exec_id))
        return info

    def execs(self, state: ec.ExecState = ec.EXEC_STATE_ANY) -> Iterator[ec.ExecInfo]:
        """Every exec in that state, page by page."""
        token = ""
        while True:
            page = self._call(self._control.List, ec.ListRequest(task_id=self.task_id, state=state, page_token=token))
            yield from page.execs
            token = page.next_page_token
            if not token:
                return

    def kill(self, exec_id: str, grace_secs: float = 0.0, timeout: float | None = None) -> ec.ExitInfo:
        """TERM, `grace_secs`, KILL to the exec's group; returns once it is gone."""
        done = self._call(self._control.Kill, ec.KillRequest(task_id=self.task_id, exec_id=exec_id,
                                                             grace_secs=grace_secs), timeout)
        return done.exit  # type: ignore[no-any-return]

    def signal(self, exec_id: str, signal: int, target: ec.SignalTarget = ec.SIGNAL_TARGET_GROUP) -> None:
        self._call(self._control.Signal, ec.SignalRequest(task_id=self.task_id, exec_id=exec_id, signal=signal,
                                                          target=target))

    def resize(self, exec_id: str, rows: int, cols: int) -> None:
        self._call(self._control.Resize, ec.ResizeRequest(task_id=self.task_id, exec_id=exec_id, rows=rows, cols=cols))

    def batch_start(self, items: Sequence[pb.TaskExecStartRequest]) -> list[ec.BatchItemResult]:
        response = self._call(self._control.BatchStart, ec.BatchStartRequest(task_id=self.task_id, items=items), 300)
        return list(response.results)

    def watch(self, exec_ids: Sequence[str] = (), output_limit: int = 0,
              include_started: bool = False) -> Iterator[ec.WatchEvent]:
        """Exit events (and start events, if asked), each exec's once; after a broken stream,
        resumes for the execs whose exit has not come (all execs: from a fresh call, which sends
        again what happened already, skipped here)."""
        seen: set[tuple[str, int]] = set()
        exited: set[str] = set()
        failures = 0
        while True:
            wanted = [i for i in exec_ids if i not in exited]
            if exec_ids and not wanted:
                return
            request = ec.WatchRequest(task_id=self.task_id, exec_ids=wanted, output_limit=output_limit,
                                      include_started=include_started)
            try:
                for event in self._control.Watch(request, metadata=self._metadata):
                    failures = 0
                    if (event.exec_id, event.kind) not in seen:
                        seen.add((event.exec_id, event.kind))
                        if event.kind == ec.WATCH_EVENT_KIND_EXITED:
                            exited.add(event.exec_id)
                        yield event
                return
            except grpc.RpcError as e:
                failures += 1
                if e.code() not in RETRYABLE or failures > self._retries:
                    raise
                time.sleep(min(0.05 * 2 ** failures, 2.0))
