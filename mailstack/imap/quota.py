"""QUOTA (RFC 9208): one quota root per account, named ``""``, with the STORAGE (KiB) and
MESSAGE resources of ``[mda] quota`` and ``[mda] quota_messages``. Limits are set in the
configuration, so SETQUOTA is refused."""

from __future__ import annotations

import asyncio

from .cmd_mailbox import _wire_name, mailbox_arg
from .mailbox import Account, normalize_name
from .session import AUTH, SELECTED, No, Session, command
from .wire import Parser

ROOT = ""


def usage(account: Account) -> tuple[int, int]:
    """(octets, messages) of the whole account, every mailbox brought up to date first."""
    store = account.store
    for name in account.names():
        store.sync(name)
    return store.usage()


def _quota_line(s: Session, octets: int, messages: int) -> bytes:
    resources = []
    if s.cfg.mda.quota:
        resources.append(f"STORAGE {-(-octets // 1024)} {int(s.cfg.mda.quota) // 1024}")
    if s.cfg.mda.quota_messages:
        resources.append(f"MESSAGE {messages} {int(s.cfg.mda.quota_messages)}")
    return f'* QUOTA "" ({" ".join(resources)})\r\n'.encode()


def _has_limits(s: Session) -> bool:
    return bool(s.cfg.mda.quota or s.cfg.mda.quota_messages)


@command("GETQUOTAROOT", AUTH, SELECTED)
async def cmd_getquotaroot(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    name = mailbox_arg(p)
    p.end()
    account = s.account
    assert account is not None
    name = normalize_name(name)
    if not account.exists(name):
        raise No("no such mailbox", "NONEXISTENT")
    if not _has_limits(s):
        s.send(b"* QUOTAROOT " + _wire_name(name) + b"\r\n")
        return "GETQUOTAROOT completed"
    octets, messages = await asyncio.to_thread(usage, account)
    s.send(b"* QUOTAROOT " + _wire_name(name) + b' ""\r\n')
    s.send(_quota_line(s, octets, messages))
    return "GETQUOTAROOT completed"


@command("GETQUOTA", AUTH, SELECTED)
async def cmd_getquota(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    root = p.astring()
    p.end()
    if root != ROOT.encode() or not _has_limits(s):
        raise No("no such quota root", "NONEXISTENT")
    assert s.account is not None
    octets, messages = await asyncio.to_thread(usage, s.account)
    s.send(_quota_line(s, octets, messages))
    return "GETQUOTA completed"


@command("SETQUOTA", AUTH, SELECTED)
async def cmd_setquota(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    p.astring()
    p.sp()
    p.open_paren()
    while p.peek() not in (0x29, None):
        p.atom()
        p.sp()
        p.number64()
        if not p.maybe_sp():
            break
    p.close_paren()
    p.end()
    raise No("quotas are set by the administrator", "NOPERM")
