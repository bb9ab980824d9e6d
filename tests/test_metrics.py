"""`/metrics` (--metrics-listen): a workload's exact counts, read from the router directly and through
a real Prometheus server that scraped it; TLS, the loopback rule, a busy address, execs found lost."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router import auth
from router._proto import task_command_router_pb2 as pb
from router.client import STDERR, RouterClient
from router.config import ServerConfig, read_server_info
from router.server.grpc_server import RouterServer
from router.tls import TlsFiles
from tests.helpers.certs import CA, write
from tests.helpers.execs import PIPES
from tests.helpers.grpc_raw import Raw
from tests.helpers.polling import eventually
from tests.helpers.processes import run_router, terminate
from tests.helpers.servers import TASK_ID, free_port, hand_over, router_process, running, state_token

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# What `workload` leaves, sample by sample (labels as a dict); every cause not named here is 0.
EXPECTED: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
    ("router_execs_started_total", (("result", "ok"),)): 13,
    ("router_execs_started_total", (("result", "failed"),)): 1,
    ("router_execs_finished_total", (("cause", "exited"),)): 10,
    ("router_execs_finished_total", (("cause", "killed"),)): 2,
    ("router_execs_finished_total", (("cause", "timed_out"),)): 1,
    ("router_execs_finished_total", (("cause", "failed_to_start"),)): 1,
    ("router_execs_finished_total", (("cause", "signalled"),)): 0,
    ("router_execs_finished_total", (("cause", "lost"),)): 0,
    ("router_execs_finished_total", (("cause", "shutdown"),)): 0,
    ("router_execs_finished_total", (("cause", "oom"),)): 0,
    ("router_execs_running", ()): 0,
    ("router_exec_duration_seconds_count", ()): 14,
    ("router_output_bytes_total", (("stream", "stdout"),)): 5 + 12 + 2,
    ("router_output_bytes_total", (("stream", "stderr"),)): 3,
    ("router_stdin_bytes_total", ()): 12,
    ("router_log_filesystem_full", ()): 0,
    ("router_rpc_duration_seconds_count", (("code", "OK"), ("method", "TaskExecStart"))): 14,
    ("router_rpc_duration_seconds_count", (("code", "OK"), ("method", "TaskExecStdinWrite"))): 1,
    ("router_rpc_duration_seconds_count", (("code", "NOT_FOUND"), ("method", "TaskExecPoll"))): 1,
    ("router_rpc_duration_seconds_count", (("code", "UNAUTHENTICATED"), ("method", "TaskExecPoll"))): 1,
    ("router_rpc_duration_seconds_count", (("code", "OK"), ("method", "Kill"))): 2,
    ("router_rpc_duration_seconds_count", (("code", "CANCELLED"), ("method", "TaskExecStdioRead"))): 1,
    ("router_image_operations_total", (("op", "snapshot"), ("result", "ok"))): 1,
    ("router_image_operations_total", (("op", "snapshot"), ("result", "not_found"))): 1,
    ("router_image_operations_total", (("op", "mount"), ("result", "ok"))): 1,
    ("router_image_operations_total", (("op", "unmount"), ("result", "ok"))): 1,
    ("router_mounts_active", ()): 0,
}


def workload(client: RouterClient, raw: Raw, tmp_path: pathlib.Path) -> None:
    """Execs of every kind, stdin, a NOT_FOUND and an UNAUTHENTICATED call, a read the client
    cancels, image operations: EXPECTED."""
    ids = [f"true-{i}" for i in range(5)] + [f"three-{i}" for i in range(3)]
    for exec_id in ids:
        client.start(exec_id, ["true"] if exec_id.startswith("true") else ["sh", "-c", "exit 3"], **PIPES)
    client.start("out", ["sh", "-c", "printf 12345; printf abc >&2"], **PIPES)
    client.start("cat", ["cat"], **PIPES)
    client.write_stdin("cat", 0, b"hello world\n", eof=True)
    client.start("missing", ["/nonexistent/router-test-binary"], **PIPES)
    client.start("timeout", ["sleep", "60"], **PIPES, timeout_secs=1)
    client.start("killed", ["sleep", "60"], **PIPES)
    client.kill("killed")
    for exec_id in [*ids, "out", "cat", "missing", "timeout", "killed"]:
        client.wait(exec_id)
    # Read to the end, so that every byte was drained (an exit is published before its output ends).
    assert b"".join(client.read("out")) + b"".join(client.read("out", STDERR)) == b"12345abc"
    assert b"".join(client.read("cat")) == b"hello world\n"
    poll = pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="absent")
    assert raw.code("TaskExecPoll", poll) == grpc.StatusCode.NOT_FOUND
    assert raw.code("TaskExecPoll", poll, metadata=(("authorization", "Bearer nope"),)) == \
        grpc.StatusCode.UNAUTHENTICATED
    client.start("followed", ["sh", "-c", "echo x; exec sleep 60"], **PIPES)
    read = raw.call("TaskExecStdioRead", pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="followed"))
    next(read)  # the server's handler runs: a cancel before it did would never reach it
    read.cancel()  # while the read waits for more output
    client.kill("followed")
    tree, target = tmp_path / "tree", tmp_path / "mnt"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"hello\n")
    image = raw.call("TaskSnapshotDirectory", pb.TaskSnapshotDirectoryRequest(task_id=TASK_ID, path=bytes(tree)))
    missing = pb.TaskSnapshotDirectoryRequest(task_id=TASK_ID, path=bytes(tmp_path / "missing"))
    assert raw.code("TaskSnapshotDirectory", missing) == grpc.StatusCode.NOT_FOUND
    raw.call("TaskMountDirectory", pb.TaskMountDirectoryRequest(task_id=TASK_ID, path=bytes(target),
                                                                image_id=image.image_id))
    raw.call("TaskUnmountDirectory", pb.TaskUnmountDirectoryRequest(task_id=TASK_ID, path=bytes(target)))


def scrape(url: str, context: ssl.SSLContext | None = None) -> Samples:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape_once_more(url: str) -> Samples:
    """A scrape tried again after a connection the port's switch reset (Prometheus tries at the next interval)."""
    try:
        return scrape(url)
    except (ConnectionError, urllib.error.URLError):
        time.sleep(0.2)
        return scrape(url)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def expected_in(samples: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float | None]:
    """EXPECTED's samples as `samples` has them (None where missing), to compare with EXPECTED."""
    return {key: samples.get((key[0], frozenset(key[1]))) for key in EXPECTED}


@contextlib.contextmanager
def metered_router(tmp_path: pathlib.Path, *flags: str) -> Iterator[tuple[str, RouterClient, Raw]]:
    """`router serve --metrics-listen 127.0.0.1:0` in its own process: its /metrics URL, a client, a raw stub."""
    state = tmp_path / "state"
    with router_process(state, "--metrics-listen", "127.0.0.1:0", "--mount-method", "copy", *flags) as (_, listen):
        info = read_server_info(state)
        assert info is not None and info.metrics.startswith("http://127.0.0.1:")
        token = state_token(state)
        client = RouterClient(listen, token, TASK_ID, retries=0)
        try:
            with Raw(int(listen.rsplit(":", 1)[1]), token) as raw:
                yield info.metrics, client, raw
        finally:
            client.close()


@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_a_workload_s_exact_counts(tmp_path: pathlib.Path, mode: str) -> None:
    with metered_router(tmp_path, "--server-mode", mode) as (url, client, raw):
        before = scrape(url)
        assert value(before, "router_execs_started_total", result="ok") == 0
        workload(client, raw, tmp_path)
        # The server learns of the cancelled read a moment after the client gave it up.
        assert eventually(lambda: expected_in(scrape(url)) == EXPECTED), expected_in(scrape(url))
        samples = scrape(url)
    # The timed-out exec ran a second: its bucket and the sum say so.
    assert value(samples, "router_exec_duration_seconds_bucket", le="0.5") <= 13
    assert value(samples, "router_exec_duration_seconds_sum") >= 1.0
    assert value(samples, "router_exec_duration_seconds_bucket", le="+Inf") == 14
    assert value(samples, "router_log_retained_bytes") >= 5 + 12 + 3  # finished execs' output, kept
    assert value(samples, "router_log_filesystem_free_bytes") > 0
    assert value(samples, "router_journal_bytes") > 0
    assert value(samples, "router_image_store_bytes") > 0
    assert value(samples, "process_open_fds") > 0 and value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_cpu_seconds_total") > 0
    assert ("router_tls_certificate_expiry_seconds", frozenset()) not in samples  # no TLS, no certificate


# -- a real Prometheus -----------------------------------------------------------------------------


def prometheus_query(base: str, query: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's vector: each series' labels (without __name__, job, instance) -> value."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("__name__", "job", "instance"))):
            float(r["value"][1]) for r in answer["data"]["result"]}


@contextlib.contextmanager
def prometheus(tmp_path: pathlib.Path, target: str) -> Iterator[str]:
    """A Prometheus server scraping `target` every 0.25 s: its base URL. Killed after the block."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is missing: .ci/run installs it (Debian's package)")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 250ms\n  scrape_timeout: 200ms\n"
                      "scrape_configs:\n  - job_name: router\n"
                      f"    static_configs:\n      - targets: ['{target}']\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        def ready() -> bool:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
                return r.status == 200
            return False

        assert eventually(ready, timeout=15), (tmp_path / "prometheus.log").read_text()[-2000:]
        yield base
    finally:
        terminate(proc, 10)


def test_prometheus_scrapes_the_workload_s_exact_counts(tmp_path: pathlib.Path) -> None:
    with metered_router(tmp_path) as (url, client, raw):
        target = urllib.parse.urlsplit(url).netloc
        with prometheus(tmp_path, target) as base:
            assert eventually(lambda: prometheus_query(base, 'up{job="router"}') == {(): 1.0}, timeout=10)
            workload(client, raw, tmp_path)
            done = scrape(url)  # what the router says now: Prometheus must come to the same
            expected = {(name, labels): v for (name, labels), v in EXPECTED.items()}

            def seen() -> dict[tuple[str, tuple[tuple[str, str], ...]], float | None]:
                by_name = {name: prometheus_query(base, name) for name in {name for name, _ in expected}}
                return {(name, labels): by_name[name].get(labels) for name, labels in expected}

            assert eventually(lambda: seen() == expected, timeout=10), \
                {key: (got, expected[key]) for key, got in seen().items() if got != expected[key]}
            scraped_at = prometheus_query(base, "router_exec_duration_seconds_bucket")
            assert scraped_at[(("le", "+Inf"),)] == 14 == value(done, "router_exec_duration_seconds_count")
            assert prometheus_query(base, "process_open_fds")[()] > 0


# -- TLS, the loopback rule, the address, execs found lost -----------------------------------------


def test_https_with_the_grpc_certificate_and_its_expiry(tmp_path: pathlib.Path) -> None:
    ca = CA("metrics test CA")
    pki = tmp_path / "pki"
    pki.mkdir()
    cert, key = ca.issue("router", server=True)
    client_cert, client_key = ca.issue("client", server=False)
    files = TlsFiles(cert=write(pki, "server.pem", cert), key=write(pki, "server.key", key),
                     client_ca=write(pki, "ca.pem", ca.pem()))
    with running(tmp_path, tls=files, metrics_listen="127.0.0.1:0") as (server, _):
        url = server.metrics_url
        assert url.startswith("https://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=files.client_ca)
        # mTLS: no client certificate, no metrics (TLS 1.3 says so after the handshake, at the first read)
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            scrape(url, trusting)
        trusting.load_cert_chain(write(pki, "client.pem", client_cert), write(pki, "client.key", client_key))
        samples = scrape(url, trusting)
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # never plaintext
            scrape(url.replace("https:", "http:"))
    # The CA's certificates are valid for a day from five minutes ago.
    assert 86400 - 600 < value(samples, "router_tls_certificate_expiry_seconds") <= 86400


def test_a_non_loopback_metrics_address_needs_tls_or_insecure(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    key = auth.load_or_create_key(state)
    with pytest.raises(ValueError, match="--metrics-listen"):
        RouterServer(ServerConfig(state_dir=str(state), task_id=TASK_ID, listen="127.0.0.1:0",
                                  metrics_listen="0.0.0.0:0"), key)
    out = run_router("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0")
    assert out.returncode == 2 and b"--insecure" in out.stderr


def test_metrics_are_off_by_default_and_a_busy_address_is_named(tmp_path: pathlib.Path) -> None:
    with router_process(tmp_path / "quiet") as (proc, _):
        info = read_server_info(tmp_path / "quiet")
        assert info is not None and info.metrics == ""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        out = run_router("serve", "--state-dir", str(tmp_path / "busy"), "--listen", "127.0.0.1:0",
                         "--metrics-listen", address)
    assert out.returncode == 1 and f"cannot serve metrics on {address}".encode() in out.stderr, out.stderr


def test_execs_a_dead_router_left_running_count_as_lost(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    with router_process(state) as (proc, listen):
        client = RouterClient(listen, state_token(state), TASK_ID, retries=0)
        try:
            client.start("sleeper", ["sleep", "60"], **PIPES)
        finally:
            client.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with metered_router(tmp_path) as (url, _, _):
        samples = scrape(url)
    assert value(samples, "router_execs_finished_total", cause="lost") == 1
    assert value(samples, "router_execs_started_total", result="ok") == 0
    assert value(samples, "router_exec_duration_seconds_count") == 0  # how long it ran is not known


def test_metrics_keep_their_port_across_a_handover(tmp_path: pathlib.Path) -> None:
    """The successor listens on the same metrics port (shared with SO_REUSEPORT for the switch) and
    counts from its own start, the execs it adopted included."""
    state, port = tmp_path / "state", free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with router_process(state, "--metrics-listen", f"127.0.0.1:{port}") as (keeper, listen):
        with RouterClient(listen, state_token(state), TASK_ID) as client:
            client.start("sleeper", ["sleep", "60"], **PIPES)
            client.start("quick", ["true"], **PIPES)
            client.wait("quick")
            before = scrape(url)
            assert value(before, "router_execs_started_total", result="ok") == 2
            assert value(before, "router_execs_running") == 1
            new = hand_over(keeper, state)
            info = read_server_info(state)
            assert info is not None and (info.pid, info.metrics) == (new, url)
            after = scrape_once_more(url)
            assert value(after, "router_execs_running") == 1  # the adopted one
            assert value(after, "router_execs_started_total", result="ok") == 0  # started by the old process
            client.kill("sleeper")
            assert value(scrape(url), "router_execs_finished_total", cause="killed") == 1
    assert keeper.returncode == 0
