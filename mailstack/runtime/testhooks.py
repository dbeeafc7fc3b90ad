"""Test hooks: environment variables that make a daemon fail the way a test needs, without
root or a real fault. Unset (always, outside tests) nothing changes; set, the daemon logs a
warning saying so.

``MAILSTACK_TEST_DISK_FULL=FLAGFILE`` makes every ``os.write`` to a regular file in the process
raise ``OSError(ENOSPC)`` while ``FLAGFILE`` exists — the queue, Maildir and LMTP delivery
writes all go through ``os.write`` (sockets and log output do not). Creating the flag file
"fills the disk", removing it frees it, so a test can check the 452/NO answers and the recovery
without a small tmpfs (which needs root).

``MAILSTACK_TEST_INDEX_BUSY_TIMEOUT=SECONDS`` sets how long a statement waits for another
process's lock on an account index (``mailstack-index.sqlite``) before it fails with "database
is locked" — 30 s otherwise. A test that holds the lock from outside then sees the daemon's
answer (``NO [UNAVAILABLE]``) in a second, not in half a minute.

``MAILSTACK_TEST_ORDERED_METADATA=1`` makes the mda take its data directory's file system for
one that keeps metadata changes in order through a crash (ext4 with a journal, XFS), so its
copy log is used on a test machine whose file system has no journal. A crash is never staged
for real in tests, so the order itself is never needed there.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Mapping

DISK_FULL_ENV = "MAILSTACK_TEST_DISK_FULL"
INDEX_BUSY_ENV = "MAILSTACK_TEST_INDEX_BUSY_TIMEOUT"
ORDERED_ENV = "MAILSTACK_TEST_ORDERED_METADATA"
#: set by the ORDERED_ENV hook: the mda uses its copy log whatever the file system
PRETEND_ORDERED = False

log = logging.getLogger("mailstack.testhooks")


def install(environ: Mapping[str, str] | None = None) -> list[str]:
    """Install the hooks the environment asks for; returns the names of their variables."""
    env = os.environ if environ is None else environ
    hooks = ((DISK_FULL_ENV, _disk_full), (INDEX_BUSY_ENV, _index_busy),
             (ORDERED_ENV, _ordered))
    return [name for name, hook in hooks if env.get(name) and hook(env[name])]


def _disk_full(flag: str) -> bool:
    real_write = os.write

    def write(fd: int, data: bytes | memoryview | bytearray, /) -> int:
        if os.path.exists(flag) and stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    os.write = write  # type: ignore[assignment]
    log.warning("test hook: file writes fail with ENOSPC while %s exists", flag)
    return True


def _index_busy(value: str) -> bool:
    seconds = float(value)
    if not 0 <= seconds <= 30:
        raise ValueError(f"{INDEX_BUSY_ENV} must be between 0 and 30 seconds, not {value!r}")
    from ..store import account

    account.BUSY_TIMEOUT = seconds
    log.warning("test hook: the account index busy timeout is %gs", seconds)
    return True


def _ordered(value: str) -> bool:
    global PRETEND_ORDERED
    if value != "1":
        raise ValueError(f"{ORDERED_ENV} must be 1, not {value!r}")
    PRETEND_ORDERED = True
    log.warning("test hook: the data directory's file system is taken to keep metadata in order")
    return True
