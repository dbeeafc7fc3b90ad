"""A test hook: make the store's wait for a locked account index short, without changing it
for users.

``MAILSTACK_TEST_INDEX_BUSY_TIMEOUT=SECONDS`` in a daemon's environment sets how long a
statement waits for another process's lock on an account index (``mailstack-index.sqlite``)
before it fails with "database is locked" — 30 s otherwise. A test that holds the lock from
outside then sees the daemon's answer (``NO [UNAVAILABLE]``) in a second, not in half a minute.
Unset (always, outside tests) nothing changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

ENV = "MAILSTACK_TEST_INDEX_BUSY_TIMEOUT"

log = logging.getLogger("mailstack.indexbusy")


def install_index_busy_timeout(environ: Mapping[str, str] | None = None) -> bool:
    """Shorten the index busy timeout when ``$MAILSTACK_TEST_INDEX_BUSY_TIMEOUT`` is set."""
    value = (os.environ if environ is None else environ).get(ENV, "")
    if not value:
        return False
    seconds = float(value)
    if not 0 <= seconds <= 30:
        raise ValueError(f"{ENV} must be between 0 and 30 seconds, not {value!r}")
    from ..store import account

    account.BUSY_TIMEOUT = seconds
    log.warning("test hook: the account index busy timeout is %gs", seconds)
    return True
