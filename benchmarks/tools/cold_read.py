"""Reading an old log again: one exec's stdout streamed to its end (a router that writes logs back
drops their pages once read), then read again from an offset: the time to its first message and
the rate of reading from there to the end, for each router given.

    python -m benchmarks.tools.cold_read --mib 1024 [--router NAME=PYTHONPATH]... [-- ROUTER ARGS]

`router` is the installed package (or whatever PYTHONPATH names); each `--router NAME=DIR` another
build (stream_cpu's convention). First messages at the middle, 64 MiB before the end and 0; then
the whole log read again, twice (the second from the page cache the first filled).
"""
from __future__ import annotations

import argparse
import sys
import time

from ..suite.common import MiB, SyncRouter, router_from, stream_timeout, unique, zeros_command
from .stream_cpu import router_tree


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--router", action="append", default=[], metavar="NAME=PYTHONPATH")
    p.add_argument("router_args", nargs="*")
    args = p.parse_args(argv)
    n = args.mib * MiB
    timeout = stream_timeout(n)
    for name, path in [("router", ""), *(router_tree(spec, p) for spec in args.router)]:
        with router_from(path, args=args.router_args, log_root=None) as router:
            client = SyncRouter(router)
            exec_id = unique("ex")
            client.start(exec_id, zeros_command(n))
            t0 = time.perf_counter()
            if client.read_all(exec_id, timeout=timeout) != n:
                raise SystemExit(f"{name}: short read")
            first = n / (time.perf_counter() - t0) / 1e6
            client.wait(exec_id)
            time.sleep(2.0)  # the writeback worker's last jobs
            print(f"{name}: first read {first:.0f} MB/s")
            for offset in (n // 2, n - 64 * MiB, 0):  # each where nothing was read again yet
                t0 = time.perf_counter()
                client.first_message(exec_id, offset, timeout=timeout)
                print(f"  first message at {offset // MiB:5d} MiB: {(time.perf_counter() - t0) * 1e3:7.1f} ms")
            for again in ("again", "a third time"):
                t0 = time.perf_counter()
                got = client.read_all(exec_id, timeout=timeout)
                print(f"  read {again}: {got / (time.perf_counter() - t0) / 1e6:5.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
