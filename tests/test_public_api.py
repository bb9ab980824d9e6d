"""The package's public face: `import router` stays cheap, and every name it offers resolves."""
from __future__ import annotations

import subprocess
import sys

import router


def test_import_router_loads_nothing_else() -> None:
    code = "import sys, router; print(sorted(m for m in sys.modules if m.startswith(('router.', 'grpc'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves() -> None:
    for name in router.__all__:
        assert getattr(router, name) is not None, name
    assert router.RouterClient.__module__.startswith("router.client")
    assert router.ExitCause("timed out") is router.ExitCause.TIMED_OUT  # a journal's old spelling
    assert set(router.__all__) <= set(dir(router)) and set(router.__all__) == set(router._WHERE)
