"""glibc allocator settings that keep the daemons' resident memory near their live heap.

Password checks (argon2id, 19 MiB each, in worker threads) made glibc raise its mmap threshold
to 19 MiB, after which every worker thread's arena kept a 19 MiB block for good: imap, pop3 and
mta sat at 115-160 MiB after a burst of logins. A fixed 1 MiB threshold
(``mallopt(M_MMAP_THRESHOLD)``) hands such blocks back on free: the imap daemon measured 43 MiB
instead of 157 MiB after 8 concurrent logins, and an argon2 check takes as long (35-37 ms either
way). Without glibc (musl, macOS) this does nothing.

Blocks under the threshold freed after a burst (a FETCH of many big messages, large APPENDs
from many sessions at once) stay in glibc's arenas: the imap daemon rested at 118-135 MiB
instead of 43 MiB after such bursts. :class:`Trimmer` watches the resident size and calls
``malloc_trim(0)`` (in a worker thread) once it has stayed above the size after the last trim
for a while: back to 45-50 MiB within seconds of the burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger("mailstack.allocator")

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
MMAP_THRESHOLD = 1 << 20


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


_LIBC = _libc()


def configure_allocator() -> None:
    """Serve blocks of 1 MiB and more by mmap, so that freeing them returns the memory."""
    if _LIBC is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not glibc
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _find_trim() -> Callable[[int], int] | None:
    if _LIBC is None:
        return None
    try:
        trim = _LIBC.malloc_trim
    except AttributeError:  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


malloc_trim = _find_trim()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident() -> int:
    """This process's resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class Trimmer:
    """Give freed heap memory back after bursts.

    Every ``interval`` seconds the resident size is read (a few microseconds). The floor is
    the lowest size seen; when the process is more than ``slack`` above it, ``malloc_trim(0)``
    runs in a worker thread. A trim that gives back less than half the slack means the memory
    is live (more connections, say): the floor moves up to it, so there is no trimming in vain.
    """

    RETRY_FIRST = 8.0  # seconds after a vain trim before trying again (doubling) …
    RETRY_MAX = 32.0  # … up to this: memory freed after a burst goes back within a minute

    def __init__(self, interval: float = 2.0, slack: int = 8 << 20) -> None:
        self.interval = interval
        self.slack = slack
        self.floor = 0
        self.lowest = 0  # the lowest resident size seen (the floor only ever rises from it)
        self.trims = 0
        self.retry_at = 0.0
        self.backoff = self.RETRY_FIRST

    async def run(self) -> None:
        if malloc_trim is None or not resident():
            return
        self.floor = self.lowest = resident()
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> None:
        now = resident()
        clock = time.monotonic()
        self.lowest = min(self.lowest, now)
        if now <= self.floor + self.slack:
            self.floor = min(self.floor, now)
            # a floor raised by a vain trim (memory live during a burst) is tried again later:
            # once the burst is over, what it freed goes back
            if not (now > self.lowest + self.slack and clock >= self.retry_at):
                return
        assert malloc_trim is not None
        await asyncio.to_thread(malloc_trim, 0)
        self.trims += 1
        after = resident()
        log.info("memory: malloc_trim, resident %d -> %d MiB", now >> 20, after >> 20)
        if now - after < self.slack // 2:
            self.floor = after
            self.retry_at = clock + self.backoff
            self.backoff = min(self.backoff * 2, self.RETRY_MAX)
        else:
            self.backoff = self.RETRY_FIRST
