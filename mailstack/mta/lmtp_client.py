"""An LMTP client (RFC 2033) with per-recipient replies, pipelining and connection reuse.

aiosmtplib speaks SMTP only (one reply after DATA), so the mta uses this small client to hand
local mail to the mda. Commands are pipelined (RFC 2920) when the server offers PIPELINING;
with CHUNKING too (RFC 3030), MAIL, RCPT and ``BDAT <size> LAST`` with the message go out in one
write and every reply comes back in one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..runtime import unixsock
from ..smtp.reply import Reply

_LINE = re.compile(rb"(\d{3})([ -])(.*)")


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


class LMTPConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: set[str] = set()
        self.broken = False

    @classmethod
    async def open(cls, host: str | Path, port: int, helo: str,
                   timeout: float = 60.0) -> LMTPConnection:
        """Connect to ``host``:``port``, or to the unix socket ``host`` when it is a Path."""
        where = f"unix:{host}" if isinstance(host, Path) else f"{host}:{port}"
        try:
            connect = unixsock.open_connection(host) if isinstance(host, Path) \
                else asyncio.open_connection(host, port)
            reader, writer = await asyncio.wait_for(connect, timeout)
        except (OSError, TimeoutError) as exc:
            raise LMTPError(f"cannot connect to the mda at {where}: {exc}") from None
        conn = cls(reader, writer, timeout)
        try:
            async with asyncio.timeout(timeout):
                greeting = await conn._reply()
                if greeting.code != 220:
                    raise LMTPError(f"mda greeting: {greeting}")
                conn.writer.write(f"LHLO {helo}\r\n".encode())
                lines = await conn._reply_lines()
        except TimeoutError:
            conn.close()
            raise LMTPError("mda timed out") from None
        except BaseException:  # LMTPError, or cancelled by a caller's timeout
            conn.close()
            raise
        if lines[-1][0] != 250:
            conn.close()
            raise LMTPError(f"LHLO refused: {lines[-1][1]}")
        conn.extensions = {text.split()[0].upper() for _, text in lines[1:] if text}
        return conn

    async def _reply_lines(self) -> list[tuple[int, str]]:
        """One reply; the caller bounds the time (one timeout per exchange, not per line)."""
        lines: list[tuple[int, str]] = []
        try:
            while True:
                raw = await self.reader.readline()
                if not raw:
                    raise LMTPError("mda closed the connection")
                m = _LINE.match(raw.rstrip(b"\r\n"))
                if not m:
                    raise LMTPError(f"malformed reply from mda: {raw[:80]!r}")
                lines.append((int(m.group(1)), m.group(3).decode("utf-8", "replace")))
                if m.group(2) == b" ":
                    return lines
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise LMTPError(f"mda connection lost: {exc}") from None

    async def _reply(self) -> Reply:
        lines = await self._reply_lines()
        code = lines[-1][0]
        return Reply.parse(code, " ".join(t for _, t in lines))

    async def deliver(self, envid: str, sender: str, rcpts: list[str], data: bytes, *,
                      body8: bool = False, smtputf8: bool = False,
                      retry: bool = True) -> LMTPResult:
        """One transaction; a reply per recipient. Raises LMTPError (connection is broken).

        ``retry``: this entry may have reached the mda before (ask it to check its journal).
        """
        try:
            async with asyncio.timeout(self.timeout):
                return await self._deliver(envid, sender, rcpts, data, body8, smtputf8, retry)
        except TimeoutError:
            self.broken = True
            raise LMTPError("mda timed out") from None
        except BaseException:
            self.broken = True
            raise

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
        w = self.writer
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
        self.writer.write(b"".join([*(c.encode() for c in cmds),
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
        self.writer.write(b"RSET\r\n")
        await self._reply()

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self._reply(), 2)
        self.close()

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(Exception):
            self.writer.close()


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
