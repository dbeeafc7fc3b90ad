"""An opt-in monitor of event-loop stalls, attributed to the commands being served.

Issue 13's target: no single IMAP or POP3 command keeps the event loop for more than 10 ms
before it yields. With ``MAILSTACK_LOOP_WATCH=PATH`` in a daemon's environment (off by default:
``bench/loop_stall.py`` and tests set it), a heartbeat runs every :data:`TICK` seconds on the
loop; when it runs late, the loop was busy that long (less the tick) without yielding. Each
stall of at least :data:`REPORT_MS` is appended to ``PATH`` as a JSON line::

    {"start": 1234.5678, "ms": 12.5, "cpu": 11.9, "labels": ["imap SELECT"]}

``start`` is ``time.monotonic()`` (one clock for every process of the machine, so a client can
match stalls to the commands it sent), ``ms`` the stall's length, ``cpu`` the CPU time the
loop's thread used in it (on a busy machine ``ms`` also counts time the process waited for a
core or for the GIL held by a worker thread; ``cpu`` is the loop's own work), ``labels`` what
:func:`note` saw since the previous heartbeat (the sessions note ``imap SELECT``, ``pop3
RETR`` ... as they start a command), ``gc`` (when garbage collections ran in the stall) their
total milliseconds and the oldest generation collected (2: a full collection). A stall longer
than :data:`SAMPLE_AFTER` also carries ``stacks``: the loop thread's innermost frames, sampled
once by a watchdog thread while the heartbeat was late (where the time went; a collection holds
the GIL, so a stall spent in one has no sample). Lines are written at most every 0.2 s, off the
measured stretch. Costs a wake-up per tick while on; a test of one global when off.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
import threading
import time
import traceback

ENV = "MAILSTACK_LOOP_WATCH"
#: the shortest stall written (ms; default :data:`REPORT_MS`; 0 writes every heartbeat)
ENV_MS = "MAILSTACK_LOOP_WATCH_MS"
TICK = 0.001
REPORT_MS = 1.0

#: a stall this long (seconds) gets the loop thread's stack sampled by a watchdog thread
SAMPLE_AFTER = 0.004

#: the labels noted since the last heartbeat (None: the monitor is off)
_noted: set[str] | None = None


class _GcClock:
    """Time spent in garbage collections since the last heartbeat (a ``gc.callbacks`` entry)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.ms = 0.0
        self.largest_gen = -1

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.ms += (time.perf_counter() - self.started) * 1000
            self.largest_gen = max(self.largest_gen, info["generation"])

    def take(self) -> tuple[float, int]:
        taken = (self.ms, self.largest_gen)
        self.ms, self.largest_gen = 0.0, -1
        return taken


class _Sampler(threading.Thread):
    """Samples the loop thread's stack once while a heartbeat is late (where the time goes)."""

    def __init__(self, loop_thread: int) -> None:
        super().__init__(name="loopwatch-sampler", daemon=True)
        self.loop_thread = loop_thread
        self.beat = time.monotonic()
        self.stacks: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        sampled_beat = 0.0
        while not self.stopped.wait(0.002):
            beat = self.beat
            if beat != sampled_beat and time.monotonic() - beat > SAMPLE_AFTER:
                sampled_beat = beat
                frame = sys._current_frames().get(self.loop_thread)
                if frame is not None:
                    where = traceback.extract_stack(frame)[-6:]
                    self.stacks.append(" < ".join(f"{os.path.basename(f.filename)}:{f.lineno}"
                                                  f" {f.name}" for f in reversed(where)))


def note(label: str) -> None:
    """A session starts ``label`` (``imap FETCH``); free when the monitor is off."""
    if _noted is not None:
        _noted.add(label)


async def watch(path: str, report_ms: float = REPORT_MS) -> None:
    """Run the heartbeat until cancelled, appending stalls of ``report_ms`` or more to
    ``path``."""
    global _noted
    _noted = set()
    pending: list[str] = []
    clock, cpu_clock = time.monotonic, time.thread_time
    last = written = clock()
    last_cpu = cpu_clock()
    sampler = _Sampler(threading.get_ident())
    sampler.start()
    gc_clock = _GcClock()
    gc.callbacks.append(gc_clock)
    try:
        while True:
            await asyncio.sleep(TICK)
            now, now_cpu = clock(), cpu_clock()
            sampler.beat = now
            stacks, sampler.stacks = sampler.stacks, []
            stall = (now - last - TICK) * 1000
            cpu = (now_cpu - last_cpu) * 1000
            last, last_cpu = now, now_cpu
            labels, _noted = _noted, set()
            gc_ms, gc_gen = gc_clock.take()
            if stall >= report_ms or report_ms <= 0:
                record = {"start": round(now - stall / 1000, 6), "ms": round(stall, 2),
                          "cpu": round(cpu, 2), "labels": sorted(labels)}
                if gc_gen >= 0:
                    record["gc"] = [round(gc_ms, 2), gc_gen]
                if stacks:
                    record["stacks"] = stacks
                pending.append(json.dumps(record))
            if pending and now - written > 0.2:
                _append(path, pending)
                pending = []
                last = written = clock()  # the write is not the commands' stall
                last_cpu = cpu_clock()
    finally:
        gc.callbacks.remove(gc_clock)
        sampler.stopped.set()
        if _noted and report_ms <= 0:  # every heartbeat asked for: the last labels too
            pending.append(json.dumps({"start": round(clock(), 6), "ms": 0.0, "cpu": 0.0,
                                       "labels": sorted(_noted)}))
        _noted = None
        with contextlib.suppress(OSError):
            _append(path, pending)


def _append(path: str, lines: list[str]) -> None:
    if lines:
        with open(path, "a") as f:
            f.write("\n".join(lines) + "\n")


def start() -> asyncio.Task[None] | None:
    """Start the monitor when ``MAILSTACK_LOOP_WATCH`` names a file (in a running loop)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    return asyncio.create_task(watch(path, float(os.environ.get(ENV_MS) or REPORT_MS)))
