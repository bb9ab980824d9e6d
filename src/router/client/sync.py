"""The blocking client: `RouterClient`."""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, Self

import grpc
import grpc.aio

from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb

from .calls import (
    STDOUT,
    UNREACHABLE_SECS,
    T,
    WaitResult,
    _Call,
    _Client,
    _Emit,
    _Next,
    _Open,
    _Run,
    _Sleep,
    _Steps,
)


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

    def status(self) -> ec.StatusResponse:
        """The router's state: version, uptime, addresses, execs, space, mounts, certificate."""
        return self._run(self._status())

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

    def ready(self, timeout: float = 5.0) -> bool:
        """Whether the router takes new execs (its readiness: not draining, handing over or full);
        a call that fails (the router does not answer) raises its error, without a retry."""
        return self._run(self._ready(timeout))

    def batch_start(self, items: Sequence[pb.TaskExecStartRequest]) -> list[ec.BatchItemResult]:
        return self._run(self._batch_start(items))

    def watch(self, exec_ids: Sequence[str] = (), output_limit: int = 0,
              include_started: bool = False) -> Iterator[ec.WatchEvent]:
        """Exit events (and start events, if asked), each exec's once; after a broken stream,
        resumes for the execs whose exit has not come."""
        return self._drive(_Run(self._watch(exec_ids, output_limit, include_started)))
