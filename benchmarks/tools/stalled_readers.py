"""What readers that never read cost the router: N TaskExecStdioRead calls on execs of 16 MiB of
output each, opened (their first message's headers in) and then left unread, against a router of
its own (default flags, as `PYTHONPATH` finds the package). Prints the server's VmRSS before and
with them open (per stream), and the rate of a reader that does read (on a channel of its own, an
exec of --rate-mib), before and meanwhile.

    python -m benchmarks.tools.stalled_readers [--streams 1000] [--execs 16] [--mib 16] [--rate-mib 256]
        [-- ROUTER ARGS]

The streams are spread over `--execs` execs (1,000 execs of 16 MiB would need 16 GiB of logs,
past the default retention); a stream's cost does not depend on whose output it reads.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import grpc

from router._proto import task_command_router_pb2 as pb

from ..suite.common import (
    READ_METHOD,
    MiB,
    RouterProcess,
    SyncRouter,
    cpu_seconds,
    read_request,
    stream_timeout,
    zeros_command,
)
from ..suite.workloads import AioSide


async def open_streams(side: AioSide, md: Any, exec_ids: list[str], n: int, timeout: float) -> list[Any]:
    """n raw reads (no deserializer), round robin over the execs and the side's channels, each
    started and its first message's headers received: the server is writing to every one."""
    reads = [ch.unary_stream(READ_METHOD, request_serializer=pb.TaskExecStdioReadRequest.SerializeToString,
                             response_deserializer=None) for ch in side.channels]
    calls = [reads[i % len(reads)](read_request(exec_ids[i % len(exec_ids)]), metadata=md) for i in range(n)]
    await asyncio.wait_for(asyncio.gather(*(call.initial_metadata() for call in calls)), timeout)
    return calls


def read_rate(client: SyncRouter, exec_id: str, size: int) -> float:
    """MB/s of one reader that reads `exec_id`'s stdout whole."""
    t0 = time.perf_counter()
    got = client.read_all(exec_id, timeout=stream_timeout(size))
    if got != size:
        raise RuntimeError(f"read {got} bytes of {exec_id}, expected {size}")
    return size / (time.perf_counter() - t0) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--execs", type=int, default=16)
    p.add_argument("--mib", type=int, default=16, help="output of each exec")
    p.add_argument("--rate-mib", type=int, default=256, help="output of the exec the reading reader reads")
    p.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    p.add_argument("router_args", nargs="*")
    args = p.parse_args(argv)
    size = args.mib * MiB
    with RouterProcess(args=args.router_args) as router, AioSide(router.target) as side:
        client = SyncRouter(router)
        ids = [f"stalled-{i}" for i in range(args.execs)]
        rate_size = args.rate_mib * MiB
        for exec_id, n in [*((exec_id, size) for exec_id in ids), ("reading", rate_size)]:
            client.start(exec_id, zeros_command(n))
            client.wait(exec_id)
        rate_before = read_rate(client, "reading", rate_size)
        before = router.status()["VmRSS"]
        calls = side.run(open_streams(side, router.metadata, ids, args.streams, 120.0))
        cpu0 = cpu_seconds(router.pid, children=False)
        time.sleep(args.settle)
        idle_cpu = (cpu_seconds(router.pid, children=False) - cpu0) / args.settle
        with_them = router.status()["VmRSS"]
        rate_during = read_rate(client, "reading", rate_size)
        for call in calls:
            call.cancel()
        side.run(asyncio.sleep(0.5))
        print(f"VmRSS {before / MiB:.1f} MiB before, {with_them / MiB:.1f} MiB with {args.streams} unread streams: "
              f"{(with_them - before) / args.streams / 1024:.0f} KiB per stream")
        print(f"the router's CPU with them open and nothing else to do: {idle_cpu:.2f} s/s")
        print(f"a reader of {args.rate_mib} MiB: {rate_before:.0f} MB/s before, {rate_during:.0f} MB/s meanwhile")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except grpc.RpcError as e:
        raise SystemExit(f"call failed: {e}") from None
