"""Change notification for Maildir folders: one polling task per watched folder per process.

The stdlib has no inotify, so a watcher compares the modification times of ``new/`` and
``cur/`` every ``interval`` seconds (a delivery, a flag change and an expunge all rename or
unlink inside one of them). Sessions of this process that change a folder call :func:`notify`
so that other sessions watching it wake at once instead of at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("mailstack.store.watch")
POLL_INTERVAL = 0.25


class _Watch:
    def __init__(self, root: Path, interval: float) -> None:
        self.root = root
        self.interval = interval
        self.waiters: set[asyncio.Event] = set()
        self.task: asyncio.Task[None] | None = None

    def stamp(self) -> tuple[int, int]:
        try:
            return (os.stat(self.root / "new").st_mtime_ns, os.stat(self.root / "cur").st_mtime_ns)
        except FileNotFoundError:
            return (0, 0)

    def wake(self) -> None:
        for ev in self.waiters:
            ev.set()

    async def run(self) -> None:
        last = self.stamp()
        while self.waiters:
            await asyncio.sleep(self.interval)
            now = self.stamp()
            if now != last:
                last = now
                self.wake()


_watches: dict[Path, _Watch] = {}


@contextlib.contextmanager
def watching(root: Path, event: asyncio.Event, interval: float = POLL_INTERVAL) -> Iterator[None]:
    """Set ``event`` whenever the folder at ``root`` changes, for the life of the block."""
    root = Path(root)
    w = _watches.get(root)
    if w is None or w.task is None or w.task.done():
        w = _watches[root] = _Watch(root, interval)
    w.waiters.add(event)
    if w.task is None:
        w.task = asyncio.get_running_loop().create_task(w.run())
    try:
        yield
    finally:
        w.waiters.discard(event)
        if not w.waiters:
            if w.task is not None:
                w.task.cancel()
            if _watches.get(root) is w:
                del _watches[root]


def notify(root: Path) -> None:
    """Wake this process's sessions watching ``root`` (after a change made here)."""
    w = _watches.get(Path(root))
    if w is not None:
        w.wake()
