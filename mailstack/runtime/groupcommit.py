"""Group commit: many concurrent durable writes share one worker-thread trip and their fsyncs.

A caller ``await``s :meth:`GroupCommit.submit` with a job. Jobs that arrive while a batch is
being committed wait and then go together in the next batch, so under load one trip to the
worker thread (and one directory or journal fsync) serves many transactions, while a lone
transaction is committed at once (it only waits for the current batch, if any). This is how
databases and Postfix-class MTAs keep fsync-before-ack cheap.

The commit function runs in one dedicated thread, gets the jobs in arrival order and returns
one result per job — a value, or an exception for that job alone. If it raises, every job of
the batch gets that exception. A caller that is cancelled while its job is committing does not
stop the job (its effect on disk stays); it only stops waiting for the result.

With ``inline_below`` set, a job is committed in the caller's thread (the event loop) when
the load is sparse: nothing is committing or waiting, and the last commit ended longer ago than
it took (jobs do not overlap). That saves the trip to the worker thread and back (two thread
wake-ups, ~90 µs of latency for a lone message). A job that arrives sooner — under
concurrency, it was waiting while the loop was busy committing — goes through the worker
thread, where the jobs that follow join its batch. So does every job while the last commit
took longer than ``inline_below`` seconds (a slow disk: the loop would stall).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from queue import SimpleQueue
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")

CommitFn = Callable[[Sequence[J]], Sequence["R | BaseException"]]
_Work = tuple[asyncio.AbstractEventLoop, list]


class GroupCommit(Generic[J, R]):
    """Batch jobs for ``commit`` (blocking, run in a worker thread); see the module docstring."""

    def __init__(self, commit: CommitFn, *, name: str, max_batch: int = 128,
                 inline_below: float = 0.0) -> None:
        self._commit = commit
        self._inline_below = inline_below
        #: when the last commit ended (perf_counter) and how long it took (seconds)
        self._last_end = 0.0
        self._last_took = 0.0
        self._name = name
        self._max_batch = max_batch
        # one dedicated thread fed by a SimpleQueue: cheaper per trip than an executor
        self._work: SimpleQueue[_Work | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending: list[tuple[J, asyncio.Future[R]]] = []
        self._busy = False
        #: batches committed and jobs in them (for benchmarks and logs); inline ones among them
        self.batches = 0
        self.jobs = 0
        self.inline = 0

    def can_inline(self) -> bool:
        """Whether a job submitted now would be committed in the caller's thread (sparse
        load; see the module docstring)."""
        if not self._inline_below or self._busy or self._pending:
            return False
        took = self._last_took
        return took < self._inline_below and time.perf_counter() - self._last_end > took

    def commit_now(self, job: J) -> R:
        """Commit ``job`` alone in the caller's thread (when :meth:`can_inline`); its result,
        or its exception raised."""
        return self._commit_inline(job)

    async def submit(self, job: J) -> R:
        """Commit ``job`` (with whatever else is waiting) and return its result."""
        if self.can_inline():
            return self._commit_inline(job)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((job, fut))
        if not self._busy:
            self._busy = True
            # call_soon: jobs submitted by other callbacks of this loop iteration join in
            loop.call_soon(self._start, loop)
        return await fut

    def _commit_inline(self, job: J) -> R:
        """Commit ``job`` alone in this thread; see the module docstring."""
        self.batches += 1
        self.jobs += 1
        self.inline += 1
        started = time.perf_counter()
        try:
            result = self._commit([job])[0]
        finally:
            self._last_end = time.perf_counter()
            self._last_took = self._last_end - started
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending[:self._max_batch]
        del self._pending[:self._max_batch]
        self.batches += 1
        self.jobs += len(batch)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._work.put((loop, batch))

    def _run(self) -> None:
        """The worker thread: commit batches until :meth:`close`."""
        while (work := self._work.get()) is not None:
            loop, batch = work
            started = time.perf_counter()
            try:
                results: Sequence[object] = self._commit([job for job, _ in batch])
            except BaseException as exc:  # handed to every caller of the batch
                results = [exc] * len(batch)
            took = time.perf_counter() - started
            try:
                loop.call_soon_threadsafe(self._finish, loop, batch, results, took)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[J, asyncio.Future[R]]],
                results: Sequence[object], took: float) -> None:
        self._last_end, self._last_took = time.perf_counter(), took
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():  # the caller was cancelled
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)  # type: ignore[arg-type]
        if self._pending:
            self._start(loop)
        else:
            self._busy = False

    def close(self) -> None:
        """Let the worker thread go once its current batch is done."""
        self._work.put(None)

