"""`router status`: the server's state in one screen of `key: value` lines, or JSON (--json)."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from typing import Any

from router._proto import exec_control_pb2 as ec

from .connection import connect

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(n: int) -> str:
    """Bytes in binary units, to three significant figures: 0 B, 512 B, 1.50 KiB, 12.3 GiB."""
    value, unit = float(n), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    if unit == 0:
        return f"{n} B"
    return f"{value:.3g} {_UNITS[unit]}" if value < 1000 else f"{value:.0f} {_UNITS[unit]}"


def duration(secs: float) -> str:
    """A duration to the second, largest units first, at most two of them: 45s, 3m 7s, 2h 5m, 3d 4h."""
    left = int(max(0.0, secs))
    parts: list[str] = []
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= length or (unit == "s" and not parts):
            parts.append(f"{left // length}{unit}")
            left %= length
    return " ".join(parts[:2])


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat()


def _space(fs: ec.FilesystemSpace) -> str:
    return f"{size(fs.free_bytes)} free of {size(fs.total_bytes)}{' (FULL)' if fs.full else ''}  {fs.path}"


def lines(status: ec.StatusResponse) -> list[tuple[str, str]]:
    """The screen, as (key, value) pairs."""
    mounts = [os.fsdecode(p) for p in status.mount_paths]
    if status.HasField("tls_not_after"):
        left = status.tls_not_after - time.time()
        tls = f"expires {_utc(status.tls_not_after)} " + (f"(in {duration(left)})" if left > 0 else "(EXPIRED)")
    else:
        tls = "none (plaintext)"
    return [
        ("state", status.serving),
        ("version", status.version),
        ("pid", f"{status.pid}" + (f" (keeper {status.keeper_pid})" if status.keeper_pid else "")),
        ("uptime", f"{duration(status.uptime_secs)} (since {_utc(status.started_at)})"),
        ("listen", status.listen),
        ("metrics", status.metrics_listen or "off"),
        ("task", status.task_id),
        ("server mode", status.server_mode),
        ("durability", status.durability),
        ("execs running", str(status.execs_running)),
        ("execs retained", f"{status.execs_retained} ({size(status.retained_bytes)} of output)"),
        ("log filesystem", _space(status.log_filesystem)),
        ("state filesystem", _space(status.state_filesystem)),
        ("mounts", f"{status.mounts_active}" + (f": {', '.join(mounts)}" if mounts else "")),
        ("tls certificate", tls),
    ]


def _filesystem(fs: ec.FilesystemSpace) -> dict[str, Any]:
    return {"path": fs.path, "free_bytes": fs.free_bytes, "total_bytes": fs.total_bytes, "full": fs.full}


def as_json(status: ec.StatusResponse) -> dict[str, Any]:
    """For machines: bytes and seconds as numbers, times in ISO 8601 (UTC)."""
    return {
        "state": status.serving, "version": status.version, "pid": status.pid,
        "keeper_pid": status.keeper_pid or None, "task_id": status.task_id,
        "started_at": _iso(status.started_at), "uptime_secs": status.uptime_secs, "listen": status.listen,
        "metrics_listen": status.metrics_listen or None, "server_mode": status.server_mode,
        "durability": status.durability, "execs_running": status.execs_running,
        "execs_retained": status.execs_retained, "retained_bytes": status.retained_bytes,
        "log_filesystem": _filesystem(status.log_filesystem), "state_filesystem": _filesystem(status.state_filesystem),
        "mounts_active": status.mounts_active, "mount_paths": [os.fsdecode(p) for p in status.mount_paths],
        "tls_not_after": _iso(status.tls_not_after) if status.HasField("tls_not_after") else None,
    }


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args, retries=0) as client:
        status = client.status()
    if args.json:
        print(json.dumps(as_json(status), indent=2))
        return 0
    pairs = lines(status)
    width = max(len(key) for key, _ in pairs) + 1
    for key, value in pairs:
        print(f"{key + ':':<{width}} {value}")
    return 0
