"""The server's RSS (VmRSS of the `router serve` process) while many short execs go through it:
BatchStart in chunks + one Watch per round (as `router batch` does), each exec printing a line's
worth of bytes, with the router's default retention (10,000 finished execs kept). RSS should grow
with the execs retained and stay flat once the retention cap is reached.

Setup does the work (a warm-up, then the execs in rounds, reading the server's status after each);
the tracks report those readings."""
from __future__ import annotations

import contextlib
import dataclasses

from router.engine.retention import DEFAULT_EXECS

from .common import SIZE, MiB, RouterProcess, Target, zeros_command
from .rows import Axis, Row, Section, V
from .workloads import AioSide, router_batch

WARMUP = 200
ROUND = 1000  # execs per round: one RSS reading each
LINE = 16  # bytes each exec prints (`head -c 16 /dev/zero`: about one line)


@dataclasses.dataclass
class SoakReadings:
    """VmRSS (bytes) after the warm-up, and after each round with the execs run by then (warm-up included)."""

    warm: int
    rounds: list[tuple[int, int]]

    def at(self, execs: int) -> int:
        """RSS at the first reading with at least `execs` execs run (the last if none has)."""
        return next((rss for done, rss in self.rounds if done >= execs), self.rounds[-1][1])

    @property
    def at_cap(self) -> tuple[int, int]:
        """(execs retained, RSS) when the retention cap was first reached, or at the end if never."""
        done, rss = next(((d, r) for d, r in self.rounds if d >= DEFAULT_EXECS), self.rounds[-1])
        return min(done, DEFAULT_EXECS), rss

    def per_retained_exec(self) -> float:
        """RSS growth per exec retained, from the first round's reading to the cap's: the first
        round also pays what is paid once (the channels' first big calls, the tables' first growth)."""
        retained, rss = self.at_cap
        first, first_rss = self.rounds[0]
        if first >= retained:
            first, first_rss = WARMUP, self.warm
        return (rss - first_rss) / max(1, retained - first)


def soak(router: RouterProcess, side: AioSide, execs: int, round_size: int = ROUND,
         report: bool = False) -> SoakReadings:
    """WARMUP execs, then `execs` more in rounds of `round_size`, each checked (exit 0, its bytes);
    the server's VmRSS after the warm-up and after each round (printed as it goes with `report`)."""
    argv = zeros_command(LINE)

    def run(n: int) -> int:
        router_batch(side, router.metadata, n, argv, LINE, max(120.0, n * 0.05)).checked()
        return router.status()["VmRSS"]

    readings = SoakReadings(run(WARMUP), [])
    if report:
        print(f"{WARMUP:>8} execs  VmRSS {readings.warm / MiB:8.1f} MiB  (warm-up)", flush=True)
    done = WARMUP
    while done < WARMUP + execs:
        n = min(round_size, WARMUP + execs - done)
        rss = run(n)
        done += n
        readings.rounds.append((done, rss))
        if report:
            print(f"{done:>8} execs  VmRSS {rss / MiB:8.1f} MiB  (+{(rss - readings.warm) / MiB:.1f} since warm-up)",
                  flush=True)
    return readings


class Soak:
    """n short execs through one router with its defaults, after a warm-up of WARMUP."""

    params = [[SIZE.soak]]
    param_names = ["n"]
    timeout = 1800
    growth_target = Target("<=", 48, "MiB")  # for 20,000 execs
    per_exec_target = Target("<=", 2048, "B")

    def setup(self, n: int) -> None:
        with contextlib.ExitStack() as stack:  # the readings are all the tracks need
            router = stack.enter_context(RouterProcess())
            side = stack.enter_context(AioSide(router.target))
            self.readings = soak(router, side, n)

    def track_rss_growth(self, n: int) -> float:
        """VmRSS after the n execs minus after the warm-up."""
        return (self.readings.rounds[-1][1] - self.readings.warm) / MiB

    track_rss_growth.unit = "MiB"  # type: ignore[attr-defined]

    def track_rss_per_retained_exec(self, n: int) -> float:
        """VmRSS growth from the first round to the retention cap (or the end), per exec retained."""
        return self.readings.per_retained_exec()

    track_rss_per_retained_exec.unit = "bytes"  # type: ignore[attr-defined]

    def track_rss_growth_past_cap(self, n: int) -> float:
        """VmRSS at the end minus when the retention cap was reached (0 if never reached)."""
        return (self.readings.rounds[-1][1] - self.readings.at_cap[1]) / MiB

    track_rss_growth_past_cap.unit = "MiB"  # type: ignore[attr-defined]


# -- compare's table --------------------------------------------------------------------------------


def soak_rows(axis: Axis) -> list[list[Row]]:
    n = max(axis(Soak))
    return [[
        Row(f"server VmRSS growth over {n} short execs after a warm-up", V(Soak, (n,), "track_rss_growth"),
            None, Soak.growth_target if n == 20_000 else None),
        Row("server VmRSS per retained finished exec (first round to the retention cap)",
            V(Soak, (n,), "track_rss_per_retained_exec"), None, Soak.per_exec_target),
        Row("server VmRSS growth once the retention cap is reached", V(Soak, (n,), "track_rss_growth_past_cap")),
    ]]


COMPARE = {"soak": Section(soak_rows, None)}
