"""An LMTP client (RFC 2033) with per-recipient replies, pipelining and connection reuse.

aiosmtplib speaks SMTP only (one reply after DATA), so the mta uses this small client to hand
local mail to the mda. Commands are pipelined (RFC 2920) when the server offers PIPELINING;
with CHUNKING too (RFC 3030), MAIL, RCPT and ``BDAT <size> LAST`` with the message go out in one
write and every reply comes back in one read.

The connection is a bare :class:`asyncio.Protocol` whose bytes go straight into the sans-I/O
:class:`~mailstack.smtp.replyreader.ReplyReader`, which bounds what a broken or hostile peer
can make it hold (a line, a reply) and turns anything that is not a reply into LMTPError.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from ..runtime import unixsock
from ..runtime.deadline import MovingDeadline
from ..smtp.reply import Reply
from ..smtp.replyreader import RawReply, ReplyError, ReplyReader


class LMTPError(Exception):
    """The connection failed or the server spoke nonsense; the whole attempt is temporary."""


@dataclass(frozen=True)
class LMTPResult:
    """Replies for every recipient, in the order given."""

    replies: list[Reply]


def dot_stuff(data: bytes) -> bytes:
    """CRLF-terminated, dot-stuffed DATA payload including the final ``.``."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class _Replies(asyncio.Protocol):
    """The connection's receiving side: replies are parsed as bytes arrive (no stream reader,
    no task per read) and wait in order until :meth:`LMTPConnection._reply` takes them."""

    def __init__(self) -> None:
        self.reader = ReplyReader()
        self.transport: asyncio.Transport | None = None
        self.error: LMTPError | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: while a transaction runs, when it times out (LMTPConnection.deliver sets it)
        self.deadline = MovingDeadline(asyncio.get_running_loop(), self._timed_out)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except ReplyError as exc:
            self._fail(LMTPError(f"malformed reply from mda: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        if self.reader.replies:
            self._wake()

    def eof_received(self) -> bool:
        self._fail(LMTPError("mda closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline.cancel()
        self._fail(LMTPError(f"mda connection lost: {exc}" if exc else
                             "mda closed the connection"))

    def _timed_out(self) -> None:
        self._fail(LMTPError("mda timed out"))
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: LMTPError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> RawReply:
        """The next reply, once it is complete; LMTPError when the connection failed first."""
        while not self.reader.replies:
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.reader.replies.popleft()


class LMTPConnection:
    def __init__(self, replies: _Replies, timeout: float) -> None:
        assert replies.transport is not None  # set by connection_made
        self.transport: asyncio.Transport = replies.transport
        self._replies = replies
        self.timeout = timeout
        self.extensions: set[str] = set()
        self.broken = False

    @classmethod
    async def open(cls, host: str | Path, port: int, helo: str,
                   timeout: float = 60.0) -> LMTPConnection:
        """Connect to ``host``:``port``, or to the unix socket ``host`` when it is a Path."""
        where = f"unix:{host}" if isinstance(host, Path) else f"{host}:{port}"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                if isinstance(host, Path):
                    sock = await unixsock.connect(host)
                    _, replies = await loop.create_unix_connection(_Replies, sock=sock)
                else:
                    _, replies = await loop.create_connection(_Replies, host, port)
        except (OSError, TimeoutError) as exc:
            raise LMTPError(f"cannot connect to the mda at {where}: {exc}") from None
        conn = cls(replies, timeout)
        try:
            async with asyncio.timeout(timeout):
                greeting = await conn._reply()
                if greeting.code != 220:
                    raise LMTPError(f"mda greeting: {greeting}")
                conn.transport.write(f"LHLO {helo}\r\n".encode())
                lhlo = await replies.next()
        except TimeoutError:
            conn.close()
            raise LMTPError("mda timed out") from None
        except BaseException:  # LMTPError, or cancelled by a caller's timeout
            conn.close()
            raise
        if lhlo.code != 250:
            conn.close()
            raise LMTPError(f"LHLO refused: {lhlo.lines[-1]}")
        conn.extensions = {text.split()[0].upper() for text in lhlo.lines[1:] if text}
        return conn

    async def _reply(self) -> Reply:
        raw = await self._replies.next()
        return Reply.parse(raw.code, raw.text)

    async def deliver(self, envid: str, sender: str, rcpts: list[str], data: bytes, *,
                      body8: bool = False, smtputf8: bool = False,
                      retry: bool = True) -> LMTPResult:
        """One transaction; a reply per recipient. Raises LMTPError (connection is broken).

        ``retry``: this entry may have reached the mda before (ask it to check its journal).
        """
        deadline = self._replies.deadline
        deadline.set(self.timeout)
        try:
            return await self._deliver(envid, sender, rcpts, data, body8, smtputf8, retry)
        except BaseException:  # LMTPError (a timeout among them), or cancelled by a caller
            self.broken = True
            raise
        finally:
            deadline.clear()

    async def _deliver(self, envid: str, sender: str, rcpts: list[str], data: bytes,
                       body8: bool, smtputf8: bool, retry: bool) -> LMTPResult:
        params = f" ENVID={envid}" + (" XRETRY" if retry else "")
        if body8:
            params += " BODY=8BITMIME"
        if smtputf8 and "SMTPUTF8" in self.extensions:
            params += " SMTPUTF8"
        cmds = [f"MAIL FROM:<{sender}>{params}\r\n"] + [f"RCPT TO:<{r}>\r\n" for r in rcpts]
        pipelining = "PIPELINING" in self.extensions
        if pipelining and "CHUNKING" in self.extensions:
            return await self._deliver_chunked(cmds, data)
        w = self.transport
        if pipelining:
            w.write("".join(cmds).encode() + b"DATA\r\n")
        else:
            w.write(cmds[0].encode())
        mail = await self._reply()
        if not mail.ok:
            if pipelining:  # drain the replies to the pipelined RCPTs and DATA
                for _ in range(len(rcpts) + 1):
                    await self._reply()
            else:
                await self._rset()
            return LMTPResult([mail] * len(rcpts))
        rcpt_replies: list[Reply] = []
        for cmd in cmds[1:]:
            if not pipelining:
                w.write(cmd.encode())
            rcpt_replies.append(await self._reply())
        accepted = [i for i, r in enumerate(rcpt_replies) if r.ok]
        if not pipelining and accepted:
            w.write(b"DATA\r\n")
        if pipelining or accepted:
            go = await self._reply()
        else:
            await self._rset()
            return LMTPResult(rcpt_replies)
        if go.code != 354:
            if accepted:
                await self._rset()
            return LMTPResult([go if r.ok else r for r in rcpt_replies])
        w.write(dot_stuff(data))
        final: list[Reply] = list(rcpt_replies)
        for i in accepted:
            final[i] = await self._reply()
        return LMTPResult(final)

    async def _deliver_chunked(self, cmds: list[str], data: bytes) -> LMTPResult:
        """MAIL, RCPTs and the message as one ``BDAT LAST`` chunk, pipelined in one write."""
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        self.transport.write(b"".join([*(c.encode() for c in cmds),
                                    b"BDAT %d LAST\r\n" % len(data), data]))
        mail = await self._reply()
        rcpt_replies = [await self._reply() for _ in cmds[1:]]
        accepted = [i for i, r in enumerate(rcpt_replies) if r.ok]
        if not mail.ok or not accepted:
            await self._reply()  # the BDAT's single refusal: no transaction
            return LMTPResult([mail] * len(rcpt_replies) if not mail.ok else rcpt_replies)
        final: list[Reply] = list(rcpt_replies)
        for i in accepted:
            final[i] = await self._reply()
        return LMTPResult(final)

    async def _rset(self) -> None:
        self.transport.write(b"RSET\r\n")
        await self._reply()

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            self.transport.write(b"QUIT\r\n")
            await asyncio.wait_for(self._reply(), 2)
        self.close()

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(Exception):
            self.transport.close()


class LMTPPool:
    """Reuses up to ``size`` idle connections to one LMTP server.

    16, not 8: more transactions in flight give the mda bigger group commits and keep a burst
    of SMTP sessions from starving delivery (alternating runs: 825 → 1,083 delivered/s at 50
    SMTP clients, 932 → 1,082 at 10; medians of 3).
    """

    def __init__(self, host: str | Path, port: int, helo: str, size: int = 16,
                 timeout: float = 60.0) -> None:
        self.host, self.port, self.helo, self.timeout = host, port, helo, timeout
        self._idle: list[LMTPConnection] = []
        self._sem = asyncio.Semaphore(size)

    async def deliver(self, envid: str, sender: str, rcpts: list[str], data: bytes, *,
                      body8: bool = False, smtputf8: bool = False,
                      retry: bool = True) -> LMTPResult:
        async with self._sem:
            conn = self._idle.pop() if self._idle else None
            if conn is not None:
                try:
                    result = await conn.deliver(envid, sender, rcpts, data, body8=body8,
                                                smtputf8=smtputf8, retry=retry)
                except LMTPError:
                    conn.close()
                    conn = None  # the idle connection may have been closed: one fresh try,
                    retry = True  # flagged: the broken one may have got as far as delivery
                except BaseException:  # cancelled (a caller's timeout): the stream is unusable
                    conn.close()
                    raise
                else:
                    self._idle.append(conn)
                    return result
            conn = await LMTPConnection.open(self.host, self.port, self.helo, self.timeout)
            try:
                result = await conn.deliver(envid, sender, rcpts, data, body8=body8,
                                            smtputf8=smtputf8, retry=retry)
            except BaseException:
                conn.close()
                raise
            self._idle.append(conn)
            return result

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.quit()
