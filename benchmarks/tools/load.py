"""A steady load on a router you started yourself, for profiling it (py-spy) while it serves.
Not a benchmark: figures come from the suite (`asv run`, `python -m benchmarks.tools.compare`).

    router serve --state-dir /tmp/prof --listen 127.0.0.1:50556 &
    python -m benchmarks.tools.load /tmp/prof 127.0.0.1:50556 [SECONDS] [rate|fan]

64 execs in flight over 4 grpc.aio channels for SECONDS (default 10), with the suite's own
operations: `rate` starts and waits `true` (as ExecRate does); `fan` also reads 64 KiB of stdout
and checks every byte (as Fanout does). Prints execs per second.
"""
from __future__ import annotations

import itertools
import pathlib
import sys
import time
from collections.abc import Awaitable

from router.config import load_or_create_task_id

from ..suite.bench_fanout import OUTPUT as FAN_OUTPUT
from ..suite.common import IN_FLIGHT, token_metadata, unique
from ..suite.workloads import AioSide, exec_output, exec_true, in_flight


def main() -> int:
    if len(sys.argv) < 3 or (len(sys.argv) > 4 and sys.argv[4] not in ("rate", "fan")):
        print(__doc__, file=sys.stderr)
        return 2
    state_dir, target = pathlib.Path(sys.argv[1]), sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    mode = sys.argv[4] if len(sys.argv) > 4 else "rate"
    task_id = load_or_create_task_id(state_dir)
    md = token_metadata(state_dir, task_id)
    prefix = unique("load")
    end = time.monotonic() + seconds
    with AioSide(target) as side:
        def op(i: int) -> Awaitable[None]:
            stub = side.stubs[i % len(side.stubs)]
            if mode == "rate":
                return exec_true(stub, md, f"{prefix}-{i}", 60.0, task_id)
            return exec_output(stub, md, f"{prefix}-{i}", FAN_OUTPUT, 60.0, task_id)

        until_end = itertools.takewhile(lambda i: time.monotonic() < end, itertools.count())
        out = side.run(in_flight(0, IN_FLIGHT, op, seconds + 120.0, until_end))
    out.n = out.ok + sum(out.failures.values())
    print(f"{out.rate:.0f} execs/s" + (f" ({out.describe()})" if out.failures else ""))
    return 1 if out.failures else 0


if __name__ == "__main__":
    sys.exit(main())
