"""Group commit: concurrent jobs share a trip to the worker thread; results stay per job."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from mailstack.runtime.groupcommit import GroupCommit


async def test_concurrent_jobs_are_batched_and_results_stay_in_order() -> None:
    gate = threading.Event()
    batches: list[list[int]] = []

    def commit(jobs: Sequence[int]) -> list[int | BaseException]:
        gate.wait(5)  # the first batch blocks until the rest have queued up
        batches.append(list(jobs))
        return [ValueError(j) if j == 13 else j * 2 for j in jobs]

    gc: GroupCommit[int, int] = GroupCommit(commit, name="test-commit")
    tasks = [asyncio.create_task(gc.submit(i)) for i in range(20)]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    gc.close()
    assert [r for i, r in enumerate(results) if i != 13] == [i * 2 for i in range(20) if i != 13]
    assert isinstance(results[13], ValueError)
    assert sorted(j for b in batches for j in b) == list(range(20))
    assert len(batches) < 20 and (gc.jobs, gc.batches) == (20, len(batches))


async def test_a_failing_commit_fails_its_whole_batch_only() -> None:
    calls = 0

    def commit(jobs: Sequence[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(28, "No space left on device")
        return list(jobs)

    gc: GroupCommit[str, str] = GroupCommit(commit, name="test-commit")
    with pytest.raises(OSError, match="No space"):
        await gc.submit("a")
    assert await gc.submit("b") == "b"
    gc.close()


async def test_a_cancelled_caller_does_not_stop_the_job() -> None:
    done: list[str] = []
    release = threading.Event()

    def commit(jobs: Sequence[str]) -> list[str]:
        release.wait(5)
        done.extend(jobs)
        return list(jobs)

    gc: GroupCommit[str, str] = GroupCommit(commit, name="test-commit")
    task = asyncio.create_task(gc.submit("kept"))
    await asyncio.sleep(0.02)
    task.cancel()
    release.set()
    assert await gc.submit("next") == "next"
    assert done == ["kept", "next"]
    gc.close()


async def sparse(gc: GroupCommit[str, str]) -> None:
    """Wait until the next job counts as sparse (longer since the last commit ended than that
    commit took): a condition, not a fixed sleep, however slow the machine is."""
    while time.perf_counter() - gc._last_end <= gc._last_took:
        await asyncio.sleep(0.005)


async def test_sparse_jobs_are_committed_inline_overlapping_or_slow_ones_in_the_thread(
        ) -> None:
    threads: list[str] = []
    delay = 0.0

    def commit(jobs: Sequence[str]) -> list[str | BaseException]:
        threads.append(threading.current_thread().name)
        threading.Event().wait(delay)  # the disk's time
        return [OSError(28, "No space") if j == "full" else j.upper() for j in jobs]

    gc: GroupCommit[str, str] = GroupCommit(commit, name="test-commit", inline_below=0.5)
    here = threading.current_thread().name
    assert await gc.submit("a") == "A"
    await sparse(gc)  # the next job comes after the last commit ended
    with pytest.raises(OSError, match="No space"):
        await gc.submit("full")
    assert threads == [here, here] and gc.inline == 2
    delay = 0.6  # slower than inline_below: the loop would stall
    await sparse(gc)
    assert await gc.submit("b") == "B"
    delay = 0.0
    await sparse(gc)
    assert await gc.submit("c") == "C"  # after a slow commit: the worker thread
    assert threads[-1] == "test-commit" and gc.inline == 3
    await sparse(gc)
    assert await gc.submit("d") == "D"  # fast again: inline
    assert threads[-1] == here and gc.inline == 4
    # jobs that overlap (they arrive while one commits) are batched in the thread
    delay = 0.2
    await sparse(gc)
    batches = gc.batches
    assert await asyncio.gather(*(gc.submit(x) for x in "efg")) == ["E", "F", "G"]
    assert gc.inline == 5  # "e" found the committer idle after a gap …
    assert threads[-1] == "test-commit" and gc.batches == batches + 2  # … "f" and "g" did not
    gc.close()
