"""The floor of one gRPC call on this machine: a trivial unary handler (returns b"", no serializers)
in a server of its own process, called with 64 in flight from 4 grpc.aio channels for 5 s.

    python -m benchmarks.rpc_floor [sync|aio|aio-uvloop] ...   (default: all three, one run each)

Prints calls per second and the server process's CPU seconds.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import subprocess
import sys
import time

import grpc

METHOD = "/floor.Floor/Call"
SECONDS = 5.0


def _handlers(fn) -> grpc.GenericRpcHandler:  # type: ignore[no-untyped-def]
    return grpc.method_handlers_generic_handler("floor.Floor", {"Call": grpc.unary_unary_rpc_method_handler(fn)})


def serve(mode: str, port: int) -> None:
    if mode == "sync":
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(256), options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((_handlers(lambda request, context: b""),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def call(request: bytes, context: object) -> bytes:
        return b""

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((_handlers(call),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    if mode == "aio-uvloop":
        import uvloop
        uvloop.install()
    asyncio.run(main())


async def load(port: int) -> float:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    calls = [c.unary_unary(METHOD) for c in channels]
    done = 0
    end = time.monotonic() + SECONDS

    async def worker(i: int) -> None:
        nonlocal done
        while time.monotonic() < end:
            await calls[i % 4](b"x")
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(64)))
    for c in channels:
        await c.close()
    return done / (time.monotonic() - started)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
        return
    for mode in sys.argv[1:] or ["sync", "aio", "aio-uvloop"]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "benchmarks.rpc_floor", "--serve", mode, str(port)])
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
            rate = asyncio.run(load(port))
            print(f"{mode}: {rate:.0f} calls/s, server CPU {cpu_seconds(server.pid):.2f} s")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
