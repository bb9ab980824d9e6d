"""Routers built from different source trees side by side, for the A/B tools (ab_trees, call_path):
`--tree NAME=SRC` and `--flags NAME=FLAGS`, each router started with its channels warmed, the
order of a round's trees, and a round's rate with the CPU it cost each process."""
from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable

from ..suite.common import RouterProcess, cpu_seconds, router_from
from ..suite.workloads import AioSide, Outcome


def add_tree_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """--tree (required unless there is a `default`, e.g. "head=src") and --flags."""
    parser.add_argument("--tree", action="append", required=default is None, metavar="NAME=SRC",
                        help="a name and a source tree (its src/ directory, built); repeat"
                             + (f" (default: {default})" if default else ""))
    parser.add_argument("--flags", action="append", default=[], metavar="NAME=FLAGS",
                        help="`router serve` flags (split on spaces) for the tree named NAME; repeat")
    parser.set_defaults(default_tree=default)


def started(stack: contextlib.ExitStack, args: argparse.Namespace,
            warm: Callable[[AioSide, object], object]) -> dict[str, tuple[RouterProcess, AioSide]]:
    """A router per --tree (with its --flags) and a client side for it, `warm(side, metadata)` run
    once on each (channels, first spawns); by name, in the order given."""
    flags = {f.split("=", 1)[0]: f.split("=", 1)[-1].split() for f in args.flags}
    routers = {}
    for tree in args.tree or [args.default_tree]:
        name, src = tree.split("=", 1)[0], tree.split("=", 1)[-1]
        router = stack.enter_context(router_from(src, args=flags.get(name, ())))
        side = stack.enter_context(AioSide(router.target))
        warm(side, router.metadata)
        routers[name] = (router, side)
    return routers


def rotation(names: list[str], number: int) -> list[str]:
    """Round `number`'s order: each round starts with the next tree, so that no tree always runs
    right after another (and after what it left running) or first."""
    k = number % len(names)
    return names[k:] + names[:k]


def client_cpu() -> tuple[float, float]:
    """CPU seconds of this process (the client, or local posix_spawn's parent) and of its reaped children."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def measured(pid: int, n: int, run: Callable[..., Outcome], *args: object) -> tuple[float, float, float, float]:
    """Of `run(*args)`: its rate, and CPU microseconds per item of the server `pid` (children excluded),
    of the server's children and of this process (the client)."""
    before, kids, (client, _) = cpu_seconds(pid, children=False), cpu_seconds(pid, own=False), client_cpu()
    rate = run(*args).checked().rate
    return (rate, (cpu_seconds(pid, children=False) - before) * 1e6 / n,
            (cpu_seconds(pid, own=False) - kids) * 1e6 / n, (client_cpu()[0] - client) * 1e6 / n)
