"""What metrics add to each exec and each call, timed piece by piece (the A/B of whole routers,
`ab_trees --flags "on=--metrics-listen 127.0.0.1:0"`, cannot resolve 2% on a shared machine):

    python -m benchmarks.tools.metrics_cost

The engine's counts (always kept: a start counted with its batch, an exit with its cause and
duration, a drain's bytes, stdin published at a flush) and, with --metrics-listen, an RPC's
duration and status (`RpcStats.observe`, two clock reads). Also one scrape of a registry holding
every router family, with 2 x 10 methods x 2 codes of RPC histograms. Prints ns per operation,
the median of `--repeat` timeit runs.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time
import timeit

import grpc
from prometheus_client import generate_latest

from router.engine.records import ExitCause
from router.engine.registry import Registry
from router.server.call_stats import RpcStats
from router.tls import TlsFiles


def ns_per_op(fn: object, number: int, repeat: int) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e9  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    stats = Registry(0).stats
    outcomes: list[tuple[object, object]] = [(None, object())]  # a batch of one spawn that started
    rpcs = RpcStats()
    ok = grpc.StatusCode.OK

    def started() -> None:  # what Registry.spawned adds
        stats.started_ok += sum(not isinstance(outcome, BaseException) for _, outcome in outcomes)

    def timed_call() -> None:
        began = time.perf_counter()
        rpcs.observe("TaskExecStart", ok, time.perf_counter() - began)

    def output() -> None:
        stats.output_bytes["stdout"] += 12

    results = {
        "a start counted (with its batch of one)": ns_per_op(started, args.number, args.repeat),
        "an exit counted (its cause, its duration in the histogram)": ns_per_op(
            lambda: stats.exited(ExitCause.EXITED, 0.003), args.number, args.repeat),
        "a drain's bytes counted": ns_per_op(output, args.number, args.repeat),
        "an RPC timed (metrics on: two clock reads, RpcStats.observe)": ns_per_op(timed_call, args.number,
                                                                                 args.repeat),
    }
    for name, ns in results.items():
        print(f"{ns:8.0f} ns  {name}")
    from router.server.metrics import MetricsServer  # a scrape of every family, as /metrics serves it

    for service in ("TaskCommandRouter", "ExecControl"):
        for n in range(10):
            for code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND):
                rpcs.observe(f"{service}{n}", code, 0.001)
    with tempfile.TemporaryDirectory() as tmp:
        from router.engine.core import Engine
        from router.images.store import Images
        from router.server.call_stats import ImageOps
        from router.server.metrics import RouterCollector

        engine = Engine(pathlib.Path(tmp) / "logs", segment_size=1 << 20, stdin_buffer_limit=1 << 20)
        images = Images(pathlib.Path(tmp), "copy")
        collector = RouterCollector(engine, rpcs, ImageOps(), images, pathlib.Path(tmp), None, None)
        server = MetricsServer("127.0.0.1:0", collector, None, TlsFiles())
        scrape = ns_per_op(lambda: generate_latest(server.registry), 50, args.repeat) / 1e6
    print(f"{scrape:8.2f} ms  one scrape (generate_latest: every family, 40 RPC histograms, the process collector)")


if __name__ == "__main__":
    main()
