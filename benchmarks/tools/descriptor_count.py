"""What admission by descriptors costs (router.engine.descriptors): a count of the process's open
descriptors, by /proc/self/fd's size (Linux 6.2+) and by listing it (older kernels), at several
numbers open; one admission (DescriptorBudget.admit) far from the limit, as every start pays it
(its descriptors at least a thousand execs' below it); and how many `cat` execs (every stream
piped) a router admits under a given open-file limit, set on it with prlimit(2) once it runs.

    python -m benchmarks.tools.descriptor_count [--open 100 --open 1000 --open 10000] [--rounds 5]
                                                [--fill 200 --fill 1024]

Prints, per number open, the medians over the rounds of each count in microseconds, then the
admission's cost in nanoseconds, then per limit the execs admitted and the refusal's message.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable

import grpc

from router._proto import task_command_router_pb2 as pb
from router._proto import task_command_router_pb2_grpc as pb_grpc
from router.engine.descriptors import DescriptorBudget, listed_descriptors, open_descriptors

from ..suite.common import TASK_ID, RouterProcess


def per_call(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """Median seconds per call of `fn` over `rounds` rounds of `calls` calls."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def fill(limit: int) -> tuple[int, str]:
    """Execs a router admits under `limit` open files, and the message of the first refused."""
    with RouterProcess() as router:
        resource.prlimit(router.pid, resource.RLIMIT_NOFILE, (limit, limit))
        stub = pb_grpc.TaskCommandRouterStub(router.channel())
        for n in range(limit):
            request = pb.TaskExecStartRequest(task_id=TASK_ID, exec_id=f"cat-{n}", command_args=["cat"],
                                              stdout_config=pb.TASK_EXEC_STDOUT_CONFIG_PIPE,
                                              stderr_config=pb.TASK_EXEC_STDERR_CONFIG_PIPE)
            try:
                stub.TaskExecStart(request, metadata=router.metadata, timeout=30)
            except grpc.RpcError as e:
                return n, str(e.details())
    raise RuntimeError(f"{limit} execs admitted under a limit of {limit} open files")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--open", type=int, action="append", help="descriptors open while counting; repeat")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fill", type=int, action="append", default=[],
                        help="an open-file limit to fill a router's up to with execs; repeat")
    args = parser.parse_args()
    sizes = args.open or [100, 1000, 10000]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, max(sizes) + 1000)), hard))
    for n in sizes:
        held = [os.open("/dev/null", os.O_RDONLY) for _ in range(max(0, n - open_descriptors()))]
        try:
            stat_us = per_call(open_descriptors, 1000, args.rounds) * 1e6
            listed_us = per_call(listed_descriptors, max(10, 100_000 // n), args.rounds) * 1e6
            print(f"{open_descriptors()} open: stat {stat_us:.1f} us, listing {listed_us:.1f} us")
        finally:
            for fd in held:
                os.close(fd)
    # A budget per thousand admissions, so that they stay far from the limit (each thousand pays
    # one count, as the starts of a second do).
    def thousand() -> None:
        budget = DescriptorBudget()
        for _ in range(1000):
            budget.admit(0)

    admit_ns = per_call(thousand, 10, args.rounds) * 1e6
    print(f"admit, far from the limit ({DescriptorBudget().limit}): {admit_ns:.0f} ns")
    for limit in args.fill:
        admitted, refusal = fill(limit)
        print(f"limit {limit}: {admitted} execs admitted, then {refusal!r}")

if __name__ == "__main__":
    main()
