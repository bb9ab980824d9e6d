"""The image store's filesystem helpers: paths kept out of the state directory, emptying a directory,
and an OSError as the status a call answers."""
from __future__ import annotations

import errno
import os
import shutil

import grpc

from router.errors import RouterError, invalid


def outside_state(state_dir: bytes, path: bytes) -> None:
    """INVALID_ARGUMENT if `path` is the router's state directory (real path) or inside it."""
    real = os.path.realpath(path)
    if real == state_dir or real.startswith(state_dir + b"/"):
        raise invalid("path", f"{path!r} is inside the router's state directory")


def empty_dir(path: bytes) -> None:
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)


def store_error(e: OSError, what: str) -> RouterError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return RouterError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{what}: {e.strerror}")
    if e.errno in (errno.EACCES, errno.EPERM):
        return RouterError(grpc.StatusCode.PERMISSION_DENIED, f"{what}: {e.strerror}")
    if e.errno == errno.EBUSY:
        return RouterError(grpc.StatusCode.FAILED_PRECONDITION, f"{what}: busy")
    if e.errno == errno.EIO:
        return RouterError(grpc.StatusCode.DATA_LOSS, f"{what}: {e.strerror}")
    return RouterError(grpc.StatusCode.FAILED_PRECONDITION, f"{what}: {e}")
