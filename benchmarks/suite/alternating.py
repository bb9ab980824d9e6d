"""Measurements side by side: suite classes set up together, their track_* methods called in
alternating rounds (A B C A B C ...), medians compared.

These machines are shared and noisy, so only ratios measured side by side mean anything. The
*Ratio classes of the suite use this inside one asv benchmark; `benchmarks.tools.compare` uses it to
run the same classes directly. Nothing here measures anything itself.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

from .common import BenchError, Target

Measure = Callable[[], float]
Key = TypeVar("Key", bound=Hashable)


class Sides:
    """Instances of suite classes, each set up once for its params and torn down together.

    Asking twice for the same class and params gives the same instance (the seek and memory
    figures read several tracks of one setup). A class with asv's `setup_cache` gets it called
    once here too, and its value passed first to setup, the tracks and teardown, as asv does."""

    def __init__(self) -> None:
        self._instances: dict[tuple[type, tuple[Any, ...]], tuple[Any, tuple[Any, ...]]] = {}
        self._caches: dict[type, Any] = {}

    def _instance(self, cls: type, params: Sequence[Any]) -> tuple[Any, tuple[Any, ...]]:
        """(instance, the arguments its methods take)."""
        key = (cls, tuple(params))
        if key not in self._instances:
            obj = cls()
            args = tuple(params)
            if hasattr(obj, "setup_cache"):
                if cls not in self._caches:
                    self._caches[cls] = obj.setup_cache()
                args = (self._caches[cls], *args)
            if hasattr(obj, "setup"):
                obj.setup(*args)  # NotImplementedError: a deliberate skip (OpenSSH missing); propagates
            self._instances[key] = (obj, args)
        return self._instances[key]

    def each(self) -> list[tuple[Any, tuple[Any, ...]]]:
        """Every instance set up so far, with the arguments its methods take."""
        return list(self._instances.values())

    def measure(self, cls: type, params: Sequence[Any], method: str) -> Measure:
        """`cls(...).method(*params)` on the instance set up for `params`, as a call without arguments."""
        obj, args = self._instance(cls, params)
        fn = getattr(obj, method)
        return lambda: fn(*args)

    def close(self) -> list[str]:
        """Tear every instance down, the last set up first; returns what failed (all are tried)."""
        errors = []
        self._caches.clear()
        while self._instances:
            (cls, params), (obj, args) = self._instances.popitem()
            try:
                if hasattr(obj, "teardown"):
                    obj.teardown(*args)
            except Exception as e:
                errors.append(f"{cls.__name__}{params!r} teardown: {type(e).__name__}: {e}")
        return errors


def alternate(measures: Mapping[Key, Measure], rounds: int,
              on_error: Callable[[Key, Exception], None] | None = None) -> dict[Key, list[float]]:
    """Call each measure once per round, in order, `rounds` times. Without `on_error` a failure
    propagates; with it, the failing measure is reported and left out of later rounds."""
    samples: dict[Key, list[float]] = {name: [] for name in measures}
    failed: set[Key] = set()
    for _ in range(rounds):
        for name, fn in measures.items():
            if name in failed:
                continue
            try:
                samples[name].append(float(fn()))
            except Exception as e:
                if on_error is None:
                    raise
                on_error(name, e)
                failed.add(name)
    return samples


def median(samples: Sequence[float]) -> float | None:
    return statistics.median(samples) if samples else None


class RouterVsReference:
    """Base of the *Ratio classes: `subject.<method>` for the router and for one reference, both
    set up in this benchmark's setup and measured in alternating rounds; `ratio()` is
    median(router) / median(reference). Subclasses set `params` (..., reference), `subject`,
    `rounds`, maybe `method`, `router_side` and `target`, and define track_ratio calling `ratio()`.

    Bench modules refer to this class as `alternating.RouterVsReference`, never import the name:
    asv takes every class named in a bench module for part of the suite."""

    subject: type
    method = "track_rate"
    router_side = "router"  # the subject's impl param for the router's side
    rounds = 3
    timeout = 1800  # asv's limit: both sides' setups and every round

    @staticmethod
    def target(*params: Any) -> Target | None:
        """The target for this ratio, if there is one."""
        return None

    def setup(self, *params: Any) -> None:
        *fixed, reference = params
        self.sides = Sides()
        try:
            self.router = self.sides.measure(self.subject, (*fixed, self.router_side), self.method)
            self.reference = self.sides.measure(self.subject, (*fixed, reference), self.method)
        except BaseException:
            self.sides.close()
            raise

    def teardown(self, *params: Any) -> None:
        errors = self.sides.close()
        if errors:
            raise BenchError("; ".join(errors))

    def ratio(self) -> float:
        samples = alternate({"router": self.router, "reference": self.reference}, self.rounds)
        return statistics.median(samples["router"]) / statistics.median(samples["reference"])
