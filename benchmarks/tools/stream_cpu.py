"""Where a stream's CPU goes: rounds of one exec's stdout through routers and the bare grpcio
server (and, with --ssh, OpenSSH's `ssh host head -c N`), alternating, with the wall rate and the
CPU seconds of each round (server, its children, and this client process), from /proc/PID/stat and
getrusage around the round.

    python -m benchmarks.tools.stream_cpu --mib 256 --rounds 12 [--router NAME=PYTHONPATH]... [--ssh] [-- ROUTER ARGS]

Each `--router NAME=DIR` starts a router with PYTHONPATH=DIR (another build of the package, say a
git worktree built in place) beside the installed one (`router`); prints medians of the last four
and of the first four (a fresh router's first GiBs land on new pages), and, with --every, each
round of every side and each router's ratios to bare exec and OpenSSH round by round.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
import time

from ..suite.bare_grpc import EXEC_METHOD
from ..suite.bench_stream import bare_sender, router_sender
from ..suite.common import BareGrpcProcess, cpu_seconds, router_from, stream_timeout, zeros_command
from ..suite.sshd import SSHServer, openssh_missing


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
    p.add_argument("--ssh", action="store_true", help="OpenSSH too (skipped, with the reason, if missing)")
    p.add_argument("--every", action="store_true", help="every round of every side, and ratios per round")
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
        if args.ssh and openssh_missing():
            print(f"ssh: skipped, {openssh_missing()}")
        elif args.ssh:
            ssh = stack.enter_context(SSHServer())
            assert ssh.proc is not None
            sides["ssh"] = (lambda k: ssh.run(shlex.join(zeros_command(k)), timeout=stream_timeout(k)), ssh.proc.pid)
        for send, _ in sides.values():
            send(16 << 20)
        for _ in range(args.rounds):
            for name, (send, pid) in sides.items():
                c0, s0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
                send(n)
                wall = time.perf_counter() - t0
                cpu = cpu_seconds(pid) - c0 + time.process_time() - s0
                results.setdefault(name, []).append((n / wall / 1e6, cpu))
    report(results, n, args.every)
    return 0


def report(results: dict[str, list[tuple[float, float]]], n: int, every: bool) -> None:
    """Medians of the last and first four rounds (rate, CPU s per GiB) and ratios to bare_grpc; with
    `every`, each round side by side, then each router's ratio to bare exec and OpenSSH per round."""
    def median(side: str, first: bool, i: int = 0) -> float:
        rounds = results[side][:4] if first else results[side][-4:]
        return statistics.median(r[i] for r in rounds)
    per_gib = (1 << 30) / n
    for name, rounds in results.items():
        print(f"{name:10s} {median(name, False):6.0f} MB/s  {median(name, False, 1) * per_gib:5.2f} CPU s/GiB  "
              f"/bare_grpc {median(name, False) / median('bare_grpc', False):5.3f}  "
              f"first four {median(name, True):6.0f} MB/s  rounds {[round(r) for r, _ in rounds]}")
    if not every:
        return
    names = list(results)
    print("round " + "".join(f"{name:>18s}" for name in names) + "   (MB/s, CPU s/GiB)")
    for k in range(len(results[names[0]])):
        print(f"{k + 1:5d} " + "".join(f"{results[name][k][0]:10.0f} {results[name][k][1] * per_gib:6.2f} "
                                      for name in names))
    refs = [ref for ref in ("bare_exec", "ssh") if ref in results]
    for name in (name for name in names if name not in ("bare_grpc", "bare_exec", "ssh")):
        for ref in refs:
            ratios = [a / b for (a, _), (b, _) in zip(results[name], results[ref], strict=True)]
            print(f"{name} / {ref}: min {min(ratios):.2f}, median first four {statistics.median(ratios[:4]):.2f}, "
                  f"last four {statistics.median(ratios[-4:]):.2f}, rounds {[round(r, 2) for r in ratios]}")


if __name__ == "__main__":
    sys.exit(main())
