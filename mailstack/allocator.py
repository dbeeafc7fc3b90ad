"""glibc allocator settings that keep the daemons' resident memory near their live heap.

Password checks (argon2id, 19 MiB each, in worker threads) made glibc raise its mmap threshold
to 19 MiB, after which every worker thread's arena kept a 19 MiB block for good: imap, pop3 and
mta sat at 115-160 MiB after a burst of logins. A fixed 1 MiB threshold
(``mallopt(M_MMAP_THRESHOLD)``) hands such blocks back on free: the imap daemon measured 43 MiB
instead of 157 MiB after 8 concurrent logins, and an argon2 check takes as long (35-37 ms either
way). Without glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
MMAP_THRESHOLD = 1 << 20


def configure_allocator() -> None:
    """Serve blocks of 1 MiB and more by mmap, so that freeing them returns the memory."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not glibc
        ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
