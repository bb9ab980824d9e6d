"""The mounts the router made: the kernel calls, and the table that survives a restart.

Two methods (README, "Images"):
- overlay: `mount -t overlay` with the image's metadata tree and the blob store as lower layers
  and a writable upper layer of the mount's own in the state directory; O(1) in the tree's size.
  It hides whatever the target held; unmounting shows it again.
- copy: without the privilege to mount, the target's old content is moved aside (renamed to a
  hidden sibling on the same filesystem) and the image is copied in; unmounting deletes the copy
  and moves the old content back.
Mounts stack: a second mount at a path covers the first, and unmount removes the newest.
"""
from __future__ import annotations

import ctypes
import errno
import os
import pathlib
import shutil
from typing import Literal

import msgspec

Method = Literal["overlay", "copy"]
_MNT_DETACH = 2


class MountRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: bytes
    image_id: str  # "" for an empty directory
    method: Method
    mount_id: str
    hidden: bytes = b""  # copy: where the target's old content waits
    created: bool = False  # the router created the target directory


class MountTable(msgspec.Struct, forbid_unknown_fields=True):
    mounts: list[MountRecord] = []


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _overlay_option(path: bytes) -> bytes:
    # overlayfs splits its options at ',' and lower layers at ':'; a backslash escapes either.
    return path.replace(b"\\", b"\\\\").replace(b",", b"\\,").replace(b":", b"\\:")


def overlay_mount(target: bytes, lowers: list[bytes], data_only: bytes | None, upper: bytes, work: bytes) -> None:
    lower = b":".join(_overlay_option(p) for p in lowers)
    if data_only is not None:
        lower += b"::" + _overlay_option(data_only)
    options = (b"lowerdir=" + lower + b",upperdir=" + _overlay_option(upper) + b",workdir=" + _overlay_option(work)
               + b",metacopy=on,redirect_dir=on")
    _check(_libc.mount(b"overlay", target, b"overlay", 0, options), f"mount overlay at {target!r}")


def unmount(target: bytes) -> bool:
    """Unmount target; True if it was busy and is detached lazily (gone once its last user is)."""
    if _libc.umount2(target, 0) == 0:
        return False
    err = ctypes.get_errno()
    if err != errno.EBUSY:
        raise OSError(err, f"unmount {target!r}: {os.strerror(err)}")
    _check(_libc.umount2(target, _MNT_DETACH), f"detach {target!r}")
    return True


def mounted_points() -> set[bytes]:
    """Mount points in this mount namespace (mountinfo's fifth field, octal escapes undone)."""
    points = set()
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            field = line.split(b" ")[4]
            points.add(field.decode("unicode_escape").encode("latin-1"))
    return points


def can_mount(scratch: pathlib.Path) -> bool:
    """Whether this process may make overlay mounts with data-only layers (tried once, in scratch)."""
    probe = scratch / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    dirs = {name: probe / name for name in ("meta", "data", "upper", "work", "merged")}
    for d in dirs.values():
        d.mkdir(parents=True)
    try:
        overlay_mount(bytes(dirs["merged"]), [bytes(dirs["meta"])], bytes(dirs["data"]),
                      bytes(dirs["upper"]), bytes(dirs["work"]))
    except OSError:
        return False
    else:
        unmount(bytes(dirs["merged"]))
        return True
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def hide(target: bytes, mount_id: str) -> bytes:
    """Copy method: move the target aside (same directory, so the same filesystem); returns where."""
    parent, name = os.path.split(target)
    hidden = os.path.join(parent, b"." + name + b".router-hidden-" + mount_id.encode())
    os.rename(target, hidden)
    return hidden


_table_dec = msgspec.msgpack.Decoder(MountTable)


def load_table(path: pathlib.Path) -> MountTable:
    """The table saved at `path`, less the overlay mounts that are gone (a reboot); copies stay."""
    try:
        table = _table_dec.decode(path.read_bytes())
    except FileNotFoundError:
        return MountTable()
    points = mounted_points()
    table.mounts = [m for m in table.mounts if m.method == "copy" or m.path in points]
    return table


def image_mounts(table: MountTable) -> dict[str, str]:
    """Mount id -> image id, for the mounts of an image (not of an empty directory)."""
    return {m.mount_id: m.image_id for m in table.mounts if m.image_id}


def table_images(path: pathlib.Path) -> set[str]:
    """Images the table saved at `path` names (a running server's, when the CLI asks)."""
    try:
        table = _table_dec.decode(path.read_bytes())
    except (FileNotFoundError, msgspec.DecodeError):
        return set()
    return {m.image_id for m in table.mounts if m.image_id}
