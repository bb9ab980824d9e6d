"""One exec's stdout end to end: `head -c N /dev/zero` on a router in its own process, read through
TaskExecStdioRead, against the same bytes from a bare grpcio server and from OpenSSH; and many
rounds of it through one server, where retention releases old execs and new output recycles
their log slots (StreamRounds)."""
from __future__ import annotations

import contextlib
import functools
import shlex
import statistics
import time
from collections.abc import Callable

from . import alternating
from .bare_grpc import EXEC_METHOD, STREAM_METHOD
from .common import (
    SIZE,
    SIZE_NAME,
    BareGrpcProcess,
    BenchError,
    MiB,
    RouterProcess,
    SyncRouter,
    Target,
    closing_on_error,
    human_size,
    stream_timeout,
    zeros_command,
)
from .rows import Axis, Row, Section, tracks_of, vs
from .sshd import SSHServer, require_openssh

WARM = 16 * MiB


def router_sender(router: RouterProcess) -> Callable[[int], None]:
    """n -> one exec of `head -c n /dev/zero` on the router: start, read stdout to the end, wait."""
    client = SyncRouter(router)
    return lambda n: client.run_output(zeros_command(n), n, timeout=stream_timeout(n))


def bare_sender(server: BareGrpcProcess, method: str = STREAM_METHOD) -> Callable[[int], None]:
    """n -> n bytes streamed by the bare grpcio server: prebuilt 1 MiB messages (STREAM_METHOD), or
    a child's pipe as read() gives it (EXEC_METHOD)."""
    call = server.channel().unary_stream(method, request_serializer=None, response_deserializer=None)

    def send(n: int) -> None:
        got = sum(len(m) for m in call(str(n).encode(), timeout=stream_timeout(n)))
        if got != n:
            raise BenchError(f"bare grpc sent {got} bytes, expected {n}")
    return send


def rate(send: Callable[[int], None], n: int) -> float:
    """MB/s of one send of n bytes."""
    t0 = time.perf_counter()
    send(n)
    return n / (time.perf_counter() - t0) / 1e6


class Stream:
    """impl: router (an exec's stdout through TaskExecStdioRead, start and wait included; a sync
    grpcio client reading raw messages, so the client does no protobuf parsing), bare_grpc (the
    same grpcio stack and options streaming prebuilt 1 MiB messages), ssh (`ssh host head -c N
    /dev/zero` to a loopback sshd, output to /dev/null). One server for all calls of a setup."""

    params = [SIZE.stream, ["router", "bare_grpc", "ssh"]]
    param_names = ["size", "impl"]
    number = 1
    repeat = (1, 5, 30.0)
    warmup_time = 0.0
    timeout = 900

    def setup(self, size: int, impl: str) -> None:
        self.stack = contextlib.ExitStack()
        with closing_on_error(self.stack):
            self.send: Callable[[int], None] = getattr(self, f"_start_{impl}")()
            self.send(min(size, WARM))  # connections, first spawn, lazy imports: not measured

    def _start_router(self) -> Callable[[int], None]:
        return router_sender(self.stack.enter_context(RouterProcess()))

    def _start_bare_grpc(self) -> Callable[[int], None]:
        return bare_sender(self.stack.enter_context(BareGrpcProcess()))

    def _start_ssh(self) -> Callable[[int], None]:
        require_openssh()
        ssh = self.stack.enter_context(SSHServer())
        return lambda n: ssh.run(shlex.join(zeros_command(n)), timeout=stream_timeout(n))

    def teardown(self, size: int, impl: str) -> None:
        self.stack.close()

    def time_stream(self, size: int, impl: str) -> None:
        self.send(size)

    def track_rate(self, size: int, impl: str) -> float:
        return rate(self.send, size)

    track_rate.unit = "MB/s"  # type: ignore[attr-defined]


class StreamRatio(alternating.RouterVsReference):
    """router / reference stream rate, alternating rounds in one setup (targets: >= 0.7 of the
    bare grpcio server, >= 1.5 of OpenSSH)."""

    params = [SIZE.stream, ["bare_grpc", "ssh"]]
    param_names = ["size", "reference"]
    subject = Stream
    rounds = SIZE.rounds["stream"]

    @staticmethod
    def target(size: int, reference: str) -> Target | None:
        return {"bare_grpc": Target(">=", 0.7), "ssh": Target(">=", 1.5)}[reference]

    def track_ratio(self, size: int, reference: str) -> float:
        return self.ratio()

    track_ratio.unit = "router/reference"  # type: ignore[attr-defined]


SHM = "/dev/shm"
LAST = 4  # the rounds' targets read the last four (against the bare server, and the router's first four)


def retain_args(size: int) -> list[str]:
    """Full size: the router's defaults. Smaller: `--retain-bytes` 1.25 x the round, so that
    retention releases the previous rounds' execs and later rounds reuse their slots within the run."""
    return [] if SIZE_NAME == "full" else ["--retain-bytes", f"{(size + size // 4) // MiB}M"]


def _median_track(side: str, doc: str, first: bool = False) -> Callable[..., float]:
    """A StreamRounds track: the median of `side`'s first or last LAST rounds, MB/s."""
    def track(self: StreamRounds, result: dict, size: int) -> float:
        return self._median(side, first)
    track.__doc__ = doc
    track.unit = "MB/s"  # type: ignore[attr-defined]
    return track


def _ratio_track(a: tuple[str, bool], b: tuple[str, bool], unit: str, doc: str) -> Callable[..., float]:
    """A StreamRounds track: median of (side, first) `a` / median of `b`."""
    def track(self: StreamRounds, result: dict, size: int) -> float:
        return self._median(*a) / self._median(*b)
    track.__doc__ = doc
    track.unit = unit  # type: ignore[attr-defined]
    return track


def _arena_track(side: str) -> Callable[..., float]:
    """A StreamRounds track: what `side`'s arena files occupy after every round, MiB."""
    def track(self: StreamRounds, result: dict, size: int) -> float:
        return result["arena_mib"][side]
    track.__doc__ = f"disk (allocated blocks) of {side}'s arena files after every round"
    track.unit = "MiB"  # type: ignore[attr-defined]
    return track


class StreamRounds:
    """Recycling: SIZE.recycle rounds (full 12 x 1 GiB, quick 12 x 128 MiB, tiny 3 x 8 MiB) of one
    exec's stdout (`head -c N /dev/zero`, as Stream) through ONE server per side, the sides
    alternating (A B C D A B C D ...): `router` (logs in the state directory, ext4 under BENCH_TMP,
    whatever BENCH_LOG_ROOT says), `router_shm` (`--log-dir` under /dev/shm, tmpfs), `bare_grpc`
    (prebuilt messages: the reference the target names) and `bare_exec` (the same server streaming
    the same child's pipe as it reads it: no log, journal or offsets; what the router's design adds).
    Both routers run with their default flags at full size (retention keeps 10 % of the logs'
    filesystem, at most 4 GiB: older execs are released from round 5 on a large disk), and with
    `--retain-bytes` 1.25 x the round at smaller sizes, so that recycling happens within the run:
    from round 3 on, new output goes into slots released by earlier rounds.

    asv calls setup_cache once for the class (compare does too); it runs every round and the
    tracks read its series (MB/s per round)."""

    params = [[SIZE.recycle[1]]]
    param_names = ["size"]
    timeout = 3600
    SIDES = ("router", "router_shm", "bare_grpc", "bare_exec")

    def setup_cache(self) -> dict:
        rounds, size = SIZE.recycle
        extra = retain_args(size)
        with contextlib.ExitStack() as stack:
            routers = {"router": stack.enter_context(RouterProcess(args=extra, log_root=None)),
                       "router_shm": stack.enter_context(RouterProcess(args=extra, log_root=SHM))}
            sends = {name: router_sender(r) for name, r in routers.items()}
            bare = stack.enter_context(BareGrpcProcess())
            sends["bare_grpc"] = bare_sender(bare)
            sends["bare_exec"] = bare_sender(bare, EXEC_METHOD)
            for send in sends.values():
                send(min(size, WARM))  # connections, first spawn, lazy imports: not measured
            series = alternating.alternate({name: functools.partial(rate, send, size) for name, send in sends.items()},
                                           rounds)
            # Without recycling the arenas would hold every round; with it, about what retention keeps.
            arena = {name: r.arena_bytes() / MiB for name, r in routers.items()}
        return {"args": extra, "series": series, "arena_mib": arena}

    def setup(self, result: dict, size: int) -> None:
        self.series: dict[str, list[float]] = result["series"]

    def _median(self, side: str, first: bool = False) -> float:
        rounds = self.series[side]
        return statistics.median(rounds[:LAST] if first else rounds[-LAST:])

    def series_table(self, result: dict, size: int) -> dict[str, tuple[list[float], str]]:
        """For compare: every round of every side, in order."""
        flags = " ".join(result["args"]) or "default flags"
        return {f"StreamRounds({size}) {side}" + (f" ({flags})" if side.startswith("router") else ""): (rounds, "MB/s")
                for side, rounds in self.series.items()}

    # The tracks (asv's track_*: every one reads the same setup_cache).
    track_router_last = _median_track("router", "the router's median over its last four rounds (state directory)")
    track_router_first = _median_track("router", "its first four rounds", first=True)
    track_shm_last = _median_track("router_shm", "the /dev/shm router's last four rounds")
    track_shm_first = _median_track("router_shm", "its first four rounds", first=True)
    track_bare_last = _median_track("bare_grpc", "the bare grpcio server's last four rounds")
    track_bare_exec_last = _median_track("bare_exec",
                                         "the bare grpcio server streaming a child's pipe, last four rounds")
    track_router_over_bare = _ratio_track(("router", False), ("bare_grpc", False), "router/bare",
                                          "last four rounds, router / bare grpcio (target >= 0.8)")
    track_router_over_bare_exec = _ratio_track(("router", False), ("bare_exec", False), "router/bare exec",
                                               "last four rounds, router / bare grpcio streaming a child's pipe")
    track_last_over_first = _ratio_track(("router", False), ("router", True), "last/first",
                                         "the router's last four rounds / its first four (target >= 0.95)")
    track_shm_over_state = _ratio_track(("router_shm", False), ("router", False), "shm/state",
                                        "last four rounds, logs on /dev/shm / logs in the state directory")
    track_arena_mib = _arena_track("router")
    track_shm_arena_mib = _arena_track("router_shm")

    target_over_bare = Target(">=", 0.8)
    target_last_over_first = Target(">=", 0.95)


# -- compare's table --------------------------------------------------------------------------------


def stream_rows(axis: Axis) -> list[list[Row]]:
    return [[vs(f"one exec's stdout, {human_size(size)}: router vs bare grpcio server (throughput)",
                StreamRatio, (size,), "bare_grpc"),
             vs(f"one exec's stdout, {human_size(size)}: router vs OpenSSH `ssh host head` (throughput)",
                StreamRatio, (size,), "ssh")]
            for size in axis(Stream)]


def recycle_rows(axis: Axis) -> list[list[Row]]:
    groups = []
    for size in axis(StreamRounds):
        sr = tracks_of(StreamRounds, size)
        rounds, _ = SIZE.recycle
        k = min(LAST, rounds)
        flags = ("default flags" if not retain_args(size)
                 else f"`{' '.join(retain_args(size))}`, 1.25 x a round, so that slots recycle within the run")
        what = f"{rounds} rounds of one exec's stdout, {human_size(size)} each, through one router ({flags})"
        groups.append([
            Row(f"{what}: router vs bare grpcio server, medians of the last {k} rounds",
                sr("track_router_last"), sr("track_bare_last"), StreamRounds.target_over_bare,
                sr("track_router_over_bare")),
            Row(f"{what}: router vs the bare grpcio server streaming the same child's pipe as it reads it "
                f"(no log, journal or offsets), last {k} rounds",
                sr("track_router_last"), sr("track_bare_exec_last"), None, sr("track_router_over_bare_exec")),
            Row(f"{what}: router's last {k} rounds vs its first {k}",
                sr("track_router_last"), sr("track_router_first"), StreamRounds.target_last_over_first,
                sr("track_last_over_first")),
            Row(f"the same rounds, `--log-dir` on /dev/shm (tmpfs): last {k} vs first {k}",
                sr("track_shm_last"), sr("track_shm_first")),
            Row(f"where logs live: `--log-dir` /dev/shm (tmpfs) vs the state directory (ext4), last {k} "
                "rounds", sr("track_shm_last"), sr("track_router_last"), None, sr("track_shm_over_state")),
            Row("arena files' disk after every round (allocated blocks): state directory; reference: /dev/shm",
                sr("track_arena_mib"), sr("track_shm_arena_mib")),
        ])
    return groups


COMPARE = {
    "stream": Section(stream_rows, "stream"),
    # One round: StreamRounds' setup_cache alternates its own rounds, and the tracks read them.
    "recycle": Section(recycle_rows, None),
}
