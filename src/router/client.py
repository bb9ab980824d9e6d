"""A small synchronous client for the router, used by `router exec`, the tests and the benchmarks."""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import grpc

from ._proto import task_command_router_pb2 as pb
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


def exit_code(response: pb.TaskExecWaitResponse | pb.TaskExecPollResponse) -> int | None:
    """The shell's view of an exit status: the code, or 128+N for signal N; None while running."""
    kind = response.WhichOneof("exit_status")
    if kind == "code":
        return response.code
    if kind == "signal":
        return 128 + response.signal
    return None


class RouterClient:
    def __init__(self, target: str, token: str, task_id: str, *, retries: int = 10) -> None:
        self.task_id = task_id
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.TaskCommandRouterStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._retries = retries

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None = 30.0):  # type: ignore[no-untyped-def]
        delay = 0.05
        for attempt in range(self._retries + 1):
            try:
                return method(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or attempt == self._retries:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def start(self, exec_id: str, args: Sequence[str], **fields: object) -> None:
        self._call(self._stub.TaskExecStart,
                   pb.TaskExecStartRequest(task_id=self.task_id, exec_id=exec_id, command_args=list(args), **fields))

    def poll(self, exec_id: str) -> pb.TaskExecPollResponse:
        return self._call(self._stub.TaskExecPoll, pb.TaskExecPollRequest(task_id=self.task_id, exec_id=exec_id))

    def wait(self, exec_id: str, call_timeout: float = 60.0) -> pb.TaskExecWaitResponse:
        """Wait for exit, calling again every `call_timeout` seconds as Modal's client does."""
        request = pb.TaskExecWaitRequest(task_id=self.task_id, exec_id=exec_id)
        while True:
            try:
                return self._stub.TaskExecWait(request, timeout=call_timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    raise
                time.sleep(0.05)

    def write_stdin(self, exec_id: str, offset: int, data: bytes, eof: bool = False) -> None:
        self._call(self._stub.TaskExecStdinWrite, pb.TaskExecStdinWriteRequest(
            task_id=self.task_id, exec_id=exec_id, offset=offset, data=data, eof=eof), timeout=None)

    def read(self, exec_id: str, fd: int = STDOUT, offset: int = 0) -> Iterator[bytes]:
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
