"""An asv environment plugin: `"plugins": [".router.asv"]`, `"environment_type": "router"` and
`"router_targets": ["HOST:PORT", ...]` in asv.conf.json build each environment on a router's host
and run every benchmark process there (see the README's "Benchmarks on routers with asv")."""
from __future__ import annotations

from .environment import RouterEnvironment
from .settings import TARGET_VAR, install

install()

__all__ = ["TARGET_VAR", "RouterEnvironment"]
