"""A bare grpcio server: the reference for what the router's gRPC stack costs by itself.

Two raw methods (no serializer on either side, no log, no exec), with the router's server options
(`router.server.grpc_server.server_options`), in its own process:

- `/bench.Bare/Stream` (unary-stream): the request is a byte count in ASCII; the handler yields one
  prebuilt 1 MiB `bytes` message over and over. The reference for one exec's stdout.
- `/bench.Bare/Exec` (unary-stream): the request is a byte count; the handler runs `head -c N
  /dev/zero` on a 1 MiB pipe and yields each read() of it (at most 1 MiB). The least an exec
  streamer can do in grpcio: the reference for what the router's log, journal and offsets cost.
- `/bench.Bare/Call` (unary): returns b"". The floor of one gRPC call, against the exec rate.
- `/bench.Bare/Messages` (unary-stream): the request is "COUNT,SIZE,PER" in ASCII; the handler yields
  COUNT items of SIZE bytes, PER of them to a message. What a stream message costs whatever it holds
  (benchmarks/tools/message_cost.py).

    python benchmarks/suite/bare_grpc.py --listen 127.0.0.1:0 --mode sync|aio|aio-uvloop
    # prints "bare listening on HOST:PORT"
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

SERVICE = "bench.Bare"
STREAM_METHOD = f"/{SERVICE}/Stream"
CALL_METHOD = f"/{SERVICE}/Call"
EXEC_METHOD = f"/{SERVICE}/Exec"
MESSAGES_METHOD = f"/{SERVICE}/Messages"
CHUNK = 1024 * 1024
MODES = ("sync", "aio", "aio-uvloop")


def chunks(request: bytes) -> Iterator[bytes]:
    chunk = bytes(CHUNK)
    full, rest = divmod(int(request.decode()), CHUNK)
    for _ in range(full):
        yield chunk
    if rest:
        yield chunk[:rest]


def messages(request: bytes) -> Iterator[bytes]:
    count, size, per = (int(x) for x in request.decode().split(","))
    full = bytes(size * per)
    for first in range(0, count, per):
        yield full if first + per <= count else bytes(size * (count - first))


def exec_chunks(request: bytes) -> Iterator[bytes]:
    """`head -c N /dev/zero`'s stdout, as read() gives it."""
    import fcntl
    import subprocess

    with subprocess.Popen(["head", "-c", str(int(request.decode())), "/dev/zero"], stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        fd = child.stdout.fileno()
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK)  # as the router asks for
        while data := os.read(fd, CHUNK):
            yield data


def options() -> list:
    from router.config import ServerConfig
    from router.server.grpc_server import server_options

    return server_options(ServerConfig(state_dir="", task_id=""))


def handlers(stream: Callable[..., Any], execute: Callable[..., Any], call: Callable[..., Any],
             many: Callable[..., Any]) -> grpc.GenericRpcHandler:
    """The four methods' bodies (sync functions, or the aio server's coroutines and async generators)."""
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Messages": grpc.unary_stream_rpc_method_handler(many),
        "Exec": grpc.unary_stream_rpc_method_handler(execute),
        "Call": grpc.unary_unary_rpc_method_handler(call),
    })


def listening(listen: str, port: int) -> int:
    if port == 0:
        print(f"cannot listen on {listen}", file=sys.stderr, flush=True)
        return 1
    print(f"bare listening on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    return 0


def serve_sync(listen: str) -> int:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=64), options=options())
    server.add_generic_rpc_handlers((handlers(lambda request, context: chunks(request),
                                              lambda request, context: exec_chunks(request),
                                              lambda request, context: b"",
                                              lambda request, context: messages(request)),))
    port = server.add_insecure_port(listen)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    if listening(listen, port):
        return 1
    stop.wait()
    server.stop(1.0).wait(10)
    return 0


async def serve_aio(listen: str) -> int:
    async def stream(request: bytes, context: object) -> AsyncIterator[bytes]:
        for chunk in chunks(request):
            yield chunk

    async def execute(request: bytes, context: object) -> AsyncIterator[bytes]:
        chunks = exec_chunks(request)  # its blocking reads in the default executor
        loop = asyncio.get_running_loop()
        while (data := await loop.run_in_executor(None, next, chunks, None)) is not None:
            yield data

    async def call(request: bytes, context: object) -> bytes:
        return b""

    async def many(request: bytes, context: object) -> AsyncIterator[bytes]:
        for message in messages(request):
            yield message

    server = grpc.aio.server(options=options())
    server.add_generic_rpc_handlers((handlers(stream, execute, call, many),))
    port = server.add_insecure_port(listen)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await server.start()
    if listening(listen, port):
        return 1
    await stop.wait()
    await server.stop(1.0)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--mode", choices=MODES, default="sync")
    args = p.parse_args()
    if args.mode == "sync":
        return serve_sync(args.listen)
    if args.mode == "aio-uvloop":
        import uvloop

        uvloop.install()
    return asyncio.run(serve_aio(args.listen))


if __name__ == "__main__":
    sys.exit(main())
