"""ExecControl's Status: the router's state in one answer (`router status`).

RouterServer keeps one `ServerStatus`; whether it serves is read from the reasons it is not ready
(`unready`, the server's own set: "handover", "draining", "state full", ...), and the server sets
`listen` and `metrics_url` once bound.
"""
from __future__ import annotations

import os
import pathlib
import time

from router import __version__
from router._proto import exec_control_pb2 as ec
from router.config import ServerConfig
from router.engine.core import Engine
from router.images.store import Images
from router.tls import ServerTls


def filesystem(path: pathlib.Path, full: bool) -> ec.FilesystemSpace:
    """The space of the filesystem holding `path` (0 bytes if it cannot be read)."""
    space = ec.FilesystemSpace(path=str(path), full=full)
    try:
        st = os.statvfs(path)
    except OSError:
        return space
    space.free_bytes, space.total_bytes = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    return space


class ServerStatus:
    def __init__(self, config: ServerConfig, engine: Engine, images: Images, tls: ServerTls | None,
                 log_dir: pathlib.Path) -> None:
        self._config, self._engine, self._images, self._tls = config, engine, images, tls
        self._log_dir = log_dir
        self.started_at = time.time()
        self.listen = config.listen
        self.unready: set[str] = set()  # the server's reasons it is not ready (RouterServer._set_readiness)
        self.keeper_pid = 0  # set by `router serve` under its keeper
        self.metrics_url = ""  # where /metrics is served, once bound

    @property
    def serving(self) -> str:
        unready = self.unready
        if "handover" in unready:
            return "handing_over"
        return "draining" if "draining" in unready else "full" if "state full" in unready else "serving"

    def response(self) -> ec.StatusResponse:
        """The answer; it reads two filesystems' space, so it may block (an Offload)."""
        config, registry = self._config, self._engine.registry
        mounts = self._images.mount_paths()
        status = ec.StatusResponse(
            version=__version__, started_at=self.started_at, uptime_secs=max(0.0, time.time() - self.started_at),
            listen=self.listen, metrics_listen=self.metrics_url, pid=os.getpid(),
            serving=self.serving, server_mode=config.server_mode,
            durability=config.durability if config.journal else "none",
            execs_running=registry.running, execs_retained=registry.finished_count,
            retained_bytes=registry.finished_bytes,
            log_filesystem=filesystem(self._log_dir, self._engine.log_full),
            state_filesystem=filesystem(pathlib.Path(config.state_dir), "state full" in self.unready),
            mounts_active=len(mounts), mount_paths=mounts, task_id=config.task_id, keeper_pid=self.keeper_pid)
        if self._tls is not None:
            status.tls_not_after = self._tls.not_after
        return status
