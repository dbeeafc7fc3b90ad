"""The mda's LMTP listener: :class:`~mailstack.smtp.lmtpsession.LMTPSession` on an asyncio
protocol, delivering through the daemon's handler.

A connection's bytes go to its session as they arrive; the replies to everything they hold
(a pipelined MAIL, RCPTs and ``BDAT … LAST`` with the message) go out in one write. A lone
message the handler can deliver at once (it would be committed in the event loop anyway) is
delivered there and then, its replies in the same write; any other is delivered in a task of
its own, one at a time per connection, and input that arrives meanwhile waits in the session
(reading pauses beyond :data:`PAUSE_AT` octets), so memory stays bounded by the session's
limits.

The listener was aiosmtpd's ``LMTP`` class until its per-command path (a stream reader, a
coroutine per command, a timer reset per command, logging arguments sanitised before the
level is checked) was measured at 70-110 µs of each hand-off from the mta; the mta's public
SMTP listeners stay on aiosmtpd. README, "Eighth SMTP round", has the figures.

Test faults (:mod:`mailstack.runtime.chaos`, only with ``[chaos] file``): ``lmtp.connect``,
``lmtp.ehlo``/``mail``/``rcpt`` before those commands, ``lmtp.data`` once a message is in,
``lmtp.reply`` after its copies are committed and before their replies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

from ..runtime import chaos
from ..runtime.deadline import MovingDeadline
from ..runtime.netserver import CountedProtocol, transport_ip
from ..smtp.lmtpsession import Command, Deliver, Item, LMTPSession, Transaction
from ..smtp.reply import printable

log = logging.getLogger("mailstack.mda")

#: octets of input held while a delivery runs before the connection stops being read
PAUSE_AT = 256 * 1024

#: delivers a transaction's message; one reply per recipient, in order
Delivery = Callable[[Transaction], Awaitable[list[str]]]
#: the same done at once when it can be (a lone message), else None
DeliveryNow = Callable[[Transaction], "list[str] | None"]


class _LMTPConnection(asyncio.Protocol):
    """One LMTP connection (the I/O around its session)."""

    def __init__(self, hostname: str, recipient: Callable[[str], str | None],
                 deliver: Delivery, deliver_now: DeliveryNow | None, max_message: int,
                 idle_timeout: float) -> None:
        self.session = LMTPSession(hostname, recipient, max_message)
        self._deliver = deliver
        self._deliver_now = deliver_now
        self._idle_timeout = idle_timeout
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None  # a delivery or a fault in progress
        self._paused = False
        self._idle = MovingDeadline(self._loop, self._idle_expired)
        self._peer = "unknown"

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's: duck-typed
        self._peer = transport_ip(transport)
        if self._idle_timeout:
            self._idle.set(self._idle_timeout)
        if chaos.ENGINE is not None:
            self._start(self._connect_fault())
            return
        transport.write(self.session.greeting().encode() + b"\r\n")

    def data_received(self, data: bytes) -> None:
        if self._idle_timeout and self.session.in_message:  # a message's octets: progress
            self._idle.set(self._idle_timeout)
        self.session.feed(data)
        if self._task is None:
            self._run()
        elif self.session.buffered > PAUSE_AT and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return False  # the transport closes; a delivery under way still completes

    def connection_lost(self, exc: Exception | None) -> None:
        self._idle.cancel()
        self.transport = None

    # -- the session ------------------------------------------------------------------------
    def _run(self) -> None:
        """Apply every complete item of the input; one write for their replies."""
        session, out = self.session, []
        while self.transport is not None and not session.closing:
            item = session.next_item()
            if item is None:
                break
            if self._idle_timeout:  # a whole command (bytes of one never finished are not)
                self._idle.set(self._idle_timeout)
            if chaos.ENGINE is not None and _fault_point(item) is not None:
                self._write(out)
                self._start(self._command_fault(item))
                return
            result = session.handle(item)
            if isinstance(result, Deliver):
                try:
                    now = None if chaos.ENGINE is not None or self._deliver_now is None else \
                        self._deliver_now(result.transaction)
                except Exception:  # a bug: this connection ends, the daemon goes on
                    log.exception("%s: lmtp delivery failed", self._peer)
                    self._close()
                    return
                if now is None:
                    self._write(out)
                    self._start(self._deliver_message(result.transaction))
                    return
                session.delivered()
                result = now
            out += result
        self._write(out)
        if session.closing and self.transport is not None:
            self.transport.close()

    def _start(self, work: Awaitable[None]) -> None:
        self._task = self._loop.create_task(self._then_continue(work))

    async def _then_continue(self, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:  # a bug: this connection ends, the daemon goes on
            log.exception("%s: lmtp session failed", self._peer)
            if self.transport is not None:
                self.transport.close()
        finally:
            self._task = None
        if self.transport is None:
            return
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._run()

    async def _deliver_message(self, tx: Transaction) -> None:
        try:
            engine = chaos.ENGINE
            if engine is not None:
                action = await engine.check("lmtp.data", list(tx.rcpts), self._peer)
                if action is not None:
                    if action.drop:
                        self._close()
                    else:
                        self._write([action.reply] * len(tx.rcpts))
                    return
            replies = await self._deliver(tx)
            if engine is not None:
                action = await engine.check("lmtp.reply", list(tx.rcpts), self._peer)
                if action is not None and action.drop:
                    self._close()
                    return
            self._write(replies)
        finally:
            self.session.delivered()

    async def _connect_fault(self) -> None:
        assert chaos.ENGINE is not None
        action = await chaos.ENGINE.check("lmtp.connect", [self._peer], self._peer)
        if action is None:
            self._write([self.session.greeting()])
            return
        if action.reply:
            self._write([action.reply])
        self._close()

    async def _command_fault(self, item: Item) -> None:
        assert chaos.ENGINE is not None and isinstance(item, Command)
        point = _fault_point(item)
        subjects = chaos.smtp_subjects(item.verb, item.arg, self.session.transaction)
        action = await chaos.ENGINE.check(f"lmtp.{point}", subjects, self._peer)
        if action is None:
            result = self.session.handle(item)
            assert not isinstance(result, Deliver)  # commands before a message never deliver
            self._write(result)
        elif action.drop:
            self._close()
        else:
            self._write([action.reply])

    # -- output -----------------------------------------------------------------------------
    def _write(self, replies: list[str]) -> None:
        if replies and self.transport is not None and not self.transport.is_closing():
            # a control character echoed from the input (an address in a refusal) would start
            # a reply line of its own: shown as "?"
            text = "\r\n".join(map(printable, replies))
            self.transport.write((text + "\r\n").encode("utf-8", "replace"))

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _idle_expired(self) -> None:
        """Close a connection that has sent no whole command (nor message octets) for the idle
        timeout, as aiosmtpd does: a client trickling a line that never ends is cut off. Not
        while one of its messages is being delivered: then it waits another timeout."""
        if self.transport is None:
            return
        if self._task is not None:
            self._idle.set(self._idle_timeout)
            return
        log.info("%s: lmtp connection idle for %gs: closed", self._peer, self._idle_timeout)
        self._write(["421 4.4.2 Error: timeout exceeded"])
        self.transport.close()


def _fault_point(item: Item) -> str | None:
    """The test-fault point checked before ``item`` (None: none; messages are checked at
    ``lmtp.data`` once they are in)."""
    if not isinstance(item, Command):
        return None
    return chaos.SMTP_POINT.get(item.verb, item.verb.lower()) if item.verb != "DATA" else None


class LMTPServerProtocol(CountedProtocol, _LMTPConnection):
    """The listener's protocol: counted against the daemon's connection limits first
    (:class:`~mailstack.runtime.netserver.CountedProtocol`)."""

    busy_reply = b"421 4.7.0 Too many connections, try again later\r\n"
