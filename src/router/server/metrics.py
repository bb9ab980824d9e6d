"""`/metrics` (--metrics-listen): the router's metrics in Prometheus' text format, on an address of
its own since it takes no token (Prometheus' convention). README, "Metrics", lists them.

The counts are kept as plain numbers where things happen (engine/stats.py, call_stats.py); the
collector turns them into metric families at scrape time, with the gauges read then from the
state (running execs, the log filesystem, the journal, the image store, the certificate). With
TLS configured the listener serves HTTPS with the gRPC port's certificate (reloaded with it on
SIGHUP), and requires client certificates too when --tls-client-ca does.
"""
from __future__ import annotations

import http.server
import logging
import os
import pathlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

from router.engine.core import Engine
from router.images.store import Images
from router.tls import ServerTls, TlsFiles

from .call_stats import IMAGE_OPS, ImageOps, RpcStats

logger = logging.getLogger(__name__)

# The image store is walked to size it: again after an image operation, else at most this often
# (`router images gc` in another process changes it too).
IMAGE_STORE_REFRESH_SECS = 60.0
# A scraper that stalls (or never finishes its TLS handshake) is dropped after this long.
REQUEST_TIMEOUT_SECS = 10.0


class RouterCollector(Collector):
    """Every router_* metric family, read at each scrape."""

    def __init__(self, engine: Engine, rpcs: RpcStats, image_ops: ImageOps, images: Images, log_dir: pathlib.Path,
                 journal_path: pathlib.Path | None, tls: ServerTls | None) -> None:
        self._engine, self._rpcs, self._image_ops, self._images = engine, rpcs, image_ops, images
        self._log_dir, self._journal_path, self._tls = log_dir, journal_path, tls
        self._store_bytes = (-1, 0.0, 0)  # (image operations then, when, bytes)
        self._store_lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        yield from self._execs()
        yield from self._storage()
        yield _histogram("router_rpc_duration_seconds", "Duration of RPCs (both services) by method and status code.",
                         ["method", "code"], [((m, c), b, s) for m, c, b, s in self._rpcs.snapshot()])
        ops = CounterMetricFamily("router_image_operations", "Image operations by outcome (ok, or the status code "
                                  "name in lowercase).", labels=["op", "result"])
        counts = {(op, "ok"): 0 for op in IMAGE_OPS} | self._image_ops.snapshot()
        for (op, result), n in sorted(counts.items()):
            ops.add_metric([op, result], n)
        yield ops
        yield GaugeMetricFamily("router_image_store_bytes", "Disk the image store's blobs and records occupy.",
                                value=self._image_store_bytes())
        yield GaugeMetricFamily("router_mounts_active", "Images mounted now.", value=len(self._images.mount_paths()))
        if self._tls is not None:
            yield GaugeMetricFamily("router_tls_certificate_expiry_seconds",
                                    "Seconds until the served TLS certificate expires (negative: expired).",
                                    value=self._tls.not_after - time.time())

    def _execs(self) -> Iterator[Metric]:
        stats = self._engine.registry.stats
        started = CounterMetricFamily("router_execs_started", "Execs started (ok), or whose process could not be "
                                      "started (failed).", labels=["result"])
        started.add_metric(["ok"], stats.started_ok)
        started.add_metric(["failed"], stats.start_failed)
        yield started
        finished = CounterMetricFamily("router_execs_finished", "Execs ended, by exit cause.", labels=["cause"])
        for cause, n in list(stats.finished.items()):
            finished.add_metric([cause.value], n)
        yield finished
        yield GaugeMetricFamily("router_execs_running", "Execs admitted and not yet exited.",
                                value=self._engine.running_count)
        durations = stats.durations
        yield _histogram("router_exec_duration_seconds", "Seconds from an exec's start to its leader's exit.", [],
                         [((), durations.cumulative(), durations.sum)])
        output = CounterMetricFamily("router_output_bytes", "Output bytes written to execs' logs, by stream.",
                                     labels=["stream"])
        for stream, n in list(stats.output_bytes.items()):
            output.add_metric([stream], n)
        yield output
        yield CounterMetricFamily("router_stdin_bytes", "Stdin bytes accepted for running execs.",
                                  value=stats.stdin_bytes)

    def _storage(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("router_log_retained_bytes", "Output bytes finished execs hold (--retain-bytes).",
                                value=self._engine.registry.stats.retained_bytes())
        try:
            fs = os.statvfs(self._log_dir)
        except OSError:
            pass
        else:
            yield GaugeMetricFamily("router_log_filesystem_free_bytes", "Bytes free (to the router) on the log "
                                    "filesystem.", value=fs.f_bavail * fs.f_frsize)
        yield GaugeMetricFamily("router_log_filesystem_full", "1 while the log filesystem is full and room is "
                                "being made, else 0.", value=int(self._engine.log_full))
        if self._journal_path is not None:
            yield GaugeMetricFamily("router_journal_bytes", "Size of the journal (and of a compaction in progress).",
                                    value=sum(_size(p) for p in (self._journal_path,
                                                                 self._journal_path.with_name("journal.tmp"))))

    def _image_store_bytes(self) -> int:
        with self._store_lock:
            changes, at, size = self._store_bytes
            now = time.monotonic()
            if changes != self._image_ops.changes or now - at > IMAGE_STORE_REFRESH_SECS:
                changes = self._image_ops.changes  # before the walk: an operation during it counts again
                size = self._images.backend.stored_bytes()
                self._store_bytes = (changes, now, size)
            return size


def _histogram(name: str, documentation: str, labels: list[str],
               series: list[tuple[tuple[str, ...], list[tuple[str, int]], float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, buckets, total in series:
        family.add_metric(list(values), buckets, total)
    return family


def _size(path: pathlib.Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """The gRPC port's certificate for HTTPS; with a client CA, client certificates required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    if files.client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(files.client_ca)
    return context


class _HttpServer(http.server.ThreadingHTTPServer):
    """A thread per scrape (joined at close), TLS handshakes in that thread, not the accepting one."""

    ssl_context: ssl.SSLContext | None = None
    daemon_threads = False  # server_close() joins them: no scrape outlives the server

    def __init__(self, address: tuple[Any, ...], family: socket.AddressFamily, registry: CollectorRegistry,
                 reuse_port: bool) -> None:
        self.address_family = family
        self._reuse_port = reuse_port
        super().__init__(address, MetricsHandler.factory(registry))

    def server_bind(self) -> None:
        if self._reuse_port:  # a successor in a handover: its predecessor still listens here
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(REQUEST_TIMEOUT_SECS)
        context = self.ssl_context
        if context is None:
            super().finish_request(request, client_address)
            return
        with context.wrap_socket(request, server_side=True) as secure:
            super().finish_request(secure, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that went away, a failed handshake: not the router's trouble.
        logger.debug("metrics request from %s failed", client_address, exc_info=True)


class MetricsServer:
    """`/metrics` on HOST:PORT: `start()` (then `port` is known), `stop()`."""

    def __init__(self, listen: str, collector: Collector, tls: ServerTls | None, tls_files: TlsFiles) -> None:
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)  # CPU, memory, descriptors
        self._tls_files = tls_files if tls is not None else None
        if tls is not None:
            tls.reloaded.append(self.reload_tls)
        self.port = 0
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._tls_files is not None else "http"

    def start(self, reuse_port: bool = False) -> None:
        """OSError if the address cannot be listened on. `reuse_port`: share it with the process this
        one takes over from (SO_REUSEPORT, which that one set on its own listener for the switch)."""
        host, _, port = self.listen.rpartition(":")
        try:
            family, _, _, _, address = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
            server = _HttpServer(address, family, self.registry, reuse_port)
        except OSError as e:
            raise OSError(e.errno, f"cannot serve metrics on {self.listen}: {e.strerror}") from None
        if self._tls_files is not None:
            server.ssl_context = ssl_context(self._tls_files)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="router-metrics", daemon=True)
        self._thread.start()

    def reload_tls(self) -> None:
        """The certificate files changed (and loaded for gRPC): new connections get them."""
        if self._server is not None and self._tls_files is not None:
            try:
                self._server.ssl_context = ssl_context(self._tls_files)
            except (OSError, ssl.SSLError) as e:
                logger.error("TLS reload for /metrics failed, still serving the previous certificate: %s", e)

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None and thread is not None:
            server.shutdown()
            thread.join()
            server.server_close()  # joins the scrapes in flight
