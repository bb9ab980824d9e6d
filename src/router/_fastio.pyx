# cython: cdivision=True
"""Segmented append-only logs in shared files: the exec router's output hot path.

A `SegmentStore` hands out fixed-size segment slots in a few large sparse files ("arenas") whose
descriptors it keeps open; a `SegmentedLog` is a list of slots. One writer (the event-loop
thread) splice()s child pipes straight into the slot at start + position (a pty, which cannot be
spliced, is readv()ed into the store's drain buffer and pwrite()n there); any number of reader
threads pread() committed ranges straight into the message they send. Segment = offset //
segment size: seeks are O(1). A closed log's slots go back to the store, which hands them out
again before it makes new ones; so do those of the one range a running log released (release():
the per-exec output cap), whose offsets reads then refuse with OffsetReleased. After a restart,
SegmentedLog.restore() rebuilds logs from a journal's (slots, committed, eof) on a new store over
the same arena files (opened when needed, never truncated), and SegmentStore.finish_restore()
frees every slot no restored log claimed. Beside the logs, the module starts children without the
GIL (spawn) and makes the few syscalls the event loop needs without blocking.

Why (benchmarks/HISTORY.md, "Which kind of log"): draining 4 GiB into a file mapping ran at
643 MB/s and left every touched page in RSS (4109 MiB); readv + pwrite ran at 1523 MB/s in 13 MiB.
Into recycled slots splice() takes one copy fewer: 2221 against 1411 MB/s ("splice, and what the
stream target asks" there). Streams share arena files rather than having a file each: that alone
took the fan-out rate from 417 to 505 execs/s ("Earlier states" there).

Coordination relies on the GIL: `_committed` only grows, is published after the bytes are in
the page cache, and bytes below it never change. Nothing is freed under a call still using it (the
py-pgproto rule for exported buffers): the store closes its descriptors once no call is inside a
pread/pwrite, a closed log gives its slots back once no reader (nor the writer) is inside it,
released segments' slots go back once no reader is inside the log, and the drain buffer is freed
once no drain holds it. `counters()` counts all of these, exactly, for leak checks.
`tests/helpers/reference_log.py` is its pure-Python twin, the test oracle.

One extension module, built from this file and the files it includes (as uvloop's loop.pyx and
grpc's cygrpc.pyx are); each include's C classes, structs and enums are declared in the .pxd of
the same name, which _fastio.pxd includes, and C functions and constants in includes/system.pxd:

  fastio/store.pxi     SegmentStore: arena files, slots and their free list, restore claims,
                       pread/pwrite/splice within a slot
  fastio/log.pxi       SegmentedLog (append, drain, read, read_frame, release, restore) and
                       OffsetReleased
  fastio/spawn.pxi     spawn() and SPAWN_*: posix_spawn with pipes and a pidfd, the GIL released
  fastio/syscalls.pxi  epoll_watch, close_now, exit_status, reap: calls that never block, for
                       the loop thread, with the GIL held

This file holds what they share: counters() and the counts behind it, the one errno -> OSError
conversion, and the convention every syscall loop follows. Each file cimports what it uses.
"""

import os

from libc.errno cimport EAGAIN

from .includes.system cimport EWOULDBLOCK, ROUTER_DEBUG


# Live objects and calls in flight, for leak checks (see counters(); Counts is in _fastio.pxd).
# Always kept: a few integer updates, all with the GIL held; debug builds assert none goes negative.
cdef Counts _counts


cdef inline int _count(Py_ssize_t *counter, Py_ssize_t delta) except -1:
    counter[0] += delta
    if ROUTER_DEBUG:
        assert counter[0] >= 0, "a counter went negative"
    return 0


def counters():
    """Live stores and logs, calls inside a pread/pwrite, slots held by logs: all exact, so a test
    can check they are back where they were."""
    return {
        "open_stores": _counts.open_stores,
        "open_logs": _counts.open_logs,
        "syscalls_in_flight": _counts.syscalls_in_flight,
        "slots_in_use": _counts.slots_in_use,
        "scratch_buffers": _counts.scratch_buffers,
    }


cdef int _raise_os_error(int err, object filename=None) except -1:
    """The one errno -> OSError conversion; OSError() picks the subclass (FileNotFoundError, ...)."""
    if filename is None:
        raise OSError(err, os.strerror(err))
    raise OSError(err, os.strerror(err), filename)


# Every syscall loop in the includes follows one convention (uvloop's): errno is read into a local
# inside the nogil block right after the call, before anything else can change it; EINTR runs the
# signal handlers with the GIL (PyErr_CheckSignals, PEP 475: a handler may raise) and retries;
# EAGAIN where it can happen means no progress; every other error goes through _raise_os_error.


cdef inline bint _would_block(int err) noexcept nogil:
    # Two statements on purpose: EAGAIN == EWOULDBLOCK on Linux would make a
    # duplicate case in the C switch Cython emits for `a == X or a == Y`.
    if err == EAGAIN:
        return True
    return err == EWOULDBLOCK


# One include per concern; their module-level statements run in this order.
include "fastio/store.pxi"
include "fastio/log.pxi"
include "fastio/spawn.pxi"
include "fastio/syscalls.pxi"
