"""Fixtures of the hot path's tests: each runs against router._fastio ("cython") and its pure-Python
twin reference_log ("python"); both modules' counters must be as they were after every test."""
from __future__ import annotations

import gc
import pathlib
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from router import _fastio
from tests.helpers import reference_log
from tests.helpers.fds import Pipe
from tests.helpers.logs import owning_log


@pytest.fixture(scope="module", params=[_fastio, reference_log], ids=["cython", "python"])
def Log(request: pytest.FixtureRequest) -> Callable[..., object]:
    """make(directory, segment_size=32 MiB, slots_per_file=SLOTS): a log on a store of its own,
    closed with it (helpers.logs.owning_log)."""
    return owning_log(request.param)


@pytest.fixture(scope="module", params=[_fastio, reference_log], ids=["cython", "python"])
def fio(request: pytest.FixtureRequest) -> ModuleType:
    """The module itself, for tests that build stores and logs (and read counters) on their own."""
    module: ModuleType = request.param
    return module


@pytest.fixture(autouse=True)
def counters_restored() -> Iterator[None]:
    """Every test here leaves both modules' counters as it found them: they are exact."""
    before = {mod: mod.counters() for mod in (_fastio, reference_log)}
    yield
    gc.collect()
    assert {mod: mod.counters() for mod in (_fastio, reference_log)} == before


@pytest.fixture
def logdir(tmp_path: pathlib.Path) -> str:
    d = tmp_path / "log"
    d.mkdir()
    return str(d)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    """A pipe, its read end non-blocking; whatever of it is still open is closed after the test."""
    with Pipe() as p:
        yield p


@pytest.fixture
def blocking_pipe() -> Iterator[Pipe]:
    """A pipe whose reads sleep until bytes come (or a signal interrupts them); closed after the test."""
    with Pipe(blocking=True) as p:
        yield p
