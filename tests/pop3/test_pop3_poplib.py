"""The real POP3 daemon over loopback with Python's poplib (STLS, pop3s) and raw sessions."""

from __future__ import annotations

import asyncio
import base64
import poplib
import ssl

import pytest

from mailstack.config import Config
from mailstack.store.maildir import Maildir

from ..conftest import running
from .pop3_helpers import ALICE, PASSWORD, RawPOP3, make_alice, message


@pytest.fixture
def alice(cfg: Config) -> Maildir:
    return make_alice(cfg, messages=3)


def wire_lines(n: int) -> list[bytes]:
    """What poplib returns for message n: its lines without line ends, un-stuffed."""
    return message(n).rstrip(b"\n").split(b"\n")


def plain_port(cfg: Config) -> int:
    return cfg.port("pop3", "pop3")


def tls_port(cfg: Config) -> int:
    return cfg.port("pop3", "pop3s")


async def test_poplib_stls_download_and_delete(cfg: Config, alice: Maildir,
                                               client_ssl: ssl.SSLContext) -> None:
    def client() -> None:
        c = poplib.POP3("127.0.0.1", plain_port(cfg), timeout=10)
        caps = c.capa()
        for cap in ("TOP", "UIDL", "USER", "SASL", "RESP-CODES", "AUTH-RESP-CODE",
                    "PIPELINING", "STLS", "IMPLEMENTATION"):
            assert cap in caps, cap
        assert caps["SASL"] == ["PLAIN"]
        c.stls(client_ssl)
        assert "STLS" not in c.capa()
        c.user(ALICE)
        assert c.pass_(PASSWORD).startswith(b"+OK")
        count, octets = c.stat()
        assert count == 3
        _, listing, _ = c.list()
        sizes = [int(line.split()[1]) for line in listing]
        assert sum(sizes) == octets
        for n in (1, 2, 3):
            resp, lines, _ = c.retr(n)
            assert lines == wire_lines(n)
            assert resp == f"+OK {sizes[n - 1]} octets".encode()
            assert sizes[n - 1] == len(message(n)) + message(n).count(b"\n")  # CRLF octets
            c.dele(n)
        assert c.stat() == (0, 0)
        assert c.quit().startswith(b"+OK")

    async with running("pop3", cfg):
        await asyncio.to_thread(client)
    assert alice.scan() == []  # POP3 moved the mail to the client


async def test_pop3s_leave_on_server_stable_uidls_and_seen(
        cfg: Config, alice: Maildir, client_ssl: ssl.SSLContext) -> None:
    def session(retrieve: bool) -> list[bytes]:
        c = poplib.POP3_SSL("127.0.0.1", tls_port(cfg), context=client_ssl, timeout=10)
        assert "STLS" not in c.capa()
        c.user(ALICE)
        c.pass_(PASSWORD)
        uidls = c.uidl()[1]
        for line in uidls:
            n = int(line.split()[0])
            assert c.uidl(n).split()[1:] == line.split()
            if retrieve:
                c.retr(n)
        c.quit()
        return uidls

    async with running("pop3", cfg):
        first = await asyncio.to_thread(session, True)
        # another writer (an IMAP client) changes flags in between
        for msg in alice.scan():
            alice.set_flags(msg, msg.flags + "F")
        second = await asyncio.to_thread(session, False)
    assert first == second and len({u.split()[1] for u in first}) == 3
    assert {(m.subdir, m.flags) for m in alice.scan()} == {("cur", "FS")}


async def test_top_and_list_single(cfg: Config, alice: Maildir) -> None:
    def client() -> None:
        c = poplib.POP3("127.0.0.1", plain_port(cfg), timeout=10)
        c.user(ALICE)
        c.pass_(PASSWORD)
        lines = c.top(2, 1)[1]
        assert lines == wire_lines(2)[:6]  # 4 header lines, blank, 1 body line (".leading…")
        assert lines[-1].startswith(b".leading dot")
        assert c.top(2, 0)[1] == wire_lines(2)[:5]
        assert c.list(3).split()[1] == b"3"
        with pytest.raises(poplib.error_proto, match="No such message"):
            c.list(4)
        c.quit()

    async with running("pop3", cfg):
        await asyncio.to_thread(client)
    assert all("S" not in m.flags for m in alice.scan())  # TOP does not mark seen


async def test_rset_undeletes(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        c = await RawPOP3.connect(plain_port(cfg))
        assert (await c.login()).startswith("+OK Logged in, 3 messages")
        assert (await c.cmd("DELE 2")).startswith("+OK")
        assert (await c.cmd("STAT")).startswith("+OK 2 ")
        assert (await c.cmd("RSET")).startswith("+OK Maildrop has 3 messages")
        assert (await c.cmd("DELE 3")).startswith("+OK")
        assert (await c.cmd("QUIT")).startswith("+OK")
        await c.close()
    assert len(alice.scan()) == 2


async def test_auth_plain_with_and_without_initial_response(cfg: Config, alice: Maildir) -> None:
    creds = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    async with running("pop3", cfg):
        c = await RawPOP3.connect(plain_port(cfg))
        assert (await c.cmd(f"AUTH PLAIN {creds}")).startswith("+OK Logged in")
        assert (await c.cmd("QUIT")).startswith("+OK")
        await c.close()
        c = await RawPOP3.connect(plain_port(cfg))
        assert await c.cmd("AUTH PLAIN") == "+ "
        assert (await c.cmd(creds)).startswith("+OK Logged in")
        assert (await c.cmd("STAT")).startswith("+OK 3 ")
        await c.cmd("QUIT")
        await c.close()
        # an authorization identity other than the user is refused
        other = base64.b64encode(f"bob@example.test\0{ALICE}\0{PASSWORD}".encode()).decode()
        c = await RawPOP3.connect(plain_port(cfg))
        assert (await c.cmd(f"AUTH PLAIN {other}")).startswith("-ERR [AUTH]")
        await c.close()


async def test_second_session_gets_in_use(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        first = await RawPOP3.connect(plain_port(cfg))
        assert (await first.login()).startswith("+OK")
        second = await RawPOP3.connect(plain_port(cfg))
        assert (await second.login()).startswith("-ERR [IN-USE]")
        assert (await first.cmd("QUIT")).startswith("+OK")
        # the second connection is still in AUTHORIZATION and may try again
        assert (await second.login()).startswith("+OK Logged in, 3 messages")
        await second.cmd("QUIT")
        await first.close()
        await second.close()


async def test_new_mail_waits_for_the_next_session(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        c = await RawPOP3.connect(plain_port(cfg))
        await c.login()
        alice.deliver(message(4))
        assert (await c.cmd("STAT")).startswith("+OK 3 ")
        assert (await c.cmd("RETR 4")).startswith("-ERR")
        await c.cmd("QUIT")
        await c.close()
        c = await RawPOP3.connect(plain_port(cfg))
        await c.login()
        assert (await c.cmd("STAT")).startswith("+OK 4 ")
        await c.cmd("QUIT")
        await c.close()


async def test_message_removed_by_another_client_mid_session(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        c = await RawPOP3.connect(plain_port(cfg))
        await c.login()
        victim = alice.scan()[0]
        alice.remove(victim)  # e.g. an IMAP client expunged it
        assert (await c.cmd("RETR 1")).startswith("-ERR")
        assert (await c.cmd("RETR 2")).startswith("+OK")
        await c.multi()
        assert (await c.cmd("DELE 1")).startswith("+OK")
        assert (await c.cmd("QUIT")).startswith("+OK")
        await c.close()
    assert len(alice.scan()) == 2


async def test_shutdown_ends_sessions_without_deleting(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        c = await RawPOP3.connect(plain_port(cfg))
        await c.login()
        for n in (1, 2, 3):
            assert (await c.cmd(f"DELE {n}")).startswith("+OK")
    assert (await c.line()).startswith("-ERR [SYS/TEMP]")
    assert await c.closed()
    await c.close()
    assert len(alice.scan()) == 3


async def test_pipelined_commands(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        c = await RawPOP3.connect(plain_port(cfg))
        await c.send(f"USER {ALICE}\r\nPASS {PASSWORD}\r\nSTAT\r\nRETR 1\r\nUIDL\r\nNOOP\r\n"
                     "DELE 1\r\nQUIT\r\n")
        assert (await c.line()).startswith("+OK")
        assert (await c.line()).startswith("+OK Logged in")
        assert (await c.line()).startswith("+OK 3 ")
        assert (await c.line()).startswith("+OK")
        assert b"\n".join(await c.multi()) + b"\n" == message(1)
        assert (await c.line()).startswith("+OK")
        assert len(await c.multi()) == 3
        for _ in range(3):
            assert (await c.line()).startswith("+OK")
        assert await c.closed()
        await c.close()
    assert len(alice.scan()) == 2


async def test_flags_changed_by_another_writer_mid_session(cfg: Config, alice: Maildir) -> None:
    """An IMAP client flags (and so renames) messages while POP3 works on its snapshot."""
    async with running("pop3", cfg):
        c = await RawPOP3.connect(plain_port(cfg))
        await c.login()
        assert (await c.cmd("UIDL")).startswith("+OK")
        before = await c.multi()
        for msg in alice.scan():
            alice.set_flags(msg, "F")  # new/ → cur/ with a new file name
        assert (await c.cmd("UIDL")).startswith("+OK")
        assert await c.multi() == before
        assert (await c.cmd("RETR 1")).startswith("+OK")
        assert b"\n".join(await c.multi()) + b"\n" == message(1)
        assert (await c.cmd("DELE 2")).startswith("+OK")
        assert (await c.cmd("QUIT")).startswith("+OK Bye, 1 messages deleted")
        await c.close()
    left = {m.key: m.flags for m in alice.scan()}
    assert len(left) == 2 and sorted(left.values()) == ["F", "FS"]


async def test_many_concurrent_connections(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        clients = await asyncio.gather(*(RawPOP3.connect(plain_port(cfg)) for _ in range(100)))
        for c in clients:  # all pipelined at once, answered independently
            await c.send("CAPA\r\nNOOP\r\n")
        for c in clients:
            assert (await c.line()).startswith("+OK Capability")
            assert b"PIPELINING" in await c.multi()
            assert (await c.line()).startswith("-ERR NOOP is not valid")
        replies = await asyncio.gather(*(c.login() for c in clients[:10]))
        assert sum(r.startswith("+OK Logged in") for r in replies) == 1  # one holds the lock
        assert sum(r.startswith("-ERR [IN-USE]") for r in replies) == 9
        for c in clients:
            await c.close()


async def test_list_and_uidl_of_a_maildrop_written_in_steps(cfg: Config) -> None:
    """More messages than one LIST/UIDL step (the listing yields to the loop between steps):
    every line arrives once, in order, with the size and UIDL of a single-message query."""
    from mailstack.pop3.session import LISTING_STEP

    count = 2 * LISTING_STEP + 17
    make_alice(cfg, messages=count)

    def client() -> None:
        c = poplib.POP3("127.0.0.1", plain_port(cfg), timeout=30)
        c.user(ALICE)
        c.pass_(PASSWORD)
        first, lines, _ = c.list()
        assert first.startswith(b"+OK %d messages" % count)
        assert [int(ln.split()[0]) for ln in lines] == list(range(1, count + 1))
        uidls = c.uidl()[1]
        assert [int(ln.split()[0]) for ln in uidls] == list(range(1, count + 1))
        assert len({ln.split()[1] for ln in uidls}) == count
        for n in (1, LISTING_STEP, LISTING_STEP + 1, count):
            assert c.list(n).split()[1:] == lines[n - 1].split()
            assert c.uidl(n).split()[1:] == uidls[n - 1].split()
        c.quit()

    async with running("pop3", cfg):
        await asyncio.to_thread(client)


async def test_a_quit_waiting_for_the_store_does_not_stall_other_sessions(cfg: Config) -> None:
    """QUIT writes to the account's index (seen marks, deletions), which may have to wait for
    another process's write: it waits in a worker thread, and the daemon serves everyone else
    meanwhile (issue 13); the write completes once the lock is free."""
    import sqlite3

    from mailstack.accounts.users import UserDB
    from mailstack.store.account import INDEX_FILE, AccountStore
    from mailstack.store.maildir import create_user_mailbox

    from .pop3_helpers import RawPOP3

    box = make_alice(cfg, messages=2)
    bob = "bob@example.test"
    UserDB(cfg.data_dir / "users").add(bob, PASSWORD)
    create_user_mailbox(cfg.data_dir, bob).deliver(message(1), sync=False)
    async with running("pop3", cfg):
        alice = await RawPOP3.connect(plain_port(cfg))
        assert (await alice.login()).startswith("+OK")
        assert (await alice.cmd("RETR 1")).startswith("+OK")
        await alice.multi()
        assert (await alice.cmd("DELE 2")).startswith("+OK")
        other = sqlite3.connect(box.root / INDEX_FILE, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process writes to alice's index
        try:
            await alice.send("QUIT\r\n")  # its UPDATE state waits for that write lock
            client = await RawPOP3.connect(plain_port(cfg))
            assert (await client.login(bob)).startswith("+OK")
            assert (await client.cmd("STAT")).startswith("+OK 1 ")
            assert (await client.cmd("QUIT")).startswith("+OK")
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert (await alice.line(timeout=30)).startswith("+OK")
    snap, _ = AccountStore.open(box.root).sync("INBOX")
    assert [sorted(e.flags) for e in snap.entries] == [["\\Seen"]]  # 1 seen, 2 deleted
