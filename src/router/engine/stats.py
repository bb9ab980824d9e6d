"""What the engine counts for metrics: plain integers and bucket arrays, updated where the event
happens (the loop thread, or under the registry's lock) and read by a Prometheus collector at
scrape time (server/metrics.py). An update is an integer addition or two, so that counting costs
the exec rate nothing measurable (benchmarks/RESULTS.md, "Metrics on and off")."""
from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from .records import ExitCause

# Seconds an exec runs, from its admission to its leader's exit: from `true` to batch jobs.
EXEC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                14400.0, 86400.0)


class Histogram:
    """Observations counted per bucket (each value in the first bucket whose upper bound holds it,
    the last one unbounded) and summed. Not thread-safe: its owner serializes updates; a reader
    derives the count from the buckets, so that they always agree."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at most that) for each bucket, "+Inf" last: Prometheus' buckets."""
        counts, total = list(self.counts), 0
        out = []
        for bound, n in zip((*(repr(b) for b in self.bounds), "+Inf"), counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class ExecStats:
    """Counts since the router started. Starts and exits are counted under the registry's lock
    (registry.py; execs found lost at startup by restore.py, before anything runs), output and
    stdin bytes on the loop thread."""

    def __init__(self, retained_bytes: Callable[[], int]) -> None:
        self.retained_bytes = retained_bytes  # output finished execs hold (the registry's count)
        self.started_ok = 0
        self.finished = dict.fromkeys(ExitCause, 0)
        self.durations = Histogram(EXEC_BUCKETS)
        self.output_bytes = {"stdout": 0, "stderr": 0}
        self.stdin_bytes = 0

    @property
    def start_failed(self) -> int:
        """Execs whose process could not be started: each finishes at once as failed_to_start."""
        return self.finished[ExitCause.FAILED_TO_START]

    def exited(self, cause: ExitCause, secs: float | None) -> None:
        """An exec ended with `cause`, `secs` after it was admitted (None: not known, as for a lost one)."""
        self.finished[cause] += 1
        if secs is not None:
            self.durations.observe(max(secs, 0.0))
