"""Failed-login throttling shared by SMTP AUTH, IMAP and POP3.

After ``free`` failures from one client address (or against one account), each further failure
is answered only after a delay that doubles up to ``max_delay``. A success clears the client's
count. State is per process and forgotten after ``forget_after`` seconds of quiet.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("mailstack.auth")


class AuthThrottle:
    def __init__(self, free: int = 3, max_delay: float = 15.0, forget_after: float = 900.0,
                 clock=time.monotonic) -> None:
        self.free = free
        self.max_delay = max_delay
        self.forget_after = forget_after
        self._clock = clock
        self._failures: dict[str, tuple[int, float]] = {}

    def failures(self, key: str) -> int:
        count, last = self._failures.get(key, (0, 0.0))
        if count and self._clock() - last > self.forget_after:
            del self._failures[key]
            return 0
        return count

    def delay_for(self, *keys: str) -> float:
        """Seconds to wait before answering a failed attempt from/for these keys."""
        worst = max((self.failures(k) for k in keys), default=0)
        if worst < self.free:
            return 0.0
        return min(self.max_delay, 0.5 * 2 ** (worst - self.free))

    def record_failure(self, *keys: str) -> None:
        now = self._clock()
        for k in keys:
            self._failures[k] = (self.failures(k) + 1, now)
        if len(self._failures) > 100_000:  # bound memory under a spray of addresses
            cutoff = now - self.forget_after
            self._failures = {k: v for k, v in self._failures.items() if v[1] > cutoff}

    def record_success(self, client: str) -> None:
        self._failures.pop(client, None)

    async def fail(self, client: str, account: str, protocol: str) -> None:
        """Record a failure, log it, and sleep the growing delay."""
        self.record_failure(f"ip:{client}", f"user:{account.lower()}")
        delay = self.delay_for(f"ip:{client}", f"user:{account.lower()}")
        log.warning("%s auth failed for %r from %s (delay %.1fs)", protocol, account, client, delay)
        if delay:
            await asyncio.sleep(delay)
