"""What the keeper, the serving process and its successor say to each other (wire.py carries them).

Keeper <-> serving process, on the socket the keeper gave it (ROUTER_KEEPER_FD):
  serving -> keeper: Adopt (wait for Adopted), Release, Serving
  keeper -> serving: HandOver (with a socket to the successor), Exited, Adopted
Old serving process <-> its successor, on that socket (the successor's ROUTER_HANDOVER_FD):
  new: Hello                      old: Refused, or Frozen + (StdinChunk*, Running)* + End
  new: Commit (it opens the journal next: the old process never writes it again), then Serving
An end of the connection before Commit means the handover failed: the old process serves on.
"""
from __future__ import annotations

import msgspec

from router.engine.adoption import RunningExec

# The handover protocol: a successor that speaks another one is refused and the old process serves on.
VERSION = 1


class Adopt(msgspec.Struct, tag=True):
    pids: list[int]


class Adopted(msgspec.Struct, tag=True):
    pass


class Release(msgspec.Struct, tag=True):
    pid: int


class Serving(msgspec.Struct, tag=True):
    pid: int


class HandOver(msgspec.Struct, tag=True):
    pass


class Exited(msgspec.Struct, tag=True):
    pid: int
    normally: bool
    value: int


class Hello(msgspec.Struct, tag=True):
    version: int
    router_version: str


class Refused(msgspec.Struct, tag=True):
    reason: str


class Frozen(msgspec.Struct, tag=True):
    listen: str  # the address the old process listens on (its port: the successor's)
    execs: int


class StdinChunk(msgspec.Struct, tag=True):
    exec_id: str
    data: bytes


class Running(msgspec.Struct, tag=True):
    exec: RunningExec


class End(msgspec.Struct, tag=True):
    pass


class Commit(msgspec.Struct, tag=True):
    pass


ToKeeper = Adopt | Release | Serving
FromKeeper = HandOver | Exited | Adopted
FromSuccessor = Hello | Commit | Serving
FromOld = Refused | Frozen | StdinChunk | Running | End

to_keeper = msgspec.msgpack.Decoder(ToKeeper)
from_keeper = msgspec.msgpack.Decoder(FromKeeper)
from_successor = msgspec.msgpack.Decoder(FromSuccessor)
from_old = msgspec.msgpack.Decoder(FromOld)
