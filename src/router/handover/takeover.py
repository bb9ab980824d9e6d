"""`router serve --takeover`: ask the keeper serving a state directory for a handover (as SIGUSR2
to it does) and wait for its outcome, which the keeper writes to STATE_DIR/handover."""
from __future__ import annotations

import os
import pathlib
import signal
import sys
import time

from router import config
from router.engine import procs

from .keeper import HANDOVER_STATUS

WAIT_SECS = 600.0  # the keeper ends a successor that has not served well before


def request(state_dir: pathlib.Path) -> int:
    info = config.read_server_info(state_dir)
    if info is None or not info.keeper_pid or not procs.is_router_serve(info.keeper_pid):
        print(f"router serve --takeover: no router serves {state_dir} (no running keeper named in its server.json)",
              file=sys.stderr)
        return 1
    status = state_dir / HANDOVER_STATUS
    status.unlink(missing_ok=True)
    try:
        os.kill(info.keeper_pid, signal.SIGUSR2)
    except OSError as e:
        print(f"router serve --takeover: cannot signal the keeper (pid {info.keeper_pid}): {e.strerror}",
              file=sys.stderr)
        return 1
    deadline = time.monotonic() + WAIT_SECS
    while time.monotonic() < deadline and procs.alive(info.keeper_pid):
        time.sleep(0.05)
        try:
            line = status.read_text().strip()  # written after our signal: it removed the last one
        except OSError:
            continue
        if line.startswith("serving:"):
            now = config.read_server_info(state_dir)
            print(f"router serve --takeover: pid {line.split()[-1]} serves {now.listen if now else info.listen}"
                  f" (it took over from pid {info.pid})")
            return 0
        if line.startswith("failed:"):
            print(f"router serve --takeover: the handover {line} (pid {info.pid} serves on; the router's log "
                  "says why)", file=sys.stderr)
            return 1
    print(f"router serve --takeover: no outcome from the keeper (pid {info.keeper_pid})", file=sys.stderr)
    return 1

