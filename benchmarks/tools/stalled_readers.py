"""What readers that never read cost the router: N TaskExecStdioRead calls on execs of 16 MiB of
output each, opened (their headers in) and then left unread by a client process of their own,
against a router of its own (default flags, as `PYTHONPATH` finds the package). Prints the
server's VmRSS before and with them open (per stream), the CPU of the server and of that client
meanwhile, and the rate of a reader that does read (this process, a channel of its own, an exec of
--rate-mib), before and meanwhile.

    python -m benchmarks.tools.stalled_readers [--streams 1000] [--execs 16] [--mib 16] [--rate-mib 256]
        [--no-bdp-probe] [-- ROUTER ARGS]

The streams are spread over `--execs` execs (1,000 execs of 16 MiB would need 16 GiB of logs,
past the default retention); a stream's cost does not depend on whose output it reads.
`--no-bdp-probe` opens them with grpc's BDP probing off (its pings are what such a client spends
its CPU on, and the server some of its own answering them).
"""
from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
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

CHANNELS = 4


def stall(target: str, md: Any, exec_ids: list[str], n: int, bdp_probe: bool,
          ready: multiprocessing.synchronize.Event) -> None:
    """A client process: n raw reads round robin over the execs and CHANNELS connections, each
    started and its headers received (the server is writing to every one), never read."""
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", int(bdp_probe))]
    channels = [grpc.insecure_channel(target, options=options) for _ in range(CHANNELS)]
    reads = [ch.unary_stream(READ_METHOD, request_serializer=pb.TaskExecStdioReadRequest.SerializeToString,
                             response_deserializer=None) for ch in channels]
    calls = [reads[i % CHANNELS](read_request(exec_ids[i % len(exec_ids)]), metadata=md, timeout=600)
             for i in range(n)]
    for call in calls:
        call.initial_metadata()
    ready.set()
    time.sleep(600)  # until the parent kills it


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
    p.add_argument("--no-bdp-probe", action="store_true", help="grpc's BDP probing off in the stalled client")
    p.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    p.add_argument("router_args", nargs="*")
    args = p.parse_args(argv)
    size, rate_size = args.mib * MiB, args.rate_mib * MiB
    with RouterProcess(args=args.router_args) as router:
        client = SyncRouter(router)
        ids = [f"stalled-{i}" for i in range(args.execs)]
        for exec_id, n in [*((exec_id, size) for exec_id in ids), ("reading", rate_size)]:
            client.start(exec_id, zeros_command(n))
            client.wait(exec_id)
        rate_before = read_rate(client, "reading", rate_size)
        before = router.status()["VmRSS"]
        ready = multiprocessing.Event()
        staller = multiprocessing.Process(target=stall, args=(router.target, router.metadata, ids, args.streams,
                                                              not args.no_bdp_probe, ready), daemon=True)
        staller.start()
        assert staller.pid is not None
        try:
            if not ready.wait(300):
                raise RuntimeError("the streams did not open within 300 s")
            time.sleep(args.settle)
            c0, s0, t0 = cpu_seconds(router.pid, children=False), cpu_seconds(staller.pid), time.perf_counter()
            time.sleep(args.settle)
            dt = time.perf_counter() - t0
            server_cpu, staller_cpu = (cpu_seconds(router.pid, children=False) - c0) / dt, \
                (cpu_seconds(staller.pid) - s0) / dt
            with_them = router.status()["VmRSS"]
            rate_during = read_rate(client, "reading", rate_size)
        finally:
            staller.kill()
            staller.join()
    print(f"VmRSS {before / MiB:.1f} MiB before, {with_them / MiB:.1f} MiB with {args.streams} unread streams: "
          f"{(with_them - before) / args.streams / 1024:.0f} KiB per stream")
    print(f"CPU with them open, nothing else going on: server {server_cpu:.2f} s/s, their client {staller_cpu:.2f} s/s")
    print(f"a reader of {args.rate_mib} MiB: {rate_before:.0f} MB/s before, {rate_during:.0f} MB/s meanwhile")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except grpc.RpcError as e:
        raise SystemExit(f"call failed: {e}") from None
