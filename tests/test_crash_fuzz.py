"""kill -9 at random moments of a mixed workload: nothing the router answered is contradicted after a
restart (tests/helpers/crash_fuzz.py says what is checked; run it by hand for hundreds of rounds)."""
from __future__ import annotations

import os
import pathlib

import pytest

from tests.helpers.crash_fuzz import fuzz

ROUNDS = int(os.environ.get("CRASH_FUZZ_ROUNDS", "50"))


@pytest.mark.timeout(30 + 6 * ROUNDS)
@pytest.mark.parametrize(("durability", "rounds"), [("process", ROUNDS), ("machine", max(1, ROUNDS // 5))])
def test_kill_9_at_random_moments_contradicts_no_answer(tmp_path: pathlib.Path, durability: str, rounds: int) -> None:
    f = fuzz(tmp_path, rounds, seed=rounds, serve_args=("--durability", durability))
    print(dict(f.counts))
    assert f.contradictions == 0, dict(f.counts)
    # The kills landed mid-workload: calls were cut, execs were lost, and there was something to check.
    assert f.counts["restarts"] == rounds
    assert f.counts["lost execs"] > 0 and f.counts["calls cut by the kill"] > 0
    assert f.counts["exits checked"] > 0 and f.counts["reads checked"] > 0 and f.counts["stdin writes checked"] > 0
