"""The asyncio client: `AsyncRouterClient`."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

import grpc
import grpc.aio

from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb

from .calls import STDOUT, UNREACHABLE_SECS, T, WaitResult, _Call, _Client, _Emit, _Next, _Open, _Run, _Sleep, _Steps


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

    async def status(self) -> ec.StatusResponse:
        return await self._run(self._status())

    def execs(self, state: ec.ExecState = ec.EXEC_STATE_ANY) -> AsyncIterator[ec.ExecInfo]:
        return self._drive(_Run(self._execs(state)))

    async def kill(self, exec_id: str, grace_secs: float = 0.0, timeout: float | None = None) -> ec.ExitInfo:
        return await self._run(self._kill(exec_id, grace_secs, timeout))

    async def signal(self, exec_id: str, signal: int, target: ec.SignalTarget = ec.SIGNAL_TARGET_GROUP) -> None:
        await self._run(self._signal(exec_id, signal, target))

    async def resize(self, exec_id: str, rows: int, cols: int) -> None:
        await self._run(self._resize(exec_id, rows, cols))

    async def ready(self, timeout: float = 5.0) -> bool:
        return await self._run(self._ready(timeout))

    async def batch_start(self, items: Sequence[pb.TaskExecStartRequest]) -> list[ec.BatchItemResult]:
        return await self._run(self._batch_start(items))

    def watch(self, exec_ids: Sequence[str] = (), output_limit: int = 0,
              include_started: bool = False) -> AsyncIterator[ec.WatchEvent]:
        return self._drive(_Run(self._watch(exec_ids, output_limit, include_started)))
