"""The opt-in event-loop stall monitor (``MAILSTACK_LOOP_WATCH``, ``runtime/loopwatch.py``) that
``bench/loop_stall.py`` reads: it catches a loop that does not yield and charges the stall to
the command being served, in the real daemons as well as on its own."""

from __future__ import annotations

import asyncio
import gc
import imaplib
import json
import poplib
import time
from pathlib import Path

from mailstack.config import Config
from mailstack.runtime import loopwatch

from ..conftest import running
from ..pop3.pop3_helpers import ALICE, PASSWORD, make_alice


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_blocking_callback_is_caught_and_charged_to_its_label(tmp_path: Path) -> None:
    path = tmp_path / "stalls"
    watcher = asyncio.create_task(loopwatch.watch(str(path)))
    await asyncio.sleep(0.01)
    loopwatch.note("test BLOCK")
    t0 = time.monotonic()
    time.sleep(0.03)  # the loop is held: nothing else runs for 30 ms
    await asyncio.sleep(0.01)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    # a busy machine can add stalls of its own (the process not scheduled): look for ours
    stalls = [r for r in records(path) if r["ms"] >= 25 and r["labels"] == ["test BLOCK"]]
    assert stalls, records(path)
    assert stalls[0]["cpu"] < stalls[0]["ms"]  # it slept: little CPU of its own
    # the daemons' clock is time.monotonic() (not the wall clock: seconds apart, not years)
    assert abs(stalls[0]["start"] - t0) < 1.0
    loopwatch.note("after")  # the monitor is off again: noting costs nothing, keeps nothing
    assert loopwatch._noted is None


def _spin_in_the_loop(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # holds the loop and the GIL (a thread still gets turns)
        pass


async def test_a_long_stall_names_where_the_loop_was(tmp_path: Path) -> None:
    """A stall over SAMPLE_AFTER gets the loop thread's stack, sampled by a watchdog thread
    while it lasts: where the time went, not only that it went.

    The watchdog samples once per late heartbeat: when the machine itself held the process
    back just before (a busy machine, beside a CPU hog), that one sample can show the loop
    waiting in ``select`` instead. So up to five tries, each with its own monitor; one must
    name the spinning function (with sampling broken, none does)."""
    seen = []
    for attempt in range(5):
        path = tmp_path / f"stalls{attempt}"
        watcher = asyncio.create_task(loopwatch.watch(str(path)))
        await asyncio.sleep(0.01)
        _spin_in_the_loop(0.05)
        await asyncio.sleep(0.01)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        stalls = [r for r in records(path) if r["ms"] >= 40]
        seen.append(stalls)
        # (a stall that ended before the watchdog sampled it has no stacks)
        if any("_spin_in_the_loop" in st for r in stalls for st in r.get("stacks", ())):
            return
    raise AssertionError(f"no sampled stack named the spinning function: {seen}")


def pop3_client(cfg: Config) -> None:
    c = poplib.POP3("127.0.0.1", cfg.port("pop3", "pop3"), timeout=10)
    c.user(ALICE)
    c.pass_(PASSWORD)
    c.list()
    c.uidl()
    c.retr(1)
    c.quit()


def imap_client(cfg: Config) -> None:
    m = imaplib.IMAP4("127.0.0.1", cfg.port("imap", "imap"), timeout=10)
    m.login(ALICE, PASSWORD)
    m.select("INBOX")
    m.fetch("1:*", "(FLAGS)")
    m.uid("STORE", "1:*", "+FLAGS", "(\\Flagged)")
    m.logout()


async def test_the_daemons_label_stalls_with_their_commands(cfg: Config, tmp_path: Path) -> None:
    make_alice(cfg, messages=3)
    watch = {d: tmp_path / f"{d}.stalls" for d in ("imap", "pop3")}
    for daemon, client in (("pop3", pop3_client), ("imap", imap_client)):
        env = {loopwatch.ENV: str(watch[daemon]), loopwatch.ENV_MS: "0"}  # every heartbeat
        async with running(daemon, cfg, env=env):
            await asyncio.to_thread(client, cfg)
    labels = {d: {label for r in records(watch[d]) for label in r["labels"]} for d in watch}
    assert {"pop3 USER", "pop3 PASS", "pop3 LIST", "pop3 UIDL", "pop3 RETR",
            "pop3 QUIT"} <= labels["pop3"], labels
    assert {"imap LOGIN", "imap SELECT", "imap FETCH", "imap UID STORE",
            "imap LOGOUT"} <= labels["imap"], labels


async def test_a_garbage_collection_in_a_stall_is_named(tmp_path: Path) -> None:
    """A full collection inside a stall is recorded as such (``gc``: its milliseconds and
    generation 2): a collection holds the GIL, so the stack sampler cannot say it."""
    path = tmp_path / "stalls"
    watcher = asyncio.create_task(loopwatch.watch(str(path), report_ms=0))
    await asyncio.sleep(0.01)
    loopwatch.note("test GC")
    gc.collect()
    await asyncio.sleep(0.01)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    collected = [r for r in records(path) if "test GC" in r["labels"]]
    assert collected and collected[0]["gc"][1] == 2 and collected[0]["gc"][0] > 0, collected


def big_commands(cfg: Config) -> None:
    m = imaplib.IMAP4("127.0.0.1", cfg.port("imap", "imap"), timeout=60)
    m.login(ALICE, PASSWORD)
    m.select("INBOX")
    for _ in range(4):
        assert m.fetch("1:*", "(FLAGS)")[0] == "OK"
        assert m.store("1:*", "+FLAGS.SILENT", "(\\Flagged)")[0] == "OK"
        assert m.store("1:*", "-FLAGS", "(\\Flagged)")[0] == "OK"
    m.logout()


async def test_big_commands_run_no_full_collection_in_the_daemon(cfg: Config,
                                                                  tmp_path: Path) -> None:
    """FETCH and STORE of 1:* on 5,000 messages in a real imap daemon (uvloop, its own process)
    leave their objects to reference counting: no full garbage collection runs while they are
    served. With Python's default thresholds several do, each walking every long-lived object
    in one stretch of the event loop (``runtime/daemon.py``, ``GC_THRESHOLDS``)."""
    make_alice(cfg, messages=5000)
    path = tmp_path / "imap.stalls"
    env = {loopwatch.ENV: str(path), loopwatch.ENV_MS: "0"}
    async with running("imap", cfg, env=env):
        await asyncio.to_thread(big_commands, cfg)
    served = [r for r in records(path) if any(la.startswith("imap") for la in r["labels"])]
    assert any("imap STORE" in r["labels"] for r in served), served[-3:]
    full = [r for r in records(path) if r.get("gc", (0, -1))[1] == 2]
    assert not full, full
