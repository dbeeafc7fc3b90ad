"""One IMAP connection: reading commands (with literals), dispatch by state, replies.

Errors are mapped to replies in one place (:meth:`Session.dispatch`): :class:`Bad` and
:class:`~.wire.ParseError` become tagged BAD, :class:`No` and
:class:`~.mailbox.MailboxError` tagged NO; anything unexpected is logged with its traceback and
answered ``NO [SERVERBUG]`` while the session goes on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import logging
import sqlite3
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import __version__
from ..accounts.users import UserError, normalize_address
from ..jmap.session import session_url
from ..runtime import chaos, loopwatch
from ..runtime.logsafe import safe
from ..runtime.netserver import LineReader, LineTooLong, arrived_on, peer_ip, starttls
from ..store import watch
from ..store.account import StoreError, WouldBlock
from ..store.maildir import MaildirError, open_user_mailbox
from . import context
from .cache import FolderCache
from .command import PREAUTH_MAX_COMMAND, CommandAssembler, Complete, Limits, Refuse, Step
from .mailbox import Account, Changes, MailboxError, Selected, ValidityChanged
from .wire import ParseError, Parser, compact_set, quote

if TYPE_CHECKING:
    from .daemon import IMAPServer
    from .notify import Notifier

log = logging.getLogger("mailstack.imap")

NOTAUTH, AUTH, SELECTED, LOGOUT = range(4)
MAX_LINE = 64 * 1024
MAX_COMMAND_EXTRA = 1024 * 1024  # bytes of literals beyond max_literal in one command
OUT_BUDGET = 256 * 1024  # response octets gathered before they are written and drained
OUT_CHUNK = 64 * 1024  # a larger piece is written in slices of this size
YIELD_AFTER = 0.002  # seconds of sending one response before other sessions get a turn


SEARCH_CAPABILITIES = ("ESEARCH", "SEARCHRES", "SORT", "SORT=DISPLAY", "ESORT",
                       "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "OBJECTID", "PREVIEW",
                       "CONTEXT=SEARCH", "CONTEXT=SORT")


class Bad(Exception):
    """Answer the command with tagged BAD."""


class No(Exception):
    """Answer the command with tagged NO (optionally with a response code)."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code


class Disconnect(Exception):
    """The client went away or must be dropped."""


Handler = Callable[["Session", str, Parser, bool], Awaitable[str | None]]


@dataclass(frozen=True)
class Command:
    handler: Handler
    states: tuple[int, ...]
    uid_ok: bool = False
    expunge_ok: bool = True  # may untagged EXPUNGE follow this command?


COMMANDS: dict[str, Command] = {}


def command(name: str, *states: int, uid_ok: bool = False,
            expunge_ok: bool = True) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        COMMANDS[name] = Command(fn, states, uid_ok, expunge_ok)
        return fn
    return deco


ANY = (NOTAUTH, AUTH, SELECTED)


class Session:
    """State and I/O of one client connection."""

    def __init__(self, server: IMAPServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, implicit_tls: bool) -> None:
        self.server = server
        self.cfg = server.cfg
        self.reader = reader
        self.writer = writer
        self.tls = implicit_tls
        #: a password may be sent before TLS (a loopback listener, by default)
        self.loopback = arrived_on(writer, self.cfg.server.plaintext_login_networks)
        self.peer = peer_ip(writer)
        self.lines = LineReader(reader, MAX_LINE, float(self.cfg.imap.idle_timeout))
        self.state = NOTAUTH
        self.user = ""
        self.account: Account | None = None
        self.selected: Selected | None = None
        self.condstore = False
        self.qresync = False  # ENABLE QRESYNC: VANISHED instead of EXPUNGE (RFC 7162)
        self.rev2 = False  # ENABLE IMAP4rev2 (RFC 9051) was given
        self.contexts: list[context.Context] = []  # searches kept up to date (RFC 5267)
        self.out: list[bytes] = []
        self.out_size = 0
        #: commands read so far: a session that ends without one is a probe (logged at debug)
        self.commands = 0
        #: held while a command runs: NOTIFY's responses between commands wait for it
        self.out_lock = asyncio.Lock()
        self.notifier: Notifier | None = None
        self.own_changes: set[str | None] = set()  # see changed()

    # -- output ---------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)

    def enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 §3.1): from now on FETCH responses carry
        MODSEQ; the first one with a mailbox selected also gets ``* OK [HIGHESTMODSEQ n]``."""
        if self.condstore:
            return
        self.condstore = True
        sel = self.selected
        if sel is not None and sel.snapshot is not None:
            self.untagged(f"OK [HIGHESTMODSEQ {sel.snapshot.highest_modseq}] highest modseq")

    def untagged(self, text: str) -> None:
        self.send(b"* " + text.encode("utf-8") + b"\r\n")

    def _write(self, data: bytes | memoryview) -> None:
        """Hand ``data`` to the transport; a closed one (the client went away mid-response:
        uvloop raises RuntimeError, asyncio drops the data) is a plain disconnect."""
        if self.writer.is_closing():
            raise Disconnect("connection closed while writing")
        try:
            self.writer.write(data)
        except RuntimeError:
            raise Disconnect("connection closed while writing") from None

    async def flush(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            self.out_size = 0
            self._write(data)
        await self.writer.drain()

    async def maybe_flush(self) -> None:
        if self.out_size > OUT_BUDGET:
            await self.flush()

    async def send_pieces(self, pieces: Iterable[bytes | memoryview]) -> None:
        """Send a response piece by piece with bounded memory: small pieces are gathered up
        to OUT_BUDGET, a large one (a literal's data, not copied) goes out in OUT_CHUNK slices,
        each waiting until the transport has taken the previous ones."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        for piece in pieces:
            if len(piece) < OUT_CHUNK:
                self.send(bytes(piece))
                if self.out_size > OUT_BUDGET:
                    await self.flush()
                continue
            await self.flush()
            view = memoryview(piece)
            for start in range(0, len(view), OUT_CHUNK):
                self._write(view[start:start + OUT_CHUNK])
                await self.writer.drain()
            if loop.time() - since > YIELD_AFTER:  # a fast reader never pauses the
                await asyncio.sleep(0)  # transport: let other sessions run between pieces
                since = loop.time()

    # -- capabilities ---------------------------------------------------------------------
    @property
    def login_allowed(self) -> bool:
        return self.tls or self.loopback

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
        if self.state == NOTAUTH:
            if not self.tls and self.server.tls_context is not None:
                caps.append("STARTTLS")
            caps += ["AUTH=PLAIN", "AUTH=LOGIN"] if self.login_allowed else ["LOGINDISABLED"]
        else:
            caps += ["NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE",
                     "LIST-EXTENDED", "LIST-STATUS", "CONDSTORE", "QRESYNC", "COMPRESS=DEFLATE",
                     "UNAUTHENTICATE", "NOTIFY", *SEARCH_CAPABILITIES]
            caps += ["MULTIAPPEND", "CATENATE", "BINARY", "QUOTA", "QUOTA=RES-STORAGE",
                     "QUOTA=RES-MESSAGE", "STATUS=SIZE", "SAVEDATE",
                     f"APPENDLIMIT={int(self.cfg.imap.max_literal)}"]
            if session_url(self.cfg):
                caps.append("JMAPACCESS")  # RFC 9698
        return " ".join(caps)

    # -- main loop ------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            if chaos.ENGINE is not None and await self._fault("CONNECT", "*", b""):
                return
            self.untagged(f"OK [CAPABILITY {self.capabilities()}] mailstack IMAP ready")
            await self.flush()
            while self.state != LOGOUT:
                raw = await self.read_command()
                if raw is None:
                    await self.flush()
                    continue
                async with self.out_lock:
                    await self.dispatch(raw)
                    if self.own_changes:
                        await self.absorb_own_changes()
                    await self.flush()
                await asyncio.sleep(0)  # pipelined commands: let other sessions in between
        except (Disconnect, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            # a session without a command (a health check, a port probe) only at debug
            (log.info if self.commands else log.debug)(
                "imap %s: disconnected%s", self.peer,
                f" ({safe(str(exc), 80)})" if str(exc) else "")
        except TimeoutError:
            self.untagged("BYE idle for too long")
            try:
                await asyncio.wait_for(self.flush(), 5)
            except (TimeoutError, ConnectionError, Disconnect):
                pass
        finally:
            self.stop_notify()

    def changed(self, name: str | None) -> None:
        """This session's command changed mailbox ``name`` (None: mailbox names or
        subscriptions). NOTIFY reports other agents' changes, not the client's own: the
        tagged response told it (RFC 5465 §5: APPEND, COPY, CREATE ... by this client)."""
        if self.notifier is not None:
            self.own_changes.add(name)

    async def absorb_own_changes(self) -> None:
        """After a command, before NOTIFY may report: its own changes become NOTIFY's base."""
        changes, self.own_changes = self.own_changes, set()
        if self.notifier is not None:
            await self.notifier.absorb(changes)

    def stop_notify(self) -> None:
        if self.notifier is not None:
            self.notifier.stop()
            self.notifier = None

    def command_limits(self) -> Limits:
        """Before login a whole command is small (8 KiB); after it, literals up to
        ``max_literal`` plus a little."""
        if self.state == NOTAUTH:
            return Limits(PREAUTH_MAX_COMMAND, PREAUTH_MAX_COMMAND)
        max_literal = int(self.cfg.imap.max_literal)
        return Limits(max_literal + MAX_COMMAND_EXTRA, max_literal)

    async def read_command(self) -> bytes | None:
        """A whole command with its literals; None when it was refused and skipped."""
        cmd = CommandAssembler(self.command_limits())
        while True:
            try:
                line = await self.lines.readline()
            except LineTooLong as exc:
                step: Step = cmd.line_too_long(exc.head)
            else:
                if not line:
                    raise Disconnect()
                if not line.endswith(b"\n"):
                    raise Disconnect()  # EOF inside a line
                step = cmd.add_line(line)
            if isinstance(step, Complete):
                return step.data
            if isinstance(step, Refuse):
                log.info("imap %s: %s refused", self.peer, step.reason)
                self.send(step.reply)
                if step.close:
                    await self.flush()
                    raise Disconnect()
                return None
            if not step.nonsync:
                self.send(b"+ Ready for literal data\r\n")
                await self.flush()
            try:
                await self.lines.read_into(cmd.buf, step.size)
            except asyncio.IncompleteReadError:
                raise Disconnect() from None

    async def dispatch(self, raw: bytes) -> None:
        self.commands += 1
        p = Parser(raw)
        p.utf8_names = self.rev2
        tag = "*"
        try:
            tag = p.tag()
            p.sp()
            name = p.atom().upper()
        except ParseError:
            # never the text: an out-of-step SASL response or literal may hold a password
            log.info("imap %s: malformed command (%d octets)", self.peer, len(raw))
            self.send(f"{tag} BAD malformed command\r\n".encode())
            return
        uid = False
        if name == "UID":
            try:
                p.sp()
                name = p.atom().upper()
            except ParseError:
                log.info("imap %s: malformed UID command", self.peer)
                self.send(f"{tag} BAD UID needs a command\r\n".encode())
                return
            uid = True
        cmd = COMMANDS.get(name)
        if cmd is None or (uid and not cmd.uid_ok):
            if self.state == NOTAUTH:  # could be a stray piece of a password
                log.info("imap %s: unknown command (%d characters)", self.peer, len(name))
            else:
                log.info("imap %s: unknown command %s", self.peer, safe(name, 40))
            self.send(f"{tag} BAD unknown command\r\n".encode())
            return
        if self.state not in cmd.states:
            log.info("imap %s: %s in the wrong state", self.peer, name)
            what = {NOTAUTH: "log in first", AUTH: "select a mailbox first",
                    SELECTED: "not allowed now"}.get(self.state, "not allowed now")
            if self.state == AUTH and SELECTED not in cmd.states:
                what = "already logged in"
            self.send(f"{tag} BAD {name}: {what}\r\n".encode())
            return
        if chaos.ENGINE is not None and await self._fault(name, tag, raw):
            return
        if self.state == SELECTED and not cmd.expunge_ok:
            # FETCH, STORE and SEARCH see current flags (expunges wait until after them)
            await self.announce(expunge_ok=False)
            if self.state == LOGOUT:
                self.send(f"{tag} NO mailbox is gone\r\n".encode())
                return
        loopwatch.note(f"imap {'UID ' if uid else ''}{name}")
        try:
            text = await cmd.handler(self, tag, p, uid)
        except (ParseError, Bad) as exc:
            log.info("imap %s: BAD %s: %s", self.peer, name, safe(str(exc)))
            self.send(f"{tag} BAD {name}: {exc}\r\n".encode())
            return
        except (No, MailboxError) as exc:
            code = f"[{exc.code}] " if exc.code else ""
            self.send(f"{tag} NO {code}{exc}\r\n".encode())
            return
        except MaildirError as exc:
            self.send(f"{tag} NO [CANNOT] {exc}\r\n".encode())
            return
        except StoreError as exc:
            code = f"[{exc.code}] " if exc.code else ""
            self.send(f"{tag} NO {code}{exc}\r\n".encode())
            return
        except sqlite3.OperationalError as exc:
            log.warning("imap %s: %s: mailbox index unavailable: %s", self.peer, name, exc)
            code = "OVERQUOTA" if "full" in str(exc) else "UNAVAILABLE"
            self.send(f"{tag} NO [{code}] the mailbox index cannot be updated now: try again"
                      f"\r\n".encode())
            return
        except (Disconnect, ConnectionError, TimeoutError):
            raise
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # a path the file system cannot hold
                self.send(f"{tag} NO [CANNOT] name too long\r\n".encode())
                return
            log.exception("imap %s: %s failed", self.peer, name)
            self.send(f"{tag} NO [SERVERBUG] internal error\r\n".encode())
            return
        except Exception:
            log.exception("imap %s: %s failed", self.peer, name)
            self.send(f"{tag} NO [SERVERBUG] internal error\r\n".encode())
            return
        if self.state == SELECTED and name not in ("SELECT", "EXAMINE"):
            await self.announce(expunge_ok=cmd.expunge_ok or uid)
            if self.state == LOGOUT:
                return
        if text is not None:
            self.send(f"{tag} OK {text}\r\n".encode())

    async def _fault(self, name: str, tag: str, raw: bytes) -> bool:
        """A runtime fault (test stacks) at imap.<command>: True when it answered instead
        (NO/BAD tagged, BYE untagged); a drop ends the connection."""
        assert chaos.ENGINE is not None
        subject = self.peer if name == "CONNECT" else chaos.imap_subject(name, self.user, raw)
        action = await chaos.ENGINE.check(f"imap.{name.lower()}", [subject], self.peer)
        if action is None:
            return False
        if action.drop:
            raise Disconnect("fault injected: connection dropped")
        if action.reply.startswith("BYE") or name == "CONNECT":
            self.untagged(action.reply if action.reply.startswith("BYE")
                          else "BYE " + action.reply.split(" ", 1)[-1])
            await self.flush()
            raise Disconnect("fault injected: BYE")
        self.send(f"{tag} {action.reply}\r\n".encode())
        return True

    # -- mailbox updates ------------------------------------------------------------------
    async def changes(self, *, expunge_ok: bool = True,
                      own: frozenset[int] | set[int] = frozenset()) -> Changes:
        """The selected mailbox's news: at once when the store has it at hand, else from a
        worker thread (the store may have to wait for another process's write)."""
        sel = self.selected
        assert sel is not None
        try:
            return sel.refresh(expunge_ok=expunge_ok, own=own, nonblocking=True)
        except WouldBlock:
            return await asyncio.to_thread(sel.refresh, expunge_ok=expunge_ok, own=own)

    async def announce(self, *, expunge_ok: bool = True) -> None:
        sel = self.selected
        if sel is None:
            return
        try:
            changes = await self.changes(expunge_ok=expunge_ok)
        except ValidityChanged:
            log.warning("imap %s: UIDVALIDITY of %s changed", self.peer, sel.name)
            self.untagged("BYE the mailbox's UIDs were reset: please reconnect")
            self.state = LOGOUT
            return
        except (FileNotFoundError, MailboxError):
            if sel.maildir.exists():
                raise
            log.info("imap %s: selected mailbox %s vanished", self.peer, sel.name)
            self.untagged("BYE the selected mailbox was deleted or renamed elsewhere")
            self.state = LOGOUT
            return
        await self.send_changes(changes)

    async def send_changes(self, ch: Changes) -> None:
        """Untagged responses for ``ch``; a long list yields to other sessions as it goes."""
        sel = self.selected
        assert sel is not None
        live = None
        if self.contexts and context.stale(sel, self.contexts):
            live = await asyncio.to_thread(context.updates, sel, self.contexts)
            for line in live.removals:  # in the numbering before the EXPUNGEs
                self.untagged(line)
        if ch.keywords is not None:  # a new keyword: FLAGS before any FETCH that uses it
            flags = " ".join(["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft",
                              "$Forwarded", *ch.keywords])
            self.untagged(f"FLAGS ({flags})")
            if not sel.readonly:
                self.untagged(f"OK [PERMANENTFLAGS ({flags} \\*)] flags permitted")
        if self.qresync and ch.vanished:
            self.send(b"* VANISHED " + compact_set(ch.vanished).encode() + b"\r\n")
        else:
            for n, seq in enumerate(ch.expunged, 1):
                self.send(b"* %d EXPUNGE\r\n" % seq)
                if n % 512 == 0:
                    await self.maybe_flush()
                    await asyncio.sleep(0)
        for n, m in enumerate(ch.flags, 1):
            if n % 512 == 0:
                await self.maybe_flush()
                await asyncio.sleep(0)
            seq = sel.seq_of(m.uid)
            if seq is None:
                continue
            extra = f" MODSEQ ({m.modseq})" if self.condstore else ""
            self.send(f"* {seq} FETCH (UID {m.uid} FLAGS ({' '.join(sel.flags(m))}){extra})\r\n"
                      .encode())
        if ch.exists is not None:
            self.send(b"* %d EXISTS\r\n" % ch.exists)
            if not self.rev2:  # IMAP4rev2 has no \Recent (RFC 9051 appendix E)
                self.send(b"* %d RECENT\r\n" % ch.recent)
        for line in live.additions if live is not None else ():
            self.untagged(line)

    def unselect(self) -> None:
        sel = self.selected
        if sel is not None:
            cache = FolderCache.for_root(sel.maildir.root)
            if cache.dirty:  # write what this session added (small folders never reach due())
                cache.save({m.key for m in sel.msgs})
        self.selected = None
        self.contexts.clear()
        if self.state == SELECTED:
            self.state = AUTH

    # -- authentication -------------------------------------------------------------------
    async def login(self, user: str, password: str) -> str:
        if not self.login_allowed:
            raise No("plaintext authentication is disabled here: use STARTTLS first",
                     "PRIVACYREQUIRED")
        throttle = self.server.throttle
        try:
            addr = normalize_address(user) if user == user.strip() else ""  # no padded names
        except UserError:
            addr = ""
        ok = bool(addr) and await self.server.users.authenticate(addr, password)
        if not ok:
            await throttle.fail(self.peer, user, "imap")
            raise No("authentication failed", "AUTHENTICATIONFAILED")
        await throttle.record_success(self.peer)
        inbox = await asyncio.to_thread(open_user_mailbox, self.cfg.data_dir, addr)
        self.user = addr
        self.account = Account(inbox)
        self.state = AUTH
        log.info("imap login %s from %s", addr, self.peer)
        return f"[CAPABILITY {self.capabilities()}] logged in"


# -- any state ------------------------------------------------------------------------------
@command("CAPABILITY", *ANY)
async def cmd_capability(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.end()
    s.untagged(f"CAPABILITY {s.capabilities()}")
    return "CAPABILITY completed"


@command("NOOP", *ANY)
async def cmd_noop(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.end()
    return "NOOP completed"


@command("CHECK", SELECTED)
async def cmd_check(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.end()
    return "CHECK completed"


@command("LOGOUT", *ANY)
async def cmd_logout(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.end()
    s.untagged("BYE logging out")
    s.stop_notify()
    s.state = LOGOUT
    s.selected = None
    return "LOGOUT completed"


@command("ID", *ANY)
async def cmd_id(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    if not p.maybe(b"NIL"):
        p.open_paren()
        fields: list[bytes] = []
        while p.peek() != 0x29:
            if fields:
                p.sp()
            fields.append(p.string())
            p.sp()
            fields.append(b"" if p.maybe(b"NIL") else p.string())
        p.close_paren()
        if len(fields) > 60:
            raise Bad("too many ID fields")
        pairs = dict(zip(fields[::2], fields[1::2], strict=False))
        log.info("imap %s: client %s %s", s.peer, safe(pairs.get(b"name", b"?"), 60),
                 safe(pairs.get(b"version", b""), 60))
    p.end()
    s.untagged(f'ID ("name" "mailstack" "version" "{__version__}")')
    return "ID completed"


@command("STARTTLS", NOTAUTH)
async def cmd_starttls(s: Session, tag: str, p: Parser, uid: bool) -> str | None:
    p.end()
    ctx = s.server.tls_context
    if s.tls or ctx is None:
        raise Bad("TLS is already active" if s.tls else "TLS is not available")
    s.send(f"{tag} OK Begin TLS negotiation now\r\n".encode())
    await s.flush()
    dropped = await starttls(s.reader, s.writer, ctx)
    if dropped:
        log.info("imap %s: discarded %d bytes pipelined after STARTTLS", s.peer, dropped)
    s.tls = True
    return None


@command("LOGIN", NOTAUTH)
async def cmd_login(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    user = p.astring_str()
    p.sp()
    password = p.astring_str()
    p.end()
    return await s.login(user, password)


SASL_MECHANISMS = ("PLAIN", "LOGIN")


async def sasl_response(s: Session, challenge: bytes) -> bytes:
    """Send a SASL challenge (``+ base64``) and read the client's response line, still
    base64; ``*`` cancels (BAD)."""
    s.send(b"+ " + base64.b64encode(challenge) + b"\r\n")
    await s.flush()
    try:
        line = await s.lines.readline()
    except LineTooLong:
        raise Bad("response too long") from None
    if not line:
        raise Disconnect()
    if len(line) > PREAUTH_MAX_COMMAND:
        raise Bad("response too long")
    response = line.rstrip(b"\r\n")
    if response == b"*":
        raise Bad("authentication cancelled")
    return response


def sasl_decode(response: bytes) -> bytes:
    if response == b"=":
        return b""
    try:
        return base64.b64decode(response, validate=True)
    except binascii.Error:
        raise Bad("malformed SASL response") from None


@command("AUTHENTICATE", NOTAUTH)
async def cmd_authenticate(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    mech = p.atom().upper()
    initial: bytes | None = None
    if p.maybe_sp():
        initial = p._run(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
        if not initial:
            raise Bad("bad initial response")
    p.end()
    if mech not in SASL_MECHANISMS:
        raise No("unsupported authentication mechanism", "CANNOT")
    if not s.login_allowed:
        raise No("plaintext authentication is disabled here: use STARTTLS first",
                 "PRIVACYREQUIRED")
    if mech == "LOGIN":  # the user name, then the password (Thunderbird's fallback)
        name = sasl_decode(initial if initial is not None
                           else await sasl_response(s, b"Username:"))
        secret = sasl_decode(await sasl_response(s, b"Password:"))
        try:
            return await s.login(name.decode(), secret.decode())
        except UnicodeDecodeError:
            raise Bad("malformed LOGIN response") from None
    if initial is None:
        initial = await sasl_response(s, b"")
    try:
        authz, authc, password = sasl_decode(initial).split(b"\x00")
        authz_s, user, pw = authz.decode(), authc.decode(), password.decode()
    except (ValueError, UnicodeDecodeError):
        raise Bad("malformed PLAIN response") from None
    if authz_s and authz_s.lower() != user.lower():
        await s.server.throttle.fail(s.peer, user, "imap")
        raise No("authorization identity must be empty or the user", "AUTHORIZATIONFAILED")
    return await s.login(user, pw)


@command("UNAUTHENTICATE", AUTH, SELECTED)
async def cmd_unauthenticate(s: Session, tag: str, p: Parser, uid: bool) -> str:
    """RFC 8437: back to the not-authenticated state; TLS and compression stay."""
    p.end()
    s.stop_notify()
    s.unselect()
    log.info("imap logout %s from %s (UNAUTHENTICATE)", s.user, s.peer)
    s.user = ""
    s.account = None
    s.condstore = s.qresync = False
    s.state = NOTAUTH
    return "UNAUTHENTICATE completed"


@command("NAMESPACE", AUTH, SELECTED)
async def cmd_namespace(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.end()
    s.untagged('NAMESPACE (("" ".")) NIL NIL')
    return "NAMESPACE completed"


@command("GETJMAPACCESS", AUTH, SELECTED)
async def cmd_getjmapaccess(s: Session, tag: str, p: Parser, uid: bool) -> str:
    """RFC 9698: where the same account is served over JMAP."""
    p.end()
    url = session_url(s.cfg)
    if url is None:
        raise No("JMAP is not served here")
    s.send(b"* GETJMAPACCESS " + quote(url) + b"\r\n")
    return "GETJMAPACCESS completed"


@command("ENABLE", AUTH, SELECTED)
async def cmd_enable(s: Session, tag: str, p: Parser, uid: bool) -> str:
    enabled = []
    while p.maybe_sp():
        cap = p.atom().upper()
        if cap == "CONDSTORE" and not s.condstore:
            s.condstore = True
            enabled.append(cap)
        elif cap == "QRESYNC" and not s.qresync:  # implies CONDSTORE (RFC 7162 3.2.3)
            s.condstore = s.qresync = True
            enabled.append(cap)
        elif cap == "IMAP4REV2" and not s.rev2:
            s.rev2 = True
            enabled.append("IMAP4rev2")
    p.end()
    s.untagged("ENABLED" + "".join(" " + c for c in enabled))
    return "ENABLE completed"


@command("IDLE", AUTH, SELECTED)
async def cmd_idle(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.end()
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    timeout = float(s.cfg.imap.idle_timeout)
    timed_out = False

    def expire() -> None:
        nonlocal timed_out
        timed_out = True
        event.set()

    with contextlib.ExitStack() as stack:
        if s.selected is not None:
            # watch first, then look: nothing can slip between the last refresh and the watch
            stack.enter_context(watch.watching(s.selected.maildir.root, event))
        if s.notifier is not None:  # NOTIFY's events arrive during IDLE too (RFC 5465 4)
            s.notifier.idle = event
            stack.callback(setattr, s.notifier, "idle", None)
        s.send(b"+ idling\r\n")
        await s.announce()
        await s.flush()
        # one reader task and one event for the whole IDLE: a wake-up costs no new tasks
        read = asyncio.ensure_future(s.lines.reader.readline())
        read.add_done_callback(lambda _: event.set())
        timer = loop.call_later(timeout, expire)
        try:
            while True:
                await event.wait()
                event.clear()
                if read.done():
                    break
                if timed_out:
                    raise TimeoutError()
                await s.announce()
                if s.notifier is not None and s.state != LOGOUT:
                    await s.notifier.report()
                if s.state == LOGOUT:
                    await s.flush()
                    raise Disconnect()
                await s.flush()
        finally:
            timer.cancel()
            if not read.done():
                read.cancel()
    try:
        line = read.result()
    except (asyncio.LimitOverrunError, ValueError):
        raise Disconnect() from None
    if not line.endswith(b"\n"):
        raise Disconnect()
    if line.rstrip(b"\r\n").upper() != b"DONE":
        raise Bad("expected DONE")
    return "IDLE terminated"
