"""What the engine may use of the machine: descriptors per exec, and the environment execs inherit."""
from __future__ import annotations

import os
import resource

# Descriptors each running exec may hold: stdin, stdout, stderr, pidfd.
FDS_PER_EXEC = 4
# Descriptors kept for everything else (the server's connections, logs, the journal).
FDS_RESERVED = 1024


def base_environment() -> dict[str, str]:
    """The router's environment less its own settings and credentials (ROUTER_*)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}


def default_max_running_execs() -> int:
    """As many running execs as the open-file limit allows, beyond what is reserved."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft - FDS_RESERVED) // FDS_PER_EXEC)


def raise_open_file_limit() -> None:
    """The soft limit up to the hard one: a router runs thousands of execs of four descriptors each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
