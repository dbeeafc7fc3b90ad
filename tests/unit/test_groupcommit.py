"""Group commit: concurrent jobs share a trip to the worker thread; results stay per job."""

from __future__ import annotations

import asyncio
import threading
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


async def test_a_lone_job_is_committed_inline_and_a_slow_one_turns_that_off() -> None:
    threads: list[str] = []
    slow = False

    def commit(jobs: Sequence[str]) -> list[str | BaseException]:
        threads.append(threading.current_thread().name)
        if slow:
            threading.Event().wait(0.02)  # a slow disk
        return [OSError(28, "No space") if j == "full" else j.upper() for j in jobs]

    gc: GroupCommit[str, str] = GroupCommit(commit, name="test-commit", inline_below=0.01)
    here = threading.current_thread().name
    assert await gc.submit("a") == "A"
    with pytest.raises(OSError, match="No space"):
        await gc.submit("full")
    assert threads == [here, here] and gc.inline == 2
    slow = True
    assert await gc.submit("b") == "B"  # inline, but slower than inline_below
    slow = False
    assert await gc.submit("c") == "C"  # so this one goes through the worker thread
    assert threads[-1] == "test-commit" and gc.inline == 3
    # jobs arriving together while one commits are batched in the thread as before
    results = await asyncio.gather(*(gc.submit(x) for x in "def"))
    assert results == ["D", "E", "F"]
    gc.close()
