"""`router batch` over a fleet of real routers: one killed, one restarted, one draining, a targets
file edited mid-run, dns: targets, and a run with no router left; plus `router.client.targets`."""
from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence

import grpc
import pytest

from router.client import AsyncRouterClient, RouterClient
from router.client.targets import Spec, TargetError, Targets
from router.errors import RouterError
from tests.helpers.polling import eventually
from tests.helpers.processes import ROUTER
from tests.helpers.servers import TASK_ID, router_process, serving, state_token
from tests.test_batch import by_seq, joblog, lines, target_at

# Short enough for a test; the default is 30 s.
TIMEOUT = "3"


def shared_key(first: pathlib.Path, *others: pathlib.Path) -> str:
    """One token for every router: the key of `first` (a state directory) copied to the others."""
    first.mkdir(parents=True, exist_ok=True)
    token = state_token(first)
    for other in others:
        other.mkdir(parents=True, exist_ok=True)
        shutil.copy(first / "jwt.key", other / "jwt.key")
    return token


def jobs(ran: pathlib.Path, count: int, secs: float) -> pathlib.Path:
    """A file of jobs that note each start of theirs in `ran` (so a rerun shows), then take `secs` and
    print their seq."""
    path = ran.with_name("jobs")
    path.write_bytes(lines(*[f"echo {i} >> {ran}; sleep {secs}; echo {i}" for i in range(1, count + 1)]))
    return path


@contextlib.contextmanager
def batch_running(token: str, targets: Sequence[str], *flags: str,
                  source: pathlib.Path) -> Iterator[subprocess.Popen[bytes]]:
    """`router batch` in its own process; killed after the block if it still runs."""
    args = [f for t in targets for f in ("--target", t)]
    run = subprocess.Popen([*ROUTER, "batch", *args, "--token", token, "--target-timeout", TIMEOUT, *flags,
                            str(source)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield run
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()


def rows_reach(log: pathlib.Path, count: int, timeout: float = 30) -> None:
    assert eventually(lambda: log.exists() and len(joblog(log)) >= count, timeout), f"fewer than {count} rows"


def starts(ran: pathlib.Path) -> list[int]:
    return [int(x) for x in ran.read_text().split()]


def finish(run: subprocess.Popen[bytes]) -> tuple[int, str]:
    _, err = run.communicate(timeout=45)
    return run.returncode, err.decode()


@pytest.mark.timeout(90)
def test_600_jobs_while_one_router_is_killed_and_another_restarted(tmp_path: pathlib.Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    token = shared_key(a, b, c)
    log, results, ran = tmp_path / "log", tmp_path / "results", tmp_path / "ran"
    with contextlib.ExitStack() as stack:
        (proc_a, at_a), (proc_b, at_b), (_, at_c) = (stack.enter_context(router_process(d)) for d in (a, b, c))
        with batch_running(token, [at_a, at_b, at_c], "-j", "24", "--joblog", str(log), "--results", str(results),
                           source=jobs(ran, 600, 0.3)) as run:
            rows_reach(log, 60)
            proc_a.send_signal(signal.SIGKILL)  # router and serving process: gone for good
            killed = time.time()
            rows_reach(log, 200)
            proc_b.send_signal(signal.SIGKILL)
            proc_b.wait()
            restarted = time.time()
            stack.enter_context(router_process(b, "--listen", at_b))  # the same address, the same journal
            code, err = finish(run)
    assert code == 0, err[-3000:]
    assert f"{at_a} set aside (no answer for 3 s)" in err, err
    assert f"{at_b} set aside (it lost a job" in err and f"{at_b} is back" in err, err  # its journal said so
    rows = by_seq(joblog(log))
    assert sorted(rows) == list(range(1, 601)) and {r[6] for r in rows.values()} == {"0"}
    hosts = {seq: row[1] for seq, row in rows.items()}
    # a's jobs after the kill, and those it was running then, ran again on b or c: the joblog names where.
    assert all(float(rows[s][2]) < killed for s, h in hosts.items() if h == at_a)
    rerun = {s for s in starts(ran) if starts(ran).count(s) > 1}
    assert rerun and all(hosts[s] != at_a for s in rerun), (rerun, err)
    # b came back after its restart and took jobs again.
    assert any(h == at_b and float(rows[s][2]) > restarted for s, h in hosts.items()), err
    for seq in range(1, 601):
        assert (results / str(seq) / "stdout").read_text() == f"{seq}\n"
        assert (results / str(seq) / "exit").read_text() == "0\n"


@pytest.mark.timeout(60)
def test_a_router_back_without_its_jobs_has_them_run_again(tmp_path: pathlib.Path) -> None:
    """Killed, and back on the same address with no journal: its jobs are unknown to it (NOT_FOUND),
    so they run again (there, the only target) without using up --retries."""
    log, ran = tmp_path / "log", tmp_path / "ran"
    token = state_token(tmp_path)
    with contextlib.ExitStack() as stack:
        proc, listen = stack.enter_context(router_process(tmp_path, "--no-journal"))
        with batch_running(token, [listen], "-j", "4", "--joblog", str(log), source=jobs(ran, 12, 1.0)) as run:
            assert eventually(lambda: ran.exists() and len(starts(ran)) >= 4, 20)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stack.enter_context(router_process(tmp_path, "--no-journal", "--listen", listen))
            code, err = finish(run)
    assert code == 0, err
    # Its Watch finds the jobs unknown; or, when the kill came before the BatchStart was answered,
    # the start itself failed: either way those jobs run again.
    assert (f"{listen} set aside (it came back without its jobs)" in err and f"{listen} is back" in err
            or f"{listen} did not take" in err), err
    rows = by_seq(joblog(log))
    assert sorted(rows) == list(range(1, 13)) and {r[6] for r in rows.values()} == {"0"}
    assert len(starts(ran)) > 12  # the first four at least twice


@pytest.mark.timeout(60)
def test_a_targets_file_edited_mid_run(tmp_path: pathlib.Path) -> None:
    dirs = [tmp_path / n for n in "abc"]
    for d in dirs:
        d.mkdir()
    log, ran, listing = tmp_path / "log", tmp_path / "ran", tmp_path / "targets"
    with target_at(dirs[0]) as a:
        shared_key(dirs[0] / "state", *(d / "state" for d in dirs[1:]))
        with target_at(dirs[1]) as b, target_at(dirs[2]) as c:
            listing.write_text(f"# the fleet\n{a.listen}\n\n{b.listen}\n")
            with batch_running(a.token, [], "--targets-file", str(listing), "-j", "6", "--joblog", str(log),
                               source=jobs(ran, 150, 0.2)) as run:
                rows_reach(log, 20)
                partial = listing.with_suffix(".new")
                partial.write_text(f"{a.listen}\n{c.listen}\n")
                os.replace(partial, listing)
                edited = time.time()
                code, err = finish(run)
            on_b = len(list(b.client.execs()))
    assert code == 0, err
    assert f"{c.listen} added" in err and f"{b.listen} removed" in err, err
    rows = by_seq(joblog(log))
    assert sorted(rows) == list(range(1, 151)) and {r[6] for r in rows.values()} == {"0"}
    started = {host: [float(r[2]) for r in rows.values() if r[1] == host] for host in (a.listen, b.listen, c.listen)}
    assert started[c.listen] and min(started[c.listen]) > edited  # the added one got jobs
    assert started[b.listen] and max(started[b.listen]) < edited + 1.5  # the removed one no new ones
    assert on_b == len(started[b.listen])  # and those it ran finished there, each once
    assert sorted(starts(ran)) == list(range(1, 151))


@pytest.mark.timeout(60)
def test_a_draining_router_gets_no_new_jobs_and_finishes_its_own(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").mkdir()
    log, ran = tmp_path / "log", tmp_path / "ran"
    with target_at(tmp_path / "a") as a:
        shared_key(tmp_path / "a" / "state", tmp_path / "b")
        with router_process(tmp_path / "b", drain_secs=60) as (proc_b, at_b), \
                batch_running(a.token, [a.listen, at_b], "-j", "8", "--joblog", str(log),
                              source=jobs(ran, 120, 0.4)) as run:
            rows_reach(log, 16)
            proc_b.send_signal(signal.SIGTERM)  # drains: NOT_SERVING, its running execs go on
            draining = time.time()
            code, err = finish(run)
            assert proc_b.wait(15) == 0
    assert code == 0, err
    rows = by_seq(joblog(log))
    assert sorted(rows) == list(range(1, 121)) and {r[6] for r in rows.values()} == {"0"}
    on_b = [r for r in rows.values() if r[1] == at_b]
    assert max(float(r[2]) for r in on_b) < draining + 1.0  # none started once it said NOT_SERVING
    assert any(float(r[2]) + float(r[3]) > draining for r in on_b)  # those it was running ended there
    assert sorted(starts(ran)) == list(range(1, 121))  # nothing ran twice


@pytest.mark.timeout(60)
def test_dns_targets_resolve_on_loopback(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "log"
    with target_at(tmp_path) as a:
        port = a.listen.rsplit(":", 1)[1]
        addresses = {info[4][0] for info in socket.getaddrinfo("localhost", int(port), type=socket.SOCK_STREAM)}
        assert "127.0.0.1" in addresses
        assert Targets([f"dns:localhost:{port}"]).current()[0] == a.listen  # IPv4 first
        result = subprocess.run([*ROUTER, "batch", "--target", f"dns:localhost:{port}", "--token", a.token,
                                 "--target-timeout", TIMEOUT, "--joblog", str(log)],
                                input=lines(*[f"echo {i}" for i in range(50)]), capture_output=True, timeout=40,
                                check=False)
    assert result.returncode == 0, result.stderr
    hosts = {row[1] for row in joblog(log)}
    assert hosts == {a.listen}  # (::1, if localhost has it here and nothing listens there, got none)
    unresolved = subprocess.run([*ROUTER, "batch", "--target", "dns:no-such-name.invalid:50051", "--token", a.token,
                                 "--connect-timeout", "1"], input=b"true\n", capture_output=True, timeout=30,
                                check=False)
    assert unresolved.returncode == 255
    assert unresolved.stderr == b"router batch: cannot reach any target (none resolved) (within 1 s)\n"


@pytest.mark.timeout(60)
def test_255_once_no_target_has_answered_for_the_target_timeout(tmp_path: pathlib.Path) -> None:
    log, source = tmp_path / "log", tmp_path / "jobs"
    source.write_bytes(lines("true", *["sleep 30"] * 4))
    token = state_token(tmp_path)
    with router_process(tmp_path) as (proc, listen), \
            batch_running(token, [listen], "-j", "2", "--joblog", str(log), source=source) as run:
        rows_reach(log, 1)
        proc.send_signal(signal.SIGKILL)
        gone = time.monotonic()
        code, err = finish(run)
        took = time.monotonic() - gone
    assert code == 255, err
    assert f"no target has answered for 3 s (--target-timeout {TIMEOUT})" in err, err
    assert float(TIMEOUT) <= took < float(TIMEOUT) + 10
    assert sorted(by_seq(joblog(log))) == [1]  # --resume runs the rest


def test_targets_from_specs_and_a_file_read_again_when_it_changes(tmp_path: pathlib.Path) -> None:
    listing = tmp_path / "targets"
    listing.write_text("10.0.0.1:50051\n# a comment\n127.0.0.1:1\n  [fd00::2]:50051  \n")
    targets = Targets(["127.0.0.1:1"], [listing])
    assert targets.current() == ["127.0.0.1:1", "10.0.0.1:50051", "[fd00::2]:50051"]  # in order, each once
    listing.write_text("10.0.0.3:7\n")
    assert targets.current() == ["127.0.0.1:1", "10.0.0.3:7"]
    listing.write_text("not a target\n")  # a bad edit keeps the last good list, and says why
    assert targets.current() == ["127.0.0.1:1", "10.0.0.3:7"]
    assert targets.problems == [f"{listing}:1: not HOST:PORT or dns:NAME:PORT with a port in 1-65535: "
                                "'not a target'"]
    listing.unlink()
    assert targets.current() == ["127.0.0.1:1", "10.0.0.3:7"] and "No such file" in targets.problems[0]
    assert Spec.parse("dns:svc.ns.svc.cluster.local:50051") == Spec("svc.ns.svc.cluster.local", 50051, dns=True)
    assert Spec("::1", 5).address() == "[::1]:5" and Spec.parse("[::1]:5").address() == "[::1]:5"
    for bad in ("host", "host:0", "host:70000", "dns:name", ":5", "dns::5"):
        with pytest.raises(TargetError):
            Spec.parse(bad)
    with pytest.raises(TargetError, match="cannot read the targets file"):
        Targets(files=[tmp_path / "missing"])
    with pytest.raises(TargetError, match="no target given"):
        Targets()


def test_ready_is_the_routers_readiness(tmp_path: pathlib.Path) -> None:
    async def ready_async(port: int, token: str) -> bool:
        async with AsyncRouterClient(f"127.0.0.1:{port}", token, TASK_ID, retries=0) as client:
            return await client.ready()

    with serving(tmp_path) as (server, client, raw):
        assert client.ready() and asyncio.run(ready_async(server.port, raw.token))
        server.refuse_new_execs(RouterError(grpc.StatusCode.UNAVAILABLE, "handing over"))
        assert eventually(lambda: not client.ready())  # (set on the server's loop thread)
        assert not asyncio.run(ready_async(server.port, raw.token))
        server.refuse_new_execs(None)
        assert eventually(client.ready)
    with RouterClient("127.0.0.1:1", "token", TASK_ID) as nobody, pytest.raises(grpc.RpcError) as error:
        nobody.ready(timeout=2)  # asked once, not retried
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_refused_token_ends_the_run_naming_the_router(tmp_path: pathlib.Path) -> None:
    """An error no other router would mend is not a router to set aside: one line, 255, as before fleets."""
    with target_at(tmp_path) as a:
        result = subprocess.run([*ROUTER, "batch", "--target", a.listen, "--token", "not-a-token"],
                                input=b"true\n", capture_output=True, timeout=30, check=False)
    assert result.returncode == 255, result.stderr
    assert result.stderr.startswith(f"router batch: the router at {a.listen} refused the token (given)".encode())
    assert result.stderr.count(b"\n") == 1
