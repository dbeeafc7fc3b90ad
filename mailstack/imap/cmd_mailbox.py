"""Mailbox commands: SELECT, EXAMINE, CREATE, DELETE, RENAME, (UN)SUBSCRIBE, LIST, LSUB,
STATUS and APPEND."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from . import mutf7, namelimit, qresync, wire
from .listmatch import compile_pattern
from .mailbox import MailboxError, Selected, normalize_name
from .session import AUTH, SELECTED, No, Session, command
from .wire import ParseError, Parser

SYSTEM_FLAGS = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "$Forwarded"]


def mailbox_arg(p: Parser) -> str:
    """A mailbox name argument as the store names it (modified UTF-7): as sent, or, once
    IMAP4rev2 is enabled, UTF-8 on the wire (RFC 9051 §5.1) encoded here."""
    raw = p.astring()
    try:
        name = mutf7.encode(raw.decode("utf-8")) if p.utf8_names else raw.decode("ascii")
    except UnicodeDecodeError:
        raise No("mailbox names must be modified UTF-7" if not p.utf8_names
                 else "mailbox names must be UTF-8", "CANNOT") from None
    if not namelimit.fits(name):
        raise No(f"mailbox name longer than {namelimit.MAX_NAME} octets", "CANNOT")
    return name


def _shown(name: str, utf8: bool) -> str:
    """A stored (modified UTF-7) name as the client sees it: UTF-8 under IMAP4rev2."""
    if utf8:
        with contextlib.suppress(mutf7.MUTF7Error):
            return mutf7.decode(name)
    return name


def _wire_name(name: str, utf8: bool = False) -> bytes:
    name = _shown(name, utf8)
    return wire.astring(name) if name else b'""'


# -- SELECT / EXAMINE -------------------------------------------------------------------------
async def _select(s: Session, p: Parser, readonly: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    params = qresync.parse_select_params(p)
    p.end()
    if params.resync is not None and not s.qresync:
        raise ParseError("QRESYNC needs ENABLE QRESYNC first")
    if params.condstore:
        s.condstore = True
    assert s.account is not None
    if s.selected is not None:
        s.untagged("OK [CLOSED] previous mailbox closed")
    s.unselect()
    sel = await asyncio.to_thread(Selected, s.account, name, readonly)
    flags = " ".join(SYSTEM_FLAGS + list(sel.keywords))
    s.untagged(f"FLAGS ({flags})")
    if readonly:
        s.untagged("OK [PERMANENTFLAGS ()] read-only mailbox")
    else:
        s.untagged(f"OK [PERMANENTFLAGS ({flags} \\*)] flags permitted")
    s.untagged(f"{sel.exists} EXISTS")
    if s.rev2:  # RFC 9051: no RECENT, no UNSEEN code; LIST-style mailbox name response
        sel.show_recent = False
        s.send(b'* LIST () "." ' + _wire_name(sel.name, True) + b"\r\n")
    else:
        s.untagged(f"{len(sel.recent)} RECENT")
        first_unseen = next((i for i, m in enumerate(sel.msgs, 1) if not m.seen), None)
        if first_unseen:
            s.untagged(f"OK [UNSEEN {first_unseen}] first unseen message")
    snap = sel.snapshot
    assert snap is not None
    s.untagged(f"OK [UIDVALIDITY {snap.uidvalidity}] UIDs valid")
    s.untagged(f"OK [UIDNEXT {snap.uidnext}] predicted next UID")
    s.untagged(f"OK [HIGHESTMODSEQ {snap.highest_modseq}] highest modseq")
    s.untagged(f"OK [MAILBOXID ({snap.mailbox_id})] mailbox id")  # RFC 8474
    s.selected = sel
    s.state = SELECTED
    resync = params.resync
    if resync is not None and resync.uidvalidity == snap.uidvalidity:  # else: a full resync
        gone = await asyncio.to_thread(sel.store.vanished, snap.mailbox_id, resync.modseq)
        for line in qresync.select_responses(sel, resync, gone):
            s.send(line)
            await s.maybe_flush()
    mode = "READ-ONLY" if readonly else "READ-WRITE"
    return f"[{mode}] {'EXAMINE' if readonly else 'SELECT'} completed"


@command("SELECT", AUTH, SELECTED)
async def cmd_select(s: Session, tag: str, p: Parser, uid: bool) -> str:
    return await _select(s, p, False)


@command("EXAMINE", AUTH, SELECTED)
async def cmd_examine(s: Session, tag: str, p: Parser, uid: bool) -> str:
    return await _select(s, p, True)


# -- CREATE / DELETE / RENAME / SUBSCRIBE ----------------------------------------------------
@command("CREATE", AUTH, SELECTED)
async def cmd_create(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    p.end()
    assert s.account is not None
    await asyncio.to_thread(s.account.create, name)
    s.changed(None)
    try:  # RFC 8474 §4.1: the new mailbox's id in the tagged OK
        snap, _ = await asyncio.to_thread(s.account.status, name.rstrip("."))
    except MailboxError:
        return "CREATE completed"
    return f"[MAILBOXID ({snap.mailbox_id})] CREATE completed"


@command("DELETE", AUTH, SELECTED)
async def cmd_delete(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    p.end()
    assert s.account is not None
    if s.selected is not None and s.selected.name == normalize_name(name):
        s.unselect()  # deleting the selected mailbox
    await asyncio.to_thread(s.account.delete, name)
    s.changed(None)
    return "DELETE completed"


@command("RENAME", AUTH, SELECTED)
async def cmd_rename(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    old = mailbox_arg(p)
    p.sp()
    new = mailbox_arg(p)
    p.end()
    assert s.account is not None
    if not namelimit.renamed_fit(normalize_name(old), normalize_name(new), s.account.names()):
        raise No(f"a renamed mailbox would be longer than {namelimit.MAX_NAME} octets", "CANNOT")
    await asyncio.to_thread(s.account.rename, old, new)
    s.changed(None)
    sel = s.selected
    if sel is not None and sel.name != "INBOX":
        old_n, new_n = normalize_name(old), normalize_name(new)
        if sel.name == old_n or sel.name.startswith(old_n + "."):
            sel.moved_to(new_n + sel.name[len(old_n):])
    return "RENAME completed"


@command("SUBSCRIBE", AUTH, SELECTED)
async def cmd_subscribe(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    p.end()
    assert s.account is not None
    await asyncio.to_thread(s.account.subscribe, name)  # a store write: may wait for a lock
    s.changed(None)
    return "SUBSCRIBE completed"


@command("UNSUBSCRIBE", AUTH, SELECTED)
async def cmd_unsubscribe(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    p.end()
    assert s.account is not None
    await asyncio.to_thread(s.account.unsubscribe, name)  # a store write: may wait for a lock
    s.changed(None)
    return "UNSUBSCRIBE completed"


# -- LIST / LSUB ---------------------------------------------------------------------------
MAX_PATTERNS = 32  # patterns in one LIST (RFC 5258)


def _atom_list(p: Parser) -> list[str]:
    p.open_paren()
    out = []
    while p.peek() != 0x29:
        out.append(p.atom().upper())
        if not p.maybe_sp():
            break
    p.close_paren()
    return out


@command("LIST", AUTH, SELECTED)
async def cmd_list(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    select_opts: list[str] = []
    if p.peek() == 0x28:
        select_opts = _atom_list(p)
        p.sp()
    reference = p.astring().decode("utf-8", "replace")
    p.sp()
    if p.peek() == 0x28:
        p.open_paren()
        patterns = [p.list_mailbox()]
        while p.maybe_sp():
            patterns.append(p.list_mailbox())
            if len(patterns) > MAX_PATTERNS:
                raise ParseError(f"more than {MAX_PATTERNS} patterns")
        p.close_paren()
    else:
        patterns = [p.list_mailbox()]
    return_opts: list[str] = []
    status_items: list[str] = []
    if p.maybe_sp():
        p.expect(b"RETURN")
        p.sp()
        p.open_paren()
        while p.peek() != 0x29:
            opt = p.atom().upper()
            return_opts.append(opt)
            if opt == "STATUS":  # RFC 5819
                p.sp()
                status_items = _atom_list(p)
                if not status_items or any(i not in STATUS_ITEMS for i in status_items):
                    raise ParseError("unknown STATUS item")
            if not p.maybe_sp():
                break
        p.close_paren()
    p.end()
    for opt in select_opts:
        if opt not in ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"):
            raise ParseError(f"unknown LIST selection option {opt}")
    if "RECURSIVEMATCH" in select_opts and len(set(select_opts) - {"REMOTE"}) < 2:
        raise ParseError("RECURSIVEMATCH needs another selection option")
    for opt in return_opts:
        if opt not in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"):
            raise ParseError(f"unknown LIST return option {opt}")
    assert s.account is not None
    if patterns == [""]:
        s.send(b'* LIST (\\Noselect) "." ""\r\n')
        return "LIST completed"
    subscribed_only = "SUBSCRIBED" in select_opts
    special_only = "SPECIAL-USE" in select_opts
    show_subscribed = subscribed_only or "SUBSCRIBED" in return_opts
    tree = await asyncio.to_thread(s.account.tree)
    subs = set(s.account.subscriptions())
    regexes = [compile_pattern(reference, pat) for pat in patterns]

    def matches(name: str) -> bool:  # patterns are UTF-8 under IMAP4rev2, as names are shown
        shown = _shown(name, s.rev2)
        return any(r.match(shown) for r in regexes)

    names = subs if subscribed_only else set(tree)
    childinfo: set[str] = set()
    if subscribed_only and "RECURSIVEMATCH" in select_opts:
        # a mailbox matching a pattern gets CHILDINFO when a subscribed descendant does not
        # match any pattern itself (so is not listed): RFC 5258 3.5; one that is not
        # subscribed is listed only for that reason
        for sub in subs:
            if matches(sub):
                continue
            parts = sub.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if matches(parent):
                    childinfo.add(parent)
        names = names | childinfo
    for i, name in enumerate(sorted(names, key=lambda n: (n != "INBOX", n))):
        if i % 128 == 127:  # thousands of folders: let other sessions run in between
            await s.maybe_flush()
            await asyncio.sleep(0)
        if not matches(name):
            continue
        info = tree.get(name)
        if special_only and not (info and info.attrs):
            continue
        attrs: list[str] = []
        if info is None:
            attrs.append("\\NonExistent")
        else:
            if not info.exists:
                attrs.append("\\Noselect")
            attrs.append("\\HasChildren" if info.children else "\\HasNoChildren")
            attrs += info.attrs
        if show_subscribed and name in subs:
            attrs.append("\\Subscribed")
        extra = b' ("CHILDINFO" ("SUBSCRIBED"))' if name in childinfo else b""
        s.send(f"* LIST ({' '.join(attrs)}) \".\" ".encode() + _wire_name(name, s.rev2) + extra
               + b"\r\n")
        if status_items and info is not None and info.exists:
            await _send_status(s, name, status_items)
    return "LIST completed"


@command("LSUB", AUTH, SELECTED)
async def cmd_lsub(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    reference = p.astring().decode("utf-8", "replace")
    p.sp()
    pattern = p.list_mailbox()
    p.end()
    assert s.account is not None
    subs = s.account.subscriptions()
    regex = compile_pattern(reference, pattern)
    tree = await asyncio.to_thread(s.account.tree)
    shown = set()
    for name in subs:
        if regex.match(_shown(name, s.rev2)):
            shown.add(name)
        elif "%" in pattern:  # a parent of a subscribed mailbox matches: \Noselect
            parts = name.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if regex.match(_shown(parent, s.rev2)) and parent not in subs:
                    shown.add(parent)
    for name in sorted(shown, key=lambda n: (n != "INBOX", n)):
        attrs = [] if name in subs and name in tree and tree[name].exists else ["\\Noselect"]
        s.send(f"* LSUB ({' '.join(attrs)}) \".\" ".encode() + _wire_name(name, s.rev2)
               + b"\r\n")
    return "LSUB completed"


# -- STATUS ---------------------------------------------------------------------------------
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ",
                "SIZE", "APPENDLIMIT", "DELETED", "DELETED-STORAGE", "MAILBOXID")


@command("STATUS", AUTH, SELECTED)
async def cmd_status(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    p.sp()
    items = _atom_list(p)
    p.end()
    if not items or any(i not in STATUS_ITEMS for i in items):
        raise ParseError("unknown STATUS item")
    if "HIGHESTMODSEQ" in items:  # a CONDSTORE-enabling command (RFC 7162 §3.1)
        s.enable_condstore()
    await _send_status(s, name, items)
    return "STATUS completed"


async def _send_status(s: Session, name: str, items: list[str]) -> None:
    assert s.account is not None
    snap, recent = await asyncio.to_thread(s.account.status, name)
    entries = snap.entries
    values: dict[str, Callable[[], object]] = {
        "MESSAGES": lambda: len(entries), "RECENT": lambda: recent,
        "UIDNEXT": lambda: snap.uidnext, "UIDVALIDITY": lambda: snap.uidvalidity,
        "UNSEEN": lambda: sum(1 for e in entries if not e.seen),
        "HIGHESTMODSEQ": lambda: snap.highest_modseq,
        "SIZE": lambda: sum(e.size for e in entries),  # RFC 8438
        "APPENDLIMIT": lambda: int(s.cfg.imap.max_literal),  # RFC 7889
        "DELETED": lambda: sum(1 for e in entries if "\\Deleted" in e.flags),  # RFC 9208
        "DELETED-STORAGE": lambda: -(-sum(e.size for e in entries  # KiB, RFC 9208
                                          if "\\Deleted" in e.flags) // 1024),
        "MAILBOXID": lambda: f"({snap.mailbox_id})"}  # RFC 8474
    body = " ".join(f"{i} {values[i]()}" for i in items)
    s.send(b"* STATUS " + _wire_name(normalize_name(name), s.rev2) + f" ({body})\r\n"
           .encode())


def existing_mailbox(s: Session, name: str) -> str:
    """The mailbox an APPEND/COPY/MOVE targets; ``NO [TRYCREATE]`` when it does not exist."""
    assert s.account is not None
    try:
        name = normalize_name(name)
    except MailboxError as exc:
        raise No(str(exc), "TRYCREATE") from None
    if not s.account.exists(name):
        raise No("no such mailbox", "TRYCREATE")
    return name


def quota_of(s: Session) -> dict[str, int]:
    """The account's limits as the store takes them: octets (``[mda] quota``) and messages
    (``[mda] quota_messages``); 0: none."""
    return {"quota": int(s.cfg.mda.quota), "quota_messages": int(s.cfg.mda.quota_messages)}
