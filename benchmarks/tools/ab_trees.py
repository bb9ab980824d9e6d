"""The exec rate of `true` through BatchStart + Watch (or, with `--calls modal`, Modal's calls:
TaskExecStart + TaskExecWait, 64 in flight) for routers built from different source trees, side
by side with local posix_spawn: an A/B between commits on one noisy machine.

    git worktree add /tmp/before <commit> && (cd /tmp/before && python setup.py build_ext --inplace)
    python -m benchmarks.tools.ab_trees --tree before=/tmp/before/src --tree after=src --execs 1000 --rounds 9

One tree may run twice under two names, with `--flags NAME=FLAGS` adding `router serve` flags to
one of them (metrics on and off, say):

    python -m benchmarks.tools.ab_trees --tree off=src --tree on=src --flags "on=--metrics-listen 127.0.0.1:0"

Each tree's router is `router serve` started with PYTHONPATH=<tree>, all of them at once; each
round runs every router's batch (starting with the next tree each round) and then local posix_spawn
in 64 threads (what BatchExecRate measures), so that the machine's drift touches all alike.
Prints every round and the medians: execs/s, the router's CPU per exec and its children's (utime
+ stime from /proc) and the ratio to local.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics

from ..suite.common import IN_FLIGHT
from ..suite.workloads import AioSide, Outcome, local_spawn_rate, router_batch, router_exec_rate
from .trees import add_tree_args, measured, rotation, started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tree_args(parser)
    parser.add_argument("--execs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", choices=("batch", "modal"), default="batch")
    args = parser.parse_args()

    def run(side: AioSide, md: object, n: int) -> Outcome:
        if args.calls == "modal":
            return router_exec_rate(side, md, n, IN_FLIGHT, 600.0)
        return router_batch(side, md, n, ["true"], 0, 600.0)

    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    kids: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        sides = started(stack, args, lambda side, md: run(side, md, 8).checked())
        names = list(sides)
        for series in (rates, cpu, kids):
            series.update({name: [] for name in names})
        rates["local"] = []
        for number in range(args.rounds):
            for name in rotation(names, number):
                router, side = sides[name]
                rate, own, children, _ = measured(router.pid, args.execs, run, side, router.metadata, args.execs)
                rates[name].append(rate)
                cpu[name].append(own)
                kids[name].append(children)
            rates["local"].append(local_spawn_rate(args.execs, IN_FLIGHT, 600.0))
            print({k: round(v[-1]) for k, v in rates.items()}, "router CPU us/exec",
                  {k: round(v[-1]) for k, v in cpu.items()}, "children's", {k: round(v[-1]) for k, v in kids.items()},
                  flush=True)
    print("median execs/s", {k: round(statistics.median(v)) for k, v in rates.items()},
          "router CPU us/exec", {k: round(statistics.median(v)) for k, v in cpu.items()},
          "children's", {k: round(statistics.median(v)) for k, v in kids.items()})
    ratios = {name: [r / loc for r, loc in zip(rates[name], rates["local"], strict=True)] for name in names}
    print("ratio to local", {name: round(statistics.median(r), 3) for name, r in ratios.items()})
    first = names[0]
    paired = {name: [r / f for r, f in zip(rates[name], rates[first], strict=True)] for name in names[1:]}
    print(f"ratio to {first}, median of the rounds'",
          {name: round(statistics.median(r), 3) for name, r in paired.items()})


if __name__ == "__main__":
    main()
