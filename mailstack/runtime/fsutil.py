"""Durable file-system primitives: fsync'd atomic writes and directory syncs."""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path

#: every process of mailstack (daemons and CLI) creates files 0600 and directories 0700: mail,
#: queue entries, keys and folder metadata are private to the account running the stack
PRIVATE_UMASK = 0o077


def private_umask() -> None:
    """Set :data:`PRIVATE_UMASK` for this process (at the start of every entry point)."""
    os.umask(PRIVATE_UMASK)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that a create/rename/unlink inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync an existing file's data and metadata (opened read-only for it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: str | os.PathLike[str]) -> None:
    """Make everything written to the file system holding ``path`` durable: data, creations,
    renames and unlinks of every file on it, with one journal commit (Linux ``syncfs(2)``;
    ``sync()`` of every file system where it is missing)."""
    call = _syncfs_call()
    if call is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if call(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


@lru_cache(maxsize=1)
def _syncfs_call():  # type: ignore[no-untyped-def]
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


#: file systems that journal every metadata change (create, rename, unlink) and replay it in
#: order after a crash: what survives is always everything up to some point
_ORDERED = {"xfs": "XFS"}
_EXT = ("ext4", "ext3")


def metadata_order(path: str | os.PathLike[str]) -> tuple[bool, str]:
    """Whether the file system holding ``path`` keeps its metadata changes in order through a
    crash (what the mda's copy log relies on), and what it is, for the log: XFS, and ext4 or
    ext3 with a journal, do; ext4 without a journal, btrfs, overlayfs, tmpfs, network file
    systems are not known to."""
    mount = _mount_of(os.path.realpath(path))
    if mount is None:
        return False, "an unknown file system"
    fstype, device = mount
    if fstype in _ORDERED:
        return True, _ORDERED[fstype]
    if fstype in _EXT:
        name = _block_device_name(device)
        if name and any(Path("/proc/fs/jbd2").glob(f"{name}-*")):
            return True, f"{fstype} with a journal ({name})"
        return False, f"{fstype} without a journal ({name or device})"
    return False, fstype


def _mount_of(path: str) -> tuple[str, str] | None:
    """(type, major:minor) of the mount holding ``path`` (from /proc/self/mountinfo)."""
    best: tuple[int, str, str] | None = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        point = fields[4].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fields[sep + 1], fields[2])
    return None if best is None else (best[1], best[2])


def _block_device_name(device: str) -> str:
    """``vda``, ``loop0``… for a ``major:minor``; "" when it is not a block device."""
    try:
        return os.path.basename(os.readlink(f"/sys/dev/block/{device}"))
    except OSError:
        return ""


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` at ``fd``'s position (``write`` may write less at a time)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (``pwrite`` may write less at a time)."""
    view, at = memoryview(data), offset
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def write_fsync(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` exclusively, write ``data`` and fsync it (not its directory)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably (tmp, fsync, rename, dir fsync)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    write_fsync(tmp, data, mode)
    os.chmod(tmp, mode)  # umask may have narrowed it
    os.replace(tmp, path)
    fsync_dir(path.parent)
