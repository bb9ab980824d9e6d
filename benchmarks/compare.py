"""The router against references, in one command: prints a markdown table of ratios.

    python -m benchmarks.compare                      # full sizes (several minutes, ~12 GiB of /tmp writes)
    python -m benchmarks.compare --quick              # small sizes, a smoke run (< 2 minutes)
    python -m benchmarks.compare --only drain,stream --rounds 5

Every reference is started by this script (a bare grpcio server, an sshd on a loopback port with
throwaway keys, local subprocesses); every server runs in its own process. Each section measures its
variants in alternating rounds (A B C A B C ...) and reports medians: these machines are shared and
noisy, so only ratios measured side by side mean anything. Every wait has a deadline, every child is
stopped in a finally block, and a watchdog interrupts the whole run after --max-seconds.

Sections: drain, stream, fanout, exec, seek, memory (see the issue and DESIGN.md section 5).
"""
from __future__ import annotations

import _thread
import argparse
import asyncio
import collections
import contextlib
import dataclasses
import os
import pathlib
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from . import common as c
from . import workloads as w
from .bare_grpc import METHOD as BARE_METHOD

SECTIONS = ("drain", "stream", "fanout", "exec", "seek", "memory")

FULL = dict(drain_size="2G", stream_size="1G", fanout="256,1024,4096", fanout_size="65536", fanout_ssh="256",
            exec_seq=200, exec_total=1000, exec_inflight=64, ssh_seq=100, ssh_total=500,
            seek_size="4G", seek_rounds=31, memory_size="4G", idle=4096,
            drain_rounds=5, stream_rounds=3, fanout_rounds=3, exec_rounds=5, max_seconds=5400)
QUICK = dict(drain_size="64M", stream_size="128M", fanout="64,256", fanout_size="65536", fanout_ssh="64",
             exec_seq=50, exec_total=200, exec_inflight=64, ssh_seq=20, ssh_total=100,
             seek_size="256M", seek_rounds=15, memory_size="256M", idle=256,
             drain_rounds=3, stream_rounds=3, fanout_rounds=2, exec_rounds=3, max_seconds=600)
FANOUT_TARGET_N = 1024
# Targets from the performance issue: ratios of one run of this script.
DRAIN_TARGET = 0.9  # vs readv + pwrite, the ceiling for a log that keeps its data
STREAM_BARE_TARGET = 0.7
STREAM_SSH_TARGET = 1.5
FANOUT_TARGET = 0.5
EXEC_TARGET = 0.5  # 64 in flight vs local posix_spawn
SEEK_TARGET = 1.2
RSS_GROWTH_TARGET_MIB = 64


def at_least(target: float) -> dict[str, Any]:
    return {"target": f">= {target}", "check": lambda r: r >= target}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mbps(nbytes: int, secs: float) -> float:
    return nbytes / secs / 1e6


# -- the report ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    measure: str
    router: str
    reference: str
    ratio: str = "—"
    target: str = "—"
    met: str = "—"


@dataclasses.dataclass
class Series:
    name: str
    unit: str
    samples: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.series: dict[str, Series] = {}
        self.facts: list[str] = []
        self.timings: list[tuple[str, float, str]] = []
        self.problems: list[str] = []

    def add(self, name: str, unit: str, value: float) -> None:
        self.series.setdefault(name, Series(name, unit)).samples.append(value)

    def median(self, name: str) -> float | None:
        s = self.series.get(name)
        return s.median if s else None

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)
            log("PROBLEM: " + text.splitlines()[0])

    def render(self, header: Sequence[str]) -> str:
        out = list(header)
        out += ["", "| measure | router | reference | ratio | target | met |", "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {r.measure} | {r.router} | {r.reference} | {r.ratio} | {r.target} | {r.met} |" for r in self.rows]
        out += ["", "Raw series (median of the rounds; every round in order):", "",
                "| series | unit | median | rounds |", "| --- | --- | --- | --- |"]
        for s in self.series.values():
            out.append(f"| {s.name} | {s.unit} | {fmt(s.median)} | {', '.join(fmt(v) for v in s.samples)} |")
        if self.facts:
            out += ["", "Facts measured along the way:", ""] + [f"- {f}" for f in self.facts]
        out += ["", "| section | seconds | status |", "| --- | --- | --- |"]
        out += [f"| {name} | {secs:.1f} | {status} |" for name, secs, status in self.timings]
        if self.problems:
            out += ["", "Problems:", ""] + [f"- {p}" for p in self.problems]
        return "\n".join(out)


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def ratio_row(measure: str, rep: Report, router: str, reference: str, unit: str, *, invert: bool = False,
              target: str = "—", check: Callable[[float], bool] | None = None) -> None:
    """A table row from two series' medians. ratio = router/reference, or reference/router if `invert`."""
    a, b = rep.median(router), rep.median(reference)
    ratio = None
    if a is not None and b is not None and a > 0 and b > 0:
        ratio = b / a if invert else a / b
    met = "—" if check is None or ratio is None else ("yes" if check(ratio) else "**no**")
    rep.rows.append(Row(measure, f"{fmt(a)} {unit}" if a is not None else "n/a",
                        f"{fmt(b)} {unit}" if b is not None else "n/a",
                        fmt(ratio) if ratio is not None else "n/a", target, met))


def alternate(rep: Report, rounds: int, variants: Sequence[tuple[str, str, Callable[[], float]]]) -> None:
    """Run each variant once per round, in order, `rounds` times; a failing variant is reported and skipped."""
    failed: set[str] = set()
    for r in range(rounds):
        for name, unit, fn in variants:
            if name in failed:
                continue
            try:
                value = fn()
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # one reference failing must not lose the others
                rep.problem(f"{name}: {type(e).__name__}: {e}")
                failed.add(name)
                continue
            rep.add(name, unit, value)
            log(f"  round {r + 1}/{rounds} {name}: {fmt(value)} {unit}")


def with_cpu(rep: Report, name: str, pid: int, fn: Callable[[], float]) -> Callable[[], float]:
    """Also record the CPU seconds the server (pid) and this process (the client) spent in each run."""
    def run() -> float:
        server0, me0 = c.cpu_seconds(pid), os.times()
        value = fn()
        me1 = os.times()
        rep.add(f"{name} [server CPU]", "s", c.cpu_seconds(pid) - server0)
        rep.add(f"{name} [client CPU]", "s", (me1.user + me1.system) - (me0.user + me0.system))
        return value
    return run


# -- 1. drain ------------------------------------------------------------------------------------------


def drain_once(size: int, make_sink: Callable[[], tuple[Callable[[int], tuple[int, bool]], Callable[[], int]]],
               timeout: float) -> float:
    """One `head -c size /dev/zero` drained to EOF by a sink; MB/s. make_sink -> (step, finish->bytes kept)."""
    step, finish = make_sink()
    proc, fd = c.spawn_zero_writer(size)
    try:
        t0 = time.perf_counter()
        n = c.drain_until_eof(fd, step, timeout)
        elapsed = time.perf_counter() - t0
        c.reap(proc, 30)
    finally:
        c.close_fd(fd)
        c.stop_process(proc, 5)
    kept = finish()
    if n != size or kept not in (size, -1):
        raise c.BenchError(f"drained {n} bytes, kept {kept}, expected {size}")
    return mbps(size, elapsed)


def section_drain(args: argparse.Namespace, rep: Report) -> None:
    from router._fastio import SegmentedLog, SegmentStore

    size = args.drain_size
    timeout = max(60.0, size / (50 * c.MiB))
    label = c.human_size(size)
    dirs: list[pathlib.Path] = []

    def fresh_dir(prefix: str) -> str:
        d = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=args.tmp))
        dirs.append(d)
        return str(d)

    def cleanup() -> None:
        while dirs:
            shutil.rmtree(dirs.pop(), ignore_errors=True)

    def fastio() -> float:
        d = fresh_dir("drain-log-")
        log_ = SegmentedLog(SegmentStore(d, c.SEGMENT_SIZE))

        def finish() -> int:
            try:
                committed = log_.committed
                if committed and log_.read(committed - 4096, 4096) != bytes(4096):
                    raise c.BenchError("log tail is not zeros")
                return committed
            finally:
                log_.close()
                log_.store.close()
        try:
            return drain_once(size, lambda: (c.log_sink(log_), finish), timeout)
        finally:
            log_.close()
            cleanup()

    def readv() -> float:
        sink = c.ReadvSink()
        return drain_once(size, lambda: (sink, lambda: -1), timeout)

    def readv_pwrite() -> float:
        sink = c.ReadvPwriteSink(fresh_dir("drain-pwrite-"), c.SEGMENT_SIZE)

        def finish() -> int:
            sink.close()
            return sink.offset
        try:
            return drain_once(size, lambda: (sink, finish), timeout)
        finally:
            sink.close()
            cleanup()

    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", args.tmp], capture_output=True, text=True,
                        timeout=10).stdout.strip() or "?"
    rep.facts.append(f"drain: {label} per run from `head -c {size} /dev/zero` through a {c.PIPE_SIZE // c.MiB} MiB "
                     f"O_NONBLOCK pipe, poll() between drains of up to {c.DRAIN_BUDGET // c.MiB} MiB; logs and "
                     f"segment files ({c.SEGMENT_SIZE // c.MiB} MiB) in {args.tmp} ({fs}), deleted after each run")
    try:
        alternate(rep, args.drain_rounds, [
            ("drain: _fastio.SegmentedLog", "MB/s", fastio),
            ("drain: os.readv into a reused 1 MiB buffer", "MB/s", readv),
            ("drain: readv + os.pwrite into segment files", "MB/s", readv_pwrite),
        ])
    finally:
        cleanup()
    ratio_row(f"drain {label} from one pipe: `_fastio` vs `os.readv` into a reused 1 MiB buffer (ceiling)", rep,
              "drain: _fastio.SegmentedLog", "drain: os.readv into a reused 1 MiB buffer", "MB/s")
    ratio_row(f"drain {label} from one pipe: `_fastio` vs readv + `os.pwrite` into {c.SEGMENT_SIZE // c.MiB} MiB "
              "segment files (ceiling for a log that keeps its data)", rep,
              "drain: _fastio.SegmentedLog", "drain: readv + os.pwrite into segment files", "MB/s",
              **at_least(DRAIN_TARGET))


# -- 2. stream -----------------------------------------------------------------------------------------


def section_stream(args: argparse.Namespace, rep: Report) -> None:
    size = args.stream_size
    label = c.human_size(size)
    timeout = max(120.0, size / (20 * c.MiB))
    router = bare = ssh = None
    bare_channel = None
    try:
        router = c.RouterProcess(root=args.tmp, extra=router_args(args))
        client = c.SyncRouter(router.channel(), router.metadata)
        bare = c.BareGrpcProcess()
        bare_channel = grpc.insecure_channel(bare.target, options=c.CHANNEL_OPTIONS)
        c.wait_channel_ready(bare_channel)
        bare_call = bare_channel.unary_stream(BARE_METHOD, request_serializer=None, response_deserializer=None)
        ssh, why = start_ssh(args, rep)

        def via_router(n: int = size) -> float:
            t0 = time.perf_counter()
            client.run_output(["head", "-c", str(n), "/dev/zero"], n, timeout=timeout)
            rate = mbps(n, time.perf_counter() - t0)
            if n == size:  # the log's pages stay in the page cache; writeback competes with the next run
                dirty = c.meminfo("Dirty", "Writeback")
                rep.add("stream: system Dirty + Writeback after a router run", "MiB",
                        (dirty["Dirty"] + dirty["Writeback"]) / c.MiB)
            return rate

        def via_bare(n: int = size) -> float:
            t0 = time.perf_counter()
            got = sum(len(m) for m in bare_call(str(n).encode(), timeout=timeout))
            elapsed = time.perf_counter() - t0
            if got != n:
                raise c.BenchError(f"bare grpc sent {got} bytes, expected {n}")
            return mbps(n, elapsed)

        def via_ssh(n: int = size) -> float:
            assert ssh is not None
            t0 = time.perf_counter()
            done = subprocess.run(ssh.argv(f"head -c {n} /dev/zero"), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
            elapsed = time.perf_counter() - t0
            if done.returncode != 0:
                raise c.BenchError(f"ssh exited {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}")
            return mbps(n, elapsed)

        # Warm-up: connections, caches, lazy imports (not recorded).
        warm = 16 * c.MiB
        via_router(warm)
        via_bare(warm)
        variants = [("stream: router (TaskExecStdioRead, raw frames)", "MB/s",
                     with_cpu(rep, "stream: router", router.pid, via_router)),
                    ("stream: bare grpcio (raw 1 MiB messages)", "MB/s", via_bare)]
        if ssh is not None:
            via_ssh(warm)
            variants.append(("stream: ssh 'head' > /dev/null", "MB/s", via_ssh))
        rep.facts.append(f"stream: {label} of `head -c {size} /dev/zero` per run; router and bare server in their own "
                         "processes, sync grpcio client in the benchmark process reading raw messages (no protobuf "
                         "parsing on the client); the router run includes TaskExecStart and TaskExecWait; one router "
                         f"server for all rounds (its logs are kept for its life: {args.stream_rounds} x {label})")
        alternate(rep, args.stream_rounds, variants)
        if ssh is None:
            rep.rows.append(Row(f"one exec's stdout, {label}: router vs OpenSSH", "—", "—", "skipped", "—", why or ""))
        st = router.status()
        rep.facts.append(f"stream: router server after all rounds: VmRSS {st['VmRSS'] / c.MiB:.0f} MiB, "
                         f"VmHWM {st['VmHWM'] / c.MiB:.0f} MiB, RssFile {st['RssFile'] / c.MiB:.0f} MiB")
    finally:
        if bare_channel is not None:
            bare_channel.close()
        for proc in (ssh, bare, router):
            if proc is not None:
                proc.stop()
    ratio_row(f"one exec's stdout, {label}: router vs bare grpcio server (throughput)", rep,
              "stream: router (TaskExecStdioRead, raw frames)", "stream: bare grpcio (raw 1 MiB messages)", "MB/s",
              **at_least(STREAM_BARE_TARGET))
    if rep.median("stream: ssh 'head' > /dev/null") is not None:
        ratio_row(f"one exec's stdout, {label}: router vs OpenSSH `ssh host head` (throughput)", rep,
                  "stream: router (TaskExecStdioRead, raw frames)", "stream: ssh 'head' > /dev/null", "MB/s",
                  **at_least(STREAM_SSH_TARGET))


_ssh_skip: str | None = None


def start_ssh(args: argparse.Namespace, rep: Report) -> tuple[c.SSHServer | None, str | None]:
    """An sshd for this section, or (None, why not). The skip reason is reported once."""
    global _ssh_skip
    if args.no_ssh:
        return None, "--no-ssh"
    if _ssh_skip is None:
        why = c.ensure_openssh(install=not args.no_install, log=log)
        _ssh_skip = why or ""
        if why:
            rep.problem(f"OpenSSH references skipped: {why}")
    if _ssh_skip:
        return None, _ssh_skip
    try:
        server = c.SSHServer()
        fact = (f"ssh: {server.version}, loopback sshd started by the script, cipher {server.cipher}; the remote "
                "command runs as `bash -c CMD` with HOME set to an empty directory (SetEnv), so the account's "
                "~/.bashrc (here: `pyenv init`, ~120 ms a session) is not part of the figure")
        if fact not in rep.facts:
            rep.facts.append(fact)
        return server, None
    except Exception as e:
        rep.problem(f"cannot start the benchmark sshd: {e}")
        return None, str(e).splitlines()[0]


# -- asyncio helpers -----------------------------------------------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None


def run_async(coro: Any) -> Any:
    """Run a coroutine on the script's one event loop."""
    global _loop
    if _loop is None:
        _loop = w.new_event_loop()
    return _loop.run_until_complete(coro)


def close_loop() -> None:
    global _loop
    if _loop is not None:
        w.close_event_loop(_loop)
        _loop = None


# -- 3. fan-out ----------------------------------------------------------------------------------------


def section_fanout(args: argparse.Namespace, rep: Report) -> None:
    size = args.fanout_size
    rep.facts.append(f"fanout: N concurrent execs of `head -c {size} /dev/zero` (stdout and stderr piped), all in "
                     f"flight: TaskExecStart, TaskExecStdioRead(stdout) to the end, TaskExecWait, over "
                     f"{args.channels} grpc.aio channels; every byte checked (length and all zeros); "
                     "a fresh router per N. "
                     "Local reference: asyncio.create_subprocess_exec (PIPE) + communicate(), all N concurrent. "
                     "ssh: the same command over one ControlMaster connection (MaxSessions 1000)")
    ssh = None
    why = None
    try:
        if args.fanout_ssh:
            ssh, why = start_ssh(args, rep)
            if ssh is not None:
                ssh.start_master()
        for n in args.fanout:
            fanout_for(args, rep, n, ssh if n in args.fanout_ssh else None)
        if args.fanout_ssh and ssh is None:
            rep.rows.append(Row("fan-out over ssh ControlMaster", "—", "—", "skipped", "—", why or ""))
    finally:
        if ssh is not None:
            ssh.stop()


def fanout_for(args: argparse.Namespace, rep: Report, n: int, ssh: c.SSHServer | None) -> None:
    """One N: a fresh router, then router / local (/ ssh) in alternating rounds."""
    size = args.fanout_size
    timeout = max(120.0, n * 0.1)
    outcomes: dict[str, list[w.Outcome]] = collections.defaultdict(list)
    command = ["head", "-c", str(size), "/dev/zero"]

    def measure(name: str, make: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            o = run_async(make())
            outcomes[name].append(o)
            if o.failures and name != "router":
                raise c.BenchError(f"reference failed: {o.describe()}")
            if o.failures:  # the router's time still counts; the completion row says what failed
                rep.problem(f"fanout N={n} {name}: {o.describe()}")
            return o.seconds
        return run

    router = c.RouterProcess(root=args.tmp, extra=router_args(args))
    try:
        router.channel().close()
        variants = [
            (f"fanout N={n}: router", "s",
             with_cpu(rep, f"fanout N={n}: router", router.pid,
                      measure("router", lambda: w.router_fanout(router, n, size, args.channels, timeout)))),
            (f"fanout N={n}: local asyncio subprocesses", "s",
             measure("local", lambda: w.local_fanout(command, n, size, timeout))),
        ]
        if ssh is not None:
            argv = ssh.argv(shlex.join(command), mux=True)
            variants.append((f"fanout N={n}: ssh ControlMaster", "s",
                             measure("ssh", lambda: w.local_fanout(argv, n, size, timeout))))
        alternate(rep, args.fanout_rounds, variants)
        st = router.status()
        rep.facts.append(f"fanout N={n}: router server after the rounds: VmRSS {st['VmRSS'] / c.MiB:.0f} MiB, "
                         f"{st['Threads']} threads, {st['fds']} fds")
    finally:
        router.stop()
    at_target = n == FANOUT_TARGET_N
    ratio_row(f"fan-out N={n} x {c.human_size(size)}: wall time, local/router", rep,
              f"fanout N={n}: router", f"fanout N={n}: local asyncio subprocesses", "s", invert=True,
              target=f">= {FANOUT_TARGET}" if at_target else "—",
              check=(lambda r: r >= FANOUT_TARGET) if at_target else None)
    if rep.median(f"fanout N={n}: ssh ControlMaster") is not None:
        ratio_row(f"fan-out N={n}: wall time, ssh ControlMaster/router", rep,
                  f"fanout N={n}: router", f"fanout N={n}: ssh ControlMaster", "s", invert=True)
    router_runs = outcomes.get("router", [])
    ok_all = bool(router_runs) and all(o.ok == n and not o.failures for o in router_runs)
    detail = "; ".join(o.describe() for o in router_runs) or "not run"
    if n == max(args.fanout):
        local = "; ".join(o.describe() for o in outcomes.get("local", [])) or "not run"
        rep.rows.append(Row(f"fan-out N={n}: every exec completed, every byte checked ({len(router_runs)} rounds)",
                            "yes" if ok_all else f"**no**: {detail}", f"local: {local}",
                            "—", "all ok", "yes" if ok_all else "**no**"))
    elif not ok_all:
        rep.rows.append(Row(f"fan-out N={n}: failures", f"**{detail}**", "—"))


# -- 4. exec rate --------------------------------------------------------------------------------------


def section_exec(args: argparse.Namespace, rep: Report) -> None:
    seq, total, inflight = args.exec_seq, args.exec_total, args.exec_inflight
    router = ssh = None
    why = None
    try:
        router = c.RouterProcess(root=args.tmp, extra=router_args(args))
        client = c.SyncRouter(router.channel(), router.metadata)
        ssh, why = start_ssh(args, rep)
        if ssh is not None:
            ssh.start_master()

        def router_seq() -> float:
            t0 = time.perf_counter()
            for _ in range(seq):
                code = client.start_wait(["true"])
                if code != 0:
                    raise c.BenchError(f"true exited {code}")
            return seq / (time.perf_counter() - t0)

        def router_par() -> float:
            o = run_async(w.router_exec_inflight(router, total, inflight, args.channels, max(120.0, total * 0.2)))
            if o.failures:
                rep.problem(f"exec rate, router {inflight} in flight: {o.describe()}")
            return o.ok / o.seconds

        def ssh_seq() -> float:
            assert ssh is not None
            argv = ssh.argv("true", mux=True)
            t0 = time.perf_counter()
            for _ in range(args.ssh_seq):
                subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=30, check=True)
            return args.ssh_seq / (time.perf_counter() - t0)

        def ssh_par() -> float:
            assert ssh is not None
            o = run_async(w.subprocess_inflight(ssh.argv("true", mux=True), args.ssh_total, inflight,
                                              max(120.0, args.ssh_total * 0.5)))
            if o.failures:
                raise c.BenchError(f"ssh {inflight} in flight: {o.describe()}")
            return o.ok / o.seconds

        # Warm-up: channel, first spawn, ssh session.
        for _ in range(5):
            client.start_wait(["true"])
        variants = [
            ("exec rate sequential: router", "execs/s",
             with_cpu(rep, "exec rate sequential: router", router.pid, router_seq)),
            ("exec rate sequential: local posix_spawn + waitpid", "execs/s", lambda: w.local_spawn_rate(seq, 1)),
            (f"exec rate {inflight} in flight: router (grpc.aio)", "execs/s",
             with_cpu(rep, f"exec rate {inflight} in flight: router", router.pid, router_par)),
            (f"exec rate {inflight} in flight: local posix_spawn + waitpid (threads)", "execs/s",
             lambda: w.local_spawn_rate(total, inflight)),
        ]
        if ssh is not None:
            variants += [("exec rate sequential: ssh ControlMaster", "execs/s", ssh_seq),
                         (f"exec rate {inflight} in flight: ssh ControlMaster", "execs/s", ssh_par)]
        rep.facts.append(f"exec: start + wait of `true` with stdout and stderr piped: {seq} sequential (sync client), "
                         f"{total} with {inflight} in flight (grpc.aio, {args.channels} channels); "
                         "local: os.posix_spawn + os.waitpid, same counts; ssh over one ControlMaster connection: "
                         f"{args.ssh_seq} sequential, "
                         f"{args.ssh_total} with {inflight} in flight; one router server for all rounds")
        alternate(rep, args.exec_rounds, variants)
    finally:
        if ssh is not None:
            ssh.stop()
        if router is not None:
            router.stop()
    ratio_row("exec rate, sequential start+wait of `true`: router/local posix_spawn", rep,
              "exec rate sequential: router", "exec rate sequential: local posix_spawn + waitpid", "execs/s")
    ratio_row(f"exec rate, {inflight} in flight: router/local posix_spawn", rep,
              f"exec rate {inflight} in flight: router (grpc.aio)",
              f"exec rate {inflight} in flight: local posix_spawn + waitpid (threads)", "execs/s",
              **(at_least(EXEC_TARGET) if inflight == 64 else {}))
    if rep.median("exec rate sequential: ssh ControlMaster") is not None:
        ratio_row("exec rate, sequential: router/ssh ControlMaster", rep,
                  "exec rate sequential: router", "exec rate sequential: ssh ControlMaster", "execs/s")
    if rep.median(f"exec rate {inflight} in flight: ssh ControlMaster") is not None:
        ratio_row(f"exec rate, {inflight} in flight: router/ssh ControlMaster", rep,
                  f"exec rate {inflight} in flight: router (grpc.aio)",
                  f"exec rate {inflight} in flight: ssh ControlMaster", "execs/s")
    if ssh is None and why:
        rep.rows.append(Row("exec rate vs ssh", "—", "—", "skipped", "—", why))


# -- 5. seek -------------------------------------------------------------------------------------------


def section_seek(args: argparse.Namespace, rep: Report) -> None:
    size = args.seek_size
    far = int(size * 0.975)  # 3.9 GiB of 4 GiB
    label = c.human_size(size)
    router = c.RouterProcess(root=args.tmp, extra=router_args(args))
    try:
        client = c.SyncRouter(router.channel(), router.metadata)
        exec_id = c.unique("seek")
        t0 = time.perf_counter()
        client.start(exec_id, ["head", "-c", str(size), "/dev/zero"])
        code = client.wait(exec_id, timeout=max(300.0, size / (10 * c.MiB)))
        # A read at the very end sends nothing and ends once the log is complete: the barrier.
        if code != 0 or client.read_all(exec_id, offset=size, timeout=120) != 0:
            raise c.BenchError(f"producing the {label} log failed: exit {code}")
        produced = time.perf_counter() - t0
        rep.facts.append(f"seek: the {label} log was produced by the server with no reader in {produced:.1f} s "
                         f"({mbps(size, produced):.0f} MB/s, spawn to complete log)")

        def ttfb(offset: int) -> float:
            t = time.perf_counter()
            n = client.first_message(exec_id, offset)
            elapsed = time.perf_counter() - t
            if n <= 0:
                raise c.BenchError(f"first message at offset {offset} is empty")
            return elapsed * 1e3

        for _ in range(2):  # warm-up
            ttfb(0)
            ttfb(far)
        name_far, name_zero = f"seek: ttfb at {far / c.GiB:.3g} GiB", "seek: ttfb at offset 0"
        for r in range(args.seek_rounds):
            order = [(name_zero, 0), (name_far, far)]
            if r % 2:
                order.reverse()  # A B B A ...: neither position always goes first
            for name, offset in order:
                rep.add(name, "ms", ttfb(offset))
        log(f"  seek: median ttfb at 0 {fmt(rep.median(name_zero))} ms, at {far} {fmt(rep.median(name_far))} ms")
    finally:
        router.stop()
    ratio_row(f"time to first byte of a finished {label} log: at {far / c.GiB:.3g} GiB / at offset 0", rep,
              name_far, name_zero, "ms", target=f"<= {SEEK_TARGET}", check=lambda r: r <= SEEK_TARGET)


# -- 6. memory -----------------------------------------------------------------------------------------


def hwm_file_anon(st: dict[str, int]) -> str:
    return "{:.0f} MiB; {:.0f} / {:.0f} MiB".format(*(st[k] / c.MiB for k in ("VmHWM", "RssFile", "RssAnon")))


def section_memory(args: argparse.Namespace, rep: Report) -> None:
    size, idle = args.memory_size, args.idle
    label = c.human_size(size)
    mib = c.MiB

    # (a) one exec streams `size` to a reader
    router = c.RouterProcess(root=args.tmp, extra=router_args(args))
    try:
        client = c.SyncRouter(router.channel(), router.metadata)
        client.run_output(["head", "-c", "4096", "/dev/zero"], 4096)  # warm: one exec, one read
        before = router.status()
        t0 = time.perf_counter()
        client.run_output(["head", "-c", str(size), "/dev/zero"], size, timeout=max(300.0, size / (10 * mib)))
        elapsed = time.perf_counter() - t0
        after = router.status()
    finally:
        router.stop()
    for key in ("VmRSS", "RssAnon", "RssFile"):
        rep.add(f"memory: server {key} before the {label} stream", "MiB", before[key] / mib)
        rep.add(f"memory: server {key} after the {label} stream", "MiB", after[key] / mib)
    rep.add(f"memory: server VmHWM (peak RSS) after the {label} stream", "MiB", after["VmHWM"] / mib)
    rep.facts.append(f"memory: the {label} exec streamed to a reader in {elapsed:.1f} s "
                     f"({mbps(size, elapsed):.0f} MB/s)")
    growth = (after["VmHWM"] - before["VmRSS"]) / mib
    rep.rows.append(Row(f"server VmRSS after one exec streamed {label} to a reader (reference: before)",
                        f"{after['VmRSS'] / mib:.0f} MiB", f"{before['VmRSS'] / mib:.0f} MiB",
                        fmt(after["VmRSS"] / before["VmRSS"])))
    rep.rows.append(Row(f"server RSS growth while streaming {label}: peak (VmHWM) minus before",
                        f"{growth:.1f} MiB", "—", "—", f"<= {RSS_GROWTH_TARGET_MIB} MiB",
                        "yes" if growth <= RSS_GROWTH_TARGET_MIB else "**no**"))
    rep.rows.append(Row("server peak RSS (VmHWM) during that stream; RssFile / RssAnon after",
                        hwm_file_anon(after), hwm_file_anon(before),
                        fmt(after["VmHWM"] / before["VmHWM"])))

    # (b) `idle` execs held open, no reads
    marker = f"{600 + (os.getpid() % 1000) / 1000:.3f}"  # `sleep 600.xyz`: findable if the server leaves any behind
    router = c.RouterProcess(root=args.tmp, extra=router_args(args))
    stopped = False
    try:
        router.channel().close()
        base = router.status()
        o = run_async(w.start_idle(router, idle, marker, 64, args.channels, max(120.0, idle * 0.1)))
        if o.failures:
            rep.problem(f"memory: starting {idle} idle execs: {o.describe()}")
        time.sleep(1.0)
        held = router.status()
        alive = len(c.processes_with_arg(marker))
        t0 = time.perf_counter()
        code = router.stop(timeout=120)
        stopped = True
        shutdown = time.perf_counter() - t0
    finally:
        if not stopped:
            router.stop(timeout=120)
        leftovers = c.processes_with_arg(marker)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if leftovers:
        rep.problem(f"memory: {len(leftovers)} `sleep {marker}` execs outlived the router's shutdown "
                    "(killed by the script)")
    rep.facts.append(f"memory: {o.ok} idle execs (`sleep {marker}`, stdout and stderr piped) started in "
                     f"{o.seconds:.1f} s "
                     f"with 64 in flight ({o.ok / o.seconds:.0f}/s); {alive} such processes alive at the measurement; "
                     f"router shutdown (SIGTERM, kills them) took {shutdown:.1f} s, exit status {code}")
    for key, unit, scale in (("VmRSS", "MiB", mib), ("Threads", "threads", 1), ("fds", "fds", 1)):
        rep.add(f"memory: server {key} idle, no execs", unit, base[key] / scale)
        rep.add(f"memory: server {key} with {o.ok} idle execs", unit, held[key] / scale)
    pending = f" ({o.describe()})" if o.failures else ""
    rep.rows.append(Row(f"server VmRSS with {idle} idle execs held open{pending} (reference: no execs)",
                        f"{held['VmRSS'] / mib:.0f} MiB", f"{base['VmRSS'] / mib:.0f} MiB",
                        fmt(held["VmRSS"] / base["VmRSS"])))
    rep.rows.append(Row(f"server threads with {idle} idle execs (reference: no execs)",
                        str(held["Threads"]), str(base["Threads"])))
    rep.rows.append(Row(f"server open descriptors with {idle} idle execs (reference: no execs)",
                        str(held["fds"]), str(base["fds"]), fmt(held["fds"] / max(1, o.ok)) + " per exec"))


# -- main ----------------------------------------------------------------------------------------------


RUNNERS: dict[str, Callable[[argparse.Namespace, Report], None]] = {
    "drain": section_drain, "stream": section_stream, "fanout": section_fanout,
    "exec": section_exec, "seek": section_seek, "memory": section_memory,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of under two minutes")
    p.add_argument("--only", help=f"comma-separated sections to run ({','.join(SECTIONS)}); default all")
    p.add_argument("--rounds", type=int, help="rounds for every alternating section (default 3-5, per section)")
    p.add_argument("--tmp", default="/tmp", help="where logs, state directories and segment files go (default /tmp)")
    p.add_argument("--channels", type=int, default=4, help="grpc.aio channels (connections) for concurrent clients")
    p.add_argument("--server-mode", choices=("aio", "threads"), default="aio",
                   help="the router's server mode: grpc.aio on the engine loop (default) or thread per call")
    p.add_argument("--log-root", help="give each router a log directory under this one (say /dev/shm) "
                                      "instead of its state directory's")
    p.add_argument("--no-ssh", action="store_true", help="skip the OpenSSH references")
    p.add_argument("--no-install", action="store_true", help="never apt-get install OpenSSH; skip it if missing")
    p.add_argument("--max-seconds", type=float, help="watchdog: interrupt the whole run after this long")
    sizes = p.add_argument_group("sizes (defaults: full, or --quick)")
    sizes.add_argument("--drain-size", help=f"bytes per drain (full {FULL['drain_size']}, quick {QUICK['drain_size']})")
    sizes.add_argument("--stream-size",
                       help=f"bytes per stream (full {FULL['stream_size']}, quick {QUICK['stream_size']})")
    sizes.add_argument("--fanout", help=f"fan-out Ns (full {FULL['fanout']}, quick {QUICK['fanout']})")
    sizes.add_argument("--fanout-size", help="bytes each fan-out exec prints (65536)")
    sizes.add_argument("--fanout-ssh", help=f"Ns also run over ssh (full {FULL['fanout_ssh']}; '' for none)")
    sizes.add_argument("--exec-seq", type=int, help=f"sequential execs per round (full {FULL['exec_seq']})")
    sizes.add_argument("--exec-total", type=int,
                       help=f"execs per round with --exec-inflight in flight (full {FULL['exec_total']})")
    sizes.add_argument("--exec-inflight", type=int, help="execs in flight (64)")
    sizes.add_argument("--ssh-seq", type=int, help=f"sequential ssh execs per round (full {FULL['ssh_seq']})")
    sizes.add_argument("--ssh-total", type=int, help=f"ssh execs per round in flight (full {FULL['ssh_total']})")
    sizes.add_argument("--seek-size", help=f"log size for seek (full {FULL['seek_size']})")
    sizes.add_argument("--seek-rounds", type=int, help=f"ttfb pairs (full {FULL['seek_rounds']})")
    sizes.add_argument("--memory-size", help=f"bytes streamed for the memory figure (full {FULL['memory_size']})")
    sizes.add_argument("--idle", type=int, help=f"idle execs held open (full {FULL['idle']})")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.rounds is not None:
        for key in ("drain_rounds", "stream_rounds", "fanout_rounds", "exec_rounds"):
            setattr(args, key, args.rounds)
    for key in ("drain_size", "stream_size", "fanout_size", "seek_size", "memory_size"):
        setattr(args, key, c.parse_size(str(getattr(args, key))))
    args.fanout = [int(x) for x in str(args.fanout).split(",") if x.strip()]
    args.fanout_ssh = [int(x) for x in str(args.fanout_ssh).split(",") if x.strip()]
    args.sections = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def router_args(args: argparse.Namespace) -> tuple[str, ...]:
    """`router serve` arguments for every router this run starts (each its own log directory)."""
    extra: tuple[str, ...] = ("--server-mode", args.server_mode)
    if args.log_root:
        extra += ("--log-dir", tempfile.mkdtemp(prefix="router-logs-", dir=args.log_root))
    return extra


def header(args: argparse.Namespace) -> list[str]:
    def git(*a: str) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(["git", *a], capture_output=True, text=True, timeout=10,
                                  cwd=c.BENCH_DIR.parent).stdout.strip()
        return "?"

    dirty = git("status", "--short", "--", "src").replace("\n", ", ")
    cmd = shlex.join([os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable,
                      "-m", "benchmarks.compare", *sys.argv[1:]])
    import router._fastio as fastio
    return [
        "# router vs references",
        "",
        f"command: `{cmd}`",
        "",
        f"- commit {git('rev-parse', '--short', 'HEAD')} ({git('log', '-1', '--format=%s')})"
        + (f"; uncommitted changes under src/: {dirty}" if dirty else ""),
        f"- router server mode: {args.server_mode} (`router serve --server-mode {args.server_mode}`); logs in "
        + (f"a directory under {args.log_root}" if args.log_root else "each router's state directory (under --tmp)"),
        f"- `_fastio`: {os.path.basename(fastio.__file__)}, built "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(fastio.__file__)))}",
        f"- {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}, RLIMIT_NOFILE {c.raise_nofile_limit()}, {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "- ratios: router/reference for rates (higher is better), reference/router for wall times "
        "(higher is better), far/near for time to first byte (lower is better); medians of alternating rounds",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    c.raise_nofile_limit()
    rep = Report()
    head = header(args)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    watchdog = threading.Timer(args.max_seconds, _thread.interrupt_main)
    watchdog.daemon = True
    watchdog.start()
    status = 0
    started = time.perf_counter()
    try:
        for name in args.sections:
            log(f"section {name} ...")
            t0 = time.perf_counter()
            try:
                RUNNERS[name](args, rep)
                outcome = "done"
            except KeyboardInterrupt:
                rep.timings.append((name, time.perf_counter() - t0, "interrupted"))
                rep.problem(f"{name}: interrupted (watchdog after {args.max_seconds:.0f} s, or a signal)")
                status = 130
                break
            except Exception as e:
                outcome = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                rep.problem(f"{name}: {type(e).__name__}: {e}\n" + "".join(traceback.format_exc(limit=4)))
                status = 1
            rep.timings.append((name, time.perf_counter() - t0, outcome))
            log(f"section {name}: {outcome} in {time.perf_counter() - t0:.1f} s")
    finally:
        watchdog.cancel()
        close_loop()
    rep.timings.append(("total", time.perf_counter() - started, ""))
    print(rep.render(head), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
