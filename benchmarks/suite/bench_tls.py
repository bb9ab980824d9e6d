"""What TLS costs. One router serving plaintext and one serving TLS (a certificate from a
CA made for the run, EC P-256), side by side: one exec's stdout streamed (as bench_stream.Stream),
and the sequential exec rate (start + wait of `true`, as bench_exec.ExecRate), in alternating
rounds inside one setup_cache; the tracks read its series."""
from __future__ import annotations

import contextlib
import functools
import statistics
from collections.abc import Callable

from . import alternating
from .bench_exec import sequential_rate
from .bench_stream import rate, router_sender
from .common import SIZE, RouterProcess, SyncRouter, human_size
from .rows import Axis, Row, Section, tracks_of

SIDES = ("plain", "tls")


class TlsRounds:
    params = [[SIZE.stream[0]]]
    param_names = ["size"]
    timeout = 1800

    def setup_cache(self) -> dict:
        size = SIZE.stream[0]
        count = SIZE.exec_sequential
        rounds = SIZE.rounds["stream"] * 2 + 1
        with contextlib.ExitStack() as stack:
            routers = {side: stack.enter_context(RouterProcess(tls=side == "tls")) for side in SIDES}
            measures: dict[str, Callable[[], float]] = {}
            for side, router in routers.items():
                send = router_sender(router)
                client = SyncRouter(router)
                send(min(size, 16 << 20))  # connection, handshake, first spawn: not measured
                measures[f"stream {side}"] = functools.partial(rate, send, size)
                measures[f"exec {side}"] = functools.partial(sequential_rate, count,
                                                             functools.partial(client.start_wait, ["true"]))
            return alternating.alternate(measures, rounds)

    def setup(self, series: dict, size: int) -> None:
        self.series: dict[str, list[float]] = series

    def _median(self, name: str) -> float:
        return statistics.median(self.series[name])

    def series_table(self, series: dict, size: int) -> dict[str, tuple[list[float], str]]:
        """For compare: every round of every measure, in order."""
        return {f"TlsRounds({size}) {name}": (rounds, "MB/s" if name.startswith("stream") else "execs/s")
                for name, rounds in series.items()}

    def track_stream_tls(self, series: dict, size: int) -> float:
        return self._median("stream tls")

    def track_stream_plain(self, series: dict, size: int) -> float:
        return self._median("stream plain")

    def track_exec_tls(self, series: dict, size: int) -> float:
        return self._median("exec tls")

    def track_exec_plain(self, series: dict, size: int) -> float:
        return self._median("exec plain")

    def track_stream_ratio(self, series: dict, size: int) -> float:
        """stream over TLS / plaintext"""
        return self._median("stream tls") / self._median("stream plain")

    def track_exec_ratio(self, series: dict, size: int) -> float:
        """sequential exec rate over TLS / plaintext"""
        return self._median("exec tls") / self._median("exec plain")

    track_stream_tls.unit = track_stream_plain.unit = "MB/s"  # type: ignore[attr-defined]
    track_exec_tls.unit = track_exec_plain.unit = "execs/s"  # type: ignore[attr-defined]
    track_stream_ratio.unit = track_exec_ratio.unit = "tls/plain"  # type: ignore[attr-defined]


# -- compare's table --------------------------------------------------------------------------------


def tls_rows(axis: Axis) -> list[list[Row]]:
    groups = []
    for size in axis(TlsRounds):
        t = tracks_of(TlsRounds, size)
        groups.append([
            Row(f"one exec's stdout, {human_size(size)}, over TLS vs plaintext (a router each, alternating rounds)",
                t("track_stream_tls"), t("track_stream_plain"), None, t("track_stream_ratio")),
            Row("exec rate, sequential start+wait of `true`, over TLS vs plaintext",
                t("track_exec_tls"), t("track_exec_plain"), None, t("track_exec_ratio")),
        ])
    return groups


# One round: TlsRounds' setup_cache alternates its own rounds, and the tracks read them.
COMPARE = {"tls": Section(tls_rows, None)}
