"""The exec journal: an append-only file of exec records that a restarted router replays.

The router must survive `kill -9`. Every change to an exec that a client can observe after a
restart (it began, its leader's pid, which arena slots hold its output, how much stdin went in,
how it ended, that it was released) is appended here as a small record, so that on restart
`Journal.open` rebuilds the finished execs (pollable, readable) and the started ones (a repeated
TaskExecStart with the same id and request runs nothing).

File format (little-endian throughout)::

    header   MAGIC (8 bytes, b"TCRJRNL\\0") + u32 VERSION
    record*  u32 payload length, u32 zlib.crc32(payload), payload (msgpack of one `Record`)

A payload is one tagged msgspec struct encoded as an array (``["output", exec_id, ...]``).
A crash at any byte leaves a valid prefix: replay stops at the first record that is short (torn),
empty or longer than MAX_RECORD (a torn or zero-filled length), or whose checksum fails, and the
writer truncates the file there before it appends again. A whole record (checksum good) that does
not decode, e.g. one written by a later version, is skipped and counted, not a reason to stop.

Durability: `flush()` hands the records to the kernel with one write and no fsync; the page cache
survives the death of the process, which is what this journal is for. `flush(fsync=True)` (and
`close()`) also survive the machine's.

Secrets: `Begun` holds the names of the exec's environment variables, never their values.

Threads: `append` may be called from any thread (it takes a lock and buffers the record);
`flush`, `compact` and `close` serialize among themselves.
"""
from __future__ import annotations

import os
import pathlib
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, TypeAlias

import msgspec

from .records import ExecSpec, ExitCause, ExitStatus, PtySpec, StderrMode, StdoutMode, StreamName

MAGIC: Final = b"TCRJRNL\0"
VERSION: Final = 1
HEADER: Final = MAGIC + struct.pack("<I", VERSION)
# A record's payload is never longer (a longer length is a torn or corrupt frame, not a record).
MAX_RECORD: Final = 16 << 20
_FRAME: Final = struct.Struct("<II")  # payload length, crc32 of payload
FRAME_SIZE: Final = _FRAME.size

# Automatic compaction: rewrite once the file is over max(COMPACT_MIN, COMPACT_RATIO x live size).
COMPACT_MIN: Final = 1 << 20
COMPACT_RATIO: Final = 4.0


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
        return cls(exec_id, fingerprint, list(spec.args), spec.workdir, spec.stdout, spec.stderr,
                   spec.timeout_secs, spec.pty, sorted(env), started_at)


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


_STREAMS: Final[tuple[StreamName, ...]] = ("stdout", "stderr")

Record: TypeAlias = Begun | Spawned | Output | Stdin | Exited | Forgotten

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final[msgspec.msgpack.Decoder[Record]] = msgspec.msgpack.Decoder(Record)


def encode_record(record: Record) -> bytes:
    """One record's payload (no frame)."""
    return _encoder.encode(record)


def decode_record(payload: bytes | memoryview) -> Record:
    """A payload back into its record; raises msgspec.DecodeError (or ValidationError) if it is not one."""
    return _decoder.decode(payload)


def frame(record: Record) -> bytes:
    """One record as it lies in the file: length, checksum, payload."""
    payload = _encoder.encode(record)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


# -- state ---------------------------------------------------------------------------------------


class JournaledExec(msgspec.Struct):
    """Everything the journal knows about one exec: the latest record of each kind."""

    begun: Begun
    spawned: Spawned | None = None
    outputs: dict[StreamName, Output] = {}
    stdin: Stdin | None = None
    exited: Exited | None = None

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
        for stream in _STREAMS:
            out = self.outputs.get(stream)
            if out is not None:
                yield out
        if self.stdin is not None:
            yield self.stdin
        if self.exited is not None:
            yield self.exited

    def copy(self) -> JournaledExec:
        """An independent copy (records are frozen, so they are shared)."""
        return JournaledExec(self.begun, self.spawned, dict(self.outputs), self.stdin, self.exited)


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
        (of that stream, for Output). Records naming no live exec are counted and ignored."""
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
            ex.outputs[record.stream] = record
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
    unpack, crc32, decode, apply = _FRAME.unpack_from, zlib.crc32, _decoder.decode, state.apply
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


# -- writer --------------------------------------------------------------------------------------


class Journal:
    """The journal open for appending. Make one with `Journal.open`."""

    def __init__(self, path: pathlib.Path, fd: int, size: int, state: JournalState, *,
                 compact_min: int, compact_ratio: float, auto_compact: bool) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".tmp")
        self._fd = fd
        self._size = size  # where the next record goes: the end of the last whole record
        self._state = state  # the merge of every record written (not of those still buffered)
        self._buffer: list[Record] = []
        self._lock = threading.Lock()  # guards _buffer
        self._io_lock = threading.Lock()  # serializes flush, compact, close
        self._closed = False
        self._torn = False  # a failed write may have left bytes past _size
        self._compact_min = compact_min
        self._compact_ratio = compact_ratio
        self._auto_compact = auto_compact
        self._threshold = compact_min
        self.compactions = 0
        # Why the last automatic compaction failed (it is retried once the file grows further).
        self.compaction_error: OSError | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, compact_min: int = COMPACT_MIN,
             compact_ratio: float = COMPACT_RATIO, auto_compact: bool = True) -> tuple[Journal, JournalState]:
        """Replay the journal at `path` (creating it, mode 0600, if missing), cut off a torn tail,
        and open it for appending. Returns the journal and the replayed state, which is the
        caller's: the journal keeps its own copy. Raises JournalError if `path` is not a journal."""
        path = pathlib.Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)  # a compaction that a crash interrupted: the journal is intact
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            data = _read_all(fd)
            state = parse(data)
            if state.valid_length < len(HEADER):
                os.ftruncate(fd, 0)
                _pwrite_all(fd, HEADER, 0)
                size = len(HEADER)
                _fsync_dir(path.parent)  # so that flush(fsync=True) finds the file after a power cut
            else:
                size = state.valid_length
                if size < len(data):
                    os.ftruncate(fd, size)
            journal = cls(path, fd, size, state.copy(), compact_min=compact_min,
                          compact_ratio=compact_ratio, auto_compact=auto_compact)
        except BaseException:
            os.close(fd)
            raise
        return journal, state

    @property
    def size(self) -> int:
        """The file's length: header and every record flushed."""
        return self._size

    @property
    def pending(self) -> int:
        """Records appended and not yet flushed."""
        with self._lock:
            return len(self._buffer)

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, record: Record) -> None:
        """Buffer one record for the next flush. No system call; any thread."""
        with self._lock:
            if self._closed:
                raise ValueError("journal is closed")
            self._buffer.append(record)

    def flush(self, *, fsync: bool = False) -> int:
        """Write every buffered record with one write (fsync too if asked); return the bytes written.
        If the write fails (OSError, e.g. ENOSPC) the records stay buffered for the next flush and
        the file keeps only whole records. Then, if the file has outgrown its live state,
        compact it (a failure there is kept in `compaction_error`, not raised)."""
        with self._io_lock:
            self._check_open()
            written = self._flush_locked(fsync)
            if self._auto_compact and self._size > self._threshold:
                self._auto_compact_locked()
            return written

    def compact(self, live: Iterable[Record] | None = None) -> int:
        """Flush, then rewrite the journal as its live state, the fewest records that replay to it:
        into `<path>.tmp`, fsync, rename over the journal. `live`, if given, is that state as the
        caller knows it (it must include every record appended so far). Returns the new size."""
        with self._io_lock:
            self._check_open()
            self._flush_locked(False)
            if live is None:
                state = self._state
            else:
                state = JournalState()
                for record in live:
                    state.apply(record)
            self._rewrite(state, self._encode(list(state.records())), fsync=True)
            return self._size

    def close(self, *, fsync: bool = True) -> None:
        """Flush (and fsync) what is buffered and close the file. The descriptor is closed even if
        that write fails (its OSError propagates, and those records are lost). Idempotent."""
        with self._io_lock:
            if self._closed:
                return
            with self._lock:
                self._closed = True  # no appends from here on
            try:
                self._flush_locked(fsync)
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (with _io_lock held) ----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("journal is closed")

    def _flush_locked(self, fsync: bool) -> int:
        with self._lock:
            batch, self._buffer = self._buffer, []
        written = 0
        if batch:
            try:
                data = self._encode(batch)
                if self._torn:
                    os.ftruncate(self._fd, self._size)
                    self._torn = False
                self._write(data)
            except BaseException:
                with self._lock:
                    self._buffer[:0] = batch
                raise
            self._size += len(data)
            apply = self._state.apply
            for record in batch:
                apply(record)
            written = len(data)
        if fsync:
            os.fsync(self._fd)
        return written

    def _encode(self, batch: list[Record]) -> bytes:
        """Frame every record into one buffer. A record over MAX_RECORD is removed from `batch`
        and RecordTooLarge raised (the caller puts the rest back)."""
        parts: list[bytes] = []
        add, encode, pack, crc32, limit = parts.append, _encoder.encode, _FRAME.pack, zlib.crc32, MAX_RECORD
        for i, record in enumerate(batch):
            payload = encode(record)
            if len(payload) > limit:
                del batch[i]
                raise RecordTooLarge(f"{type(record).__name__} of exec {record.exec_id!r} encodes to "
                                     f"{len(payload)} bytes (at most {limit})")
            add(pack(len(payload), crc32(payload)))
            add(payload)
        return b"".join(parts)

    def _write(self, data: bytes) -> None:
        """Write `data` at the end of the last whole record, looping on short writes. If that
        fails, cut the file back so it ends with a whole record, and raise."""
        try:
            _pwrite_all(self._fd, data, self._size)
        except OSError:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._torn = True  # retried before the next write
            raise

    def _auto_compact_locked(self) -> None:
        """The file passed its threshold: compact if it is over COMPACT_RATIO x the live state,
        else raise the threshold to that."""
        data = self._encode(list(self._state.records()))
        live = len(HEADER) + len(data)
        if self._size <= self._compact_ratio * live:
            self._threshold = max(self._compact_min, int(self._compact_ratio * live))
            return
        try:
            # No fsync: this runs on the router's event loop, and surviving a crash of the router
            # needs only the page cache (close() and compact() fsync for a clean stop).
            self._rewrite(self._state, data, fsync=False)
        except OSError as e:
            self.compaction_error = e
            self._threshold = self._size + self._compact_min  # try again after some growth
        else:
            self.compaction_error = None

    def _rewrite(self, state: JournalState, records: bytes, fsync: bool) -> None:
        fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _pwrite_all(fd, HEADER + records, 0)
            if fsync:
                os.fsync(fd)
            os.replace(self._tmp, self.path)
        except BaseException:
            os.close(fd)
            self._tmp.unlink(missing_ok=True)
            raise
        old, self._fd = self._fd, fd
        os.close(old)
        if fsync:
            _fsync_dir(self.path.parent)
        self._size = len(HEADER) + len(records)
        self._torn = False
        self._state = state
        self._threshold = max(self._compact_min, int(self._compact_ratio * self._size))
        self.compactions += 1


def _read_all(fd: int) -> bytes:
    parts: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    with memoryview(data) as view:
        done = 0
        while done < len(data):
            n = os.pwrite(fd, view[done:], offset + done)
            if n == 0:
                raise OSError(28, "no space left on device (wrote nothing)")
            done += n


def _fsync_dir(directory: pathlib.Path) -> None:
    """Make a rename in `directory` durable; best effort (not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
