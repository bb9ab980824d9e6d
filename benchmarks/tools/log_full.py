"""How long a small exec takes (start, wait, read `echo still-alive`) on a router whose log
filesystem is a small tmpfs: idle, and while an exec nobody reads fills it with each
--on-log-full policy. Needs root (it mounts the tmpfs).

    python -m benchmarks.tools.log_full [--mib 8] [--execs 50]

Prints, per case, the median and the slowest of the execs' round trips.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator

from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient, exit_code

from ..suite.common import TASK_ID, RouterProcess

PIPES = {"stdout_config": pb.TASK_EXEC_STDOUT_CONFIG_PIPE, "stderr_config": pb.TASK_EXEC_STDERR_CONFIG_PIPE}
# Writes forever, about 50 MB/s: the filesystem stays full however much is trimmed.
WRITER = ["sh", "-c", "while :; do head -c 262144 /dev/zero; sleep 0.005; done"]


@contextlib.contextmanager
def tmpfs(mib: int) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="log-full-") as mount:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", mount], check=True)
        try:
            yield mount
        finally:
            subprocess.run(["umount", mount], check=True)


def round_trips(mib: int, execs: int, policy: str, filled: bool) -> list[float]:
    with tmpfs(mib) as mount:
        router = RouterProcess(args=["--on-log-full", policy, "--max-exec-output", "1G"], log_root=mount)
        token = dict(router.metadata)["authorization"].split()[1]
        try:
            with RouterClient(router.target, token, TASK_ID) as client:
                if filled:
                    client.start("big", WRITER, **PIPES)
                    while not client.inspect("big").log_filesystem_full:
                        time.sleep(0.01)
                times = []
                for i in range(execs):
                    t = time.perf_counter()
                    client.start(f"echo-{i}", ["echo", "still-alive"], **PIPES)
                    assert exit_code(client.wait(f"echo-{i}")) == 0
                    assert b"".join(client.read(f"echo-{i}")) == b"still-alive\n"
                    times.append(time.perf_counter() - t)
                if filled:
                    assert client.inspect("big").log_filesystem_full
            return times
        finally:
            router.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=8)
    p.add_argument("--execs", type=int, default=50)
    args = p.parse_args()
    for name, policy, filled in (("idle", "trim", False), ("full, trim", "trim", True), ("full, block", "block", True)):
        times = round_trips(args.mib, args.execs, policy, filled)
        print(f"{name:12} median {statistics.median(times) * 1e3:6.2f} ms  slowest {max(times) * 1e3:6.2f} ms"
              f"  ({len(times)} execs, {args.mib} MiB tmpfs)", flush=True)


if __name__ == "__main__":
    main()
