"""A deadline that moves at every command, kept with one timer.

Idle and transaction timeouts are pushed back far more often than they expire. Cancelling the
timer and arming a new one each time costs two timer-heap operations and an object a
command; :class:`MovingDeadline` only records the new deadline, and its one timer, when it
fires early, re-arms itself for the deadline as it then stands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class MovingDeadline:
    """Calls ``expired()`` once the deadline set last (:meth:`set`) has passed, unless it was
    cleared (:meth:`clear`) or cancelled first. ``expired`` may set it again."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expired: Callable[[], None]) -> None:
        self._loop = loop
        self._expired = expired
        self.deadline: float | None = None  # loop time
        self._handle: asyncio.TimerHandle | None = None

    def set(self, seconds: float) -> None:
        """Expire ``seconds`` from now (a later deadline reuses the timer)."""
        deadline = self.deadline = self._loop.time() + seconds
        handle = self._handle
        if handle is not None:
            if handle.when() <= deadline:
                return
            handle.cancel()
        self._handle = self._loop.call_at(deadline, self._fire)

    def clear(self) -> None:
        """No deadline until the next :meth:`set` (the timer, if any, lapses unused)."""
        self.deadline = None

    def cancel(self) -> None:
        """No deadline and no timer (the connection is gone)."""
        self.deadline = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        deadline = self.deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:
            self._handle = self._loop.call_at(deadline, self._fire)
            return
        self.deadline = None
        self._expired()
