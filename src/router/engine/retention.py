"""How much finished execs' output the router keeps: total bytes, age after exit, number of execs.

Finished execs are released oldest first once any limit is passed; a released exec is NOT_FOUND and
its log slots go back to the store for new output. Running execs are never released.
"""
from __future__ import annotations

import os

import msgspec

GiB = 1024**3
# journald's default: 10% of the filesystem, at most 4 GiB.
DEFAULT_SHARE = 0.10
DEFAULT_MAX_BYTES = 4 * GiB
# A day after exit: long past any client's retries, short enough that a busy host forgets.
DEFAULT_SECS = 24 * 3600.0
DEFAULT_EXECS = 10_000


class Retention(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits on finished execs; 0 for `bytes` means the default for the logs' filesystem."""

    bytes: int = 0
    secs: float = DEFAULT_SECS
    execs: int = DEFAULT_EXECS

    def resolved(self, log_dir: str) -> Retention:
        """With `bytes` filled in: 10% of the filesystem holding `log_dir`, at most 4 GiB."""
        if self.bytes > 0:
            return self
        fs = os.statvfs(log_dir)
        share = int(fs.f_blocks * fs.f_frsize * DEFAULT_SHARE)
        return msgspec.structs.replace(self, bytes=min(DEFAULT_MAX_BYTES, share))

    def releasing(self, need: int, held: int) -> Retention:
        """These limits, with `bytes` low enough that `need` of the `held` bytes go too (a full log
        filesystem asks for room)."""
        if need <= 0:
            return self
        return msgspec.structs.replace(self, bytes=max(min(self.bytes, held - need), 0))
