"""The mda's CHUNKING (RFC 3030 BDAT) and the mta's LMTP client that uses it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailstack.config import Config
from mailstack.mta.lmtp_client import LMTPConnection
from mailstack.store.maildir import delivery_order

from ..conftest import add_user, running
from .test_lmtp import lmtp_session


def inbox(cfg: Config, user: str) -> list[Path]:
    return sorted((cfg.data_dir / "mail" / "example.test" / user / "new").iterdir(),
                  key=lambda p: delivery_order(p.name))  # by numbers, not as text


async def test_bdat_last_gets_one_reply_per_recipient(cfg: Config) -> None:
    add_user(cfg, "alice@example.test")
    add_user(cfg, "bob@example.test")
    async with running("mda", cfg):
        c = await lmtp_session(cfg)
        msg = b"Subject: chunked\r\n\r\nline one\r\n.\r\nafter a lone dot\r\n"
        c.writer.write(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
                       b"RCPT TO:<ghost@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
                       b"BDAT %d LAST\r\n" % len(msg) + msg)
        replies = [await c.reply() for _ in range(6)]
        assert [r[:3] for r in replies] == ["250", "250", "550", "250", "250", "250"]
        assert "<alice@example.test>" in replies[4] and "<bob@example.test>" in replies[5]
        assert (await c.cmd("NOOP")).startswith("250")
        c.close()
    stored = inbox(cfg, "alice")[0].read_bytes()
    assert stored.endswith(b"Subject: chunked\n\nline one\n.\nafter a lone dot\n")  # no stuffing


async def test_several_chunks_make_one_message(cfg: Config) -> None:
    add_user(cfg, "alice@example.test")
    async with running("mda", cfg):
        c = await lmtp_session(cfg)
        assert (await c.cmd("MAIL FROM:<s@example.org>")).startswith("250")
        assert (await c.cmd("RCPT TO:<alice@example.test>")).startswith("250")
        assert (await c.cmd(b"BDAT 16\r\nSubject: two\r\n\r\n")).startswith("250 2.0.0 16 octets")
        assert (await c.cmd("DATA")).startswith("503")  # not after BDAT
        assert (await c.cmd(b"BDAT 6 LAST\r\nbody\r\n")).startswith("250 2.0.0 <alice@")
        c.close()
    assert inbox(cfg, "alice")[0].read_bytes().endswith(b"Subject: two\n\nbody\n")


async def test_chunk_octets_are_never_read_as_commands(cfg: Config) -> None:
    """A chunk refused for want of recipients is still consumed in full."""
    add_user(cfg, "alice@example.test")
    async with running("mda", cfg):
        c = await lmtp_session(cfg)
        smuggled = (b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
                    b"BDAT 4 LAST\r\nbad\n")
        c.writer.write(b"BDAT %d LAST\r\n" % len(smuggled) + smuggled)
        assert (await c.reply()).startswith("503 5.5.1")
        assert (await c.cmd("NOOP")).startswith("250")  # in step: the smuggled lines were data
        c.close()
    assert inbox(cfg, "alice") == []


async def test_too_big_chunk_is_skipped_and_refused_per_recipient(config_factory) -> None:
    cfg = config_factory("[mta]\nmax_message_size = 1000\n")  # mda limit: this + 64 KiB
    add_user(cfg, "alice@example.test")
    add_user(cfg, "bob@example.test")
    async with running("mda", cfg):
        c = await lmtp_session(cfg)
        big = (b"RSET\r\n" * 20000)[:200_000]
        c.writer.write(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
                       b"RCPT TO:<bob@example.test>\r\nBDAT %d LAST\r\n" % len(big) + big)
        replies = [await c.reply() for _ in range(5)]
        assert [r[:3] for r in replies[:3]] == ["250", "250", "250"]
        assert [r[:9] for r in replies[3:]] == ["552 5.3.4", "552 5.3.4"]
        assert (await c.cmd("NOOP")).startswith("250")
        c.close()
    assert inbox(cfg, "alice") == [] and inbox(cfg, "bob") == []


async def test_malformed_bdat_closes_the_connection(cfg: Config) -> None:
    async with running("mda", cfg):
        c = await lmtp_session(cfg)
        assert (await c.cmd("BDAT many LAST")).startswith("501 5.5.4")
        assert await c.reply() == "EOF"
        c.close()


async def test_client_uses_data_when_chunking_is_not_offered(cfg: Config) -> None:
    add_user(cfg, "alice@example.test")
    async with running("mda", cfg):
        conn = await LMTPConnection.open("127.0.0.1", cfg.port("mda", "lmtp"), "t")
        conn.extensions.discard("CHUNKING")
        res = await conn.deliver("QDATA", "s@x.org", ["alice@example.test", "nobody@example.test"],
                                 b"Subject: d\r\n\r\n.dot first\r\n")
        await conn.quit()
    assert [r.code for r in res.replies] == [250, 550]
    assert inbox(cfg, "alice")[0].read_bytes().endswith(b"Subject: d\n\n.dot first\n")


async def test_concurrent_repeats_of_one_entry_are_delivered_once(cfg: Config) -> None:
    """The mta retrying while the first copy is still being committed gets no second copy."""
    add_user(cfg, "alice@example.test")
    async with running("mda", cfg):
        conns = [await LMTPConnection.open("127.0.0.1", cfg.port("mda", "lmtp"), "t")
                 for _ in range(6)]
        results = await asyncio.gather(*(
            c.deliver("QTWICE", "s@x.org", ["alice@example.test"], b"Subject: once\r\n\r\n")
            for c in conns))
        for c in conns:
            await c.quit()
    assert all(r.replies[0].code == 250 for r in results)
    assert sum("already delivered" in r.replies[0].text for r in results) == 5
    assert len(inbox(cfg, "alice")) == 1


async def test_too_big_data_is_refused_once_per_recipient(config_factory) -> None:
    """RFC 2033 §4.2 for the DATA path too: the client waits for a reply per recipient."""
    cfg = config_factory("[mta]\nmax_message_size = 1000\n")
    add_user(cfg, "alice@example.test")
    add_user(cfg, "bob@example.test")
    async with running("mda", cfg):
        c = await lmtp_session(cfg)
        c.writer.write(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
                       b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
        assert [(await c.reply())[:3] for _ in range(4)] == ["250", "250", "250", "354"]
        c.writer.write(b"x" * 70 + b"\r\n" * 1 + (b"y" * 70 + b"\r\n") * 1500 + b".\r\n")
        assert [(await c.reply())[:9] for _ in range(2)] == ["552 5.3.4", "552 5.3.4"]
        assert (await c.cmd("NOOP")).startswith("250")
        c.close()
