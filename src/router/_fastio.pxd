# Declarations of router._fastio (built from _fastio.pyx and the fastio/*.pxi it includes): each
# include's C classes, structs and enums are declared in the .pxd of the same name, included here.
# Module-level cdef functions are declared in none of them: declared in a .pxd, Cython would
# export them from the module (__pyx_capi__).

include "fastio/store.pxd"
include "fastio/log.pxd"
include "fastio/spawn.pxd"
