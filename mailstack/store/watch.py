"""Change notification for Maildir folders: inotify (Linux, through ctypes) or polling.

One watcher per watched folder per process, shared by every session of the process on that
folder. With inotify the kernel reports renames, creations and deletions in ``new/`` and
``cur/`` at once; elsewhere (or when inotify is unavailable) a task compares the modification
times of the two directories every ``POLL_INTERVAL`` seconds; then a change also causes a
second wake-up shortly after, so that a change in the same timestamp tick as a listing is never
missed. Sessions of this process that change a folder call :func:`notify` to wake the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("mailstack.store.watch")
POLL_INTERVAL = 0.25
SETTLE = 0.05  # second wake-up after a change (covers a coarse directory timestamp)

_IN_MASK = (0x00000040 | 0x00000080 | 0x00000100 | 0x00000200 | 0x00000004 | 0x00000400
            | 0x00000800)  # MOVED_FROM|MOVED_TO|CREATE|DELETE|ATTRIB|DELETE_SELF|MOVE_SELF
_IN_NONBLOCK_CLOEXEC = 0o4000 | 0o2000000


class _Inotify:
    """A process-wide inotify descriptor attached to the running loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(_IN_NONBLOCK_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd
        self.loop = loop
        self.by_wd: dict[int, _Watch] = {}
        loop.add_reader(fd, self._readable)

    def add(self, path: Path, watch: _Watch) -> int:
        wd = self._add(self.fd, os.fsencode(path), _IN_MASK)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.by_wd[wd] = watch
        return wd

    def remove(self, wd: int) -> None:
        self.by_wd.pop(wd, None)
        self._rm(self.fd, wd)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        woken = set()
        pos = 0
        while pos + 16 <= len(data):
            wd, _mask, _cookie, length = struct.unpack_from("iIII", data, pos)
            pos += 16 + length
            w = self.by_wd.get(wd)
            if w is not None and id(w) not in woken:
                woken.add(id(w))
                w.changed()


_inotify: _Inotify | None = None
_inotify_failed = False


def _get_inotify() -> _Inotify | None:
    global _inotify, _inotify_failed
    loop = asyncio.get_running_loop()
    if _inotify is not None and _inotify.loop is loop and not loop.is_closed():
        return _inotify
    if _inotify_failed:
        return None
    if _inotify is not None:  # left over from a loop that is gone (tests run many loops)
        with contextlib.suppress(OSError):
            os.close(_inotify.fd)
        _inotify = None
    try:
        _inotify = _Inotify(loop)
    except (OSError, AttributeError) as exc:
        log.info("inotify unavailable (%s): polling folders every %.2fs", exc, POLL_INTERVAL)
        _inotify_failed = True
        return None
    return _inotify


class _Watch:
    def __init__(self, root: Path, interval: float) -> None:
        self.root = root
        self.interval = interval
        self.waiters: set[asyncio.Event] = set()
        self.task: asyncio.Task[None] | None = None
        self.wds: list[int] = []
        self.ino: _Inotify | None = None
        self.settle: asyncio.TimerHandle | None = None

    def stamp(self) -> tuple[int, int]:
        try:
            return (os.stat(self.root / "new").st_mtime_ns, os.stat(self.root / "cur").st_mtime_ns)
        except FileNotFoundError:
            return (0, 0)

    def wake(self) -> None:
        for ev in self.waiters:
            ev.set()

    def changed(self) -> None:
        """A change was seen: wake now, and when polling once more a little later (inotify
        reports every later change itself; polling cannot see a second change in the same
        directory-timestamp tick)."""
        self.wake()
        if self.settle is None and self.task is not None:
            loop = asyncio.get_running_loop()
            self.settle = loop.call_later(SETTLE, self._settled)

    def _settled(self) -> None:
        self.settle = None
        self.wake()

    def start(self) -> None:
        ino = _get_inotify()
        if ino is not None:
            try:
                self.wds = [ino.add(self.root / "new", self), ino.add(self.root / "cur", self)]
                self.ino = ino
                return
            except OSError as exc:
                log.info("inotify watch on %s failed (%s): polling", self.root, exc)
                for wd in self.wds:
                    ino.remove(wd)
                self.wds = []
        self.task = asyncio.get_running_loop().create_task(self.poll())

    def stop(self) -> None:
        if self.ino is not None:
            for wd in self.wds:
                self.ino.remove(wd)
            self.wds = []
        if self.task is not None:
            self.task.cancel()
        if self.settle is not None:
            self.settle.cancel()

    async def poll(self) -> None:
        last = self.stamp()
        while self.waiters:
            await asyncio.sleep(self.interval)
            now = self.stamp()
            if now != last:
                last = now
                self.changed()


_watches: dict[Path, _Watch] = {}


@contextlib.contextmanager
def watching(root: Path, event: asyncio.Event, interval: float = POLL_INTERVAL) -> Iterator[None]:
    """Set ``event`` whenever the folder at ``root`` changes, for the life of the block."""
    root = Path(root)
    w = _watches.get(root)
    if w is None:
        w = _watches[root] = _Watch(root, interval)
        w.waiters.add(event)
        w.start()
    else:
        w.waiters.add(event)
    try:
        yield
    finally:
        w.waiters.discard(event)
        if not w.waiters:
            w.stop()
            if _watches.get(root) is w:
                del _watches[root]


def notify(root: Path) -> None:
    """Wake this process's sessions watching ``root`` (after a change made here)."""
    w = _watches.get(Path(root))
    if w is not None:
        w.wake()
