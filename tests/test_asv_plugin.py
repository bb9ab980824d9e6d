"""The asv plugin `router.asv`, with real asv (the benchmarks' version) on a small project made here,
through real routers that each run in their own mount namespace where the project's tree is a
fresh tmpfs: whatever reaches the router's host (the checkout, the suite, asv's runner, the result
files) can only have crossed through the router's calls."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from asv.util import sanitize_filename  # type: ignore[import-untyped]

import router
from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient, exit_code
from tests.helpers.asv_project import BENCHMARKS, commit, make_project
from tests.helpers.polling import eventually
from tests.helpers.processes import terminate
from tests.helpers.servers import TASK_ID, router_process, state_token

pytestmark = [pytest.mark.timeout(400),
              pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace per router needs root")]

ASV = [sys.executable, "-m", "asv"]
def plugin_conf(targets: list[str], remote: pathlib.Path) -> dict[str, Any]:
    return {"plugins": [".router.asv"], "environment_type": "router", "router_targets": targets,
            "router_env_dir": str(remote)}


@contextlib.contextmanager
def hidden_router(state: pathlib.Path, hidden: pathlib.Path, key: bytes | None = None) -> Iterator[str]:
    """`router serve` in its own mount namespace, `hidden` covered there by an empty tmpfs; `key`:
    its token key (routers given the same take the same tokens). Yields its HOST:PORT."""
    with hidden_router_process(state, hidden, key) as (_, target):
        yield target


@contextlib.contextmanager
def hidden_router_process(state: pathlib.Path, hidden: pathlib.Path,
                          key: bytes | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """hidden_router's process and HOST:PORT."""
    state.mkdir()
    if key is not None:
        (state / "jwt.key").write_bytes(key)
        (state / "jwt.key").chmod(0o600)
    prefix = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"', str(hidden)]
    with router_process(state, prefix=prefix) as (proc, target):
        yield proc, target


def asv_env(local: pathlib.Path, token: str) -> dict[str, str]:
    """asv's environment as a user's: the plugin from this tree, asv's temporary files in the tree."""
    (local / "home").mkdir(exist_ok=True)
    (local / "tmp").mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(local / "home"), "TMPDIR": str(local / "tmp"), "ROUTER_TOKEN": token,
            "TINY_PASSED": "7", "TINY_OTHER": "8",
            "PYTHONPATH": str(pathlib.Path(router.__file__).parent.parent)}


def asv(project: pathlib.Path, local: pathlib.Path, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`asv ARGS` in the project, as a user would type it."""
    return subprocess.run([*ASV, *args], cwd=project, env=asv_env(local, token), capture_output=True, text=True,
                          timeout=350)


def results(project: pathlib.Path) -> dict[str, dict[str, object]]:
    """Each results file's env name: its benchmarks' first results."""
    found = {}
    for path in (project / ".asv" / "results" / "box").glob("*-router*.json"):
        data = json.loads(path.read_text())
        found[data["env_name"]] = {name: values[0] for name, values in data["results"].items()}
    return found


def test_a_run_through_a_router_gives_the_timing_the_tracked_value_and_the_failure(tmp_path: pathlib.Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    with hidden_router(tmp_path / "state", local) as target:
        project = make_project(local / "project", **plugin_conf([target], remote))
        token = state_token(tmp_path / "state")
        with RouterClient(target, token, TASK_ID) as client:
            client.start("look", ["sh", "-c", 'ls -A "$0"; echo listed', str(project.parent)],
                         stdout_config=pb.TASK_EXEC_STDOUT_CONFIG_PIPE)
            assert exit_code(client.wait("look")) == 0 and b"".join(client.read("look")) == b"listed\n"
        assert asv(project, local, token, "machine", "--yes", "--machine", "box").returncode == 0
        run = asv(project, local, token, "run", "--machine", "box", "--show-stderr")
        assert run.returncode == 2, run.stdout + run.stderr  # asv's status when a benchmark failed
        listed = subprocess.run([sys.executable, "-m", "router.cli", "ls", "--target", target],
                                env=asv_env(local, token), capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        # The router's host recorded as an asv machine; the environments there removed.
        tool = [sys.executable, "-m", "router.asv"]
        recorded = subprocess.run([*tool, "machine", "--machine", "hostbox"], cwd=project, env=asv_env(local, token),
                                  capture_output=True, text=True, timeout=60)
        assert recorded.returncode == 0, recorded.stderr
        machine = json.loads((local / "home" / ".asv-machine.json").read_text())["hostbox"]
        assert machine["num_cpu"] == str(os.cpu_count()) and machine["machine"] == "hostbox"
        assert (remote / "suites").is_dir()
        removed = subprocess.run([*tool, "remove"], cwd=project, env=asv_env(local, token), capture_output=True,
                                 text=True, timeout=60)
        assert removed.returncode == 0 and f"{target}: removed {remote}" in removed.stdout, removed.stderr
        assert not remote.exists()
    assert [env for env in results(project)] == ["router-py3.11"]
    got = results(project)["router-py3.11"]
    assert isinstance(got["bench.time_add"], list) and 0 < got["bench.time_add"][0] < 1
    assert got["bench.track_known"] == [42]
    assert got["bench.time_fails"] is None
    assert "RuntimeError: boom from the benchmark" in run.stdout  # --show-stderr
    # `router ls` shows every benchmark process: asv's runner script, shipped there, run there.
    for name, status in (("bench.time_add", "exit 0"), ("bench.track_known", "exit 0"), ("bench.time_fails", "exit 1")):
        assert any(f"benchmark.py run {remote}" in line and f" {name} " in line and status in line
                   for line in listed.stdout.splitlines()), listed.stdout


def test_two_targets_each_get_their_own_environment(tmp_path: pathlib.Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    with hidden_router(tmp_path / "state1", local) as one:
        token = state_token(tmp_path / "state1")  # one $ROUTER_TOKEN for both: they share the key
        key = (tmp_path / "state1" / "jwt.key").read_bytes()
        with hidden_router(tmp_path / "state2", local, key) as two:
            project = make_project(local / "project", **plugin_conf([one, two], remote))
            assert asv(project, local, token, "machine", "--yes", "--machine", "box").returncode == 0
            run = asv(project, local, token, "run", "--machine", "box", "--parallel", "2")
            ran = {}
            for target in (one, two):
                with RouterClient(target, token, TASK_ID) as client:
                    ran[target] = [" ".join(info.args) for info in client.execs()]
    assert run.returncode == 2, run.stdout + run.stderr
    envs = results(project)
    expected = {target: sanitize_filename(f"router-py3.11-ROUTER_TARGET{target}") for target in (one, two)}
    assert sorted(envs) == sorted(expected.values()), envs
    for target, env in expected.items():
        assert envs[env]["bench.track_known"] == [42]
        # each environment's benchmark processes ran on its own target
        assert any("benchmark.py run" in args and "bench.track_known" in args for args in ran[target])


SLEEPER = BENCHMARKS + '''

def time_sleeps():
    import time
    time.sleep(3600)
time_sleeps.timeout = 3
time_sleeps.repeat = 1
time_sleeps.number = 1

def track_passed():
    import os
    return int(os.environ.get("TINY_PASSED", "-1"))

def track_not_passed():
    import os
    return int(os.environ.get("TINY_OTHER", "-1"))
'''


def running(client: RouterClient, name: str) -> list[ec.ExecInfo]:
    return [info for info in client.execs() if info.running and name in info.args]


def test_asv_check_the_environment_passed_timeouts_and_ctrl_c(tmp_path: pathlib.Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    with hidden_router(tmp_path / "state", local) as target:
        project = make_project(local / "project", SLEEPER, **plugin_conf([target], remote),
                               router_pass_env=["TINY_P*"])
        token = state_token(tmp_path / "state")
        assert asv(project, local, token, "machine", "--yes", "--machine", "box").returncode == 0
        checked = asv(project, local, token, "check")
        assert checked.returncode == 0 and "No problems found" in checked.stdout, checked.stdout + checked.stderr
        # Of asv's own environment, only what router_pass_env names reaches the benchmarks.
        passed = asv(project, local, token, "run", "--machine", "box", "--bench", "passed")
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert results(project)["router-py3.11"]["bench.track_passed"] == [7]
        assert results(project)["router-py3.11"]["bench.track_not_passed"] == [-1]
        run = asv(project, local, token, "run", "--machine", "box", "--bench", "time_sleeps", "--show-stderr")
        assert "asv: benchmark timed out (timeout 3" in run.stdout, run.stdout + run.stderr
        with RouterClient(target, token, TASK_ID) as client:
            assert eventually(lambda: not running(client, "bench.time_sleeps"))
            # Ctrl-C of `asv run` (the terminal's SIGINT goes to asv; its children have groups of their own)
            with open(tmp_path / "asv.out", "wb") as out:
                proc = subprocess.Popen([*ASV, "run", "--machine", "box", "--bench", "time_sleeps"], cwd=project,
                                        env=asv_env(local, token), stdout=out, stderr=subprocess.STDOUT)
                try:
                    assert eventually(lambda: running(client, "bench.time_sleeps"), timeout=60)
                    proc.send_signal(signal.SIGINT)
                    assert proc.wait(timeout=30) != 0
                finally:
                    terminate(proc)
            assert eventually(lambda: not running(client, "bench.time_sleeps"), timeout=10)
        assert "Interrupted" in (tmp_path / "asv.out").read_text()


def test_a_build_error_and_a_router_gone_are_reported_as_asv_reports_them(tmp_path: pathlib.Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    with hidden_router(tmp_path / "state", local) as target:
        project = make_project(local / "project", **plugin_conf([target], remote))
        (project / "setup.py").write_text("raise SystemExit('tinypkg: this commit does not build')\n")
        (project / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=61"]\n'
                                                'build-backend = "setuptools.build_meta"\n')
        commit(project, "broken")
        token = state_token(tmp_path / "state")
        assert asv(project, local, token, "machine", "--yes", "--machine", "box").returncode == 0
        broken = asv(project, local, token, "run", "--machine", "box")
    assert broken.returncode != 0
    assert "tinypkg: this commit does not build" in broken.stdout + broken.stderr
    assert "Failed to build the project" in broken.stdout + broken.stderr
    gone = asv(project, local, token, "run", "--machine", "box")  # the router has stopped
    assert gone.returncode != 0
    assert f"cannot reach the router at {target}" in gone.stdout + gone.stderr, gone.stdout + gone.stderr


def test_a_router_that_stops_mid_benchmark_is_a_failed_benchmark(tmp_path: pathlib.Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    with hidden_router_process(tmp_path / "state", local) as (server, target):
        project = make_project(local / "project", SLEEPER.replace("timeout = 3", "timeout = 300"),
                               **plugin_conf([target], remote))
        token = state_token(tmp_path / "state")
        assert asv(project, local, token, "machine", "--yes", "--machine", "box").returncode == 0
        with open(tmp_path / "asv.out", "wb") as out:
            proc = subprocess.Popen([*ASV, "run", "--machine", "box", "--bench", "time_sleeps", "--show-stderr"],
                                    cwd=project, env=asv_env(local, token), stdout=out, stderr=subprocess.STDOUT)
            try:
                with RouterClient(target, token, TASK_ID) as client:
                    assert eventually(lambda: running(client, "bench.time_sleeps"), timeout=60)
                server.terminate()  # --drain-secs 0: it kills its execs and stops
                assert proc.wait(timeout=60) == 2  # asv's status when a benchmark failed
            finally:
                terminate(proc)
    shown = (tmp_path / "asv.out").read_text()
    assert "bench.time_sleeps" in shown and "failed" in shown, shown
    # killed by the router as it stopped (SIGKILL: 128 + 9), as asv reports a killed local one
    assert "asv: benchmark failed (exit status 137)" in shown, shown


SLOWER = '''
import tinypkg

def time_add():
    tinypkg.add(1, 2)
'''


def test_asv_continuous_and_find_through_a_router(tmp_path: pathlib.Path) -> None:
    """A commit that makes `add` slow: `asv continuous` reports it, `asv find` names it."""
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    with hidden_router(tmp_path / "state", local) as target:
        project = make_project(local / "project", SLOWER, **plugin_conf([target], remote))
        (project / "src" / "tinypkg" / "__init__.py").write_text(
            "import time\n\ndef add(a, b):\n    time.sleep(0.02)\n    return a + b\n")
        commit(project, "slow add")
        slow = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True,
                              check=True).stdout.strip()
        token = state_token(tmp_path / "state")
        assert asv(project, local, token, "machine", "--yes", "--machine", "box").returncode == 0
        cont = asv(project, local, token, "continuous", "--machine", "box", "--quick", "HEAD~1", "HEAD")
        out = cont.stdout + cont.stderr
        assert cont.returncode == 1 and "bench.time_add" in out and "PERFORMANCE DECREASED" in out.upper(), out
        found = asv(project, local, token, "find", "--machine", "box", "HEAD~1..HEAD", "bench.time_add")
        out = found.stdout + found.stderr
        assert found.returncode == 0 and f"Greatest regression found: {slow[:8]}" in out, out
