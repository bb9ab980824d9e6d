"""`router batch` over three routers against one, on this machine: what spreading the jobs costs.

    python -m benchmarks.tools.batch_fleet --lines 2000 -j 64 --rounds 9 [--base /tmp/before/src]

Three `router serve` processes on loopback sharing one token key. Each round runs, in an order
that rotates, `router batch -j J` of LINES lines (`echo SEQ`, every line's output checked) with
`--target` the first router only ("one"), all three ("three") and, with `--base SRC`, the CLI of
another tree against the first router ("base": the fleet code's cost on one target). On two cores
no speed-up is expected: the three routers share them. Prints every round, then the medians of the
rate, of the CLI's CPU per run (user + sys of the reaped process) and of all three routers' CPU
per job (their execs included), and the ratios to "one".
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

from router import auth

from ..suite.common import TASK_ID, RouterProcess, cpu_seconds
from .trees import client_cpu, rotation


def run_batch(src: str, targets: list[str], token: str, jobs: int, lines: int) -> tuple[float, float]:
    """One `router batch` (the CLI of tree `src`): seconds and the CLI's CPU seconds."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    flags = [f for t in targets for f in ("--target", t)]
    source = "".join(f"echo {i}\n" for i in range(lines)).encode()
    cpu_before = client_cpu()[1]
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "router.cli", "batch", "-j", str(jobs), *flags, "--token", token],
                          input=source, capture_output=True, env=env, timeout=600, check=False)
    took = time.perf_counter() - began
    if done.returncode != 0 or sorted(map(int, done.stdout.split())) != list(range(lines)):
        raise SystemExit(f"router batch failed: exit {done.returncode}, {done.stderr[-500:]!r}")
    return took, client_cpu()[1] - cpu_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("-j", "--jobs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--src", default="src", help="the tree whose CLI runs one and three (default src)")
    parser.add_argument("--base", help="another tree's src/, its CLI run against the first router")
    args = parser.parse_args()
    secret = os.urandom(32).hex().encode()
    token = auth.mint_token(secret, TASK_ID, 24 * 3600)
    sides = {"one": (args.src, 1), "three": (args.src, 3)} | ({"base": (args.base, 1)} if args.base else {})
    rates: dict[str, list[float]] = {name: [] for name in sides}
    cli: dict[str, list[float]] = {name: [] for name in sides}
    server: dict[str, list[float]] = {name: [] for name in sides}
    with contextlib.ExitStack() as stack:
        routers = [stack.enter_context(RouterProcess(token_key=secret)) for _ in range(3)]
        for src, count in sides.values():
            run_batch(src, [r.target for r in routers[:count]], token, args.jobs, 50)  # warm: imports, channels
        for number in range(args.rounds):
            for name in rotation(list(sides), number):
                src, count = sides[name]
                before = sum(cpu_seconds(r.pid) for r in routers)
                took, cpu = run_batch(src, [r.target for r in routers[:count]], token, args.jobs, args.lines)
                rates[name].append(args.lines / took)
                cli[name].append(cpu)
                server[name].append((sum(cpu_seconds(r.pid) for r in routers) - before) * 1e6 / args.lines)
            print(f"round {number + 1}:", {n: round(v[-1]) for n, v in rates.items()}, "jobs/s; CLI CPU s",
                  {n: round(v[-1], 3) for n, v in cli.items()}, flush=True)
    print(f"{args.lines} lines, -j {args.jobs}, {args.rounds} rounds, medians:")
    for name in sides:
        print(f"  {name:5}  {statistics.median(rates[name]):7.0f} jobs/s  CLI {statistics.median(cli[name]):.3f} s"
              f"  routers {statistics.median(server[name]):5.0f} us CPU per job (execs included)")
    for name in sides:
        if name != "one":
            ratios = [a / b for a, b in zip(rates[name], rates["one"], strict=True)]
            print(f"  {name} / one, per round: rate {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
