"""The router against its references, side by side: a markdown table of ratios from the asv suite.

    python -m benchmarks.tools.compare              # run the suite's classes here, full sizes (long)
    python -m benchmarks.tools.compare --quick      # quick sizes (BENCH_SIZE=quick), a few minutes
    python -m benchmarks.tools.compare --size tiny --only drain,stream --rounds 2
    python -m benchmarks.tools.compare --from-asv   # the latest `asv run` results for this machine

Every figure comes from a track_* method of the suite (benchmarks/suite/bench_<area>.py); nothing
here measures.
Run directly, each section sets up the classes it compares (the router and every reference, each
in its own process where it is a server), calls their track_* methods in alternating rounds
(A B C A B C ...), tears them down and reports medians: these machines are shared and noisy, so
only ratios measured side by side mean anything. With --from-asv the table shows what asv
recorded, the ratio column being the suite's own *Ratio benchmark where there is one.

Sections: drain, stream, fanout, exec, seek, memory, recycle, journal, restart, images (the default),
and log_kinds, log_kinds_steady (on request). recycle (issue 7: stream rounds through one server, logs
in the state directory and on /dev/shm), journal (exec rate with and without the journal), restart
(time to serve a journal of 10,000 finished execs), images (issue 8: snapshot and mount against
`cp -a` and `tar c | tar x`, and the store's size), batch (issue 10: fan-out and exec rate through
BatchStart + Watch against local asyncio, GNU parallel and posix_spawn), log_kinds_steady (drains into recycled storage).
"""
from __future__ import annotations

import _thread
import argparse
import contextlib
import dataclasses
import importlib
import os
import pathlib
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

# The suite reads BENCH_SIZE and the other settings when it is imported: main() sets them from the
# command line first, then imports it.
SECTIONS = ("drain", "stream", "fanout", "exec", "seek", "memory", "recycle", "journal", "restart", "images",
            "tls", "batch", "log_kinds", "log_kinds_steady")
DEFAULT_SECTIONS = SECTIONS[:-2]


def suite(module: str) -> Any:
    return importlib.import_module(f"benchmarks.suite.{module}")


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


# -- what the table shows --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class V:
    """One value of the suite: `cls().method(*params)` after `setup(*params)`."""

    cls: type
    params: tuple[Any, ...]
    method: str = "track_rate"

    @property
    def asv_name(self) -> str:
        return f"{self.cls.__module__.rsplit('.', 1)[-1]}.{self.cls.__name__}.{self.method}"

    @property
    def label(self) -> str:
        return f"{self.cls.__name__}.{self.method}({', '.join(map(repr, self.params))})"

    @property
    def unit(self) -> str:
        return getattr(getattr(self.cls, self.method), "unit", "")


@dataclasses.dataclass(frozen=True)
class Row:
    """router vs reference; ratio = router / reference; the target applies to the ratio, or to the
    router's value when there is no reference. `asv_ratio` is the suite's own side-by-side ratio.
    With `per`, the ratio column shows (router - reference) / per instead."""

    measure: str
    router: V
    reference: V | None = None
    target: Any = None
    asv_ratio: V | None = None
    per: tuple[int, str] | None = None


def vs(measure: str, ratio_cls: type, fixed: tuple[Any, ...], reference: str) -> Row:
    """A row for one of the suite's *Ratio classes: its subject's router side against `reference`."""
    subject = ratio_cls.subject
    return Row(measure, V(subject, (*fixed, ratio_cls.router_side)), V(subject, (*fixed, reference)),
               ratio_cls.target(*fixed, reference), V(ratio_cls, (*fixed, reference), "track_ratio"))


Axis = Callable[[type], list[Any]]  # a class's first parameter's values (this run's, or asv's)


def drain_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_drain")
    return [[vs(f"drain {human(size)} from one pipe: `_fastio` vs `os.readv` into a reused 1 MiB buffer (ceiling)",
                m.DrainRatio, (size,), "readv"),
             vs(f"drain {human(size)} from one pipe: `_fastio` vs readv + `os.pwrite` into 32 MiB segment files "
                "(ceiling for a log that keeps its data)", m.DrainRatio, (size,), "readv_pwrite")]
            for size in axis(m.Drain)]


def stream_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_stream")
    return [[vs(f"one exec's stdout, {human(size)}: router vs bare grpcio server (throughput)",
                m.StreamRatio, (size,), "bare_grpc"),
             vs(f"one exec's stdout, {human(size)}: router vs OpenSSH `ssh host head` (throughput)",
                m.StreamRatio, (size,), "ssh")]
            for size in axis(m.Stream)]


def fanout_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_fanout")
    return [[vs(f"fan-out N={n} x 64 KiB, execs/s (= wall time local/router): router vs local subprocesses",
                m.FanoutRatio, (n,), "local"),
             vs(f"fan-out N={n}: router vs ssh ControlMaster", m.FanoutRatio, (n,), "ssh")]
            for n in axis(m.Fanout)]


def exec_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_exec")
    groups = []
    for k in axis(m.ExecRate):
        how = "sequential" if k == 1 else f"{k} in flight"
        rows = [vs(f"exec rate, {how}, start+wait of `true`: router vs local posix_spawn", m.ExecRatio, (k,), "local"),
                vs(f"exec rate, {how}: router vs ssh ControlMaster", m.ExecRatio, (k,), "ssh")]
        if k > 1:  # the floor: an exec is two calls (start, wait)
            rows += [Row(f"exec rate, {how}: router (2 calls per exec) vs empty unary calls to a bare "
                         f"grpcio server ({mode})", V(m.ExecRate, (k, "router")), V(m.RpcFloor, (mode,)))
                     for mode in axis(m.RpcFloor)]
        groups.append(rows)
    return groups


def tracks_of(cls: type, *params: Any) -> Callable[[str], V]:
    """method -> V(cls, params, method): several tracks of one setup."""
    return lambda method: V(cls, params, method)


def seek_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_seek")
    return [[Row(f"time to first byte of a finished {human(size)} log: at 97.5 % / at offset 0",
                 V(m.Seek, (size,), "track_ttfb_end"), V(m.Seek, (size,), "track_ttfb_start"), m.Seek.target,
                 V(m.Seek, (size,), "track_end_over_start"))]
            for size in axis(m.Seek)]


def memory_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_memory")
    groups = []
    for size in axis(m.ServerMemory):
        mem = tracks_of(m.ServerMemory, size)
        groups.append([
            Row(f"server VmRSS after one exec streamed {human(size)} to a reader (reference: before)",
                mem("track_rss_after"), mem("track_rss_before")),
            Row(f"server RSS growth while streaming {human(size)}: peak (VmHWM) minus before",
                mem("track_rss_growth"), None, m.ServerMemory.growth_target),
            Row("server peak RSS (VmHWM) during that stream (reference: VmRSS before)",
                mem("track_peak_rss"), mem("track_rss_before")),
        ])
    n = max(axis(m.IdleExecs))
    groups.append([Row(f"server {what} with {n} idle execs held open (reference: no execs)",
                       V(m.IdleExecs, (n,), method), V(m.IdleExecs, (0,), method),
                       per=(n, "per exec") if method == "track_fds" else None)
                   for what, method in (("VmRSS", "track_rss"), ("threads", "track_threads"),
                                        ("open descriptors", "track_fds"))])
    return groups


def log_kinds_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_drain")
    groups = []
    for size in axis(m.LogKind):
        ref = V(m.Drain, (size, "readv_pwrite"))
        kinds = [V(m.Drain, (size, k)) for k in ("readv", "fastio")] + [V(m.LogKind, (size, k))
                                                                        for k in m.LogKind.params[1]]
        groups.append([Row(f"drain {human(size)} from one pipe: {v.params[1]} vs readv + pwrite (the router's kind)",
                           v, ref) for v in kinds])
    return groups


def recycle_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_stream")
    groups = []
    for size in axis(m.StreamRounds):
        sr = tracks_of(m.StreamRounds, size)
        rounds, _ = suite("common").SIZE.recycle
        k = min(m.LAST, rounds)
        flags = ("default flags" if not m.retain_args(size)
                 else f"`{' '.join(m.retain_args(size))}`, 1.25 x a round, so that slots recycle within the run")
        what = f"{rounds} rounds of one exec's stdout, {human(size)} each, through one router ({flags})"
        groups.append([
            Row(f"{what}: router vs bare grpcio server, medians of the last {k} rounds",
                sr("track_router_last"), sr("track_bare_last"), m.StreamRounds.target_over_bare,
                sr("track_router_over_bare")),
            Row(f"{what}: router vs the bare grpcio server streaming the same child's pipe as it reads it "
                f"(no log, journal or offsets), last {k} rounds",
                sr("track_router_last"), sr("track_bare_exec_last"), None, sr("track_router_over_bare_exec")),
            Row(f"{what}: router's last {k} rounds vs its first {k}",
                sr("track_router_last"), sr("track_router_first"), m.StreamRounds.target_last_over_first,
                sr("track_last_over_first")),
            Row(f"the same rounds, `--log-dir` on /dev/shm (tmpfs): last {k} vs first {k}",
                sr("track_shm_last"), sr("track_shm_first")),
            Row(f"where logs live: `--log-dir` /dev/shm (tmpfs) vs the state directory (ext4), last {k} "
                "rounds", sr("track_shm_last"), sr("track_router_last"), None, sr("track_shm_over_state")),
            Row("arena files' disk after every round (allocated blocks): state directory; reference: /dev/shm",
                sr("track_arena_mib"), sr("track_shm_arena_mib")),
        ])
    return groups


def journal_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_exec")
    return [[vs(f"exec rate, {'sequential' if k == 1 else f'{k} in flight'}, start+wait of `true`: journal on "
                "(default) vs `--no-journal`", m.JournalRatio, (k,), "router_no_journal")]
            for k in axis(m.JournalRatio)]


def restart_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_restart")
    *_, n = axis(m.Restart)
    secs = V(m.Restart, (n,), "track_seconds")
    return [[Row(f"restart: `router serve` start to the first TaskExecPoll answered for the newest of {n:,} "
                 "journaled finished execs", secs, None, m.Restart.target),
             Row(f"restart with {n:,} journaled execs vs with 1", secs, V(m.Restart, (1,), "track_seconds"))]]


def images_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_images")
    files, big = suite("common").SIZE.images
    rows = []  # one group: the class's setup_cache measures both trees
    for tree in axis(m.Images):
        what = f"{files:,} files of 2-6 KiB" if tree == "files" else f"one {human(big)} file"
        ov, cp = tracks_of(m.Images, tree, "overlay"), tracks_of(m.Images, tree, "copy")
        rows += [Row(f"{what}: first snapshot (`--mount-method overlay`, which also builds the metadata tree) vs "
                     "`cp -a`", ov("track_snapshot"), cp("track_cp")),
                 Row(f"{what}: first snapshot (overlay) vs `tar c` piped into `tar x`", ov("track_snapshot"),
                     cp("track_tar")),
                 Row(f"{what}: first snapshot (`--mount-method copy`) vs `cp -a`", cp("track_snapshot"),
                     cp("track_cp"))]
        rows += [Row(f"{what}: second snapshot of the unchanged tree vs the first ({method})",
                     t("track_snapshot_again"), t("track_snapshot"), m.Images.target_again_over_first)
                 for method, t in (("overlay", ov), ("copy", cp))]
        for method, t in (("overlay", ov), ("copy", cp)):
            target = m.Images.target_mount_over_cp[method] if tree == "files" else None
            rows += [Row(f"{what}: mount ({method}) vs `cp -a`", t("track_mount"), cp("track_cp"), target),
                     Row(f"{what}: mount ({method}) vs `tar c` piped into `tar x`", t("track_mount"), cp("track_tar"))]
        rows += [Row(f"{what}: the store's growth over two snapshots ({method}; allocated blocks under "
                     "STATE_DIR/images) vs the tree's (du)", t("track_store_mib"), cp("track_tree_mib"),
                     m.Images.target_store_over_tree)
                 for method, t in (("overlay", ov), ("copy", cp))]
    return [rows]


def batch_rows(axis: Axis) -> list[list[Row]]:
    m, fanout, exec_ = suite("bench_batch"), suite("bench_fanout"), suite("bench_exec")
    groups = [[vs(f"fan-out N={n} x 64 KiB through BatchStart + one Watch: router vs local asyncio subprocesses",
                  m.BatchFanoutRatio, (n,), "local"),
               vs(f"fan-out N={n}: BatchStart + Watch vs GNU parallel -j N", m.BatchFanoutRatio, (n,), "parallel"),
               Row(f"fan-out N={n}: `router batch -j N` (the CLI, output to its stdout) vs local asyncio subprocesses",
                   V(m.BatchFanout, (n, "cli")), V(m.BatchFanout, (n, "local")), m.BatchFanoutRatio.target(n, "local")),
               Row(f"fan-out N={n}: `router batch -j N` vs local asyncio subprocesses of the same line through `sh -c`",
                   V(m.BatchFanout, (n, "cli")), V(m.BatchFanout, (n, "local_sh")), m.BatchFanoutRatio.target(n, "local")),
               Row(f"fan-out N={n}: `router batch -j N` vs GNU parallel -j N",
                   V(m.BatchFanout, (n, "cli")), V(m.BatchFanout, (n, "parallel"))),
               Row(f"fan-out N={n}: BatchStart + Watch vs Modal's calls (start, read, wait per exec)",
                   V(m.BatchFanout, (n, "batch")), V(fanout.Fanout, (n, "router")))]
              for n in axis(m.BatchFanout)]
    groups.append([vs("exec rate of `true` through BatchStart + Watch vs local posix_spawn (64 threads)",
                      m.BatchExecRatio, (), "local"),
                   Row("exec rate of `true`: BatchStart + Watch vs Modal's calls (start + wait, 64 in flight)",
                       V(m.BatchExecRate, ("batch",)), V(exec_.ExecRate, (exec_.IN_FLIGHT, "router")))])
    return groups


def tls_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_tls")
    groups = []
    for size in axis(m.TlsRounds):
        t = tracks_of(m.TlsRounds, size)
        groups.append([
            Row(f"one exec's stdout, {human(size)}, over TLS vs plaintext (a router each, alternating rounds)",
                t("track_stream_tls"), t("track_stream_plain"), None, t("track_stream_ratio")),
            Row("exec rate, sequential start+wait of `true`, over TLS vs plaintext",
                t("track_exec_tls"), t("track_exec_plain"), None, t("track_exec_ratio")),
        ])
    return groups


def log_kinds_steady_rows(axis: Axis) -> list[list[Row]]:
    m = suite("bench_drain")
    groups = []
    for size in axis(m.LogKindSteady):
        ref = V(m.LogKindSteady, (size, "readv_pwrite"))
        rows = [Row(f"drain {human(size)} into recycled storage (written once before): {k} vs readv + pwrite",
                    V(m.LogKindSteady, (size, k)), ref) for k in m.LogKindSteady.params[1] if k != "readv_pwrite"]
        rows.append(Row(f"drain {human(size)}: readv + pwrite into recycled storage vs into fresh files",
                        ref, V(m.Drain, (size, "readv_pwrite"))))
        groups.append(rows)
    return groups


BUILDERS: dict[str, Callable[[Axis], list[list[Row]]]] = {
    "drain": drain_rows, "stream": stream_rows, "fanout": fanout_rows, "exec": exec_rows,
    "seek": seek_rows, "memory": memory_rows, "recycle": recycle_rows, "journal": journal_rows,
    "restart": restart_rows, "images": images_rows, "tls": tls_rows, "batch": batch_rows, "log_kinds": log_kinds_rows,
    "log_kinds_steady": log_kinds_steady_rows,
}


def human(n: int) -> str:
    return suite("common").human_size(n)


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
    from ..suite.alternating import Sides, alternate

    sides = Sides()
    measures = {}
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
        out += [f"| {v.label} | {v.unit} | {fmt(g.value(v))} | {spread(samples)} | {', '.join(fmt(x) for x in samples)} |"
                for v, samples in g.samples.items()]
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
    p.add_argument("--only", help=f"comma-separated sections ({','.join(SECTIONS)}); default all but log_kinds")
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
    args.sections = [s.strip() for s in args.only.split(",")] if args.only else list(DEFAULT_SECTIONS)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def configure(args: argparse.Namespace) -> None:
    """Settings for the suite, before it is imported."""
    for env, value in (("BENCH_SIZE", args.size), ("BENCH_SERVER_MODE", args.server_mode),
                       ("BENCH_TMP", args.tmp), ("BENCH_LOG_ROOT", args.log_root)):
        if value:
            os.environ[env] = value


def rounds_for(section: str, override: int | None, size: Any) -> int:
    if section in ("memory", "recycle", "images", "tls"):
        return 1  # their tracks read what one setup recorded (recycle, images, tls: their rounds are inside)
    return override or size.rounds["drain" if section.startswith("log_kinds") else section]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure(args)
    common = suite("common")
    results = None
    if args.from_asv:
        from . import asv_results

        try:
            path = asv_results.latest_file() if args.from_asv == "latest" else pathlib.Path(args.from_asv)
            results = asv_results.Results(path)
        except (OSError, ValueError, KeyError) as e:
            print(f"cannot read asv's results: {e}", file=sys.stderr)
            return 2

        def axis(cls: type) -> list[Any]:  # asv's parameters, whatever BENCH_SIZE it ran with
            prefix = V(cls, (), "").asv_name  # "bench_x.Cls."
            name = next((n for n in results.params if n.startswith(prefix)), None)
            return results.params[name][0] if name else list(cls.params[0])
    else:
        def axis(cls: type) -> list[Any]:
            return list(cls.params[0])

    rep = Report()
    signal.signal(signal.SIGTERM, lambda signum, frame: _thread.interrupt_main())
    watchdog = threading.Timer(args.max_seconds, _thread.interrupt_main)
    watchdog.daemon = True
    watchdog.start()
    status = 0
    try:
        for section in args.sections:
            t0 = time.perf_counter()
            outcome = "done"
            try:
                for rows in BUILDERS[section](axis):
                    g = Group(rows)
                    rep.groups.append(g)
                    if results is not None:
                        from_asv(g, results)
                    else:
                        rounds = rounds_for(section, args.rounds, common.SIZE)
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
