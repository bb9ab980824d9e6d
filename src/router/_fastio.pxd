# Declarations of router._fastio (built from _fastio.pyx and the fastio/*.pxi it includes): each
# include's C classes, structs and enums are declared in the .pxd of the same name, included here.
# Module-level cdef functions are declared in none of them: declared in a .pxd, Cython would
# export them from the module (__pyx_capi__).

# Live objects and calls in flight, for leak checks: what counters() returns. The one variable of
# this type is _fastio.pyx's _counts, defined there (declared here, it would be exported too).
cdef struct Counts:
    Py_ssize_t open_stores          # initialised and not closed
    Py_ssize_t open_logs            # initialised and not closed (close() or dealloc counts once)
    Py_ssize_t syscalls_in_flight   # calls inside a pread/pwrite on a store (its _users, summed)
    Py_ssize_t slots_in_use         # slots handed to logs and not given back
    Py_ssize_t scratch_buffers      # drain buffers allocated: stores' own and temporary ones


include "fastio/store.pxd"
include "fastio/log.pxd"
include "fastio/spawn.pxd"
