"""A bare grpcio server, the reference for the router's stream figure.

One unary-stream method, `/bench.Bare/Stream`: the request is the total byte count in ASCII; the
handler yields one prebuilt `bytes` chunk (1 MiB by default) over and over, raw: no serializer on
either side, no log, no exec. Same grpcio sync server and options as the router
(`router.server.server_options`), in its own process:

    python benchmarks/bare_grpc.py --listen 127.0.0.1:0      # prints "bare listening on HOST:PORT"
"""
from __future__ import annotations

import argparse
import concurrent.futures
import signal
import sys
import threading
from collections.abc import Iterator

import grpc

SERVICE = "bench.Bare"
METHOD = f"/{SERVICE}/Stream"


def serve(listen: str, chunk_size: int) -> int:
    from router.config import ServerConfig
    from router.server import server_options

    chunk = bytes(chunk_size)

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        full, rest = divmod(int(request.decode()), chunk_size)
        for _ in range(full):
            yield chunk
        if rest:
            yield chunk[:rest]

    handler = grpc.method_handlers_generic_handler(SERVICE, {"Stream": grpc.unary_stream_rpc_method_handler(stream)})
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=64),
                         options=server_options(ServerConfig(state_dir="", task_id="")))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(listen)
    if port == 0:
        print(f"cannot listen on {listen}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"bare listening on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop.wait()
    server.stop(1.0).wait(10)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--chunk", type=int, default=1024 * 1024, help="bytes per message (default 1 MiB)")
    args = p.parse_args()
    return serve(args.listen, args.chunk)


if __name__ == "__main__":
    sys.exit(main())
