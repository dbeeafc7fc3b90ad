"""LMTP server (RFC 2033) on aiosmtpd, answering one reply per recipient after DATA.

aiosmtpd's ``LMTP`` class sends a single reply after DATA. :class:`MultiReplyLMTP` extends it:
the DATA hook returns a :class:`PerRecipient` list, written as one reply line per accepted
recipient, in RCPT order (RFC 2033 §4.2). ``MAIL FROM`` also accepts ``ENVID=<queue id>``
(RFC 3461's envelope identifier), which the mda uses to make redelivery idempotent, and our own
``XRETRY`` keyword, which the mta adds when the entry may have been attempted before.
"""

from __future__ import annotations

import re
from typing import Any

from aiosmtpd.lmtp import LMTP

from ..smtpbase import ProtocolMixin

_ENVID = re.compile(r"\s+ENVID=(\S+)", re.I)
_XRETRY = re.compile(r"\s+XRETRY(?=\s|$)", re.I)


class PerRecipient(list[str]):
    """Replies after DATA, one per recipient."""


class MultiReplyLMTP(ProtocolMixin, LMTP):
    async def push(self, status: Any) -> None:
        if isinstance(status, PerRecipient):
            for line in status:
                await super().push(line)
            return
        await super().push(status)

    async def smtp_LHLO(self, arg: str) -> None:
        await self._greeting_reply(super().smtp_LHLO, arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg and self.session is not None:
            m = _ENVID.search(arg)
            self.session.envid = m.group(1) if m else None  # type: ignore[attr-defined]
            if m:
                arg = arg[: m.start()] + arg[m.end():]
            r = _XRETRY.search(arg)
            self.session.retry = r is not None  # type: ignore[attr-defined]
            if r:
                arg = arg[: r.start()] + arg[r.end():]
        await super().smtp_MAIL(arg)
