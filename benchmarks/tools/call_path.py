"""What Modal's call path costs the router, against what the calls themselves cost, in one run.

For each router (a source tree, as in ab_trees; each round starts with the next), every round measures:
- Modal's calls: TaskExecStart + TaskExecWait of `true`, 64 in flight: execs/s and the serving
  process's CPU per exec (utime + stime from /proc, children excluded);
- BatchStart + Watch of the same number of `true`: execs/s and CPU per exec;
and once per round, beside them:
- a bare grpc.aio server on uvloop (benchmarks/suite/bare_grpc.py, the kind the router serves by
  default): empty unary calls, 64 in flight: calls/s and its CPU per call;
- local posix_spawn of `true` in 64 threads: execs/s.

It prints every round and the medians, and the target's two sides: Modal's CPU per exec against
BatchStart's plus two bare calls', and the rate through Modal's calls against local posix_spawn.

    python -m benchmarks.tools.call_path --execs 2000 --rounds 7
    python -m benchmarks.tools.call_path --tree before=/tmp/before/src --tree after=src
    python -m benchmarks.tools.call_path --tree plain=src --tree batch=src --flags "batch=--sched-batch"
"""
from __future__ import annotations

import argparse
import contextlib
import statistics

from ..suite.bare_grpc import CALL_METHOD
from ..suite.common import IN_FLIGHT, BareGrpcProcess
from ..suite.workloads import AioSide, local_spawn_rate, router_batch, router_exec_rate, rpc_calls
from .trees import add_tree_args, client_cpu, measured, rotation, started


def local_measured(n: int) -> tuple[float, float, float]:
    """local posix_spawn of `true` in 64 threads: its rate, and CPU microseconds per exec of this
    process and of the children."""
    own, kids = client_cpu()
    rate = local_spawn_rate(n, IN_FLIGHT, 600.0)
    after = client_cpu()
    return rate, (after[0] - own) * 1e6 / n, (after[1] - kids) * 1e6 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tree_args(parser, default="head=src")
    parser.add_argument("--execs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    n = args.execs
    series: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        series.setdefault(key, []).append(value)

    with contextlib.ExitStack() as stack:
        bare = stack.enter_context(BareGrpcProcess("aio-uvloop"))
        bare_side = stack.enter_context(AioSide(bare.target))
        rpc_calls(bare_side, CALL_METHOD, 200, IN_FLIGHT, 60.0).checked()
        routers = started(stack, args, lambda side, md: router_exec_rate(side, md, 64, IN_FLIGHT, 60.0).checked())
        names = list(routers)
        for number in range(args.rounds):
            for name in rotation(names, number):
                router, side = routers[name]
                md = router.metadata
                for key, value in zip(("modal/s", "modal us", "modal children us", "modal client us"),
                                      measured(router.pid, n, router_exec_rate, side, md, n, IN_FLIGHT, 600.0),
                                      strict=True):
                    add(f"{name} {key}", value)
                rate, cpu, _, _ = measured(router.pid, n, router_batch, side, md, n, ["true"], 0, 600.0)
                add(f"{name} batch/s", rate)
                add(f"{name} batch us", cpu)
            rate, cpu, _, client = measured(bare.pid, n, rpc_calls, bare_side, CALL_METHOD, n, IN_FLIGHT, 600.0)
            add("bare calls/s", rate)
            add("bare us", cpu)
            add("bare client us", client)
            for key, value in zip(("local/s", "local parent us", "local children us"), local_measured(n), strict=True):
                add(key, value)
            print(f"round {number + 1}:", {k: round(v[-1]) for k, v in series.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in series.items()}
    print("medians:", {k: round(v) for k, v in med.items()})
    for name in names:
        allowed = med[f"{name} batch us"] + 2 * med["bare us"]
        ratios = [m / loc for m, loc in zip(series[f"{name} modal/s"], series["local/s"], strict=True)]
        print(f"{name}: CPU per exec through Modal's calls {med[f'{name} modal us']:.0f} us against BatchStart's "
              f"{med[f'{name} batch us']:.0f} + two bare calls' 2 x {med['bare us']:.0f} = {allowed:.0f} us "
              f"(ratio {med[f'{name} modal us'] / allowed:.2f}); rate through Modal's calls / local posix_spawn: "
              f"median of the rounds' {statistics.median(ratios):.3f}")
        # What two cores allow: CPU per exec on each side, all of it on the machine's two cores.
        own, kids, client = (med[f"{name} modal {k}"] for k in ("us", "children us", "client us"))
        modal = own + kids + client
        local = med["local parent us"] + med["local children us"]
        print(f"{name}: CPU per exec, router {own:.0f} + its children {kids:.0f} + the client {client:.0f} = "
              f"{modal:.0f} us (two cores: at most {2e6 / modal:.0f} execs/s); local posix_spawn "
              f"{med['local parent us']:.0f} + children {med['local children us']:.0f} = {local:.0f} us (at most "
              f"{2e6 / local:.0f}); ratio of those bounds {local / modal:.3f}; with no router CPU at all "
              f"{local / (modal - own):.3f}")


if __name__ == "__main__":
    main()
