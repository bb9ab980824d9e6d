"""The router's gRPC server: the engine, the TaskCommandRouter service, health and reflection.

Two modes drive the same RPC bodies (service.py) through thin adapters (handlers.py):
- "aio" (default): grpc.aio on a uvloop loop in a thread of its own: one thread serves every call,
  while the engine's loop thread spawns and drains beside it.
- "threads": grpcio's synchronous server, one pool thread per call in flight.
benchmarks/HISTORY.md, "Server modes side by side", has the measurements behind the default.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import pathlib
import threading
from typing import TYPE_CHECKING, Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from router import tls
from router.auth import Authenticator, verification_key
from router.config import ServerConfig, lock_state_dir
from router.engine.adoption import Adoption
from router.engine.core import Engine
from router.engine.descriptors import raise_open_file_limit
from router.engine.retention import Retention
from router.engine.spawn import exec_user
from router.errors import RouterError
from router.images.opening import StoreFlags, open_images
from router.secretstore import SecretError, SecretStore, secrets_dir
from router.tls import ServerTls, is_loopback

from . import control, drain
from .call_stats import RpcStats
from .handlers import Handlers
from .service import METHODS, SERVICE_NAME, Service
from .status import ServerStatus

if TYPE_CHECKING:
    from .metrics import MetricsServer

logger = logging.getLogger(__name__)

# Liveness, probed apart from readiness (the overall service ""): see _health_statuses.
LIVENESS_SERVICE = "router.liveness"
REFLECTED = (SERVICE_NAME, control.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)


def server_options(config: ServerConfig, reuse_port: bool = False) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", config.max_receive_message_size),
        ("grpc.max_send_message_length", config.max_receive_message_size),
        # Modal's client pings every 30 s, even with no call in flight.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # The default (1000) cancels a third of a 4000-call burst.
        ("grpc.server.max_pending_requests", 65_536),
        ("grpc.server.max_pending_requests_hard_limit", 65_536),
        # Only a successor taking over shares its predecessor's port (router.handover.listeners).
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
    ]


class RouterServer:
    """The engine plus a gRPC server on top of it. `start()` (then `port` is known), then `stop()`,
    after a `drain()` if wanted."""

    def __init__(self, config: ServerConfig, key: bytes, takeover: bool = False) -> None:
        """`key`: the HS256 key of the state directory; `takeover`: a successor in a handover (the
        process it succeeds still serves: its images in the making are not debris). ValueError if the
        configuration is unsafe or inconsistent (say, a non-loopback address without TLS or
        --insecure), before anything starts."""
        self.config = config
        for address, flag in ((config.listen, "--listen"), (config.metrics_listen, "--metrics-listen")):
            if address and not config.tls.enabled and not is_loopback(address):
                if not config.insecure:
                    raise ValueError(f"{address} ({flag}) is not a loopback address: serve it with --tls-cert and "
                                     "--tls-key, or say --insecure to serve plaintext anyway")
                logger.warning("serving %s WITHOUT TLS (--insecure): what it answers crosses the network in the "
                               "clear", address, extra={"event": "serving_insecure", "listen": address})
        tls.check(config.tls)  # a TLS flag without --tls-cert must never mean plaintext
        self.tls = ServerTls(config.tls) if config.tls.enabled else None
        try:
            SecretStore(secrets_dir(config)).check()
        except (SecretError, OSError) as e:
            raise ValueError(f"the secret store: {e}") from None
        authenticator = Authenticator(verification_key(config.tokens, key), config.task_id, config.tokens)
        try:  # before anything starts: a bucket that cannot be used stops the start
            self.images = open_images(pathlib.Path(config.state_dir), config.mount_method,
                                      StoreFlags(config.image_store, config.s3_endpoint, config.s3_region,
                                                 config.image_cache_bytes))
        except RouterError as e:
            raise ValueError(e.message) from None
        raise_open_file_limit()
        log_dir = pathlib.Path(config.log_dir) if config.log_dir else pathlib.Path(config.state_dir) / "logs"
        journal_path = pathlib.Path(config.state_dir) / "journal" if config.journal else None
        self.engine = Engine(
            log_dir,
            segment_size=config.log_segment_size,
            stdin_buffer_limit=config.stdin_buffer_limit,
            kill_grace_secs=config.kill_grace_secs,
            max_running_execs=config.max_running_execs,
            reap_orphans=config.reap_orphans,
            retention=Retention(bytes=config.retain_bytes, secs=config.retain_secs, execs=config.retain_execs),
            journal_path=journal_path,
            max_exec_output=config.max_exec_output,
            on_log_full=config.on_log_full,
            durability=config.durability,
            exec_user=exec_user(config.exec_user) if config.exec_user else None,
        )
        if not takeover:
            self.images.startup()  # what a crash left half-written
        service = Service(config, self.engine, self.images)
        # What Status answers: whether it serves, from the reasons it is not ready (_unready).
        self.status = ServerStatus(config, self.engine, self.images, self.tls, log_dir)
        controls = control.Control(service, config.max_receive_message_size, self.status)
        rpcs = RpcStats() if config.metrics_listen else None
        self._handlers = Handlers({SERVICE_NAME: (METHODS, service), control.SERVICE_NAME: (control.METHODS, controls)},
                                  authenticator, config.max_calls_per_token, rpcs)
        self.metrics: MetricsServer | None = None
        if rpcs is not None:
            from .metrics import MetricsServer, RouterCollector  # prometheus_client only when asked for

            collector = RouterCollector(self.engine, rpcs, service.image_ops, self.images, log_dir, journal_path,
                                        self.tls)
            self.metrics = MetricsServer(config.metrics_listen, collector, self.tls, config.tls)
        self.port = 0
        self._lock = -1  # STATE_DIR/serve.lock, held from start() to stop()
        self._grpc: Any = None
        self._health: Any = None
        self._health_grpc: Any = None  # --health-listen's server
        self.health_port = 0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._aio_loop: asyncio.AbstractEventLoop | None = None
        self._aio_thread: threading.Thread | None = None
        self._reuse_port = False
        # Why new execs are refused ("handover", "draining", "stopping": see _refuse), and why the
        # router is not ready ("state full" too: see _set_readiness); each holds on its own.
        self._refusals: dict[str, RouterError] = {}
        self._unready: set[str] = set()
        self.status.unready = self._unready
        self._readiness_lock = threading.Lock()

    def start(self, adopting: Adoption | None = None, lock: bool = True) -> None:
        """StateDirBusy if another server serves the state directory. `adopting`: the running execs
        of the process this one takes over from (on its port); `lock`: False under a keeper, which holds it."""
        if lock:
            self._lock = lock_state_dir(pathlib.Path(self.config.state_dir))
        self._reuse_port = adopting is not None
        try:
            self.engine.start(adopting)
        except BaseException:
            self._unlock()
            raise
        try:
            if self.config.server_mode == "aio":
                self._aio_loop = uvloop.new_event_loop()
                self._aio_thread = threading.Thread(target=self._aio_loop.run_forever, name="router-grpc",
                                                    daemon=True)
                self._aio_thread.start()
                asyncio.run_coroutine_threadsafe(self._start_aio(), self._aio_loop).result()
            else:
                self._start_threads()
            if self.metrics is not None:
                self.metrics.start(reuse_port=self._reuse_port)
        except BaseException:
            self._stop_grpc(0)
            self.engine.stop()
            self._unlock()
            raise
        self.status.listen = f"{self.config.listen.rsplit(':', 1)[0]}:{self.port}"
        self.status.metrics_url = self.metrics_url

    @property
    def ports(self) -> list[int]:
        """The ports this server listens on: gRPC's, then /metrics' and the health port's if served."""
        return [self.port, *([self.metrics.port] if self.metrics is not None else []),
                *([self.health_port] if self.health_port else [])]

    @property
    def metrics_url(self) -> str:
        """Where /metrics is served ("" if it is not), once started."""
        if self.metrics is None:
            return ""
        host = self.config.metrics_listen.rsplit(":", 1)[0]
        return f"{self.metrics.scheme}://{host}:{self.metrics.port}/metrics"

    def _unlock(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    def _start_threads(self) -> None:
        # Thread-per-call: small stacks, since thousands of calls may each hold a thread.
        threading.stack_size(256 * 1024)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.config.max_workers,
                                                           thread_name_prefix="router-rpc")
        server = grpc.server(self._pool, options=server_options(self.config, self._reuse_port))
        server.add_generic_rpc_handlers(self._handlers.generic_handlers(aio=False))
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(REFLECTED, server)
        self.port = self._bind(server)
        server.start()
        self._grpc = server
        if self.config.health_listen:
            self._health_grpc = self._health_only(grpc.server(self._pool, options=self._health_options()))
            self._health_grpc.start()
        for name, status in self._health_statuses(ready=True):
            self._health.set(name, status)
        self.engine.on_state_full(lambda full: self._set_readiness("state full", not full))

    async def _start_aio(self) -> None:
        server = grpc.aio.server(options=server_options(self.config, self._reuse_port))
        server.add_generic_rpc_handlers(self._handlers.generic_handlers(aio=True))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(REFLECTED, server)
        self.port = self._bind(server)
        await server.start()
        self._grpc = server
        if self.config.health_listen:
            self._health_grpc = self._health_only(grpc.aio.server(options=self._health_options()))
            await self._health_grpc.start()
        for name, status in self._health_statuses(ready=True):
            await self._health.set(name, status)
        self.engine.on_state_full(lambda full: self._set_readiness("state full", not full))

    def _health_options(self) -> list[tuple[str, Any]]:
        return [("grpc.so_reuseport", int(self._reuse_port))]  # shared in a handover, as the main port

    def _health_only(self, server: Any) -> Any:
        """`server` with the health service alone (the same servicer: one set of statuses), plaintext
        on --health-listen: Kubernetes' gRPC probes speak no TLS (1.37's `mode: TLS` aside) and carry
        no client certificate, while the health service needs no token and says only SERVING or not."""
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            self.health_port = int(server.add_insecure_port(self.config.health_listen))
        except RuntimeError:  # grpc's "Failed to bind"
            self.health_port = 0
        if self.health_port == 0:
            raise OSError(errno.EADDRNOTAVAIL, f"cannot serve health on {self.config.health_listen} (--health-listen): "
                          "the address is in use or not this host's")
        return server

    @staticmethod
    def _health_statuses(ready: bool) -> list[tuple[str, int]]:
        """Readiness on the overall service "" and the router's own: SERVING while it takes new
        execs. Liveness on LIVENESS_SERVICE: SERVING while the process answers calls (a router that
        cannot take new execs is alive: restarting it would only lose more)."""
        readiness = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        return [("", readiness), (SERVICE_NAME, readiness), (LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)]

    def _set_readiness(self, reason: str, ready: bool) -> None:
        """From any thread: `reason` (a full state filesystem, a refusal) holds or no longer does;
        the router is ready while none holds. The health servicer of either server mode."""
        with self._readiness_lock:  # so that the last change is the last set
            (self._unready.discard if ready else self._unready.add)(reason)
            health_servicer, aio_loop = self._health, self._aio_loop
            if health_servicer is None:
                return  # stopping
            for name, status in self._health_statuses(not self._unready)[:2]:
                if aio_loop is None:
                    health_servicer.set(name, status)
                else:
                    asyncio.run_coroutine_threadsafe(health_servicer.set(name, status), aio_loop)

    def _bind(self, server: Any) -> int:
        if self.tls is not None:
            port = server.add_secure_port(self.config.listen, self.tls.credentials)
        else:
            port = server.add_insecure_port(self.config.listen)
        if port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        return int(port)

    @property
    def draining(self) -> bool:
        return "draining" in self._refusals

    def drain(self, secs: float, hurry: threading.Event) -> None:
        """Refuse new execs and say not ready until stop(), and wait up to `secs` for the running
        execs to end, or until `hurry` is set (drain.py). Then call stop()."""
        drain.drain(self.engine, lambda why: self._refuse("draining", why), secs, hurry)

    def refuse_new_execs(self, why: RouterError | None) -> None:
        """New execs get `why` (and readiness says NOT_SERVING) until called with None: a handover."""
        self._refuse("handover", why)

    def _refuse(self, reason: str, why: RouterError | None) -> None:
        """New execs get the first refusal that holds (UNAVAILABLE: a handover, a drain, a stop),
        and readiness is NOT_SERVING while one does; Status says so."""
        with self._readiness_lock:
            if why is None:
                self._refusals.pop(reason, None)
            else:
                self._refusals.setdefault(reason, why)
            self.engine.registry.refuse(next(iter(self._refusals.values()), None))
        self._set_readiness(reason, why is None)

    def abandon(self, grace: float = 0.5) -> None:
        """After a handover: end the calls in flight (UNAVAILABLE: clients retry at the successor) and
        stop serving, leaving the engine as it is (its execs, its journal are the successor's)."""
        gone = RouterError(grpc.StatusCode.UNAVAILABLE, "the router handed over to a new process: retry")
        for ex in self.engine.registry.all():
            with ex.cond:
                ex.failed = gone
            ex.notify()
        if self._grpc is not None and self._aio_loop is not None:
            asyncio.run_coroutine_threadsafe(self._stop_aio(grace), self._aio_loop).result()
        elif self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._stop_health_only()

    def stop(self, grace: float = 2.0) -> None:
        """End every exec still running (cause `shutdown`) and answer the calls waiting on them,
        then stop as grpc's graceful stop does: no new call, those in flight ended after `grace`;
        then close the engine."""
        try:
            if self.metrics is not None:
                self.metrics.stop()
        finally:
            self._stop_grpc(grace)
            self.engine.stop()
            self.images.close()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._unlock()  # last: the journal is closed

    def _stop_grpc(self, grace: float) -> None:
        try:
            if self._grpc is not None:
                try:
                    self._refuse("stopping", RouterError(grpc.StatusCode.UNAVAILABLE, "the router is stopping"))
                    self.engine.end_execs()
                finally:
                    if self._aio_loop is not None:
                        asyncio.run_coroutine_threadsafe(self._stop_aio(grace), self._aio_loop).result()
                    else:
                        self._health.enter_graceful_shutdown()
                        self._grpc.stop(grace).wait()
                        self._stop_health_only()
        finally:
            if self._aio_loop is not None and self._aio_thread is not None:
                self._aio_loop.call_soon_threadsafe(self._aio_loop.stop)
                self._aio_thread.join()
                self._aio_loop.close()
                self._aio_loop = self._aio_thread = None
            # Dropped so that grpc.aio can end its poller thread once nothing of it is left.
            self._grpc = self._health = self._health_grpc = None

    def _stop_health_only(self) -> None:
        if self._health_grpc is not None:
            self._health_grpc.stop(0).wait()

    async def _stop_aio(self, grace: float) -> None:
        await self._health.enter_graceful_shutdown()
        await self._grpc.stop(grace)
        if self._health_grpc is not None:
            await self._health_grpc.stop(0)
