"""The asv plugin `router.asv` against asv's own virtualenv environment, on this machine: what each
benchmark process costs through a router, and a run over two targets against one.

    python -m benchmarks.tools.asv_plugin --benchmarks 20 --rounds 5

A project made in a temporary directory (tests/helpers/asv_project: the package `tinypkg`) with
BENCHMARKS `track_` benchmarks (each one benchmark process that returns at once: its duration in
asv's results file is the process's cost, startup included) and three configurations of the same
suite: "local" (environment_type virtualenv), "one" (the plugin, one router) and "two" (two routers
on this machine, one environment each). The environments are built first; each round then runs
`asv run` of each configuration, in an order that rotates. Prints every round, then the medians of
the per-benchmark duration and of the wall time, and the ratios to "local". On two cores no
speed-up is expected from two routers: asv runs one environment's benchmarks after the other's.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import router
from tests.helpers.asv_project import make_project, write_config

from ..suite.common import RouterProcess
from .trees import rotation


def suite(count: int) -> str:
    return "import tinypkg\n" + "".join(f"\ndef track_{i}():\n    return tinypkg.add({i}, 0)\n" for i in range(count))


def asv(project: pathlib.Path, env: dict[str, str], config: str, *args: str) -> float:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "asv", "--config", config, *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"asv {' '.join(args)} ({config}) failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - began


def durations(results: pathlib.Path) -> list[float]:
    """Every track_ benchmark's duration in the results files under `results`."""
    found = []
    for path in results.glob("box/*.json"):
        if path.name == "machine.json":
            continue
        data = json.loads(path.read_text())
        column = data["result_columns"].index("duration")
        found += [values[column] for bench, values in data["results"].items() if ".track_" in bench]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="asv-plugin-bench-") as tmp, RouterProcess() as first:
        key = (first.dir / "jwt.key").read_bytes()
        with RouterProcess(token_key=key) as second:
            base = pathlib.Path(tmp)
            token = dict(first.metadata)["authorization"].split()[-1]
            env = {**os.environ, "HOME": str(base), "ROUTER_TOKEN": token,
                   "PYTHONPATH": str(pathlib.Path(router.__file__).parent.parent)}
            project = make_project(base / "project", suite(args.benchmarks), environment_type="virtualenv")
            plugin = {"plugins": [".router.asv"], "environment_type": "router", "router_env_dir": str(base / "remote")}
            configs = {"local": "asv.conf.json",
                       "one": write_config(project, "one.json", **plugin, router_targets=[first.target],
                                           results_dir=".asv/results-one").name,
                       "two": write_config(project, "two.json", **plugin, router_targets=[first.target, second.target],
                                           results_dir=".asv/results-two").name}
            results = {"local": ".asv/results", "one": ".asv/results-one", "two": ".asv/results-two"}
            asv(project, env, "asv.conf.json", "machine", "--yes", "--machine", "box")
            for config in configs.values():  # build the environments, not measured
                asv(project, env, config, "run", "--machine", "box", "--parallel", "2", "--bench", "track_0")
            per: dict[str, list[float]] = {name: [] for name in configs}
            wall: dict[str, list[float]] = {name: [] for name in configs}
            for number in range(args.rounds):
                for name in rotation(list(configs), number):
                    wall[name].append(asv(project, env, configs[name], "run", "--machine", "box"))
                    per[name].append(statistics.median(durations(project / results[name])))
                print(f"round {number}: " + ", ".join(
                    f"{name} {per[name][-1] * 1000:.0f} ms/benchmark, {wall[name][-1]:.1f} s" for name in configs))
    local = statistics.median(per["local"]), statistics.median(wall["local"])
    for name in configs:
        p, w = statistics.median(per[name]), statistics.median(wall[name])
        print(f"{name}: median {p * 1000:.0f} ms per benchmark process ({p / local[0]:.2f}x local), "
              f"asv run {w:.1f} s ({w / local[1]:.2f}x local) for {args.benchmarks} benchmarks"
              + (" in each of 2 environments" if name == "two" else ""))


if __name__ == "__main__":
    main()
