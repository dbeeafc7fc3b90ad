"""One POP3 connection: asyncio streams ↔ :class:`POP3Protocol` ↔ :class:`Maildrop`.

The session reads CRLF lines (255 octets at most, the idle timeout from ``[pop3].idle_timeout``),
hands them to the sans-I/O protocol, carries out the command events against the maildrop and
writes the replies. It checks passwords through :class:`UserDB` (failures go through the shared
:class:`AuthThrottle`), upgrades with STLS (pipelined plaintext is discarded), and logs one line
when the connection ends: user, client IP, TLS, messages retrieved and deleted. Passwords are
never logged. Deletions happen only after a clean QUIT; any other end deletes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field

from ..accounts.authlimit import AuthThrottle
from ..accounts.users import UserDB
from ..config import Config
from ..runtime import chaos, loopwatch
from ..runtime.netserver import LineTooLong, arrived_on, peer_ip, starttls
from ..store.maildir import Maildir, MaildirError, mailbox_path, open_user_mailbox
from . import protocol as p
from .maildrop import (
    Maildrop,
    MaildropLocked,
    MessageGone,
    NoSuchMessage,
    Snapshot,
    SnapshotCache,
    snapshot,
)

log = logging.getLogger("mailstack.pop3")
#: lines of a whole-maildrop LIST/UIDL written between two yields to the event loop
LISTING_STEP = 1000

#: messages larger than this are read in a worker thread so other sessions keep being served
_THREAD_READ = 1 << 20


@dataclass
class Shared:
    """What every session of one daemon shares."""

    cfg: Config
    users: UserDB
    throttle: AuthThrottle
    tls_context: ssl.SSLContext | None
    sessions: set[asyncio.Task[None]] = field(default_factory=set)
    last_login: dict[str, float] = field(default_factory=dict)  # for LOGIN-DELAY
    prefetching: set[str] = field(default_factory=set)  # accounts with a snapshot being built
    snapshots: SnapshotCache = field(default_factory=SnapshotCache)


class Session:
    def __init__(self, shared: Shared, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, implicit_tls: bool) -> None:
        self.shared = shared
        self.reader = reader
        self.writer = writer
        self.ip = peer_ip(writer)
        self.tls = "implicit" if implicit_tls else "no"
        cfg = shared.cfg
        self.proto = p.POP3Protocol(
            tls=implicit_tls, tls_available=shared.tls_context is not None,
            plaintext_auth=arrived_on(writer, cfg.server.plaintext_login_networks),
            login_delay=int(cfg.pop3.login_delay))
        self.loop = asyncio.get_running_loop()
        self.idle_timeout = float(cfg.pop3.idle_timeout)
        self.waiting_since: float | None = None  # when the current wait for a command began
        self.timed_out = False
        self.user = "-"
        self.drop: Maildrop | None = None
        self.deleted = 0
        self.reason = "disconnected"
        self.commands = 0  # command lines read; 0 at the end: a probe (health check, scanner)

    # -- the connection's life ----------------------------------------------------------------
    async def run(self) -> None:
        self._idle = self.loop.call_later(self.idle_timeout, self._idle_check)
        try:
            if chaos.ENGINE is not None and await self._fault("connect", [self.ip]):
                return
            self.writer.write(p.ok(f"{self.shared.cfg.server.hostname} POP3 server ready"))
            await self._loop()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            self.reason = "disconnected"
        except TimeoutError:
            self.reason = "TLS handshake timeout"
        except asyncio.CancelledError:
            self.reason = "server shutdown"
            with contextlib.suppress(Exception):
                self.writer.write(p.err("Server shutting down", "SYS/TEMP"))
            raise
        except Exception:
            self.reason = "internal error"
            log.exception("pop3 session from %s failed", self.ip)
            with contextlib.suppress(Exception):
                self.writer.write(p.err("Internal server error", "SYS/TEMP"))
        finally:
            self._idle.cancel()
            if self.timed_out:
                self.reason = "idle timeout"
            if self.drop is not None:
                # the seen marks are a store write, which may wait for another process: in a
                # worker thread, which carries it to its end even if this task is cancelled
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.to_thread(self.drop.close)
            self.writer.close()
            self._log_end()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self.writer.wait_closed(), 2)

    def _log_end(self) -> None:
        d = self.drop
        # a connection that sent no command (`mailstack health`, a port scan) only at debug
        level = logging.INFO if self.commands or self.reason != "disconnected" else logging.DEBUG
        log.log(level, "session end: user=%s ip=%s tls=%s retr=%d/%d top=%d del=%d/%d reason=%s",
                 self.user, self.ip, self.tls, d.retrieved if d else 0,
                 d.retrieved_bytes if d else 0, d.top_count if d else 0, self.deleted,
                 len(d.entries) if d else 0, self.reason)

    # -- input ------------------------------------------------------------------------------------
    def _idle_check(self) -> None:
        """The idle timer: one timer per idle period rather than one per command line.

        Only time spent waiting for a command counts (a slow download is not idleness). On
        expiry the connection is dropped without a reply and nothing is deleted (RFC 1939).
        """
        now, since = self.loop.time(), self.waiting_since
        if since is not None and now - since >= self.idle_timeout:
            self.timed_out = True
            self.writer.transport.abort()
            return
        start = now if since is None else since
        self._idle = self.loop.call_later(start + self.idle_timeout - now, self._idle_check)

    async def _readline(self, max_line: int) -> bytes:
        """One line with its LF, or b"" at EOF; raises LineTooLong (the line is consumed)."""
        reader = self.reader
        self.waiting_since = self.loop.time()
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return b""
        except asyncio.LimitOverrunError:
            while True:  # discard up to the end of the line
                try:
                    await reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as exc:
                    await reader.readexactly(exc.consumed)
                except asyncio.IncompleteReadError:
                    return b""
            raise LineTooLong() from None
        finally:
            self.waiting_since = None
        if len(line) > max_line:
            raise LineTooLong()
        return line

    async def _loop(self) -> None:
        proto, write = self.proto, self.writer.write
        while True:
            try:
                line = await self._readline(proto.max_line)
            except LineTooLong:
                reply = proto.line_too_long()
                write(reply.data)
                if reply.close:
                    self.reason = "too many bad commands"
                    return
                continue
            if not line.endswith(b"\n"):
                return  # EOF, possibly in the middle of a line: never act on half a command
            self.commands += 1
            event = proto.receive_line(line)
            loopwatch.note(p.command_label(line))
            if type(event) is p.Reply:
                write(event.data)
                if event.close:
                    self.reason = "too many bad commands"
                    await self.writer.drain()
                    return
            elif await self._handle(event):
                await self.writer.drain()
                return
            await self.writer.drain()
            await asyncio.sleep(0)  # pipelined commands: let other sessions in between

    # -- commands ----------------------------------------------------------------------------------
    async def _listing(self, first: str, drop: Maildrop, field: str) -> None:
        """LIST or UIDL of the whole maildrop (``field``: ``size`` or ``uidl``), written
        :data:`LISTING_STEP` lines at a time with a yield between: a big maildrop does not hold
        the event loop (issue 13: <= 10 ms at a stretch). The lines start with a digit: no
        byte-stuffing."""
        write = self.writer.write
        write(p.ok(first))
        rows = drop.listing()
        for start in range(0, len(rows), LISTING_STEP):
            write("".join(f"{i} {getattr(e, field)}\r\n"
                          for i, e in rows[start:start + LISTING_STEP]).encode())
            if start + LISTING_STEP < len(rows):
                await self.writer.drain()
                await asyncio.sleep(0)
        write(b".\r\n")

    async def _handle(self, ev: p.Event) -> bool:
        """Carry out one command; True when the connection should close."""
        write = self.writer.write
        drop = self.drop
        if chaos.ENGINE is not None:
            name = type(ev).__name__.lower()
            name = "auth" if name in ("pass", "authplain") else name
            user = getattr(ev, "user", None) or (self.user if self.user != "-" else "")
            if await self._fault(name, [user]):
                return self.writer.transport.is_closing()
        match ev:
            case p.Retr(n):
                assert drop is not None
                await self._retr(drop, n)
            case p.List(None):
                assert drop is not None
                count, octets = drop.stat()
                await self._listing(f"{count} messages ({octets} octets)", drop, "size")
            case p.List(n):
                assert drop is not None and n is not None
                try:
                    write(p.ok(f"{n} {drop.get(n).size}"))
                except NoSuchMessage:
                    write(p.err("No such message"))
            case p.Uidl(None):
                assert drop is not None
                await self._listing("Unique-ID listing follows", drop, "uidl")
            case p.Uidl(n):
                assert drop is not None and n is not None
                try:
                    write(p.ok(f"{n} {drop.get(n).uidl}"))
                except NoSuchMessage:
                    write(p.err("No such message"))
            case p.Stat():
                assert drop is not None
                count, octets = drop.stat()
                write(p.ok(f"{count} {octets}"))
            case p.Top(n, lines):
                assert drop is not None
                await self._top(drop, n, lines)
            case p.Dele(n):
                assert drop is not None
                try:
                    drop.delete(n)
                    write(p.ok(f"Message {n} deleted"))
                except NoSuchMessage:
                    write(p.err("No such message"))
            case p.Rset():
                assert drop is not None
                drop.reset()
                count, octets = drop.stat()
                write(p.ok(f"Maildrop has {count} messages ({octets} octets)"))
            case p.Noop():
                write(p.ok())
            case p.Capa():
                write(p.multiline("Capability list follows", self.proto.capabilities()))
            case p.Quit():
                self.reason = "quit"
                # a store write (see run's finally): off the event loop, never cut short
                write(await asyncio.to_thread(self._update) if drop is not None
                      else p.ok("Bye"))
                return True
            case p.Pass(user, password):
                await self._login(user, password, "")
            case p.AuthPlain(authzid, user, password):
                await self._login(user, password, authzid)
            case p.Stls():
                await self._stls()
        return False

    async def _fault(self, point: str, subjects: list[str]) -> bool:
        """A runtime fault (test stacks) at pop3.<point>: True when it answered (-ERR) or
        dropped the connection instead."""
        assert chaos.ENGINE is not None
        action = await chaos.ENGINE.check(f"pop3.{point}", subjects, self.ip)
        if action is None:
            return False
        self.reason = "fault injected"
        if action.drop:
            self.writer.transport.abort()
        else:
            self.writer.write(action.reply.encode() + b"\r\n")
            if point == "connect":
                await self.writer.drain()
        return True

    async def _retr(self, drop: Maildrop, n: int) -> None:
        data = await self._read(drop, n)
        if data is None:
            return
        size = drop.entries[n - 1].size
        self.writer.write(p.ok(f"{size} octets") + p.stuff(data))
        drop.retrieved += 1
        drop.retrieved_bytes += size
        try:
            drop.mark_seen(n)
        except OSError as exc:
            log.warning("pop3: cannot mark message seen for %s: %s", self.user, exc)

    async def _top(self, drop: Maildrop, n: int, lines: int) -> None:
        data = await self._read(drop, n)
        if data is None:
            return
        drop.top_count += 1
        self.writer.write(p.ok("Top of message follows") + p.stuff(p.top_part(data, lines)))

    async def _read(self, drop: Maildrop, n: int) -> bytes | None:
        try:
            if drop.get(n).size > _THREAD_READ:
                return await asyncio.to_thread(drop.read, n)
            return drop.read(n)
        except NoSuchMessage:
            self.writer.write(p.err("No such message"))
        except MessageGone:
            self.writer.write(p.err(f"Message {n} was removed from the server by another client"))
        except OSError as exc:
            log.warning("pop3: cannot read message %d of %s: %s", n, self.user, exc)
            self.writer.write(p.err("Cannot read the message", "SYS/TEMP"))
        return None

    def _update(self) -> bytes:
        """The UPDATE state: remove what DELE marked (in a worker thread: a cancelled session
        cannot interrupt it)."""
        assert self.drop is not None
        removed, failed = self.drop.commit()
        self.deleted = removed
        if failed:
            log.warning("pop3: %d deleted messages of %s could not be removed", failed, self.user)
            return p.err("Some deleted messages were not removed", "SYS/TEMP")
        count = len(self.drop.entries) - self.drop.deleted_count
        return p.ok(f"Bye, {removed} messages deleted, {count} left")

    # -- AUTHORIZATION ---------------------------------------------------------------------------
    def _prefetch(self, account: str) -> asyncio.Future[Snapshot] | None:
        """Warm the snapshot cache for an existing account's INBOX while the password is
        checked. No lock is taken and nothing is created; at most one per account at a time,
        and a failed login never waits for it (its latency does not depend on the mailbox)."""
        sh = self.shared
        if account in sh.prefetching or not sh.users.exists(account):
            return None
        try:
            box = Maildir(mailbox_path(sh.cfg.data_dir, account))
        except MaildirError:
            return None
        if not box.exists():
            return None
        fut = asyncio.get_running_loop().run_in_executor(None, snapshot, box, sh.snapshots)
        sh.prefetching.add(account)

        def done(f: asyncio.Future[Snapshot]) -> None:
            sh.prefetching.discard(account)
            if not f.cancelled():
                f.exception()  # retrieved: an unused failure is not worth a log line

        fut.add_done_callback(done)
        return fut

    async def _login(self, user: str, password: str, authzid: str) -> None:
        sh, write = self.shared, self.writer.write
        account = user.strip().lower()  # what failures are counted under
        padded = account != user.lower()  # "  alice@x": no account's name, refused
        prefetch = None if padded else self._prefetch(account)
        good = not padded and (not authzid or authzid.strip().lower() == account) and \
            await sh.users.authenticate(account, password)
        if not good:
            self.proto.auth_failed()
            await sh.throttle.fail(self.ip, account, "pop3")
            write(p.err("Authentication failed", "AUTH"))
            return
        await sh.throttle.record_success(self.ip)
        delay = self.proto.login_delay
        if delay:
            last = sh.last_login.get(account)
            if last is not None and time.monotonic() - last < delay:
                self.proto.auth_failed()
                write(p.err(f"Wait {delay} seconds between logins", "LOGIN-DELAY"))
                return
        if prefetch is not None:  # let it finish: the snapshot under the lock then reuses it
            with contextlib.suppress(OSError, MaildirError):
                await prefetch
        try:
            box = open_user_mailbox(sh.cfg.data_dir, account)
            self.drop = await _open_maildrop(box, sh.snapshots)
        except MaildropLocked:
            self.proto.auth_failed()
            write(p.err("Mailbox is in use by another POP3 session", "IN-USE"))
            return
        except (OSError, MaildirError) as exc:
            log.error("pop3: cannot open the mailbox of %s: %s", account, exc)
            self.proto.auth_failed()
            write(p.err("Cannot open the mailbox, try again later", "SYS/TEMP"))
            return
        self.user = account
        if delay:
            sh.last_login[account] = time.monotonic()
        self.proto.auth_succeeded()
        count, octets = self.drop.stat()
        write(p.ok(f"Logged in, {count} messages ({octets} octets)"))

    async def _stls(self) -> None:
        assert self.shared.tls_context is not None
        self.writer.write(p.ok("Begin TLS negotiation"))
        dropped = await starttls(self.reader, self.writer, self.shared.tls_context)
        if dropped:
            log.warning("pop3: discarded %d octets pipelined after STLS from %s", dropped,
                        self.ip)
        self.proto.tls_started()
        self.tls = "STLS"


async def _open_maildrop(box: Maildir, cache: SnapshotCache) -> Maildrop:
    """Maildrop.open in a worker thread; a cancelled caller never leaks the lock."""
    fut = asyncio.get_running_loop().run_in_executor(None, Maildrop.open, box, cache)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        def release(f: asyncio.Future[Maildrop]) -> None:
            if not f.cancelled() and f.exception() is None:
                f.result().close()
        fut.add_done_callback(release)
        raise


async def handle(shared: Shared, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, implicit_tls: bool) -> None:
    """The asyncio.start_server callback."""
    task = asyncio.current_task()
    assert task is not None
    shared.sessions.add(task)
    try:
        await Session(shared, reader, writer, implicit_tls=implicit_tls).run()
    except asyncio.CancelledError:
        # only the daemon's shutdown cancels sessions; the session has cleaned up already, and
        # ending normally spares asyncio's stream callback an error report about the cancel
        pass
    finally:
        shared.sessions.discard(task)
