"""Mailbox commands: SELECT, EXAMINE, CREATE, DELETE, RENAME, (UN)SUBSCRIBE, LIST, LSUB,
STATUS and APPEND."""

from __future__ import annotations

import asyncio
import errno

from ..store.account import OverQuota, StoreError
from ..store.flags import FlagError
from . import namelimit, wire
from .listmatch import compile_pattern
from .mailbox import MailboxError, Selected, normalize_name
from .session import AUTH, SELECTED, No, Session, command
from .wire import ParseError, Parser

SYSTEM_FLAGS = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "$Forwarded"]


def mailbox_arg(p: Parser) -> str:
    """A mailbox name argument (modified UTF-7 text as sent)."""
    raw = p.astring()
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise No("mailbox names must be modified UTF-7", "CANNOT") from None
    if not namelimit.fits(name):
        raise No(f"mailbox name longer than {namelimit.MAX_NAME} octets", "CANNOT")
    return name


def _wire_name(name: str) -> bytes:
    return wire.astring(name) if name else b'""'


# -- SELECT / EXAMINE -------------------------------------------------------------------------
async def _select(s: Session, p: Parser, readonly: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    if p.maybe_sp():
        p.open_paren()
        while p.peek() != 0x29:
            if p.atom().upper() == "CONDSTORE":
                s.condstore = True
            p.maybe_sp()
        p.close_paren()
    p.end()
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
    s.untagged(f"{len(sel.recent)} RECENT")
    first_unseen = next((i for i, m in enumerate(sel.msgs, 1) if not m.seen), None)
    if first_unseen:
        s.untagged(f"OK [UNSEEN {first_unseen}] first unseen message")
    snap = sel.snapshot
    assert snap is not None
    s.untagged(f"OK [UIDVALIDITY {snap.uidvalidity}] UIDs valid")
    s.untagged(f"OK [UIDNEXT {snap.uidnext}] predicted next UID")
    s.untagged(f"OK [HIGHESTMODSEQ {snap.highest_modseq}] highest modseq")
    s.selected = sel
    s.state = SELECTED
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
    return "CREATE completed"


@command("DELETE", AUTH, SELECTED)
async def cmd_delete(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    p.end()
    assert s.account is not None
    if s.selected is not None and s.selected.name == normalize_name(name):
        s.unselect()  # deleting the selected mailbox
    await asyncio.to_thread(s.account.delete, name)
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
    return "SUBSCRIBE completed"


@command("UNSUBSCRIBE", AUTH, SELECTED)
async def cmd_unsubscribe(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    p.end()
    assert s.account is not None
    await asyncio.to_thread(s.account.unsubscribe, name)  # a store write: may wait for a lock
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
    names = subs if subscribed_only else set(tree)
    childinfo: set[str] = set()
    if subscribed_only and "RECURSIVEMATCH" in select_opts:
        # a parent that does not match SUBSCRIBED but has a subscribed child (RFC 5258 3.5)
        for sub in subs:
            parts = sub.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if parent not in subs and any(r.match(parent) for r in regexes):
                    childinfo.add(parent)
        names = names | childinfo
    for i, name in enumerate(sorted(names, key=lambda n: (n != "INBOX", n))):
        if i % 128 == 127:  # thousands of folders: let other sessions run in between
            await s.maybe_flush()
            await asyncio.sleep(0)
        if not any(r.match(name) for r in regexes):
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
        s.send(f"* LIST ({' '.join(attrs)}) \".\" ".encode() + _wire_name(name) + extra
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
        if regex.match(name):
            shown.add(name)
        elif "%" in pattern:  # a parent of a subscribed mailbox matches: \Noselect
            parts = name.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if regex.match(parent) and parent not in subs:
                    shown.add(parent)
    for name in sorted(shown, key=lambda n: (n != "INBOX", n)):
        attrs = [] if name in subs and name in tree and tree[name].exists else ["\\Noselect"]
        s.send(f"* LSUB ({' '.join(attrs)}) \".\" ".encode() + _wire_name(name) + b"\r\n")
    return "LSUB completed"


# -- STATUS ---------------------------------------------------------------------------------
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ")


@command("STATUS", AUTH, SELECTED)
async def cmd_status(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    p.sp()
    items = _atom_list(p)
    p.end()
    if not items or any(i not in STATUS_ITEMS for i in items):
        raise ParseError("unknown STATUS item")
    await _send_status(s, name, items)
    return "STATUS completed"


async def _send_status(s: Session, name: str, items: list[str]) -> None:
    assert s.account is not None
    snap, recent = await asyncio.to_thread(s.account.status, name)
    values = {"MESSAGES": len(snap.entries), "RECENT": recent, "UIDNEXT": snap.uidnext,
              "UIDVALIDITY": snap.uidvalidity,
              "UNSEEN": sum(1 for e in snap.entries if not e.seen),
              "HIGHESTMODSEQ": snap.highest_modseq}
    body = " ".join(f"{i} {values[i]}" for i in items)
    s.send(b"* STATUS " + _wire_name(normalize_name(name)) + f" ({body})\r\n".encode())


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


def quota_of(s: Session) -> int:
    """The account's storage quota in octets (``[mda] quota``; 0: none)."""
    return int(s.cfg.mda.quota)


# -- APPEND ---------------------------------------------------------------------------------
@command("APPEND", AUTH, SELECTED)
async def cmd_append(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    p.sp()
    flags: list[str] = []
    date = None
    if p.peek() == 0x28:
        flags = p.flag_list()
        p.sp()
    if p.peek() == 0x22:
        date = p.date_time()
        p.sp()
    data = p.literal_view()
    p.end()
    target = existing_mailbox(s, name)
    if not data:
        raise No("cannot append an empty message")
    if any(f.upper() == "\\RECENT" for f in flags):
        raise ParseError("\\Recent cannot be set")
    assert s.account is not None
    store = s.account.store
    try:
        validity, new_uid = await asyncio.to_thread(
            store.append, target, data, flags, date.timestamp() if date else None,
            quota=quota_of(s))
    except FlagError as exc:
        raise ParseError(str(exc)) from None
    except OverQuota:
        raise No("not enough room in the mailbox quota", "OVERQUOTA") from None
    except StoreError as exc:
        raise No(str(exc), exc.code) from None
    except OSError as exc:  # nothing half-written shows: the file and the row go together
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise No("not enough disk space to store the message", "OVERQUOTA") from None
        raise No(f"cannot store the message: {exc.strerror}", "SERVERBUG") from None
    return f"[APPENDUID {validity} {new_uid}] APPEND completed"
