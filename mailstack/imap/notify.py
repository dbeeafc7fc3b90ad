"""NOTIFY (RFC 5465): unsolicited events for the selected mailbox and STATUS/LIST responses
for others, sent as they happen, also when no command is in progress.

:func:`parse` turns ``NOTIFY SET ...`` into a :class:`Spec` (sans-I/O, BAD/NO for bad input);
a :class:`Notifier` per session waits on the folder watcher for the mailboxes the spec covers
and on the store's modseq (checked every :data:`NAME_POLL` s) for mailbox names and
subscriptions, and writes the responses between commands (under the session's output lock)
or from inside IDLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..store import watch
from ..store.account import StoreError
from . import fetch, wire
from .cmd_message import _send_fetch as send_fetch  # the FETCH machinery, streaming
from .mailbox import Account, MailboxError, normalize_name
from .session import AUTH, LOGOUT, SELECTED, Disconnect, No, Session, command
from .wire import ParseError, Parser

log = logging.getLogger("mailstack.imap")

MESSAGE_EVENTS = ("MessageNew", "MessageExpunge", "FlagChange")
MAILBOX_EVENTS = ("MailboxName", "SubscriptionChange")
SUPPORTED = MESSAGE_EVENTS + MAILBOX_EVENTS
_CANON = {e.upper(): e for e in (*SUPPORTED, "AnnotationChange", "MailboxMetadataChange",
                                 "ServerMetadataChange")}
SELECTED_KINDS = ("SELECTED", "SELECTED-DELAYED")
SIMPLE_KINDS = ("INBOXES", "PERSONAL", "SUBSCRIBED")
NAMED_KINDS = ("SUBTREE", "MAILBOXES")
MAX_GROUPS = 32
MAX_NAMES = 256  # mailbox names in one NOTIFY command
MAX_WATCHED = 1000  # mailboxes one session may watch (beyond: NOTIFICATIONOVERFLOW)
NAME_POLL = 1.0  # seconds between looks at the store's modseq (mailbox names, subscriptions)


class BadEvent(Exception):
    """An event this server does not support (tagged ``NO [BADEVENT (...)]``)."""


@dataclass(frozen=True)
class Group:
    """One event group: a mailbox filter and the events wanted for it."""

    kind: str
    names: tuple[str, ...] = ()
    events: frozenset[str] = frozenset()
    fetch_atts: tuple[fetch.Att, ...] = ()

    def covers(self, name: str, subscribed: set[str]) -> bool:
        """Does this (non-selected) filter name mailbox ``name``?"""
        if self.kind == "PERSONAL":
            return True
        if self.kind == "INBOXES":
            return name == "INBOX"
        if self.kind == "SUBSCRIBED":
            return name in subscribed
        if self.kind == "MAILBOXES":
            return name in self.names
        return any(name == n or name.startswith(n + ".") for n in self.names)  # SUBTREE


@dataclass(frozen=True)
class Spec:
    """What ``NOTIFY SET`` asked for."""

    groups: tuple[Group, ...]
    status: bool = False

    @property
    def selected(self) -> Group | None:
        return next((g for g in self.groups if g.kind in SELECTED_KINDS), None)

    def events_for(self, name: str, subscribed: set[str]) -> frozenset[str]:
        """Events wanted for the non-selected mailbox ``name`` (the first group naming it)."""
        for g in self.groups:
            if g.kind not in SELECTED_KINDS and g.covers(name, subscribed):
                return g.events
        return frozenset()

    def wants(self, event: str) -> bool:
        return any(event in g.events for g in self.groups)


def _mailbox(p: Parser) -> str:
    raw = p.astring()
    try:
        return normalize_name(raw.decode("ascii"))
    except (UnicodeDecodeError, MailboxError):
        raise ParseError("bad mailbox name in NOTIFY") from None


def _names(p: Parser) -> tuple[str, ...]:
    """``one-or-more-mailbox``: a mailbox or a parenthesized list of them (no wildcards)."""
    if not p.maybe_open():
        return (_mailbox(p),)
    names = [_mailbox(p)]
    while p.maybe_sp():
        names.append(_mailbox(p))
        if len(names) > MAX_NAMES:
            raise ParseError(f"more than {MAX_NAMES} mailboxes")
    p.close_paren()
    return tuple(names)


def _group(p: Parser) -> Group:
    """``"(" filter-mailboxes SP events ")"``: ``(MAILBOXES a (MessageNew ...))`` (RFC 5465
    §8); the filter in parentheses, ``((MAILBOXES a) (...))``, is taken too."""
    p.open_paren()
    names: tuple[str, ...] = ()
    if p.maybe_open():
        kind = p.atom().upper()
        if kind not in NAMED_KINDS:
            raise ParseError(f"unknown mailbox filter {kind[:40]}")
        p.sp()
        names = _names(p)
        p.close_paren()
    else:
        kind = p.atom().upper()
        if kind in NAMED_KINDS:
            p.sp()
            names = _names(p)
        elif kind not in SELECTED_KINDS + SIMPLE_KINDS:
            raise ParseError(f"unknown mailbox filter {kind[:40]}")
    p.sp()
    events: set[str] = set()
    atts: list[fetch.Att] = []
    unsupported = False
    if not p.maybe(b"NONE"):
        p.open_paren()
        while True:
            word = p.atom().upper()
            event = _CANON.get(word, word)
            if event == "MessageNew" and p.peek() == 0x20 and p.data[p.pos + 1:p.pos + 2] == b"(":
                p.sp()
                atts = fetch.parse_atts(p)
                if kind not in SELECTED_KINDS:
                    raise ParseError("fetch attributes only go with SELECTED")
                if any(a.sets_seen for a in atts):
                    raise ParseError("MessageNew fetch attributes must not set \\Seen")
            if event not in SUPPORTED:
                unsupported = True
            events.add(event)
            if not p.maybe_sp():
                break
        p.close_paren()
        if not events:
            raise ParseError("empty event list")
    p.close_paren()
    if ("MessageNew" in events) != ("MessageExpunge" in events):
        raise ParseError("MessageNew and MessageExpunge go together")
    if events & {"FlagChange", "AnnotationChange"} and "MessageNew" not in events:
        raise ParseError("FlagChange needs MessageNew and MessageExpunge")
    if kind in SELECTED_KINDS and events - {*MESSAGE_EVENTS, "AnnotationChange"}:
        raise ParseError("only message events go with SELECTED")
    if unsupported:  # after the syntax checks: BAD wins over NO
        raise BadEvent()
    return Group(kind, names, frozenset(events), tuple(atts))


def parse(p: Parser) -> Spec | None:
    """``SP ("NONE" / "SET" [SP "STATUS"] 1*(SP event-group))``: None for NONE."""
    p.sp()
    if p.maybe(b"NONE"):
        p.end()
        return None
    p.expect(b"SET")
    status = False
    groups: list[Group] = []
    unsupported = False
    while p.maybe_sp():
        if not groups and not status and p.maybe(b"STATUS"):
            status = True
            continue
        try:
            groups.append(_group(p))
        except BadEvent:
            unsupported = True
        if len(groups) > MAX_GROUPS:
            raise ParseError(f"more than {MAX_GROUPS} event groups")
    p.end()
    if not groups and not unsupported:
        raise ParseError("NOTIFY SET needs an event group")
    if sum(1 for g in groups if g.kind in SELECTED_KINDS) > 1:
        raise ParseError("SELECTED and SELECTED-DELAYED are used at most once")
    if unsupported:
        raise BadEvent()
    return Spec(tuple(groups), status)


def badevent_code() -> str:
    return f"BADEVENT ({' '.join(SUPPORTED)})"


# -- the watching side ------------------------------------------------------------------------
@dataclass
class _Status:
    values: tuple[int, ...]


@dataclass
class _Names:
    names: set[str] = field(default_factory=set)
    ids: dict[str, int] = field(default_factory=dict)
    subscribed: set[str] = field(default_factory=set)


class _Mark(asyncio.Event):
    """A folder watch's event that also records which mailbox changed and wakes the
    notifier."""

    def __init__(self, owner: Notifier, name: str) -> None:
        super().__init__()
        self.owner = owner
        self.name = name

    def set(self) -> None:
        self.owner.dirty.add(self.name)
        self.owner.wake()


class Notifier:
    """Sends one session the events its :class:`Spec` asks for."""

    def __init__(self, session: Session, spec: Spec) -> None:
        self.s = session
        self.spec = spec
        assert session.account is not None
        self.account: Account = session.account
        self.dirty: set[str] = set()
        self.status: dict[str, tuple[int, ...]] = {}
        self.known = _Names()
        self.modseq = -1
        self.event = asyncio.Event()
        self.idle: asyncio.Event | None = None  # an IDLE in progress also wakes up
        self.watches: dict[str, contextlib.ExitStack] = {}
        self.task: asyncio.Task[None] | None = None

    # -- set-up ---------------------------------------------------------------------------
    async def start(self) -> list[bytes]:
        """Take the current state as the base; with STATUS: the responses NOTIFY SET sends
        for every non-selected mailbox with message events. Raises MailboxError
        (NOTIFICATIONOVERFLOW) when the spec covers too many mailboxes."""
        self.known = await asyncio.to_thread(self._names)
        self.modseq = await asyncio.to_thread(self.account.store.highest_modseq)
        covered = self._covered()
        if len(covered) > MAX_WATCHED:
            raise MailboxError(f"NOTIFY may watch at most {MAX_WATCHED} mailboxes",
                               "NOTIFICATIONOVERFLOW")
        out = []
        for name in sorted(covered):
            values = await asyncio.to_thread(self._values, name)
            if values is None:
                continue
            self.status[name] = values
            if self.spec.status:
                out.append(self._status_line(name, values))
        self._rewatch(covered)
        self.task = asyncio.get_running_loop().create_task(self._run())
        return out

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
        for stack in self.watches.values():
            stack.close()
        self.watches.clear()

    def wake(self) -> None:
        self.event.set()
        if self.idle is not None:
            self.idle.set()

    # -- what is watched ------------------------------------------------------------------
    def _names(self) -> _Names:
        store = self.account.store
        return _Names(set(self.account.names()), store.mailbox_ids(),
                      set(store.subscriptions()))

    def _covered(self) -> set[str]:
        """Non-selected mailboxes with message events (the selected one is reported as
        usual, or per SELECTED)."""
        sel = self.s.selected
        subs = self.known.subscribed
        return {n for n in self.known.names
                if (sel is None or sel.name != n)
                and self.spec.events_for(n, subs) & set(MESSAGE_EVENTS)}

    def _rewatch(self, covered: set[str]) -> None:
        wanted = set(covered)
        sel = self.s.selected
        if sel is not None and self.spec.selected is not None:
            wanted.add(sel.name)
        for name in set(self.watches) - wanted:
            self.watches.pop(name).close()
        for name in wanted - set(self.watches):
            stack = contextlib.ExitStack()
            try:
                stack.enter_context(watch.watching(self.account.maildir(name).root,
                                                   _Mark(self, name)))
            except (OSError, MailboxError):
                stack.close()
                continue
            self.watches[name] = stack

    def _values(self, name: str) -> tuple[int, ...] | None:
        try:
            snap, _ = self.account.status(name)
        except (MailboxError, OSError):
            return None
        unseen = sum(1 for e in snap.entries if not e.seen)
        return (len(snap.entries), snap.uidnext, snap.uidvalidity, unseen, snap.highest_modseq)

    def _status_line(self, name: str, v: tuple[int, ...]) -> bytes:
        items = f"MESSAGES {v[0]} UIDNEXT {v[1]} UIDVALIDITY {v[2]} UNSEEN {v[3]}"
        # HIGHESTMODSEQ with CONDSTORE, or where flag changes are watched: without it their
        # STATUS would not show them (as Dovecot answers)
        if self.s.condstore or "FlagChange" in self.spec.events_for(name,
                                                                      self.known.subscribed):
            items += f" HIGHESTMODSEQ {v[4]}"
        return b"* STATUS " + wire.astring(name) + f" ({items})\r\n".encode()

    async def absorb(self, changes: set[str | None]) -> None:
        """Take the session's own changes as the new base, unreported (the caller holds the
        output lock): ``None`` for mailbox names and subscriptions, else mailbox names."""
        if None in changes:
            self.known = await asyncio.to_thread(self._names)
            self.modseq = await asyncio.to_thread(self.account.store.highest_modseq)
            self._rewatch(self._covered())
        for name in changes:
            if name is None or name not in self.watches:
                continue
            values = await asyncio.to_thread(self._values, name)
            if values is not None:
                self.status[name] = values
            self.dirty.discard(name)

    # -- the loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        timer = None
        try:
            while True:
                timer = loop.call_later(NAME_POLL, self.wake)  # also inside an IDLE
                await self.event.wait()
                timer.cancel()
                self.event.clear()
                async with self.s.out_lock:
                    if self.s.notifier is not self:
                        return
                    await self.report()
                    await self.s.flush()
                    if self.s.state == LOGOUT:  # the selected mailbox is gone
                        self.s.writer.close()
                        return
        except (ConnectionError, Disconnect, TimeoutError) as exc:  # the client went away
            log.info("imap %s: NOTIFY stopped: %s", self.s.peer, exc)
        except Exception:  # the notifier must never take the session down silently
            log.exception("imap %s: NOTIFY failed", self.s.peer)
        finally:
            if timer is not None:
                timer.cancel()

    async def report(self) -> None:
        """Send what changed since the last report (the caller holds the output lock)."""
        s = self.s
        sel, group = s.selected, self.spec.selected
        if sel is not None and group is not None and group.events and (
                "FlagChange" in group.events or await self._messages_changed()):
            top = sel.uids[-1] if sel.uids else 0
            await s.announce(expunge_ok=group.kind == "SELECTED")
            if group.fetch_atts and s.selected is sel and sel.uids and sel.uids[-1] > top:
                new = [(q, m) for q, m in enumerate(sel.msgs, 1) if m.uid > top]
                await send_fetch(s, sel, new, list(group.fetch_atts), True)
        modseq = await asyncio.to_thread(self.account.store.highest_modseq)
        if modseq != self.modseq:
            self.modseq = modseq
            now = await asyncio.to_thread(self._names)
            for line in self._name_events(self.known, now):
                s.send(line)
            self.known = now  # message changes arrive through the folder watches
        covered = self._covered()
        self._rewatch(covered)
        dirty, self.dirty = self.dirty & covered, set()
        for name in sorted(dirty):
            values = await asyncio.to_thread(self._values, name)
            if values is None or values == self.status.get(name):
                continue
            self.status[name] = values
            s.send(self._status_line(name, values))

    async def _messages_changed(self) -> bool:
        """Did messages arrive in or leave the selected mailbox? (Without FlagChange, flag
        news wait for the next command, as without NOTIFY.)"""
        sel = self.s.selected
        assert sel is not None
        try:
            snap, _ = await asyncio.to_thread(sel.store.sync, sel.name)
        except (OSError, StoreError):
            return True  # let the announcement find out what is wrong
        return snap.uids != sel.uids

    def _name_events(self, old: _Names, new: _Names) -> Iterable[bytes]:
        """LIST responses for mailboxes created, deleted or renamed (MailboxName) and for
        subscriptions that changed (SubscriptionChange), where the spec asks for them."""
        def wanted(name: str, event: str, names: _Names) -> bool:
            return event in self.spec.events_for(name, names.subscribed | old.subscribed)

        by_id = {mbid: n for n, mbid in old.ids.items()}
        renamed: dict[str, str] = {}
        for name in new.names - old.names:
            mbid = new.ids.get(name)
            before = by_id.get(mbid) if mbid is not None else None
            if before is not None and before in old.names - new.names:
                renamed[name] = before
        gone = old.names - new.names - set(renamed.values())
        for name in sorted(new.names - old.names):
            if not (wanted(name, "MailboxName", new)
                    or (name in renamed and wanted(renamed[name], "MailboxName", old))):
                continue
            extra = b""
            if name in renamed:
                extra = b' ("OLDNAME" (' + wire.astring(renamed[name]) + b"))"
            yield self._list_line(name, new) + extra + b"\r\n"
        for name in sorted(gone):
            if wanted(name, "MailboxName", old):
                yield b'* LIST (\\NonExistent) "." ' + wire.astring(name) + b"\r\n"
        for name in sorted(new.subscribed ^ old.subscribed):
            if wanted(name, "SubscriptionChange", new):
                yield self._list_line(name, new) + b"\r\n"

    def _list_line(self, name: str, names: _Names) -> bytes:
        attrs = []
        if name not in names.names:
            attrs.append("\\NonExistent")
        else:
            children = any(n.startswith(name + ".") for n in names.names)
            attrs.append("\\HasChildren" if children else "\\HasNoChildren")
        if name in names.subscribed:
            attrs.append("\\Subscribed")
        return f"* LIST ({' '.join(attrs)}) \".\" ".encode() + wire.astring(name)


# -- the command --------------------------------------------------------------------------------
@command("NOTIFY", AUTH, SELECTED)
async def cmd_notify(s: Session, tag: str, p: Parser, uid: bool) -> str:
    try:
        spec = parse(p)
    except BadEvent:
        raise No("unsupported event", badevent_code()) from None
    if s.notifier is not None:
        s.notifier.stop()
        s.notifier = None
    if spec is None:
        return "NOTIFY NONE completed"
    notifier = Notifier(s, spec)
    try:
        lines = await notifier.start()
    except BaseException:
        notifier.stop()
        raise
    for line in lines:
        s.send(line)
    s.notifier = notifier
    return "NOTIFY completed"
