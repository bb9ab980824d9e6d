# spawn()'s C constants (used in spawn.pxi; included by _fastio.pxd).

# What `spawn` takes for an output descriptor besides a real one: subprocess.DEVNULL and
# subprocess.STDOUT's values, so a caller passes those as they are (a test checks they match).
cdef enum:
    C_SPAWN_DEVNULL = -3  # open /dev/null
    C_SPAWN_STDOUT = -2   # (stderr only) the same as stdout
    C_SPAWN_PIPE = -1     # a new pipe; the router keeps the other end

# The step _spawn_piped() failed at: only a failed exec names the program in the OSError.
cdef enum:
    _STAGE_PIPES = 0
    _STAGE_EXEC = 1
    _STAGE_PIDFD = 2
