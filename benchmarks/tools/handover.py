"""A live handover as clients see it: while one exec streams output that a client follows, and
another client polls in a loop, SIGUSR2 to `router serve` hands everything to a new serving process.

    python -m benchmarks.tools.handover [--rounds 5] [--execs 200]

A third client connects afresh for every poll (refused connections show there). Per round: the
time from SIGUSR2 to the new process serving (server.json names it), the longest
gap between two chunks of the followed stream, the longest gap between two answered polls, and the
calls that failed (each retried, so none is lost: the count says how many retries the switch cost).
`--execs` running execs (sleeping) are handed over beside the stream.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import grpc

from router import config
from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient

from ..suite.common import TASK_ID, RouterProcess

PIPES = {"stdout_config": pb.TASK_EXEC_STDOUT_CONFIG_PIPE, "stderr_config": pb.TASK_EXEC_STDERR_CONFIG_PIPE}
# A line every millisecond or so, forever.
TICKER = ["python3", "-u", "-c", "import time\nwhile True:\n print(time.time()); time.sleep(0.001)"]


class Follower(threading.Thread):
    """Follows an exec's stdout, noting when each chunk arrived."""

    def __init__(self, client: RouterClient, exec_id: str) -> None:
        super().__init__(daemon=True)
        self.client, self.exec_id = client, exec_id
        self.arrivals: list[float] = []

    def run(self) -> None:
        try:
            for _ in self.client.read(self.exec_id):
                self.arrivals.append(time.monotonic())
        except (grpc.RpcError, ValueError):
            pass


class Poller(threading.Thread):
    """Polls in a loop on one channel, or (`fresh`) each poll on a new connection, as a client
    that connects during the switch does."""

    def __init__(self, target: str, token: str, exec_id: str, fresh: bool = False) -> None:
        super().__init__(daemon=True)
        self.target, self.token, self.fresh = target, token, fresh
        self.client = RouterClient(target, token, TASK_ID, retries=0)
        self.exec_id = exec_id
        self.answered: list[float] = []
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.fresh:
                    with RouterClient(self.target, self.token, TASK_ID, retries=0) as client:
                        client.poll(self.exec_id, timeout=5)
                else:
                    self.client.poll(self.exec_id, timeout=5)
                self.answered.append(time.monotonic())
            except grpc.RpcError:
                self.failed += 1
                time.sleep(0.001)
        self.client.close()


def longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    return max((b - a for a, b in zip(inside, inside[1:], strict=False)), default=float("nan"))


Round = tuple[float, float, float, int, int, int]


def one_round(router: RouterProcess, token: str, client: RouterClient) -> Round:
    follower = Follower(client, "ticker")
    poller = Poller(router.target, token, "ticker")
    connector = Poller(router.target, token, "ticker", fresh=True)
    follower.start()
    poller.start()
    connector.start()
    time.sleep(1.0)
    old = config.read_server_info(router.dir)
    assert old is not None
    began = time.monotonic()
    router.proc.send_signal(12)  # SIGUSR2
    while True:
        now = config.read_server_info(router.dir)
        if now is not None and now.pid != old.pid:
            break
        time.sleep(0.001)
    switched = time.monotonic() - began
    time.sleep(1.0)
    for p in (poller, connector):
        p.stop.set()
        p.join()
    end = time.monotonic()
    return (switched, longest_gap(follower.arrivals, began - 0.5, end),
            longest_gap(poller.answered, began - 0.5, end), poller.failed,
            len([t for t in connector.answered if began - 0.5 <= t]), connector.failed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--execs", type=int, default=200)
    args = p.parse_args()
    router = RouterProcess()
    token = dict(router.metadata)["authorization"].split()[1]
    try:
        with RouterClient(router.target, token, TASK_ID) as client:
            client.start("ticker", TICKER, **PIPES)
            for i in range(args.execs):
                client.start(f"sleeper-{i}", ["sleep", "3600"], **PIPES)
            rows = []
            for r in range(args.rounds):
                row = one_round(router, token, client)
                rows.append(row)
                print(f"round {r + 1}: serving after {row[0] * 1e3:7.1f} ms;"
                      f" longest gap: stream {row[1] * 1e3:7.1f} ms,"
                      f" polls {row[2] * 1e3:7.1f} ms; failed polls (retried) {row[3]}; new connections:"
                      f" {row[4]} answered, {row[5]} failed", flush=True)
            med = [statistics.median(col) for col in zip(*rows, strict=True)]
            print(f"median ({args.rounds} rounds, {args.execs} execs + 1 streaming):"
                  f" serving after {med[0] * 1e3:.1f} ms;"
                  f" longest gap: stream {med[1] * 1e3:.1f} ms, polls {med[2] * 1e3:.1f} ms; failed polls {med[3]:.0f};"
                  f" new connections failed {sum(row[5] for row in rows)} of {sum(row[4] + row[5] for row in rows)}")
    finally:
        router.stop()


if __name__ == "__main__":
    main()
