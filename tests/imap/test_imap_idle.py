"""IDLE and change propagation: deliveries, other sessions, another imap process, pop3-style
deletions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import wait_port
from tests.imap.conftest import PASSWORD, USER, Raw, message, ok, session

#: how long a test waits for an untagged update: a ceiling for slow machines, not a latency
#: figure (bench/imap_bench.py measures delivery → EXISTS latency)
IDLE_WAIT = 15.0


async def idle(c: Raw) -> None:
    await c.send("I IDLE\r\n")
    assert (await c.line()).startswith(b"+ ")


async def done(c: Raw) -> list[bytes]:
    await c.send("DONE\r\n")
    return ok(await c.until("I"), "I")


async def test_idle_sees_delivery(imap):
    c = await session(imap)
    await idle(c)
    imap.deliver(message("while idle"))
    assert await c.line(timeout=IDLE_WAIT) == b"* 1 EXISTS\r\n"
    assert await c.line(timeout=IDLE_WAIT) == b"* 1 RECENT\r\n"
    await done(c)
    r = ok(await c.cmd("f", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])"), "f")
    assert b"Subject: while idle" in r[0]


async def test_two_sessions_see_store_and_expunge(imap):
    for i in range(3):
        imap.deliver(message(f"m{i}"))
    a = await session(imap)
    b = await session(imap)
    await idle(b)
    ok(await a.cmd("1", "STORE 2 +FLAGS (\\Flagged)"), "1")
    got = await b.line(timeout=IDLE_WAIT)
    assert got.startswith(b"* 2 FETCH (UID 2 FLAGS (\\Flagged")
    ok(await a.cmd("2", "STORE 1 +FLAGS (\\Deleted)"), "2")
    assert (await b.line(timeout=IDLE_WAIT)).startswith(b"* 1 FETCH (UID 1 FLAGS (\\Deleted")
    ok(await a.cmd("3", "EXPUNGE"), "3")
    assert await b.line(timeout=IDLE_WAIT) == b"* 1 EXPUNGE\r\n"
    await done(b)
    # without IDLE: the change arrives with the next command, but not during FETCH
    ok(await a.cmd("4", "STORE 1 +FLAGS (\\Deleted)"), "4")
    ok(await a.cmd("5", "EXPUNGE"), "5")
    r = ok(await b.cmd("6", "FETCH 1:* (FLAGS)"), "6")
    assert not any(b"EXPUNGE" in x for x in r)
    r = ok(await b.cmd("7", "NOOP"), "7")
    assert r[0] == b"* 1 EXPUNGE\r\n"
    r = ok(await b.cmd("8", "FETCH 1:* (UID)"), "8")
    assert r[0] == b"* 1 FETCH (UID 3)\r\n" and len(r) == 2


async def test_external_deletion_like_pop3(imap):
    imap.deliver(message("x"))
    imap.deliver(message("y"))
    c = await session(imap)
    await idle(c)
    for msg in imap.inbox.scan()[:1]:
        imap.inbox.remove(msg)
    assert await c.line(timeout=IDLE_WAIT) == b"* 1 EXPUNGE\r\n"
    await done(c)


async def test_second_imap_process_shares_the_mailbox(imap, config_factory, tmp_path: Path):
    """Another imap daemon process on the same data directory sees our changes and vice versa."""
    cfg2 = config_factory()  # same data directory, fresh ports
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "serve", "imap", "--config",
                             str(tmp_path / "mailstack.toml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port2 = cfg2.port("imap", "imap")
        await wait_port(port2, timeout=20)
        imap.deliver(message("shared"))
        here = await session(imap)
        there = await session(imap, port=port2)
        await idle(there)
        ok(await here.cmd("1", "STORE 1 +FLAGS (\\Answered)"), "1")
        line = await there.line(timeout=IDLE_WAIT)
        assert line.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Answered")
        await done(there)
        await idle(here)
        msg = message("from there").replace(b"\n", b"\r\n")
        r = ok(await there.cmd("2", b"APPEND INBOX {%d+}\r\n" % len(msg) + msg), "2")
        assert b"[APPENDUID" in r[-1] and b" 2]" in r[-1]
        assert await here.line(timeout=IDLE_WAIT) == b"* 2 EXISTS\r\n"
        await done(here)
    finally:
        proc.terminate()
        proc.wait(10)
    log = proc.stderr.read().decode()
    assert "listening on 127.0.0.1" in log and "(imap, STARTTLS)" in log


async def test_idle_without_selection_and_disconnect_in_idle(imap):
    c = await Raw.connect(imap)
    ok(await c.cmd("L", f"LOGIN {USER} {PASSWORD}"), "L")
    await idle(c)
    await done(c)
    d = await session(imap)
    await idle(d)
    d.writer.transport.abort()  # vanish in the middle of IDLE
    await asyncio.sleep(0.1)
    e = await session(imap)
    await idle(e)
    r = await done(e)
    assert r[-1].startswith(b"I OK")
    bad = await Raw.connect(imap)
    ok(await bad.cmd("L", f"LOGIN {USER} {PASSWORD}"), "L")
    await bad.send("I IDLE\r\n")
    await bad.line()
    await bad.send("NOPE\r\n")
    assert (await bad.until("I"))[-1].startswith(b"I BAD")


async def test_selected_mailbox_renamed_here_or_deleted_elsewhere(imap):
    c = await session(imap, "INBOX")
    ok(await c.cmd("a", "CREATE Box"), "a")
    msg = message("in box").replace(b"\n", b"\r\n")
    ok(await c.cmd("b", b"APPEND Box {%d+}\r\n" % len(msg) + msg), "b")
    ok(await c.cmd("c", "SELECT Box"), "c")
    ok(await c.cmd("d", "RENAME Box Box2"), "d")  # this session follows its own RENAME
    r = ok(await c.cmd("e", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"), "e")
    assert b"Subject: in box" in r[0]
    other = await session(imap, "INBOX")
    ok(await other.cmd("f", "DELETE Box2"), "f")
    await c.send("g NOOP\r\n")
    assert (await c.line()).startswith(b"* BYE")
    assert await c.line() == b""


async def test_idle_with_polling_fallback(imap, monkeypatch):
    """Without inotify, the directory-polling watcher still delivers EXISTS within a second."""
    from mailstack.store import watch
    monkeypatch.setattr(watch, "_get_inotify", lambda: None)
    c = await session(imap)
    await idle(c)
    imap.deliver(message("polled"))
    assert await c.line(timeout=IDLE_WAIT) == b"* 1 EXISTS\r\n"
    await done(c)


async def test_lost_index_ends_the_session(imap):
    """If the index is lost, UIDs restart under a new UIDVALIDITY: a selected session must
    not go on with the old UIDs."""
    imap.deliver(message("a"))
    c = await session(imap)
    for suffix in ("", "-wal", "-shm"):
        (imap.inbox.root / f"mailstack-index.sqlite{suffix}").unlink(missing_ok=True)
    await c.send("n NOOP\r\n")
    assert (await c.line()).startswith(b"* BYE")
    c2 = await session(imap)
    r = ok(await c2.cmd("f", "UID FETCH 1:* (UID)"), "f")
    assert r[0] == b"* 1 FETCH (UID 1)\r\n"
