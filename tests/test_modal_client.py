"""Modal's own client class against a router in its own process (its stubs and ours cannot share a process: protobuf refuses two definitions of one message name)."""
from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from router import auth

from .conftest import TASK_ID, router_process

# Only look for it: importing Modal here would clash with router's protos in this process.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("modal") is None,
                                reason="Modal's client is part of the test extra")


def test_modal_client_start_read_write_wait(tmp_path: pathlib.Path) -> None:
    with router_process(tmp_path) as (_, listen):
        token = auth.mint_token(auth.load_or_create_key(tmp_path), TASK_ID)
        driver = pathlib.Path(__file__).with_name("modal_driver.py")
        result = subprocess.run([sys.executable, str(driver), f"http://{listen}", token, TASK_ID],
                                capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {
        "stdout": "got:abc:hello\n",
        "stderr": "err\n",
        "wait_code": 4,
        "poll_code": 4,
        "tail": "abc:hello\n",
    }
