"""The client resumes reads at its offset when the connection breaks mid-stream."""
from __future__ import annotations

import hashlib

from router.client import RouterClient, exit_code
from router.server.grpc_server import RouterServer
from tests.helpers.execs import PIPES, py
from tests.helpers.proxies import CuttableProxy
from tests.helpers.servers import TASK_ID


def test_read_resumes_from_its_offset_after_a_cut(server: RouterServer, token: str) -> None:
    proxy = CuttableProxy(server.port)
    program = ("import sys, time\n"
               "for i in range(40):\n"
               "    sys.stdout.buffer.write(bytes([i]) * 100_000); sys.stdout.flush(); time.sleep(0.02)\n")
    expected = b"".join(bytes([i]) * 100_000 for i in range(40))
    try:
        with RouterClient(f"127.0.0.1:{proxy.port}", token, TASK_ID, retries=20) as client:
            client.start("cut", py(program), **PIPES)
            received = bytearray()
            for data in client.read("cut"):
                received += data
                if len(received) > 1_000_000 and proxy.accepted == 1:
                    proxy.cut()
            assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()
            assert proxy.accepted >= 2, "the stream was never cut"
            assert exit_code(client.wait("cut")) == 0
    finally:
        proxy.close()
