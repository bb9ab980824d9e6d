"""The exec rate of `true` through BatchStart + Watch for routers built from different source trees,
side by side with local posix_spawn: an A/B between commits on one noisy machine.

    git worktree add /tmp/before <commit> && (cd /tmp/before && python setup.py build_ext --inplace)
    python -m benchmarks.ab_trees --tree before=/tmp/before/src --tree after=src --execs 1000 --rounds 9

Each tree's router is `router serve` started with PYTHONPATH=<tree>, all of them at once; each
round runs every router's batch and then local posix_spawn in 64 threads (what BatchExecRate
measures), so that the machine's drift touches all alike. Prints every round and the medians:
execs/s, the router's CPU per exec and its children's (utime + stime from /proc) and the ratio
to local.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics

from .common import IN_FLIGHT, RouterProcess
from .workloads import AioSide, local_spawn_rate, router_batch


def _cpu_secs(pid: int, children: bool = False) -> float:
    """utime + stime of `pid` (or of its reaped children) from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=SRC",
                        help="a name and a source tree (its src/ directory, built); repeat")
    parser.add_argument("--execs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    trees = [(t.split("=", 1)[0], t.split("=", 1)[-1]) for t in args.tree]
    rates: dict[str, list[float]] = {name: [] for name, _ in trees}
    cpu: dict[str, list[float]] = {name: [] for name, _ in trees}
    kids: dict[str, list[float]] = {name: [] for name, _ in trees}
    rates["local"] = []
    with contextlib.ExitStack() as stack:
        sides = {}
        for name, src in trees:
            os.environ["PYTHONPATH"] = os.path.abspath(src)
            try:
                router = RouterProcess()
            finally:
                del os.environ["PYTHONPATH"]
            stack.enter_context(router)
            side = stack.enter_context(AioSide(router.target))
            router_batch(side, router.metadata, 8, ["true"], 0, 60.0).checked()  # channels, first spawns
            sides[name] = (router, side)
        for _ in range(args.rounds):
            for name, (router, side) in sides.items():
                before, kids_before = _cpu_secs(router.proc.pid), _cpu_secs(router.proc.pid, children=True)
                rates[name].append(router_batch(side, router.metadata, args.execs, ["true"], 0, 600.0).checked().rate)
                cpu[name].append((_cpu_secs(router.proc.pid) - before) * 1e6 / args.execs)
                kids[name].append((_cpu_secs(router.proc.pid, children=True) - kids_before) * 1e6 / args.execs)
            rates["local"].append(local_spawn_rate(args.execs, IN_FLIGHT, 600.0))
            print({k: round(v[-1]) for k, v in rates.items()}, "router CPU us/exec",
                  {k: round(v[-1]) for k, v in cpu.items()}, "children's", {k: round(v[-1]) for k, v in kids.items()},
                  flush=True)
    print("median execs/s", {k: round(statistics.median(v)) for k, v in rates.items()},
          "router CPU us/exec", {k: round(statistics.median(v)) for k, v in cpu.items()},
          "children's", {k: round(statistics.median(v)) for k, v in kids.items()})
    print("ratio to local", {name: round(statistics.median(r / loc for r, loc in zip(rates[name], rates["local"])), 3)
                             for name, _ in trees})


if __name__ == "__main__":
    main()
