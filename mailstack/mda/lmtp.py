"""LMTP server (RFC 2033) on aiosmtpd, answering one reply per recipient after DATA.

aiosmtpd's ``LMTP`` class sends a single reply after DATA. :class:`MultiReplyLMTP` extends it:
the DATA hook returns a :class:`PerRecipient` list, written as one reply line per accepted
recipient, in RCPT order (RFC 2033 §4.2). ``MAIL FROM`` also accepts ``ENVID=<queue id>``
(RFC 3461's envelope identifier), which the mda uses to make redelivery idempotent, and our own
``XRETRY`` keyword, which the mta adds when the entry may have been attempted before.

CHUNKING (RFC 3030 ``BDAT``) is offered too: the mta then sends MAIL, RCPT and the whole message
in one write, without dot-stuffing, and gets every reply in one read — one round trip per
message instead of two. Every chunk's octets are read (or skipped) in full whatever the reply,
so chunk data can never be taken for commands.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING

from ..runtime import chaos
from ..smtp.base import ProtocolMixin

_ENVID = re.compile(r"\s+ENVID=(\S+)", re.I)
_XRETRY = re.compile(r"\s+XRETRY(?=\s|$)", re.I)
_BDAT = re.compile(r"(\d{1,15})(\s+LAST)?", re.I)


class PerRecipient(list[str]):
    """Replies after DATA, one per recipient (``rcpts``: those recipients, for faults)."""

    def __init__(self, replies: Any = (), rcpts: list[str] | None = None) -> None:
        super().__init__(replies)
        self.rcpts = rcpts or []


class MultiReplyLMTP(ProtocolMixin, LMTP):
    chaos_service = "lmtp"

    async def push(self, status: Any) -> None:
        if isinstance(status, PerRecipient):
            if chaos.ENGINE is not None and await self._reply_fault(status.rcpts):
                return
            for line in status:
                await super().push(line)
            return
        await super().push(status)

    async def _reply_fault(self, rcpts: list[str]) -> bool:
        """A runtime fault at ``lmtp.reply``: after the copies are committed, before their
        replies go out (a late answer, or a connection lost just after delivery). True when
        the connection was dropped instead."""
        engine = chaos.ENGINE
        action = None if engine is None else await engine.check("lmtp.reply", rcpts,
                                                                  self._peer_ip())
        if action is not None and action.drop:
            self.transport.close()  # type: ignore[union-attr]
            return True
        return False

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

    async def smtp_BDAT(self, arg: str | None) -> None:
        """RFC 3030 §2: ``BDAT <size> [LAST]``; after LAST, one reply per recipient."""
        m = _BDAT.fullmatch(arg.strip()) if arg else None
        if m is None:  # the chunk's length is unknown: the stream cannot be resynchronised
            await self.push("501 5.5.4 Syntax: BDAT <size> [LAST]; closing the connection")
            self.transport.close()  # type: ignore[union-attr]
            return
        size, last = int(m.group(1)), m.group(2) is not None
        envelope = self.envelope
        chunks: list[bytes] | None = getattr(envelope, "bdat_chunks", None)
        total = sum(map(len, chunks)) if chunks else 0
        limit = self.data_size_limit
        if limit and total + size > limit:
            if not await self._skip(size):
                return
            if last:
                await self.refuse_message("552 5.3.4 Error: Too much mail data")
            else:  # a chunk before LAST gets one reply (RFC 3030 §2)
                self._set_post_data_state()
                await self.push("552 5.3.4 Error: Too much mail data")
            return
        try:
            data = await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, OSError):
            return  # connection lost mid-chunk: nothing is accepted
        self._reset_timeout()
        if not envelope.rcpt_tos:  # also covers a missing MAIL
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if chunks is None:
            chunks = envelope.bdat_chunks = []  # type: ignore[attr-defined]
        chunks.append(data)
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        envelope.content = envelope.original_content = b"".join(chunks)
        if chaos.ENGINE is not None and await self._message_fault():
            return
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def refuse_message(self, reply: str) -> None:
        """RFC 2033 §4.2: the reply after the message is repeated for every recipient."""
        rcpts = list(self.envelope.rcpt_tos)
        self._set_post_data_state()
        await self.push(PerRecipient([reply] * len(rcpts), rcpts) if rcpts else reply)

    async def _skip(self, size: int) -> bool:
        """Read and drop ``size`` octets; False when the connection ended first."""
        while size:
            piece = await self._reader.read(min(size, 65536))
            if not piece:
                return False
            size -= len(piece)
            self._reset_timeout()
        return True

    async def smtp_DATA(self, arg: str) -> None:
        if getattr(self.envelope, "bdat_chunks", None):
            await self.push("503 5.5.1 Error: DATA after BDAT; send RSET first")
            return
        await super().smtp_DATA(arg)
