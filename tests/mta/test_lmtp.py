"""The mda's LMTP server: one reply per recipient (RFC 2033), errors per recipient."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mailstack.config import Config
from mailstack.mta.lmtp_client import LMTPConnection, LMTPError

from ..conftest import add_user, running
from .test_bad_input import Client


async def lmtp_session(cfg: Config) -> Client:
    """A raw LMTP session after LHLO (which must offer what the mta's client relies on)."""
    c = await Client.connect(cfg.port("mda", "lmtp"))
    lhlo = await c.cmd("LHLO mta.example.test")
    assert all(ext in lhlo for ext in ("PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING")), lhlo
    return c


async def test_one_reply_per_recipient_after_data(cfg: Config) -> None:
    add_user(cfg, "alice@example.test")
    add_user(cfg, "bob@example.test")
    async with running("mda", cfg):
        c = await lmtp_session(cfg)
        assert (await c.cmd("MAIL FROM:<s@example.org>")).startswith("250")
        assert (await c.cmd("RCPT TO:<alice@example.test>")).startswith("250")
        assert (await c.cmd("RCPT TO:<ghost@example.test>")).startswith("550 5.1.1")
        assert (await c.cmd("RCPT TO:<bob@example.test>")).startswith("250")
        assert (await c.cmd("DATA")).startswith("354")
        c.writer.write(b"Subject: lmtp\r\n\r\nbody\r\n.\r\n")
        first, second = await c.reply(), await c.reply()
        assert first.startswith("250 2.0.0 <alice@example.test>")
        assert second.startswith("250 2.0.0 <bob@example.test>")
        assert (await c.cmd("NOOP")).startswith("250")
        c.close()


async def test_disk_failure_is_452_for_that_recipient_only(cfg: Config) -> None:
    add_user(cfg, "alice@example.test")
    add_user(cfg, "bob@example.test")
    broken = cfg.data_dir / "mail" / "example.test" / "bob" / "tmp"
    os.rmdir(broken)
    broken.write_text("not a directory: every write into tmp/ fails")
    async with running("mda", cfg):
        conn = await LMTPConnection.open("127.0.0.1", cfg.port("mda", "lmtp"), "t")
        result = await conn.deliver("Q1", "s@example.org", ["alice@example.test",
                                    "bob@example.test"], b"Subject: x\r\n\r\ny\r\n")
        await conn.quit()
    alice, bob = result.replies
    assert alice.code == 250
    assert (bob.code, bob.enhanced) == (452, "4.3.1")


async def test_over_quota_is_552_5_2_2(config_factory) -> None:
    cfg = config_factory("[mda]\nquota = 300\n")
    add_user(cfg, "alice@example.test")
    async with running("mda", cfg):
        conn = await LMTPConnection.open("127.0.0.1", cfg.port("mda", "lmtp"), "t")
        small = await conn.deliver("Q1", "s@x.org", ["alice@example.test"], b"Subject: a\r\n\r\n")
        big = await conn.deliver("Q2", "s@x.org", ["alice@example.test"], b"x" * 400 + b"\r\n")
        await conn.quit()
    assert small.replies[0].code == 250
    assert (big.replies[0].code, big.replies[0].enhanced) == (552, "5.2.2")


async def test_message_quota_is_552_5_2_2(config_factory) -> None:
    cfg = config_factory("[mda]\nquota_messages = 2\n")
    add_user(cfg, "alice@example.test")
    async with running("mda", cfg):
        conn = await LMTPConnection.open("127.0.0.1", cfg.port("mda", "lmtp"), "t")
        codes = [(await conn.deliver(f"Q{i}", "s@x.org", ["alice@example.test"],
                                     b"Subject: a\r\n\r\n")).replies[0].code for i in range(3)]
        await conn.quit()
    assert codes == [250, 250, 552]


async def test_redelivery_with_same_envid_is_not_duplicated(cfg: Config) -> None:
    add_user(cfg, "alice@example.test")
    async with running("mda", cfg):
        for _ in range(3):
            conn = await LMTPConnection.open("127.0.0.1", cfg.port("mda", "lmtp"), "t")
            res = await conn.deliver("QSAME", "s@x.org", ["alice@example.test"], b"S: 1\r\n\r\n")
            await conn.quit()
            assert res.replies[0].code == 250
        conn = await LMTPConnection.open("127.0.0.1", cfg.port("mda", "lmtp"), "t")
        await conn.deliver("QOTHER", "s@x.org", ["alice@example.test"], b"S: 2\r\n\r\n")
        await conn.quit()
    new = Path(cfg.data_dir / "mail" / "example.test" / "alice" / "new")
    assert len(list(new.iterdir())) == 2


async def _lmtp_deliver(cfg: Config, envid: str, data: bytes) -> int:
    conn = await LMTPConnection.open("127.0.0.1", cfg.port("mda", "lmtp"), "t")
    res = await conn.deliver(envid, "s@x.org", ["alice@example.test"], data)
    await conn.quit()
    return res.replies[0].code


async def test_a_copy_a_machine_crash_left_torn_is_removed_at_start_and_delivered_again(
        config_factory) -> None:
    """Without the copy log, the mda's start checks the journal lines after its checkpoint: a
    copy renamed but shorter than its name says (the machine kept the rename, not the data,
    and the 250 never went out) is removed and its line cancelled, so the mta's retry
    delivers it anew; a whole one of the same batch stays, and its retry makes no second
    copy."""
    cfg = config_factory("[mda]\ncopy_log = false\n")
    add_user(cfg, "alice@example.test")
    new = Path(cfg.data_dir / "mail" / "example.test" / "alice" / "new")
    async with running("mda", cfg):
        assert await _lmtp_deliver(cfg, "QTORN", b"Subject: torn\r\n\r\nbody\r\n") == 250
        assert await _lmtp_deliver(cfg, "QWHOLE", b"Subject: whole\r\n\r\nbody\r\n") == 250
    # the state a machine crash can leave: the checkpoint from before the batch, one file
    # renamed but without its data
    (cfg.data_dir / "mda" / "delivered" / "checkpoint").unlink()
    [torn] = [p for p in new.iterdir() if b"Subject: torn" in p.read_bytes()]
    torn.write_bytes(b"Return-Path: <s@x.org>\n")
    async with running("mda", cfg) as mda:
        assert "removed 1 of 2 copies not made durable before their 250" in mda.log()
        assert not torn.exists() and len(list(new.iterdir())) == 1
        for envid in ("QTORN", "QWHOLE"):  # the mta's retries
            assert await _lmtp_deliver(cfg, envid, f"Subject: {envid}\r\n\r\n".encode()) == 250
    copies = sorted(p.read_bytes() for p in new.iterdir())
    assert len(copies) == 2, copies
    assert b"Subject: QTORN" in copies[0] + copies[1]  # delivered anew
    assert b"Subject: QWHOLE" not in copies[0] + copies[1]  # already there: not again
    async with running("mda", cfg) as mda:  # a clean start checks nothing
        assert "after a crash" not in mda.log()


async def test_copies_a_machine_crash_lost_after_their_250_are_rebuilt_from_the_copy_log(
        cfg: Config) -> None:
    """With the copy log, a 250 follows one flush of the log; the copy's file, its rename and
    its journal line are synced later. A crash of the machine in between can lose any of
    them: the next start rebuilds the copies from the log, and the mta's retries (which may
    never have heard the 250s) make no second copy."""
    add_user(cfg, "alice@example.test")
    new = Path(cfg.data_dir / "mail" / "example.test" / "alice" / "new")
    copies = cfg.data_dir / "mda" / "copies"
    async with running("mda", cfg) as mda:
        await mda.wait_log("copy log ready")
        before = (copies / "checkpoint").read_bytes()
        assert await _lmtp_deliver(cfg, "QLOST", b"Subject: lost\r\n\r\nbody\r\n") == 250
        assert await _lmtp_deliver(cfg, "QTORN", b"Subject: torn\r\n\r\nbody\r\n") == 250
    # what the crash kept: the checkpoint and the marker of before both batches, no journal
    # line, no trace of the first copy and the second one's name without its data
    (copies / "checkpoint").write_bytes(before)
    [marker] = copies.glob("batch.*")
    os.rename(marker, copies / f"batch.{int(marker.name[6:]) - 2}")
    for journal in (cfg.data_dir / "mda" / "delivered").glob("*.log"):
        os.truncate(journal, 0)
    [lost] = [p for p in new.iterdir() if b"Subject: lost" in p.read_bytes()]
    [torn] = [p for p in new.iterdir() if b"Subject: torn" in p.read_bytes()]
    whole = sorted([lost.read_bytes(), torn.read_bytes()])
    lost.unlink()
    os.truncate(torn, 0)
    async with running("mda", cfg) as mda:
        assert "rebuilt 2 of the 2 last copies from the copy log" in mda.log()
        assert sorted(p.read_bytes() for p in new.iterdir()) == whole
        for envid in ("QLOST", "QTORN"):  # the mta's retries
            assert await _lmtp_deliver(cfg, envid, b"Subject: again\r\n\r\n") == 250
        await mda.wait_log("already delivered", count=2)
    assert sorted(p.read_bytes() for p in new.iterdir()) == whole
    async with running("mda", cfg) as mda:  # a clean start checks nothing
        assert "after a crash" not in mda.log()


@pytest.mark.parametrize("answer", [b"220 ok\r\n250 mda\r\nthis is not a reply\r\n",
                                    b"220 ok\r\n250 mda\r\n250 " + b"x" * 100_000,
                                    b"220 ok\r\n250 mda\r\n"])
async def test_the_client_gives_up_on_a_server_that_speaks_nonsense(answer: bytes) -> None:
    """A broken or hostile LMTP peer: a clear LMTPError (the mta queues the mail), promptly
    and with bounded memory, whether it sends garbage, an endless line or closes."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer[:answer.index(b"\n") + 1])
        await reader.readline()  # LHLO
        writer.write(answer[answer.index(b"\n") + 1:])
        await reader.readline()  # MAIL
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        conn = await LMTPConnection.open("127.0.0.1", port, "t", timeout=5)
        with pytest.raises(LMTPError, match=r"malformed|closed|lost"):
            await conn.deliver("Q1", "s@example.org", ["a@example.test"], b"x\r\n")
        assert conn.broken


async def test_the_client_times_out_on_a_server_that_stops_answering() -> None:
    """A peer that takes the transaction and never answers: LMTPError "mda timed out" after
    the connection's timeout, the connection closed; the next transaction gets its own."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ok\r\n")
        await reader.readline()  # LHLO
        writer.write(b"250 mda\r\n")
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        conn = await LMTPConnection.open("127.0.0.1", port, "t", timeout=0.5)
        started = asyncio.get_running_loop().time()
        with pytest.raises(LMTPError, match="mda timed out"):
            await conn.deliver("Q1", "s@example.org", ["a@example.test"], b"x\r\n")
        assert 0.45 <= asyncio.get_running_loop().time() - started < 3
        assert conn.broken and conn.transport.is_closing()
