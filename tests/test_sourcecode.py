"""The source tree's own rules, checked as tests (as uvloop runs its linters): ruff is clean, no
module outgrows its limit, and nothing cites an issue number instead of saying what it does."""
from __future__ import annotations

import ast
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "router"
PY_LIMIT = 450  # lines of a Python module of src (generated code aside)
CYTHON_LIMIT = 600  # lines of a Cython source file


def _sources(*patterns: str) -> list[pathlib.Path]:
    return sorted(p for pattern in patterns for p in SRC.rglob(pattern) if "_proto" not in p.parts)


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).with_name("ruff"))
    out = subprocess.run([ruff, "check", "--output-format", "concise", "src", "tests", "benchmarks", "scripts",
                          "setup.py"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_module_outgrows_its_limit() -> None:
    too_long = {str(p.relative_to(ROOT)): n for p in _sources("*.py")
                if (n := len(p.read_text().splitlines())) > PY_LIMIT}
    too_long |= {str(p.relative_to(ROOT)): n for p in _sources("*.pyx", "*.pxi", "*.pxd")
                 if (n := len(p.read_text().splitlines())) > CYTHON_LIMIT}
    assert not too_long


def _imported(path: pathlib.Path) -> set[str]:
    """The modules of `router` that a module of src imports (relative imports resolved)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return {m for m in found if m == "router" or m.startswith("router.")}


@pytest.mark.parametrize(("package", "forbidden"), [
    ("engine", ("router.images", "router.server", "router.cli", "router.client")),
    ("images", ("router.engine", "router.server", "router.cli", "router.client")),
    ("server", ("router.cli",)),
])
def test_layers_import_only_downwards(package: str, forbidden: tuple[str, ...]) -> None:
    wrong = {f"{p.relative_to(SRC)}: {m}" for p in (SRC / package).rglob("*.py")
             for m in _imported(p) if m.startswith(forbidden)}
    assert not wrong


def _code_and_docs() -> list[pathlib.Path]:
    return [*_sources("*.py", "*.pyx", "*.pxi", "*.pxd", "*.pyi"), *ROOT.glob("*.md"), *(ROOT / "tests").rglob("*.py"),
            *(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "benchmarks").glob("*.md")]


def _lines_matching(pattern: re.Pattern[str]) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{n}" for p in _code_and_docs() if p.is_file()
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_code_and_docs_cite_no_issue_numbers() -> None:
    assert not _lines_matching(re.compile(r"\bissues? #?\d+", re.IGNORECASE))


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_no_merge_left_its_conflict_markers() -> None:
    assert not _lines_matching(re.compile(r"^(<{7}|>{7}) |^={7}$"))
