"""MovingDeadline: one timer for a deadline that moves at every command."""

from __future__ import annotations

import asyncio

from mailstack.runtime.deadline import MovingDeadline


def recording() -> tuple[MovingDeadline, list[float], float]:
    """A deadline on the running loop that records when it expires, and the loop's time now."""
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    return MovingDeadline(loop, lambda: fired.append(loop.time())), fired, loop.time()


async def test_it_expires_once_after_the_last_move_and_not_after_a_clear() -> None:
    deadline, fired, start = recording()
    deadline.set(0.2)
    for _ in range(5):  # moved later four times: the first timer fires early and re-arms
        await asyncio.sleep(0.05)
        deadline.set(0.2)
    await asyncio.sleep(0.35)
    assert len(fired) == 1 and fired[0] - start >= 0.2 + 5 * 0.05 - 0.01
    deadline.set(0.05)
    deadline.clear()
    await asyncio.sleep(0.1)
    assert len(fired) == 1
    deadline.set(0.05)
    deadline.cancel()
    await asyncio.sleep(0.1)
    assert len(fired) == 1 and deadline.deadline is None


async def test_an_earlier_deadline_takes_a_new_timer() -> None:
    deadline, fired, start = recording()
    deadline.set(5)
    deadline.set(0.05)
    await asyncio.sleep(0.2)
    assert len(fired) == 1 and fired[0] - start < 1
