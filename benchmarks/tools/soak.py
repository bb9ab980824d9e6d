"""RSS of a router while short execs go through it: the suite's soak (benchmarks/suite/bench_soak.py)
against a `router serve` of its own (default flags, as `PYTHONPATH` finds the package), printing
the server's VmRSS after each round and, at the end, the growth per retained finished exec.

    python -m benchmarks.tools.soak [--execs 20000] [--round 1000] [-- ROUTER ARGS]
"""
from __future__ import annotations

import argparse

from router.engine.retention import DEFAULT_EXECS

from ..suite.bench_soak import soak
from ..suite.common import MiB, RouterProcess
from ..suite.workloads import AioSide


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--execs", type=int, default=20_000, help="execs after the warm-up")
    p.add_argument("--round", type=int, default=1000, help="execs between readings")
    p.add_argument("router_args", nargs="*")
    args = p.parse_args(argv)
    with RouterProcess(args=args.router_args) as router, AioSide(router.target) as side:
        r = soak(router, side, args.execs, args.round, report=True)
    retained, rss = r.at_cap
    print(f"growth after the warm-up: {(r.rounds[-1][1] - r.warm) / MiB:.1f} MiB over {args.execs} execs; "
          f"{r.per_retained_exec():.0f} bytes per retained exec (first round to {retained} retained, "
          f"cap {DEFAULT_EXECS}); "
          f"{(r.rounds[-1][1] - rss) / MiB:+.1f} MiB after the cap")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
