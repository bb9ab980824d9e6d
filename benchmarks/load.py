"""A steady load on a running router, for profiling it (py-spy) while it serves.

    router serve --state-dir /tmp/prof --listen 127.0.0.1:50556 &
    python -m benchmarks.load /tmp/prof 127.0.0.1:50556 [SECONDS] [rate|fan]

64 execs in flight over 4 grpc.aio channels for SECONDS (default 10): `rate` starts and waits
`true`; `fan` also reads 64 KiB of stdout (`head -c 65536 /dev/zero`) and checks its length.
Prints execs per second.
"""
from __future__ import annotations

import asyncio
import pathlib
import sys
import time
import uuid

import grpc

from router import auth
from router._proto import task_command_router_pb2 as pb
from router._proto import task_command_router_pb2_grpc as pb_grpc

IN_FLIGHT = 64
CHANNELS = 4


async def run(state_dir: pathlib.Path, target: str, seconds: float, mode: str) -> float:
    task = (state_dir / "task_id").read_text().strip()
    metadata = (("authorization", "Bearer " + auth.mint_token(auth.load_or_create_key(state_dir), task)),)
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
    stubs = [pb_grpc.TaskCommandRouterStub(c) for c in channels]
    args = ["true"] if mode == "rate" else ["head", "-c", "65536", "/dev/zero"]
    done = 0
    end = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal done
        stub = stubs[i % CHANNELS]
        while time.monotonic() < end:
            exec_id = uuid.uuid4().hex
            await stub.TaskExecStart(pb.TaskExecStartRequest(
                task_id=task, exec_id=exec_id, command_args=args, stdout_config=1, stderr_config=1), metadata=metadata)
            if mode == "fan":
                got = 0
                async for message in stub.TaskExecStdioRead(
                        pb.TaskExecStdioReadRequest(task_id=task, exec_id=exec_id), metadata=metadata):
                    got += len(message.data)
                if got != 65536:
                    raise RuntimeError(f"exec {exec_id}: read {got} bytes, not 65536")
            await stub.TaskExecWait(pb.TaskExecWaitRequest(task_id=task, exec_id=exec_id), metadata=metadata)
            done += 1

    started = time.monotonic()
    try:
        await asyncio.gather(*(worker(i) for i in range(IN_FLIGHT)))
    finally:
        for channel in channels:
            await channel.close()
    return done / (time.monotonic() - started)


def main() -> None:
    state_dir, target = pathlib.Path(sys.argv[1]), sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    mode = sys.argv[4] if len(sys.argv) > 4 else "rate"
    print(f"{asyncio.run(run(state_dir, target, seconds, mode)):.0f} execs/s")


if __name__ == "__main__":
    main()
