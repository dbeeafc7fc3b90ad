"""A test hook: make file writes fail with ENOSPC, as on a full disk, without a full disk.

``MAILSTACK_TEST_DISK_FULL=FLAGFILE`` in a daemon's environment makes every ``os.write`` to a
regular file in that process raise ``OSError(ENOSPC)`` while ``FLAGFILE`` exists — the queue,
Maildir and LMTP delivery writes all go through ``os.write`` (sockets and log output do not).
Creating the flag file "fills the disk", removing it frees it, so a test can check the 452/NO
answers and the recovery without a small tmpfs (which needs root). Unset (always, outside tests)
nothing is installed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Mapping

ENV = "MAILSTACK_TEST_DISK_FULL"

log = logging.getLogger("mailstack.diskfault")


def install_disk_full_fault(environ: Mapping[str, str] | None = None) -> bool:
    """Install the hook when ``$MAILSTACK_TEST_DISK_FULL`` names a flag file."""
    flag = (os.environ if environ is None else environ).get(ENV, "")
    if not flag:
        return False
    real_write = os.write

    def write(fd: int, data: bytes | memoryview | bytearray, /) -> int:
        if os.path.exists(flag) and stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    os.write = write  # type: ignore[assignment]
    log.warning("test hook: file writes fail with ENOSPC while %s exists", flag)
    return True
