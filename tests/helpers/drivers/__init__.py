"""Scripts the tests run as separate processes: Modal's generated modules define the same proto
names as router's, and protobuf refuses a second definition in one process. Neither imports
`router`; importing this package imports neither script."""
from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

_HERE = pathlib.Path(__file__).parent

# Modal's TaskCommandRouterClient driving a router (test_modal_client.py).
MODAL_DRIVER = _HERE / "modal_driver.py"
# Modal's image RPCs, through its client and its Sandbox (test_modal_images.py).
MODAL_IMAGES_DRIVER = _HERE / "modal_images_driver.py"


@contextlib.contextmanager
def modal_driver(url: str, token: str, task_id: str, *args: str,
                 env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """MODAL_DRIVER run with these arguments in its own process, its stdout and stderr piped; killed
    if it still runs after the block."""
    proc = subprocess.Popen([sys.executable, str(MODAL_DRIVER), url, token, task_id, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def driver_result(proc: subprocess.Popen[str], timeout: float) -> Any:
    """What a driver printed last (JSON), once it exits; AssertionError with its stderr if it failed."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])
