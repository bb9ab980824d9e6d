"""The journal's format: its records, their framing, and replay into a state.

File format (little-endian throughout)::

    header   MAGIC (8 bytes, b"TCRJRNL\\0") + u32 VERSION
    record*  u32 payload length, u32 zlib.crc32(payload), payload (msgpack of one `Record`)

A payload is one tagged msgspec struct encoded as an array (``["output", exec_id, ...]``).
A crash at any byte leaves a valid prefix: replay stops at the first record that is short (torn),
empty or longer than MAX_RECORD (a torn or zero-filled length), or whose checksum fails, and the
writer truncates the file there before it appends again. A whole record (checksum good) that does
not decode, e.g. one written by a later version, is skipped and counted, not a reason to stop.

Secrets: `Begun` holds the names of the exec's environment variables, never their values.
"""
from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from typing import Final, TypeAlias

import msgspec

from .records import ExecSpec, ExitCause, ExitStatus, PtySpec, StderrMode, StdoutMode, StreamName

MAGIC: Final = b"TCRJRNL\0"
VERSION: Final = 1
HEADER: Final = MAGIC + struct.pack("<I", VERSION)
# A record's payload is never longer (a longer length is a torn or corrupt frame, not a record).
MAX_RECORD: Final = 16 << 20
FRAME: Final = struct.Struct("<II")  # payload length, crc32 of payload
FRAME_SIZE: Final = FRAME.size


class JournalError(Exception):
    """The file is not a journal this version can read (wrong magic or version)."""


class RecordTooLarge(ValueError):
    """A record encodes to more than MAX_RECORD bytes; it was dropped, nothing was written."""


# -- records -------------------------------------------------------------------------------------


class Begun(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True, gc=False, tag="begun"):
    """An exec was accepted: the request, minus the environment's values."""

    exec_id: str
    fingerprint: bytes  # sha256 of the request, computed by the caller
    args: list[str]
    workdir: str | None
    stdout: StdoutMode
    stderr: StderrMode
    timeout_secs: int | None
    pty: PtySpec | None
    env_names: list[str]  # variable NAMES only: values may be secrets and are never written
    started_at: float  # wall clock (time.time())

    @classmethod
    def from_spec(cls, exec_id: str, fingerprint: bytes, spec: ExecSpec, started_at: float,
                  base_env: Mapping[str, str] | None = None) -> Begun:
        """The record for `spec`: everything but the environment's values. With `base_env` (the
        router's own, which every exec inherits), only the names the request set are kept."""
        env = spec.env if base_env is None else [k for k, v in spec.env.items() if base_env.get(k) != v]
        # The spec's own list of args, and one empty list of names for them all: the journal keeps
        # this record while the exec is retained, and records are never changed.
        return cls(exec_id, fingerprint, spec.args, spec.workdir, spec.stdout, spec.stderr,
                   spec.timeout_secs, spec.pty, sorted(env) if env else _NO_NAMES, started_at)


_NO_NAMES: Final[list[str]] = []


class Spawned(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True, gc=False, tag="spawned"):
    """The leader runs: `pid` is also its process group's id."""

    exec_id: str
    pid: int
    terminal: bool
    # Which process that pid was: when it was spawned (wall clock) and in which boot. Without both,
    # a restarted router could take a reused pid for the leader and kill a stranger's group.
    spawned_at: float = 0.0
    boot_id: str = ""


class Output(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True, gc=False, tag="output"):
    """Where one stream's bytes are: arena slots in order (-1: a released segment), how many
    bytes are committed, and whether the stream ended. The latest record per stream wins."""

    exec_id: str
    stream: StreamName
    slots: list[int]
    committed: int
    eof: bool


class Stdin(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True, gc=False, tag="stdin"):
    """How many stdin bytes reached the child, and whether it was closed. The latest wins."""

    exec_id: str
    written: int
    eof: bool


class Exited(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True, gc=False, tag="exited"):
    """The leader ended, and why."""

    exec_id: str
    status: ExitStatus
    ended_at: float  # wall clock
    cause: ExitCause


class Forgotten(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True, gc=False, tag="forgotten"):
    """The exec no longer exists: retention released it, or its start failed."""

    exec_id: str


Record: TypeAlias = Begun | Spawned | Output | Stdin | Exited | Forgotten

ENCODER: Final = msgspec.msgpack.Encoder()
DECODER: Final[msgspec.msgpack.Decoder[Record]] = msgspec.msgpack.Decoder(Record)


def encode_record(record: Record) -> bytes:
    """One record's payload (no frame)."""
    return ENCODER.encode(record)


def decode_record(payload: bytes | memoryview) -> Record:
    """A payload back into its record; raises msgspec.DecodeError (or ValidationError) if it is not one."""
    return DECODER.decode(payload)


def frame(record: Record) -> bytes:
    """One record as it lies in the file: length, checksum, payload."""
    payload = ENCODER.encode(record)
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


# -- state ---------------------------------------------------------------------------------------


class JournaledExec(msgspec.Struct, gc=False):
    """Everything the journal knows about one exec: the latest record of each kind (no cycles:
    records refer to nothing that refers back)."""

    begun: Begun
    spawned: Spawned | None = None
    # Each stream's Output: two fields rather than a dict, since the router keeps one of these
    # for every retained exec (`outputs` gives them as a dict).
    stdout: Output | None = None
    stderr: Output | None = None
    stdin: Stdin | None = None
    exited: Exited | None = None

    @property
    def outputs(self) -> dict[StreamName, Output]:
        """The latest Output of each stream that has one."""
        return {out.stream: out for out in (self.stdout, self.stderr) if out is not None}

    @property
    def exec_id(self) -> str:
        return self.begun.exec_id

    @property
    def fingerprint(self) -> bytes:
        return self.begun.fingerprint

    @property
    def pid(self) -> int | None:
        return None if self.spawned is None else self.spawned.pid

    @property
    def status(self) -> ExitStatus | None:
        return None if self.exited is None else self.exited.status

    def records(self) -> Iterator[Record]:
        """The fewest records that replay to this same state (what compaction writes)."""
        yield self.begun
        if self.spawned is not None:
            yield self.spawned
        for out in (self.stdout, self.stderr):
            if out is not None:
                yield out
        if self.stdin is not None:
            yield self.stdin
        if self.exited is not None:
            yield self.exited

    def copy(self) -> JournaledExec:
        """An independent copy (records are frozen, so they are shared)."""
        return JournaledExec(self.begun, self.spawned, self.stdout, self.stderr, self.stdin, self.exited)


class JournalState(msgspec.Struct):
    """The journal's records merged per exec. `execs` is in the order the execs began (oldest
    first). `valid_length` is where the last whole record ends (0 if not even the header is whole);
    `stopped` says why replay stopped there: "end" (the file ends there), "missing" (no file),
    "short" (a torn header or record), "empty" or "oversized" (a bad length), "checksum".
    Counters: `replayed` records applied, `orphans` ignored for naming no live exec (a record of a
    forgotten exec, say), `replaced` Begun for an id already live, `undecodable` whole records
    skipped because they did not decode."""

    execs: dict[str, JournaledExec] = {}
    valid_length: int = 0
    file_length: int = 0
    stopped: str = "end"
    replayed: int = 0
    orphans: int = 0
    replaced: int = 0
    undecodable: int = 0

    def apply(self, record: Record) -> None:
        """Merge one record. A Begun starts the exec afresh (the newest, even if its id was live);
        Forgotten removes it; any other kind replaces the exec's previous record of that kind
        (of that stream, for Output; an Output of nothing leaves none). Records naming no live
        exec are counted and ignored."""
        self.replayed += 1
        execs = self.execs
        if type(record) is Begun:
            if execs.pop(record.exec_id, None) is not None:
                self.replaced += 1
            execs[record.exec_id] = JournaledExec(record)
            return
        ex = execs.get(record.exec_id)
        if ex is None:
            self.orphans += 1
        elif type(record) is Output:
            # A complete stream with nothing in it, not even a slot, replays as one never recorded
            # does (restore.py: empty and complete): kept as None, which costs nothing per exec.
            kept = record if record.committed or record.slots or not record.eof else None
            if record.stream == "stdout":
                ex.stdout = kept
            else:
                ex.stderr = kept
        elif type(record) is Stdin:
            ex.stdin = record
        elif type(record) is Spawned:
            ex.spawned = record
        elif type(record) is Exited:
            ex.exited = record
        else:
            del execs[record.exec_id]

    def records(self) -> Iterator[Record]:
        """The live state as the fewest records, oldest exec first."""
        for ex in self.execs.values():
            yield from ex.records()

    def copy(self) -> JournalState:
        return JournalState({k: ex.copy() for k, ex in self.execs.items()}, self.valid_length, self.file_length,
                            self.stopped, self.replayed, self.orphans, self.replaced, self.undecodable)


def replay(path: str | os.PathLike[str]) -> JournalState:
    """Read the journal at `path` (changing nothing) and merge its whole records.
    A missing file is an empty journal; a file that is not a journal raises JournalError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return JournalState(stopped="missing")
    return parse(data)


def parse(data: bytes) -> JournalState:
    """Merge the whole records of a journal's bytes; see `replay`."""
    state = JournalState(file_length=len(data))
    n = len(data)
    if n < len(HEADER):
        if data != HEADER[:n]:
            raise JournalError("not an exec journal (bad magic)")
        state.stopped = "short" if n else "end"
        return state
    if data[:len(MAGIC)] != MAGIC:
        raise JournalError("not an exec journal (bad magic)")
    if data[:len(HEADER)] != HEADER:
        (version,) = struct.unpack_from("<I", data, len(MAGIC))
        raise JournalError(f"exec journal version {version} (this router reads {VERSION})")
    pos = len(HEADER)
    view = memoryview(data)
    unpack, crc32, decode, apply = FRAME.unpack_from, zlib.crc32, DECODER.decode, state.apply
    stopped = "end"
    try:
        while pos < n:
            if n - pos < FRAME_SIZE:
                stopped = "short"
                break
            length, crc = unpack(data, pos)
            if length == 0:
                stopped = "empty"
                break
            if length > MAX_RECORD:
                stopped = "oversized"
                break
            start = pos + FRAME_SIZE
            end = start + length
            if end > n:
                stopped = "short"
                break
            payload = view[start:end]
            if crc32(payload) != crc:
                stopped = "checksum"
                break
            try:
                record = decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                state.undecodable += 1
            else:
                apply(record)
            pos = end
    finally:
        view.release()
    state.valid_length = pos
    state.stopped = stopped
    return state
