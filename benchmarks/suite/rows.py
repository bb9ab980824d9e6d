"""What `benchmarks.tools.compare` shows of the suite: rows of the router against a reference,
declared beside the classes they read. Each bench module that has rows declares them in a
module-level `COMPARE = {section name: Section(...)}`; compare finds them there, runs or reads the
values the rows name, and renders the table. Nothing here measures.

Names here must not start with asv's benchmark prefixes (time_, timeraw_, track_, mem_, peakmem_):
asv imports every module of the suite, and looks into every class a bench module names. Importing
this module reads no setting (compare imports it before it sets BENCH_SIZE).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # common reads the settings when imported; compare imports this module before
    from .alternating import RouterVsReference
    from .common import Target


@dataclasses.dataclass(frozen=True)
class V:
    """One value of the suite: `cls().method(*params)` after `setup(*params)`."""

    cls: type[Any]
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
        unit: str = getattr(getattr(self.cls, self.method), "unit", "")
        return unit


@dataclasses.dataclass(frozen=True)
class Row:
    """router vs reference; ratio = router / reference; the target applies to the ratio, or to the
    router's value when there is no reference. `asv_ratio` is the suite's own side-by-side ratio.
    With `per`, the ratio column shows (router - reference) / per instead."""

    measure: str
    router: V
    reference: V | None = None
    target: Target | None = None
    asv_ratio: V | None = None
    per: tuple[int, str] | None = None


# A class's first parameter's values: this run's (the class's params), or those asv ran with.
Axis = Callable[[type[Any]], list[Any]]


@dataclasses.dataclass(frozen=True)
class Section:
    """A part of compare's table: `rows(axis)` gives groups of rows, each group measured together
    (one setup of every class its rows name, the values alternating). `rounds` names the
    `SIZE.rounds` entry for how many alternating rounds a group runs; None for one round, where
    the classes alternate their own rounds inside one setup. `default`: in the table unless
    `--only` asks for other sections."""

    rows: Callable[[Axis], list[list[Row]]]
    rounds: str | None
    default: bool = True


def vs(measure: str, ratio_cls: type[RouterVsReference], fixed: tuple[Any, ...], reference: str) -> Row:
    """A row for one of the suite's *Ratio classes: its subject's router side against `reference`."""
    subject = ratio_cls.subject
    return Row(measure, V(subject, (*fixed, ratio_cls.router_side)), V(subject, (*fixed, reference)),
               ratio_cls.target(*fixed, reference), V(ratio_cls, (*fixed, reference), "track_ratio"))


def tracks_of(cls: type[Any], *params: Any) -> Callable[[str], V]:
    """method -> V(cls, params, method): several tracks of one setup."""
    return lambda method: V(cls, params, method)
