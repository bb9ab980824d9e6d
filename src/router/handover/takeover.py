"""`router serve --takeover`: ask the keeper serving a state directory for a handover (as SIGUSR2
to it does) and wait until the new serving process serves, or the old one is found serving on."""
from __future__ import annotations

import os
import pathlib
import signal
import sys
import time

from router import config

WAIT_SECS = 120.0


def request(state_dir: pathlib.Path) -> int:
    info = config.read_server_info(state_dir)
    if info is None or not info.keeper_pid:
        print(f"router serve --takeover: no router serves {state_dir} (no server.json naming its keeper)",
              file=sys.stderr)
        return 1
    try:
        os.kill(info.keeper_pid, signal.SIGUSR2)
    except OSError as e:
        print(f"router serve --takeover: cannot signal the keeper (pid {info.keeper_pid}): {e.strerror}",
              file=sys.stderr)
        return 1
    deadline = time.monotonic() + WAIT_SECS
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = config.read_server_info(state_dir)
        if now is not None and now.pid != info.pid:
            print(f"router serve --takeover: pid {now.pid} serves {now.listen} (it took over from pid {info.pid})")
            return 0
        if not config.alive(info.pid):
            break
    print(f"router serve --takeover: no new process took over from pid {info.pid}: see the router's log "
          "(the old process serves on if the new one failed)", file=sys.stderr)
    return 1

