"""A crash fuzzer: a mixed workload against a router process that is `kill -9`ed at a random moment,
then restarted on the same state directory and checked against everything it answered before.

Each round starts execs of four kinds (output then exit, `cat` fed through stdin, a long sleep, a
leader that exits leaving a background process holding its output),
waits on them, reads their output, writes their stdin and watches them, all from threads, while
another kills the router. After the restart it counts contradictions:

- an exit status answered (Wait, Poll, Watch) that Poll now answers differently;
- bytes returned by a read that a read at the same offset now returns differently (a range
  released meanwhile, OUT_OF_RANGE or NOT_FOUND, is no contradiction);
- an acknowledged stdin write that a retry at the same offset is refused;
- a start the router acknowledged that a retry (same id, same request) is refused, or an exec whose
  command ran twice (each appends its id to a file);
- a process of an exec the restarted router reports finished still running.

Run it by hand for many rounds: `python -m tests.helpers.crash_fuzz --rounds 500`.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import pathlib
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, TypeVar

import grpc

from router.client import STDOUT, RouterClient
from router.engine import journal_format, procs, spawn_slots
from tests.helpers.execs import PIPES
from tests.helpers.servers import TASK_ID, router_process, state_token

T = TypeVar("T", bound=tuple[Any, ...])
KINDS = ("output", "cat", "sleep", "daemon")
# How many answers of rounds before the last two each restart checks again.
OLDER_SAMPLE = 100
# Calls give up this soon: once the router is killed they fail at once (UNAVAILABLE) anyway.
CALL_SECS = 10.0


@dataclasses.dataclass
class Answers:
    """What the router answered before it was killed, by exec id."""

    requests: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # start's arguments
    started: set[str] = dataclasses.field(default_factory=set)
    exits: dict[str, tuple[int | None, int | None]] = dataclasses.field(default_factory=dict)
    reads: list[tuple[str, int, bytes]] = dataclasses.field(default_factory=list)
    stdin: list[tuple[str, int, bytes, bool]] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def exit(self, exec_id: str, code: int | None, sig: int | None) -> None:
        with self.lock:
            self.exits.setdefault(exec_id, (code, sig))


def _exit_of(reply: object) -> tuple[int | None, int | None]:
    code = reply.code if reply.HasField("code") else None  # type: ignore[attr-defined]
    sig = reply.signal if reply.HasField("signal") else None  # type: ignore[attr-defined]
    return code, sig


class CrashFuzz:
    """Rounds against one state directory; `counts` adds up what every round saw."""

    def __init__(self, workdir: pathlib.Path, seed: int, serve_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.serve_args = serve_args  # for `router serve`, each start
        self.state = workdir / "state"
        self.runs = workdir / "runs"
        self.mark = f"fuzz-{os.getpid()}-{seed}"
        self.rng = random.Random(seed)
        self.answers = Answers()
        self.counts: Counter[str] = Counter()

    # -- the workload ----------------------------------------------------------------------------

    def _request(self, exec_id: str, kind: str) -> dict[str, Any]:
        body = {"output": f"head -c {self.rng.randrange(0, 300_000)} /dev/urandom; exit {self.rng.randrange(4)}",
                "cat": "exec cat", "sleep": "echo up; exec sleep 30",
                # The leader exits while what it left behind holds its output open.
                "daemon": f"sleep {self.rng.uniform(0.1, 2):.2f} & echo parent; exit 2"}[kind]
        script = f'echo "$FUZZ_ID" >> {self.runs}; {body}'
        return {"exec_id": exec_id, "args": ["sh", "-c", script], "env": {"FUZZ_ID": exec_id, "FUZZ_MARK": self.mark},
                **PIPES}

    def _drive(self, client: RouterClient, exec_id: str, kind: str) -> None:
        a = self.answers
        client.start(**a.requests[exec_id])
        with a.lock:
            a.started.add(exec_id)
        if kind == "cat":
            offset = 0
            for _ in range(self.rng.randrange(1, 4)):
                data = self.rng.randbytes(self.rng.randrange(1, 5000))
                if self.rng.random() < 0.3:  # a retry of the last write: a duplicate, accepted
                    client.write_stdin(exec_id, max(0, offset - 10), data[:10])
                client.write_stdin(exec_id, offset, data)
                with a.lock:
                    a.stdin.append((exec_id, offset, data, False))
                offset += len(data)
            client.write_stdin(exec_id, offset, b"", eof=True)
            with a.lock:
                a.stdin.append((exec_id, offset, b"", True))
        wait_first = kind != "sleep" and self.rng.random() < 0.5
        if wait_first:
            self._wait(client, exec_id)
        offset = self.rng.randrange(0, 3)
        for data in client.read(exec_id, STDOUT, offset):
            with a.lock:
                a.reads.append((exec_id, offset, data))
            offset += len(data)
            if kind == "sleep":
                break
        if kind != "sleep" and not wait_first:
            self._wait(client, exec_id)

    def _wait(self, client: RouterClient, exec_id: str) -> None:
        """Poll (sometimes) and Wait, keeping the exit status either answers."""
        reply = client.poll(exec_id, timeout=CALL_SECS) if self.rng.random() < 0.3 else None
        if reply is not None and (reply.HasField("code") or reply.HasField("signal")):
            self.answers.exit(exec_id, *_exit_of(reply))
        self.answers.exit(exec_id, *_exit_of(client.wait(exec_id, call_timeout=CALL_SECS, unreachable_secs=0.2)))

    def _watch(self, client: RouterClient, stop: threading.Event) -> None:
        for event in client.watch():
            if event.HasField("exit") and (event.exit.HasField("code") or event.exit.HasField("signal")):
                self.answers.exit(event.exec_id, *_exit_of(event.exit))
            if stop.is_set():
                return

    def round(self, number: int) -> None:
        """One round: a workload, a kill -9 at a random moment, then checks after a restart."""
        execs = [(f"r{number}-{k}", self.rng.choice(KINDS)) for k in range(self.rng.randrange(4, 12))]
        for exec_id, kind in execs:
            self.answers.requests[exec_id] = self._request(exec_id, kind)
        with router_process(self.state, *self.serve_args) as (proc, listen):
            client = RouterClient(listen, state_token(self.state), TASK_ID, retries=0)
            stop = threading.Event()
            with client, concurrent.futures.ThreadPoolExecutor(len(execs) + 1) as pool:
                futures = [pool.submit(self._watch, client, stop)]
                futures += [pool.submit(self._drive, client, exec_id, kind) for exec_id, kind in execs]
                time.sleep(self.rng.uniform(0.0, 0.8))
                proc.kill()
                proc.wait(10)
                stop.set()
                for fut in futures:
                    if isinstance(fut.exception(), grpc.RpcError):
                        self.counts["calls cut by the kill"] += 1
        self.check(number)

    # -- the checks ------------------------------------------------------------------------------

    def _sample(self, items: list[T], round_number: int) -> list[T]:
        """The answers of the last two rounds, and a sample of older ones (checking every answer
        after every restart would grow with the square of the rounds)."""
        recent = [item for item in items if _round_of(item) >= round_number - 1]
        older = [item for item in items if _round_of(item) < round_number - 1]
        return recent + self.rng.sample(older, min(len(older), OLDER_SAMPLE))

    def check(self, round_number: int) -> None:
        """Restart on the same state directory and count what contradicts an earlier answer."""
        a, counts = self.answers, self.counts
        with router_process(self.state, *self.serve_args) as (_, listen), \
                RouterClient(listen, state_token(self.state), TASK_ID, retries=0) as client:
            counts["restarts"] += 1
            # First, before a retried start runs anything: the restart found every exec finished or
            # lost, so no process of any of them may be running.
            self._leftovers()
            for exec_id, answered in self._sample(list(a.exits.items()), round_number):
                if _status(client, exec_id) != answered:
                    counts["contradicted exit"] += 1
                counts["exits checked"] += 1
            for exec_id, offset, data in self._sample(a.reads, round_number):
                now = _read(client, exec_id, offset, len(data))
                if now is not None and now != data:
                    counts["contradicted bytes"] += 1
                counts["reads checked" if now is not None else "reads released"] += 1
            for exec_id, offset, data, eof in self._sample(a.stdin, round_number):
                try:
                    client.write_stdin(exec_id, offset, data, eof=eof)
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        counts["refused stdin retry"] += 1
                counts["stdin writes checked"] += 1
            self._retry_starts(client)
        ids = self.runs.read_text().split() if self.runs.exists() else []
        counts["ran twice"] = sum(n - 1 for n in Counter(ids).values() if n > 1)

    def _retry_starts(self, client: RouterClient) -> None:
        """Every start tried so far, again: acknowledged ones are accepted and run nothing."""
        for exec_id, request in self.answers.requests.items():
            try:
                client.start(**request)
            except grpc.RpcError as e:
                if exec_id in self.answers.started and e.code() != grpc.StatusCode.NOT_FOUND:
                    self.counts["refused start retry"] += 1
            if _status(client, exec_id) == (None, signal.SIGKILL):
                self.counts["lost execs"] += 1
        # A retry that did run (it never began before the kill) ends now, so the next round's
        # checks find only finished execs.
        for exec_id in self.answers.requests:
            if _status(client, exec_id) == (None, None):
                client.kill(exec_id, timeout=CALL_SECS)
        self.answers.requests.clear()

    def _leftovers(self) -> None:
        """Processes of execs still running after a restart (a kill the restore missed)."""
        time.sleep(0.1)  # SIGKILLed processes of restored execs need a moment to die
        for pid, exec_id in _marked_processes(self.mark):
            self.counts["processes left running"] += 1
            je = journal_format.replay(self.state / "journal").execs.get(exec_id)
            try:
                stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                stat = []
            print(f"process {pid} of exec {exec_id} outlived it (state, ppid, pgid: {stat[:3]}, started "
                  f"{procs.start_time(pid)}, now {time.time()}); journaled: {je}; spawner slots: "
                  f"{spawn_slots.read(self.state / 'spawning')}", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        for pid, _ in _marked_processes(self.mark):
            os.kill(pid, signal.SIGKILL)

    @property
    def contradictions(self) -> int:
        return sum(n for key, n in self.counts.items()
                   if key.startswith(("contradicted", "refused", "ran twice", "processes left")))


def _round_of(item: tuple[Any, ...]) -> int:
    exec_id: str = item[0]
    return int(exec_id[1:].split("-")[0])


def _status(client: RouterClient, exec_id: str) -> tuple[int | None, int | None] | None:
    try:
        return _exit_of(client.poll(exec_id, timeout=CALL_SECS))
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _read(client: RouterClient, exec_id: str, offset: int, length: int) -> bytes | None:
    """`length` bytes at `offset`, or None if the router released them."""
    got = b""
    try:
        for data in client.read(exec_id, STDOUT, offset):
            got += data
            if len(got) >= length:
                break
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE):
            return None
        raise
    return got[:length]


def _marked_processes(mark: str) -> Iterator[tuple[int, str]]:
    """(pid, exec id) of every live process with FUZZ_MARK=mark in its environment."""
    needle = f"FUZZ_MARK={mark}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = pathlib.Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in env:
            exec_id = next((v[8:].decode() for v in env if v.startswith(b"FUZZ_ID=")), "?")
            yield int(entry), exec_id


def fuzz(workdir: pathlib.Path, rounds: int, seed: int, serve_args: tuple[str, ...] = ()) -> CrashFuzz:
    f = CrashFuzz(workdir, seed, serve_args)
    try:
        for number in range(rounds):
            f.round(number)
    finally:
        f.cleanup()
    return f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--durability", choices=("process", "machine"), default="process")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        f = fuzz(pathlib.Path(tmp), args.rounds, args.seed, ("--durability", args.durability))
    print(f"seed {args.seed}: {args.rounds} kills in {time.monotonic() - started:.0f} s")
    for key, n in sorted(f.counts.items()):
        print(f"  {key}: {n}")
    print(f"contradictions: {f.contradictions}")
    sys.exit(1 if f.contradictions else 0)


if __name__ == "__main__":
    main()
