"""What the mta's SMTP and the mda's LMTP protocol classes share on top of aiosmtpd.

- Every reply passes through ``smtpreply.enhance`` (enhanced status codes), except the
  EHLO/HELO/LHLO replies, which RFC 2034 leaves without them.
- Paths in MAIL/RCPT are split by ``address.split_path`` (strict RFC 5321 syntax, a fraction
  of the cost of aiosmtpd's RFC 5322 header parser).
- DATA is read in chunks by the sans-I/O ``smtpdata.DataReader`` instead of line by line.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from typing import Any

from aiosmtpd.smtp import MISSING

from ..runtime import chaos
from ..runtime.deadline import MovingDeadline
from ..runtime.netserver import CountedProtocol
from .address import split_path
from .data import DataReader
from .reply import enhance, printable
from .validate import helo_error

log = logging.getLogger("mailstack.smtp")


class ProtocolMixin(CountedProtocol):
    """Mix in before aiosmtpd's ``SMTP``/``LMTP`` class. The daemon sets ``limiter`` (and
    ``implicit_tls`` on 465): see :class:`netserver.CountedProtocol`."""

    _plain_reply = False
    _held: list[bytes] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # aiosmtpd keeps the per-command line limits in one dict on its class, cleared by every
        # constructor and raised by every EHLO (MAIL +36 for SIZE and SMTPUTF8): each session
        # gets its own, so neither other sessions nor a session built as a copy
        # (factory.ProtocolFactory) can raise a client's limit
        limit: int = self.command_size_limit  # type: ignore[attr-defined]
        self.command_size_limits = collections.defaultdict(  # type: ignore[misc]
            lambda: limit)
    busy_reply = b"421 4.7.0 Too many connections, try again later\r\n"
    chaos_service = "smtp"  # runtime faults (test stacks): smtp.<point> / lmtp.<point>

    def use_client_address(self, client: tuple[str, int],
                           local: tuple[str, int] | None) -> None:
        """A PROXY header named the client: it is the session's peer (logs, throttle)."""
        if self.session is not None:  # type: ignore[attr-defined]
            self.session.peer = client  # type: ignore[attr-defined]

    # -- runtime faults (mailstack.runtime.chaos; only when [chaos] file is set) -------------
    def _peer_ip(self) -> str:
        peer = self.session.peer if self.session else None  # type: ignore[attr-defined]
        return str(peer[0]) if peer else "?"

    async def _handle_client(self) -> None:
        engine = chaos.ENGINE
        if engine is not None:
            self._smtp_methods = {  # type: ignore[attr-defined]
                name: m if name in ("DATA", "BDAT") else self._chaotic(name, m)
                for name, m in self._smtp_methods.items()}  # type: ignore[attr-defined]
            ip = self._peer_ip()
            action = await engine.check(f"{self.chaos_service}.connect", [ip], ip)
            if action is not None:
                if action.reply:
                    self.transport.write(action.reply.encode() + b"\r\n")  # type: ignore[attr-defined]
                self.transport.close()  # type: ignore[attr-defined]
                return
        await super()._handle_client()  # type: ignore[misc]

    def _chaotic(self, name: str, method: Any) -> Any:
        point = f"{self.chaos_service}.{chaos.SMTP_POINT.get(name, name.lower())}"

        @functools.wraps(method)
        async def command(arg: str | None) -> None:
            engine = chaos.ENGINE
            action = None if engine is None else await engine.check(
                point, chaos.smtp_subjects(name, arg, self.envelope),  # type: ignore[attr-defined]
                self._peer_ip())
            if action is None:
                await method(arg)
            elif action.drop:
                self.transport.close()  # type: ignore[attr-defined]
            else:
                await self.push(action.reply)
        return command

    async def _message_fault(self) -> bool:
        """A runtime fault at DATA/BDAT, after the message: True when it answered instead."""
        engine = chaos.ENGINE
        if engine is None:
            return False
        action = await engine.check(f"{self.chaos_service}.data",
                                    list(self.envelope.rcpt_tos),  # type: ignore[attr-defined]
                                    self._peer_ip())
        if action is None:
            return False
        if action.drop:
            self.transport.close()  # type: ignore[attr-defined]
        else:
            await self.refuse_message(action.reply)
        return True

    _idle: MovingDeadline | None = None

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle timer, reset at every command and DATA chunk: a
        :class:`~mailstack.runtime.deadline.MovingDeadline` instead of a cancelled and a new
        ``call_later`` each time (aiosmtpd only ever cancels ``_timeout_handle``)."""
        idle = self._idle
        if idle is None:
            idle = self._idle = self._timeout_handle = MovingDeadline(
                self.loop, self._timeout_cb)  # type: ignore[attr-defined]
        idle.set(duration or self._timeout_duration)  # type: ignore[attr-defined]

    async def push(self, status: Any) -> None:
        """Write a reply. Replies are held back while the client has already sent its next
        command (RFC 2920 pipelining) or more lines of a multi-line reply follow, so that a
        pipelined MAIL/RCPT/DATA group costs one write instead of one per reply."""
        if isinstance(status, str):
            status = printable(status)  # aiosmtpd echoes bad input ("command ... unknown")
            if not self._plain_reply:
                status = enhance(status)
            # "replace": an argument echoed back may hold undecodable bytes (surrogates)
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii",  # type: ignore[attr-defined]
                                   "replace")
        held = self._held
        if held is None:
            held = self._held = []
        held.append(status + b"\r\n")
        if status[3:4] == b"-" or (status[:1] in b"23" and not status.startswith(b"221")
                                   and b"\n" in self._reader._buffer):  # type: ignore[attr-defined]
            return  # errors and goodbyes go out at once: the connection may close next
        self._writer.write(b"".join(held))  # type: ignore[attr-defined]
        held.clear()
        await self._writer.drain()  # type: ignore[attr-defined]

    async def _greeting_reply(self, method: Any, arg: str | None) -> None:
        """HELO/EHLO/LHLO: the name is checked first (``validate.helo_error``), so no control
        character from it reaches the Received header or a log line."""
        problem = helo_error(arg) if arg else None
        if problem is not None:
            peer = self.session.peer if self.session else None  # type: ignore[attr-defined]
            log.warning("%s: greeting refused: %s", peer[0] if peer else "?", problem)
            await self.push(f"501 5.5.4 Bad HELO/EHLO name: {problem}")
            return
        self._plain_reply = True
        try:
            await method(arg)
        finally:
            self._plain_reply = False

    async def refuse_message(self, reply: str) -> None:
        """End the transaction with ``reply`` to its message (LMTP: once per recipient)."""
        self._set_post_data_state()  # type: ignore[attr-defined]
        await self.push(reply)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """(address, parameters); ``"<>"`` for the null path; (None, None) when malformed."""
        if not arg:
            return "", ""
        split = split_path(arg)
        if split is None:
            return None, None
        path, params = split
        return (path or "<>"), params

    async def smtp_DATA(self, arg: str) -> None:
        """RFC 5321 §4.1.1.4 DATA; the reply after the final dot comes from the DATA hook."""
        if await self.check_helo_needed():  # type: ignore[attr-defined]
            return
        if await self.check_auth_needed("DATA"):  # type: ignore[attr-defined]
            return
        envelope = self.envelope  # type: ignore[attr-defined]
        if not envelope.rcpt_tos:
            await self.push("503 5.5.1 Need RCPT command first")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader: asyncio.StreamReader = self._reader  # type: ignore[attr-defined]
        data = DataReader(self.data_size_limit)  # type: ignore[attr-defined]
        while data.result is None:
            # an idle timeout closes the transport, which ends this read with b""
            chunk = await reader.read(65536)
            if not chunk:
                return  # connection lost mid-DATA: nothing is accepted
            self._reset_timeout()  # type: ignore[attr-defined]  # idle, not total, time
            rest = data.feed(chunk)
        if rest:  # pipelined commands after the final dot go back in front of the buffer
            reader._buffer[:0] = rest  # type: ignore[attr-defined]
        result = data.result
        if result.too_big or result.line_too_long:
            await self.refuse_message("552 Error: Too much mail data" if result.too_big
                                      else "500 Line too long")
            return
        envelope.content = envelope.original_content = result.data
        if chaos.ENGINE is not None and await self._message_fault():
            return
        status = await self._call_handler_hook("DATA")  # type: ignore[attr-defined]
        self._set_post_data_state()  # type: ignore[attr-defined]
        await self.push("250 OK" if status is MISSING else status)
