"""Where a stream's CPU goes: rounds of one exec's stdout through routers and the bare grpcio
server, alternating, with the wall rate and the CPU seconds of each round (server, its children,
and this client process), from /proc/PID/stat and getrusage around the round.

    python -m benchmarks.tools.stream_cpu --mib 256 --rounds 12 [--router NAME=PYTHONPATH]... [-- ROUTER ARGS]

Each `--router NAME=DIR` starts a router with PYTHONPATH=DIR (another build of the package, say a
git worktree built in place) beside the installed one (`router`); prints medians of the last four.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

from ..suite.bare_grpc import EXEC_METHOD
from ..suite.bench_stream import bare_sender, router_sender
from ..suite.common import BareGrpcProcess, cpu_seconds, router_from


def router_tree(spec: str, p: argparse.ArgumentParser) -> tuple[str, str]:
    """--router NAME=PYTHONPATH -> (NAME, PYTHONPATH)."""
    name, sep, path = spec.partition("=")
    if not sep:
        p.error(f"--router {spec!r}: expected NAME=PYTHONPATH")
    return name, path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--router", action="append", default=[], metavar="NAME=PYTHONPATH")
    p.add_argument("router_args", nargs="*")
    args = p.parse_args(argv)
    n = args.mib << 20
    results: dict[str, list[tuple[float, float]]] = {}
    with contextlib.ExitStack() as stack:
        sides = {}
        for name, path in [("router", ""), *(router_tree(spec, p) for spec in args.router)]:
            router = stack.enter_context(router_from(path, args=args.router_args, log_root=None))
            sides[name] = (router_sender(router), router.pid)
        bare = stack.enter_context(BareGrpcProcess())
        sides["bare_grpc"] = (bare_sender(bare), bare.pid)
        sides["bare_exec"] = (bare_sender(bare, EXEC_METHOD), bare.pid)
        for send, _ in sides.values():
            send(16 << 20)
        for _ in range(args.rounds):
            for name, (send, pid) in sides.items():
                c0, s0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
                send(n)
                wall = time.perf_counter() - t0
                cpu = cpu_seconds(pid) - c0 + time.process_time() - s0
                results.setdefault(name, []).append((n / wall / 1e6, cpu))
    bare_rate = statistics.median(r for r, _ in results["bare_grpc"][-4:])
    for name, rounds in results.items():
        rate = statistics.median(r for r, _ in rounds[-4:])
        cpu = statistics.median(c for _, c in rounds[-4:])
        print(f"{name:10s} {rate:6.0f} MB/s  {cpu:5.2f} CPU s/round  /bare_grpc {rate / bare_rate:5.3f}  "
              f"rounds {[round(r) for r, _ in rounds]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
