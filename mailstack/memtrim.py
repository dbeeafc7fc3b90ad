"""Keep the daemons' resident memory near their live heap (glibc allocator settings).

- Password checks (argon2id, 19 MiB each, in worker threads) made glibc raise its mmap
  threshold to 19 MiB, after which every worker thread's arena kept a 19 MiB block for good:
  imap, pop3 and mta sat at 115-160 MiB after a burst of logins. A fixed 1 MiB threshold
  (``mallopt(M_MMAP_THRESHOLD)``) hands such blocks back on free; an argon2 check takes as long
  (35-37 ms measured either way) and the daemons stay at ~16 MiB more than their idle size.
- Freed small chunks (TLS handshakes, parsing) stay in the main arena until trimmed:
  ``malloc_trim(0)`` once a minute (a fraction of a millisecond) gives them back.

Without glibc (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable

INTERVAL = 60.0


def _find_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


malloc_trim = _find_trim()

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
MMAP_THRESHOLD = 1 << 20


def configure_allocator() -> None:
    """Serve blocks of 1 MiB and more by mmap, so that freeing them returns the memory."""
    name = ctypes.util.find_library("c")
    if malloc_trim is None or not name:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


async def trim_forever(interval: float = INTERVAL) -> None:
    """Call ``malloc_trim(0)`` every ``interval`` seconds (a no-op without glibc)."""
    if malloc_trim is None:
        return
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(OSError):
            malloc_trim(0)
