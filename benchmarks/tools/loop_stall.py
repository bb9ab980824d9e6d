"""The engine's loop stalls while the journal compacts: a real `Engine` restores a journal of N
finished execs (all retained), runs `true` execs at a modest rate, and a ticker on its loop thread,
due every millisecond, records the largest gap between two of its calls: first for a while with
no compaction, then while the journal compacts over and over (its ratio is set to 1, so that every
flush after any churn finds the file worth rewriting; at the default ratio of 4 the file would have
to grow by 3 x N execs' records first), alternating, --rounds times. The longest garbage
collection of each phase is printed too: a stall of its own, whichever thread set it off.

    python -m benchmarks.tools.loop_stall [--execs 100000] [--seconds 5] [--rounds 3] [--router NAME=PYTHONPATH]...

With `--router NAME=DIR` (repeatable) it runs itself once per tree with PYTHONPATH=DIR (another build
of the package, a git worktree built in place, say) and prints each one's figures.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

from router.cli.serve import GC_THRESHOLD
from router.engine.core import Engine
from router.engine.execs import Exec
from router.engine.journal import COMPACT_RATIO, Journal
from router.engine.journal_format import Begun, Exited, Output, Spawned, Stdin
from router.engine.records import ExecSpec, ExitCause, ExitStatus
from router.engine.retention import Retention

from .stream_cpu import router_tree

TICK_SECS = 0.001
STALL_SECS = 0.010  # the target: no stall longer than this from compaction


class Ticker:
    """Calls itself every TICK_SECS on the loop, keeping the gaps between its calls since `reset`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self._stopped = False

    def tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now
        if not self._stopped:
            self._loop.call_later(TICK_SECS, self.tick)

    def reset(self) -> None:
        self.gaps = []

    def stop(self) -> None:
        self._stopped = True


class GcPauses:
    """The longest garbage collection since `reset` (a stall of its own, not the journal's)."""

    def __init__(self) -> None:
        self.largest = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.largest = max(self.largest, time.perf_counter() - self._start)

    def reset(self) -> None:
        self.largest = 0.0


def write_journal(path: pathlib.Path, execs: int) -> None:
    spec = ExecSpec(args=["true"], env={})
    now = time.time()
    j, _ = Journal.open(path, auto_compact=False)
    with j:
        for i in range(execs):
            e = f"old-{i:06d}"
            for r in (Begun.from_spec(e, bytes(32), spec, now), Spawned(e, 100 + i, False, now, "an-old-boot"),
                      Output(e, "stdout", [], 0, True), Output(e, "stderr", [], 0, True), Stdin(e, 0, True),
                      Exited(e, ExitStatus(code=0), now, ExitCause.EXITED)):
                j.append(r)
            if i % 1000 == 999:
                j.flush()


def finished(ex: Exec) -> bool:
    return not ex.running


def run_execs(engine: Engine, stop: threading.Event, rate: float) -> None:
    """`true` execs, one after another, about `rate` a second: the journal's churn."""
    spec = ExecSpec(args=["true"], env={})
    i = 0
    while not stop.is_set():
        ex = engine.begin_exec(f"new-{i}", bytes(32), spec)
        ex.wait_until(functools.partial(finished, ex), lambda: True, time.monotonic() + 10)
        i += 1
        stop.wait(1 / rate)


def measure(execs: int, seconds: float, rate: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="loop-stall-") as d:
        journal_path = pathlib.Path(d) / "journal"
        write_journal(journal_path, execs)
        engine = Engine(pathlib.Path(d) / "logs", segment_size=1 << 20, stdin_buffer_limit=1 << 20,
                        retention=Retention(execs=execs), journal_path=journal_path)
        t = time.perf_counter()
        engine.start()
        print(f"  restored {execs} execs in {time.perf_counter() - t:.2f} s", flush=True)
        # Reaching into the engine: nothing else triggers a compaction on demand.
        loop = engine.loop
        assert engine._journal is not None
        journal = engine._journal.journal
        ticker = Ticker(loop.loop)
        pauses = GcPauses()
        gc.set_threshold(GC_THRESHOLD)  # as `router serve` runs
        gc.callbacks.append(pauses)
        stop = threading.Event()
        churn = threading.Thread(target=run_execs, args=(engine, stop, rate))
        try:
            loop.run(ticker.tick)
            churn.start()
            time.sleep(1)  # the first execs, and whatever compaction the restore started
            largest = {False: 0.0, True: 0.0}
            over = {False: 0, True: 0}  # gaps over STALL_SECS
            for _ in range(rounds):
                for compacting in (False, True):
                    before = journal.compactions
                    loop.run(force, journal, compacting)
                    while getattr(journal, "compacting", False):  # one still in flight: it ends first
                        time.sleep(0.01)
                    loop.run(ticker.reset)
                    pauses.reset()
                    time.sleep(seconds)
                    gaps = sorted(loop.run(lambda: ticker.gaps))
                    largest[compacting] = max(largest[compacting], gaps[-1])
                    over[compacting] += sum(gap > STALL_SECS for gap in gaps)
                    print(f"  {'compacting' if compacting else 'no compaction'}: largest gap between 1 ms ticks "
                          f"{gaps[-1] * 1e3:.1f} ms, 99.9th percentile {gaps[len(gaps) * 999 // 1000] * 1e3:.1f} ms, "
                          f"median {gaps[len(gaps) // 2] * 1e3:.2f} ms ({len(gaps)} ticks, "
                          f"{sum(gap > STALL_SECS for gap in gaps)} over {STALL_SECS * 1e3:.0f} ms, "
                          f"{journal.compactions - before} compactions, journal {journal.size / 2**20:.1f} MiB, "
                          f"longest gc {pauses.largest * 1e3:.1f} ms)", flush=True)
            print(f"  over {rounds} rounds: largest gap {largest[False] * 1e3:.1f} ms without compaction, "
                  f"{largest[True] * 1e3:.1f} ms compacting; gaps over {STALL_SECS * 1e3:.0f} ms: {over[False]} "
                  f"without, {over[True]} compacting", flush=True)
        finally:
            stop.set()
            if churn.is_alive():
                churn.join()
            loop.run(ticker.stop)
            engine.stop()
            gc.callbacks.remove(pauses)


def force(journal: Journal, compacting: bool) -> None:
    """From the next flush on, compact whenever the file is over its live state at all, or never
    (the journal's own attributes, the same in the trees before and after compaction moved off
    the loop)."""
    journal._compact_ratio = 1.0 if compacting else COMPACT_RATIO
    journal._threshold = 0 if compacting else 1 << 62


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--execs", type=int, default=100_000, help="finished execs in the journal (all retained)")
    p.add_argument("--seconds", type=float, default=5.0, help="how long each phase is measured")
    p.add_argument("--rate", type=float, default=50.0, help="`true` execs a second meanwhile")
    p.add_argument("--rounds", type=int, default=3, help="each phase this many times, alternating")
    p.add_argument("--router", action="append", default=[], metavar="NAME=PYTHONPATH")
    args = p.parse_args(argv)
    if not args.router:
        measure(args.execs, args.seconds, args.rate, args.rounds)
        return 0
    root = pathlib.Path(__file__).resolve().parents[2]  # for `benchmarks`, whichever tree `router` comes from
    for spec in args.router:
        name, path = router_tree(spec, p)
        print(f"{name} ({path}):", flush=True)
        env = {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{root}"}
        subprocess.run([sys.executable, "-m", "benchmarks.tools.loop_stall", "--execs", str(args.execs),
                        "--seconds", str(args.seconds), "--rate", str(args.rate), "--rounds", str(args.rounds)],
                       env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
