"""The router against its references, side by side: a markdown table of ratios from the asv suite.

    python -m benchmarks.tools.compare              # run the suite's classes here, full sizes (long)
    python -m benchmarks.tools.compare --quick      # quick sizes (BENCH_SIZE=quick), a few minutes
    python -m benchmarks.tools.compare --size tiny --only drain,stream --rounds 2
    python -m benchmarks.tools.compare --from-asv   # the latest `asv run` results for this machine

Every figure comes from a track_* method of the suite (benchmarks/suite/bench_<area>.py); nothing
here measures, and nothing here says what the table holds: each bench module declares the sections
that show its classes (its `COMPARE`: groups of rows, each naming the track_* values it compares,
and how many alternating rounds a group runs; benchmarks/suite/rows.py). This module runs them and
renders them.

Run directly, each group of rows sets up the classes it compares (the router and every reference,
each in its own process where it is a server), calls their track_* methods in alternating rounds
(A B C A B C ...), tears them down and reports medians: these machines are shared and noisy, so
only ratios measured side by side mean anything. With --from-asv the table shows what asv
recorded, the ratio column being the suite's own *Ratio benchmark where there is one.

Sections, in the table's order: drain, stream, fanout, exec, seek, memory, recycle (stream rounds
through one server, logs in the state directory and on /dev/shm), journal (exec rate with and
without the journal), restart (time to serve a journal of 10,000 finished execs), images (snapshot
and mount against `cp -a` and `tar c | tar x`, and the store's size), tls (stream and exec rate over
TLS against plaintext), batch (fan-out and exec rate through BatchStart + Watch against local
asyncio, GNU parallel and posix_spawn) by default; log_kinds (the kinds of log weighed for the
router's) and log_kinds_steady (drains into recycled storage) on request.
"""
from __future__ import annotations

import _thread
import argparse
import contextlib
import dataclasses
import importlib
import os
import pathlib
import pkgutil
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

from ..suite.rows import Row, Section, V

# The table's order of the sections the suite declares; a section not named here comes after these.
ORDER = ("drain", "stream", "fanout", "exec", "seek", "memory", "recycle", "journal", "restart", "images", "tls",
         "batch", "log_kinds", "log_kinds_steady")


# The suite's modules read BENCH_SIZE and the other settings when they are imported (rows.py reads
# nothing): main() sets them from the command line first, then imports them.
def suite(module: str) -> Any:
    return importlib.import_module(f"benchmarks.suite.{module}")


def sections() -> dict[str, Section]:
    """Every section the suite's bench modules declare (their COMPARE), in the table's order."""
    found: dict[str, Section] = {}
    for info in pkgutil.iter_modules(importlib.import_module("benchmarks.suite").__path__):
        if not info.name.startswith("bench_"):
            continue
        for name, section in getattr(suite(info.name), "COMPARE", {}).items():
            if name in found:
                raise ValueError(f"section {name!r} declared twice (benchmarks/suite/{info.name}.py)")
            found[name] = section
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda item: rank.get(item[0], len(ORDER))))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    a = abs(v)
    if float(v).is_integer() and a < 1e6:  # counts: threads, descriptors
        return str(int(v))
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


# -- measuring by running the suite ------------------------------------------------------------------


@dataclasses.dataclass
class Group:
    """Rows measured together (one setup of every class they show), and what was measured."""

    rows: list[Row]
    samples: dict[V, list[float]] = dataclasses.field(default_factory=dict)
    notes: dict[V, str] = dataclasses.field(default_factory=dict)  # why a value is missing
    # Series a class measured inside one setup (StreamRounds' rounds): name -> (values, unit).
    series: dict[str, tuple[list[float], str]] = dataclasses.field(default_factory=dict)

    def value(self, v: V | None) -> float | None:
        from ..suite.alternating import median

        return median(self.samples.get(v, [])) if v is not None else None

    def cell(self, v: V | None) -> str:
        if v is None:
            return "—"
        x = self.value(v)
        return f"{fmt(x)} {v.unit}" if x is not None else self.notes.get(v, "n/a")


@dataclasses.dataclass
class Report:
    groups: list[Group] = dataclasses.field(default_factory=list)
    timings: list[tuple[str, float, str]] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)
            log("PROBLEM: " + text.splitlines()[0])

    def failed(self) -> bool:
        return bool(self.problems) or any(note.startswith("failed") for g in self.groups for note in g.notes.values())


def measured(rows: Sequence[Row]) -> list[V]:
    """The values a group of rows shows, each once, in order (the alternation's A B C)."""
    out: list[V] = []
    for r in rows:
        for v in (r.router, r.reference):
            if v is not None and v not in out:
                out.append(v)
    return out


def run_group(g: Group, rounds: int, rep: Report) -> None:
    """Set up every value's class, alternate their track_* methods for `rounds`, tear down."""
    from ..suite.alternating import Measure, Sides, alternate

    sides = Sides()
    measures: dict[V, Measure] = {}
    try:
        for v in measured(g.rows):
            try:
                measures[v] = sides.measure(v.cls, v.params, v.method)
            except NotImplementedError as e:  # a deliberate skip, as asv reports it
                g.notes[v] = f"skipped: {e}"
            except Exception as e:
                g.notes[v] = f"failed: {type(e).__name__}"
                rep.problem(f"{v.label} setup: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")

        def failed(v: V, e: Exception) -> None:
            g.notes[v] = f"failed: {type(e).__name__}"
            rep.problem(f"{v.label}: {type(e).__name__}: {e}")

        for v, samples in alternate(measures, rounds, on_error=failed).items():
            g.samples[v] = samples
            log(f"  {v.label}: {', '.join(fmt(x) for x in samples)} {v.unit}")
        for obj, args in sides.each():
            if hasattr(obj, "series_table"):
                g.series.update(obj.series_table(*args))
    finally:
        for err in sides.close():
            rep.problem(err)


def from_asv(g: Group, results: Any) -> None:
    """Fill the group with what asv recorded for its rows' values."""
    from ..suite.sshd import openssh_missing
    from .asv_results import is_skip

    for r in g.rows:
        for v in (r.router, r.reference, r.asv_ratio):
            if v is None or v in g.samples or v in g.notes:
                continue
            try:
                x = results.value(v.asv_name, v.params)
            except KeyError:
                g.notes[v] = "not in this asv run"
                continue
            if x is None:
                g.notes[v] = "failed in the asv run"
            elif is_skip(x):
                why = openssh_missing() if "ssh" in v.params else None
                g.notes[v] = f"skipped: {why}" if why else "skipped in the asv run"
            else:
                g.samples[v] = [float(x)]


# -- the table ----------------------------------------------------------------------------------------


def render(rep: Report, header: Sequence[str], asv: bool = False) -> str:
    out = [*header, "", "| measure | router | reference | ratio | target | met |",
           "| --- | --- | --- | --- | --- | --- |"]
    for g in rep.groups:
        out += [row_line(g, r) for r in g.rows]
    out += ["", "Every value (median; every round in order):" if not asv else "Every value asv recorded:", "",
            "| value | unit | median | min - max | rounds |", "| --- | --- | --- | --- | --- |"]
    for g in rep.groups:
        out += [f"| {v.label} | {v.unit} | {fmt(g.value(v))} | {spread(samples)} | "
                f"{', '.join(fmt(x) for x in samples)} |" for v, samples in g.samples.items()]
    series = [(name, values, unit) for g in rep.groups for name, (values, unit) in g.series.items()]
    if series:
        out += ["", "Series measured inside one setup (every round in order):", "",
                "| series | unit | median | min - max | rounds |", "| --- | --- | --- | --- | --- |"]
        out += [f"| {name} | {unit} | {fmt(statistics.median(values))} | {spread(values)} | "
                f"{', '.join(fmt(x) for x in values)} |" for name, values, unit in series if values]
    if rep.timings:
        out += ["", "| section | seconds | status |", "| --- | --- | --- |"]
        out += [f"| {name} | {secs:.1f} | {status} |" for name, secs, status in rep.timings]
    if rep.problems:
        out += ["", "Problems:", ""] + [f"- {p}" for p in rep.problems]
    return "\n".join(out)


def spread(samples: Sequence[float]) -> str:
    return f"{fmt(min(samples))} - {fmt(max(samples))}" if samples else "n/a"


def row_line(g: Group, r: Row) -> str:
    a, b = g.value(r.router), g.value(r.reference)
    ratio = g.value(r.asv_ratio)
    if ratio is None and a is not None and b:
        ratio = a / b
    if r.per is not None and a is not None and b is not None:
        ratio_cell = f"{fmt((a - b) / r.per[0])} {r.per[1]}"
    elif r.reference is not None and b is None:
        ratio_cell = "skipped" if g.notes.get(r.reference, "").startswith("skipped") else "n/a"
    else:
        ratio_cell = fmt(ratio) if r.reference is not None else "—"
    checked = ratio if r.reference is not None else a
    met = "—" if r.target is None or checked is None else ("yes" if r.target.met(checked) else "**no**")
    return (f"| {r.measure} | {g.cell(r.router)} | {g.cell(r.reference)} | {ratio_cell} | "
            f"{r.target or '—'} | {met} |")


def header(args: argparse.Namespace, results: Any) -> list[str]:
    import grpc

    common = suite("common")

    def git(*a: str) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(["git", *a], capture_output=True, text=True, timeout=10,
                                  cwd=pathlib.Path(__file__).resolve().parents[2]).stdout.strip()
        return "?"

    cmd = shlex.join(["python", "-m", "benchmarks.tools.compare", *sys.argv[1:]])
    lines = ["# router vs references", "", f"command: `{cmd}`", ""]
    if results is not None:
        lines += [f"- from asv results {results.path} (commit {results.commit[:8]})"]
    else:
        dirty = git("status", "--short", "--", "src").replace("\n", ", ")
        lines += [f"- commit {git('rev-parse', '--short', 'HEAD')} ({git('log', '-1', '--format=%s')})"
                  + (f"; uncommitted changes under src/: {dirty}" if dirty else ""),
                  f"- BENCH_SIZE={common.SIZE_NAME}; router `--server-mode {common.SERVER_MODE}`; state and logs "
                  f"under {common.LOG_ROOT or common.TMP}"]
    lines += [f"- {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
              f"grpcio {grpc.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}",
              "- ratio = router / reference (rates: higher is better; time to first byte, the images' seconds and "
              "sizes: lower is better); "
              + ("router and reference are asv's separate runs of each; the ratio is the suite's *Ratio benchmark "
                 "(both measured alternately in one setup) where there is one" if results is not None
                 else "medians of alternating rounds")]
    return lines


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tools.compare", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--size", choices=("tiny", "quick", "full"),
                   help="the suite's sizes (sets BENCH_SIZE; default: BENCH_SIZE, else full)")
    p.add_argument("--quick", action="store_true", help="same as --size quick")
    p.add_argument("--only", help="comma-separated sections (below); default: all but log_kinds and log_kinds_steady")
    p.add_argument("--rounds", type=int, help="alternating rounds for every section (default: per section and size)")
    p.add_argument("--server-mode", choices=("aio", "threads"), help="the router's --server-mode (BENCH_SERVER_MODE)")
    p.add_argument("--tmp", help="where state directories, logs and drain files go (BENCH_TMP; default /tmp)")
    p.add_argument("--log-root", help="give each router a log directory under this one, say /dev/shm (BENCH_LOG_ROOT)")
    p.add_argument("--from-asv", nargs="?", const="latest", metavar="RESULTS_JSON",
                   help="render asv's results instead of measuring: the latest file for this machine, or this one")
    p.add_argument("--max-seconds", type=float, default=7200, help="watchdog: interrupt the whole run after this long")
    args = p.parse_args(argv)
    if args.quick:
        args.size = "quick"
    args.only = [s.strip() for s in args.only.split(",")] if args.only else None
    return args


def configure(args: argparse.Namespace) -> None:
    """Settings for the suite, before it is imported."""
    for env, value in (("BENCH_SIZE", args.size), ("BENCH_SERVER_MODE", args.server_mode),
                       ("BENCH_TMP", args.tmp), ("BENCH_LOG_ROOT", args.log_root)):
        if value:
            os.environ[env] = value


def rounds_for(section: Section, override: int | None, size: Any) -> int:
    if section.rounds is None:
        return 1  # its tracks read what one setup recorded (rounds alternated inside it, if any)
    return override or size.rounds[section.rounds]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure(args)
    common = suite("common")
    declared = sections()
    chosen = args.only or [name for name, section in declared.items() if section.default]
    unknown = [name for name in chosen if name not in declared]
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(declared)}", file=sys.stderr)
        return 2
    results = None
    if args.from_asv:
        from . import asv_results

        try:
            path = asv_results.latest_file() if args.from_asv == "latest" else pathlib.Path(args.from_asv)
            results = asv_results.Results(path)
        except (OSError, ValueError, KeyError) as e:
            print(f"cannot read asv's results: {e}", file=sys.stderr)
            return 2

        def axis(cls: type[Any]) -> list[Any]:  # asv's parameters, whatever BENCH_SIZE it ran with
            prefix = V(cls, (), "").asv_name  # "bench_x.Cls."
            name = next((n for n in results.params if n.startswith(prefix)), None)
            return results.params[name][0] if name else list(cls.params[0])
    else:
        def axis(cls: type[Any]) -> list[Any]:
            return list(cls.params[0])

    rep = Report()
    signal.signal(signal.SIGTERM, lambda signum, frame: _thread.interrupt_main())
    watchdog = threading.Timer(args.max_seconds, _thread.interrupt_main)
    watchdog.daemon = True
    watchdog.start()
    status = 0
    try:
        for section in chosen:
            t0 = time.perf_counter()
            outcome = "done"
            try:
                for rows in declared[section].rows(axis):
                    g = Group(rows)
                    rep.groups.append(g)
                    if results is not None:
                        from_asv(g, results)
                    else:
                        rounds = rounds_for(declared[section], args.rounds, common.SIZE)
                        log(f"{section}: {len(measured(rows))} values, {rounds} rounds ...")
                        run_group(g, rounds, rep)
            except KeyboardInterrupt:
                rep.problem(f"{section}: interrupted (watchdog after {args.max_seconds:.0f} s, or a signal)")
                rep.timings.append((section, time.perf_counter() - t0, "interrupted"))
                status = 130
                break
            except Exception as e:
                outcome = f"failed: {type(e).__name__}: {e}"
                rep.problem(f"{section}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")
            rep.timings.append((section, time.perf_counter() - t0, outcome))
    finally:
        watchdog.cancel()
    if rep.failed():
        status = status or 1
    print(render(rep, header(args, results), asv=results is not None), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
