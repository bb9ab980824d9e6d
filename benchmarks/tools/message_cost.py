"""What one server-stream message costs in grpcio, whatever it holds: CPU per item on each side
when COUNT small items go one to a message, or PER to a message. The reason Watch sends the events
that are ready together in one WatchResponse (benchmarks/HISTORY.md, "One message for the events
ready together").

    python -m benchmarks.tools.message_cost [--mode aio] [--count 20000] [--size 60] [--per 1 --per 8 --per 64]

The server is benchmarks/suite/bare_grpc.py (its Messages method) in its own process; the client a
grpc.aio channel in this one. Prints, per PER, the medians over the rounds of the server's and the
client's CPU per item in microseconds.
"""
from __future__ import annotations

import argparse
import statistics
import time

import grpc

from ..suite.bare_grpc import MESSAGES_METHOD, MODES
from ..suite.common import BareGrpcProcess, cpu_seconds
from ..suite.workloads import AioSide


async def receive(channel: grpc.aio.Channel, count: int, size: int, per: int) -> int:
    call = channel.unary_stream(MESSAGES_METHOD)(f"{count},{size},{per}".encode(), timeout=300)
    received = 0
    async for message in call:
        received += len(message)
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, default="aio", help="the bare server's mode")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=60, help="bytes per item")
    parser.add_argument("--per", type=int, action="append", help="items per message; repeat (default 1, 8, 64)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pers = args.per or [1, 8, 64]
    server_us: dict[int, list[float]] = {per: [] for per in pers}
    client_us: dict[int, list[float]] = {per: [] for per in pers}
    with BareGrpcProcess(args.mode) as bare:
        side = AioSide(bare.target, count=1)
        try:
            for _ in range(args.rounds):
                for per in pers:
                    server_before, client_before = cpu_seconds(bare.pid, children=False), time.process_time()
                    received = side.run(receive(side.channels[0], args.count, args.size, per))
                    assert received == args.count * args.size, received
                    client_us[per].append((time.process_time() - client_before) * 1e6 / args.count)
                    server_us[per].append((cpu_seconds(bare.pid, children=False) - server_before) * 1e6 / args.count)
        finally:
            side.close()
    for per in pers:
        print(f"{per:4d} items/message: server {statistics.median(server_us[per]):7.1f} us/item, "
              f"client {statistics.median(client_us[per]):7.1f} us/item (medians of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
