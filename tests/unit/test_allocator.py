"""The Trimmer gives heap memory freed after a burst back to the system (glibc only).

Run in a fresh interpreter so that the measurement sees only this heap: 80 MiB in 64 KiB
blocks (under the 1 MiB mmap threshold, so they come from the heap), each followed by a small
block that stays alive, so that free() alone cannot shrink the heap from its top."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from mailstack.runtime import allocator

SCRIPT = r"""
import asyncio
from mailstack.runtime import allocator
allocator.configure_allocator()
blocks, pins = [], []
for i in range(1280):
    blocks.append(bytearray(64 * 1024))
    pins.append(bytearray(700))
rest = allocator.resident()
del blocks
freed = allocator.resident()
trimmer = allocator.Trimmer(slack=8 << 20)
trimmer.floor = rest - (80 << 20)
asyncio.run(trimmer.check())
print(freed >> 20, allocator.resident() >> 20, trimmer.trims)
"""


@pytest.mark.skipif(allocator.malloc_trim is None or not allocator.resident(),
                    reason="needs glibc and /proc")
def test_trimmer_returns_freed_heap_memory() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    freed, trimmed, trims = map(int, out)
    print(f"\nresident after free {freed} MiB, after the Trimmer {trimmed} MiB")
    assert trims == 1
    assert freed - trimmed > 60  # the 80 MiB freed but kept by the allocator went back


def test_trimmer_stops_when_memory_is_live() -> None:
    """A trim that frees nothing moves the floor up: no trimming in vain every interval."""
    if allocator.malloc_trim is None or not allocator.resident():
        pytest.skip("needs glibc and /proc")
    t = allocator.Trimmer(slack=1 << 20)
    t.floor = 0  # everything this process holds counts as "above the floor"
    asyncio.run(t.check())  # gives back whatever is free now
    t.floor, t.trims = 0, 0
    asyncio.run(t.check())  # nothing left to give back: the floor moves up to what is live
    assert t.trims == 1 and t.floor > 0
    asyncio.run(t.check())
    assert t.trims == 1


SCRIPT_RETRY = r"""
import asyncio
from mailstack.runtime import allocator
allocator.configure_allocator()
start = allocator.resident()
blocks, pins = [], []
for i in range(1280):
    blocks.append(bytearray(64 * 1024))
    pins.append(bytearray(700))
trimmer = allocator.Trimmer(slack=8 << 20)
trimmer.floor = trimmer.lowest = start
asyncio.run(trimmer.check())  # during the burst: the memory is live, the trim is in vain
vain = trimmer.trims == 1 and trimmer.floor > start + (60 << 20)
del blocks  # the burst is over: freed, but kept by the allocator
freed = allocator.resident()
asyncio.run(trimmer.check())  # too early to try again
early = trimmer.trims
trimmer.retry_at = 0  # the back-off has passed
asyncio.run(trimmer.check())
print(int(vain), early, trimmer.trims, freed >> 20, allocator.resident() >> 20)
"""


@pytest.mark.skipif(allocator.malloc_trim is None or not allocator.resident(),
                    reason="needs glibc and /proc")
def test_trimmer_tries_again_after_a_burst() -> None:
    """A trim in vain during a burst raised the floor; once the burst's memory is freed, a
    later trim (after a back-off) gives it back, so the daemon returns to where it rested."""
    out = subprocess.run([sys.executable, "-c", SCRIPT_RETRY], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    vain, early, trims, freed, trimmed = map(int, out)
    assert vain == 1 and early == 1 and trims == 2
    assert freed - trimmed > 60, (freed, trimmed)
