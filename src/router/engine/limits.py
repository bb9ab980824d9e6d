"""What execs inherit of the router: its environment."""
from __future__ import annotations

import os


def base_environment() -> dict[str, str]:
    """The router's environment less its own settings and credentials (ROUTER_*)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
