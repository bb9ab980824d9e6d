"""Reading what `asv run` recorded: the latest results file for this machine, as values by benchmark
name and parameters. (asv records results of `--python=same` runs only with `--set-commit-hash`.)"""
from __future__ import annotations

import ast
import itertools
import json
import math
import pathlib
import socket
from typing import Any

# asv.conf.json's results_dir, from the repository top (benchmarks/tools/ is two levels down).
DEFAULT_DIR = pathlib.Path(__file__).resolve().parents[2] / ".asv" / "results"


def machine_name() -> str:
    """This machine's name for asv: the one described by `asv machine` (~/.asv-machine.json),
    else the host name (asv's default)."""
    described = pathlib.Path.home() / ".asv-machine.json"
    if described.exists():
        names = [k for k in json.loads(described.read_text()) if k != "version"]
        if len(names) == 1:
            return names[0]
    return socket.gethostname()


def latest_file(results_dir: pathlib.Path = DEFAULT_DIR, machine: str | None = None) -> pathlib.Path:
    """The most recently written results file of `machine` (default: this one)."""
    directory = results_dir / (machine or machine_name())
    files = [p for p in directory.glob("*.json") if p.name != "machine.json"]
    if not files:
        raise FileNotFoundError(f"no asv results in {directory}: run `asv run --python=same "
                                "--set-commit-hash $(git rev-parse HEAD)` first")
    return max(files, key=lambda p: p.stat().st_mtime)


class Results:
    """One asv results file: `value(name, params)` is a number, None (the benchmark failed), NaN
    (it was skipped) or missing (KeyError: not in this run)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        data = json.loads(path.read_text())
        self.commit = data.get("commit_hash", "?")
        columns = data["result_columns"]
        self._values: dict[str, dict[tuple[str, ...], Any]] = {}
        self.params: dict[str, list[list[Any]]] = {}
        for name, row in data["results"].items():
            entry = dict(zip(columns, row, strict=False))  # asv leaves a row's trailing empty columns out
            axes = entry.get("params") or []
            values = entry["result"] if axes else [entry["result"]]
            combos = list(itertools.product(*axes)) if axes else [()]
            # No values (None) when the benchmark failed as a whole: its parameters are then missing.
            self._values[name] = dict(zip(combos, values or [], strict=bool(values)))
            self.params[name] = [[ast.literal_eval(v) for v in axis] for axis in axes]

    def value(self, name: str, params: tuple[Any, ...]) -> float | None:
        return self._values[name][tuple(repr(p) for p in params)]


def is_skip(value: float | None) -> bool:
    return isinstance(value, float) and math.isnan(value)
