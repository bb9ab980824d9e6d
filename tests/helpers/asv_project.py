"""A small project for asv (a package, a benchmark suite, a git repository) made in a directory,
for the asv plugin's tests and benchmark."""
from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

BENCHMARKS = '''
import tinypkg

def time_add():
    tinypkg.add(1, 2)

def track_known():
    return tinypkg.add(40, 2)

def time_fails():
    raise RuntimeError("boom from the benchmark")
'''
GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]


def write_config(project: pathlib.Path, name: str, **conf: Any) -> pathlib.Path:
    """An asv config in the project: `conf` over the usual keys."""
    base = {"version": 1, "project": "tinypkg", "repo": ".", "branches": ["main"], "pythons": ["3.11"],
            "benchmark_dir": "benchmarks", "env_dir": ".asv/env", "results_dir": ".asv/results",
            "html_dir": ".asv/html"}
    path = project / name
    path.write_text(json.dumps({**base, **conf}, indent=2))
    return path


def make_project(project: pathlib.Path, benchmarks: str = BENCHMARKS, **conf: Any) -> pathlib.Path:
    """The package `tinypkg`, the suite `benchmarks` and asv.conf.json (`conf` over the usual keys),
    committed in a new git repository at `project`."""
    (project / "src" / "tinypkg").mkdir(parents=True)
    (project / "benchmarks").mkdir()
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "tinypkg"\nversion = "0.1"\n')
    (project / "src" / "tinypkg" / "__init__.py").write_text("def add(a, b):\n    return a + b\n")
    (project / "benchmarks" / "__init__.py").write_text("")
    (project / "benchmarks" / "bench.py").write_text(benchmarks)
    write_config(project, "asv.conf.json", **conf)
    commit(project, "tinypkg")
    return project


def commit(project: pathlib.Path, message: str) -> None:
    """Everything in the project's tree, committed (a new repository's first commit on `main`)."""
    if not (project / ".git").exists():
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run([*GIT, "commit", "-qm", message], cwd=project, check=True)
