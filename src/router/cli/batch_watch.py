"""`router batch`'s Watch over one chunk of jobs, carried across its router's failures (see batch.py)."""
from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from router._proto import exec_control_pb2 as ec
from router.client import STDERR, STDOUT, RouterClient

from .batch_fleet import Fleet
from .batch_jobs import OUTPUT_LIMIT, ROUTER_TROUBLE, Finished, Lost, Refused


def follow(fleet: Fleet, target: str, exec_ids: list[str], put: Callable[[Finished | Lost | Refused], None]) -> None:
    """One Watch over a chunk's execs (its own thread): each exit, with its output, to `put`.
    A broken Watch waits for its router to answer again, hands on the execs it no longer knows
    (Lost: it came back without them) and watches the rest again; once the router is set aside,
    the rest are Lost (the batch has run them again already). Any other error ends the run (Refused)."""
    client = fleet.host(target).client
    left = dict.fromkeys(exec_ids)
    started: dict[str, float] = {}
    broken = False
    while left:
        try:
            if broken and (unknown := [i for i in left if not _known(client, i)]):
                put(Lost(unknown, target, "it came back without its jobs"))
                for exec_id in unknown:
                    del left[exec_id]
            for event in client.watch(list(left), OUTPUT_LIMIT, include_started=True):
                fleet.answered(target)
                if event.kind == ec.WATCH_EVENT_KIND_STARTED:
                    started[event.exec_id] = event.time
                elif event.exec_id in left:
                    stdout, stderr = event.stdout, event.stderr
                    if not event.output_included:
                        stdout = b"".join(client.read(event.exec_id, STDOUT))
                        stderr = b"".join(client.read(event.exec_id, STDERR))
                    put(Finished(event.exec_id, event.exit, stdout, stderr, started.get(event.exec_id, 0.0),
                                 event.time))
                    del left[event.exec_id]
            return
        except ValueError:  # the channel was closed under it: the run is over
            return
        except grpc.RpcError as e:
            if e.code() not in ROUTER_TROUBLE:
                put(Refused(target, e))
                return
            broken = True
            if not fleet.wait_back(target, time.monotonic()):
                put(Lost(list(left), target))
                return


def _known(client: RouterClient, exec_id: str) -> bool:
    """Whether the router has the exec (NOT_FOUND: it came back without it); another failure is
    raised, for the caller to wait on the router again."""
    try:
        client.inspect(exec_id)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False
    return True
