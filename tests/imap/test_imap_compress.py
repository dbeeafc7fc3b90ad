"""COMPRESS=DEFLATE (RFC 4978) over a real socket with zlib as the client's deflate: the stream
is raw deflate both ways after the tagged OK, COMPRESS twice is NO [COMPRESSIONACTIVE], and the
input limits apply to decompressed octets (a decompression bomb gets the same answer as plain
input, in bounded memory)."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

from tests.imap.conftest import PASSWORD, USER, Raw, message, ok


class Deflated:
    """The client side of a compressed IMAP stream: zlib raw deflate, a sync flush per send."""

    def __init__(self, raw: Raw) -> None:
        self.reader, self.writer = raw.reader, raw.writer
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self.buf = bytearray()
        self.wire_in = 0  # compressed octets received

    async def send(self, data: bytes) -> None:
        self.writer.write(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))
        await self.writer.drain()

    async def _more(self, timeout: float) -> None:
        chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not chunk:
            raise ConnectionError("closed")
        self.wire_in += len(chunk)
        self.buf += self.inflate.decompress(chunk)

    async def line(self, timeout: float = 20) -> bytes:
        while b"\n" not in self.buf:
            await self._more(timeout)
        end = self.buf.index(b"\n") + 1
        out = bytes(self.buf[:end])
        del self.buf[:end]
        return out

    async def cmd(self, tag: str, text: str, timeout: float = 20) -> list[bytes]:
        await self.send(f"{tag} {text}\r\n".encode())
        lines = []
        while True:
            line = await self.line(timeout)
            while line.rstrip(b"\r\n").endswith(b"}") and b"{" in line:
                size = int(line.rstrip(b"\r\n").rsplit(b"{", 1)[1][:-1])
                while len(self.buf) < size:
                    await self._more(timeout)
                line += bytes(self.buf[:size])
                del self.buf[:size]
                line += await self.line(timeout)
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines


async def compressed(imap) -> tuple[Raw, Deflated]:
    c = await Raw.connect(imap)
    ok(await c.cmd("L", f"LOGIN {USER} {PASSWORD}"), "L")
    assert b"COMPRESS=DEFLATE" in ok(await c.cmd("c", "CAPABILITY"), "c")[0]
    ok(await c.cmd("z", "COMPRESS DEFLATE"), "z")
    return c, Deflated(c)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # peak resident size
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_compressed_session_works_both_ways(imap) -> None:
    for n in range(20):
        imap.deliver(message(f"compressed {n}", body="the same words again and again\n" * 50))
    _, z = await compressed(imap)
    ok(await z.cmd("s", "SELECT INBOX"), "s")
    lines = ok(await z.cmd("f", "FETCH 1:* (UID FLAGS BODY.PEEK[HEADER])"), "f")
    assert sum(1 for x in lines if b" FETCH (UID " in x) == 20, lines[:3]
    assert b"Subject: compressed 19" in lines[-2], lines[-2]
    inflated = sum(len(x) for x in lines)
    assert z.wire_in * 3 < inflated, (z.wire_in, inflated)  # it really is compressed
    r = await z.cmd("a", "COMPRESS DEFLATE")
    assert r[-1].startswith(b"a NO [COMPRESSIONACTIVE]"), r
    lines = ok(await z.cmd("b", "FETCH 20 BODY[TEXT]"), "b")
    assert b"again and again" in lines[0]
    lines = ok(await z.cmd("o", "LOGOUT"), "o")
    assert lines[0].startswith(b"* BYE")


async def test_compress_needs_login_and_a_known_mechanism(imap) -> None:
    c = await Raw.connect(imap)
    r = await c.cmd("a", "COMPRESS DEFLATE")
    assert r[-1].startswith(b"a BAD"), r
    ok(await c.cmd("L", f"LOGIN {USER} {PASSWORD}"), "L")
    for tag, command in (("b", "COMPRESS LZW"), ("c", "COMPRESS"), ("d", "COMPRESS DEFLATE x")):
        r = await c.cmd(tag, command)
        assert r[-1].startswith(f"{tag} BAD".encode()), r
    ok(await c.cmd("e", "NOOP"), "e")  # still uncompressed


async def test_decompression_bomb_hits_the_plain_input_limits(imap) -> None:
    assert imap.daemon is not None
    _, z = await compressed(imap)
    before = peak_rss_kib(imap.daemon.pid)
    # 256 MiB of one line: ~250 KiB compressed
    chunk = b"a" * (1 << 20)
    bomb = [z.out.compress(b"bomb NOOP ")]
    bomb += [z.out.compress(chunk) for _ in range(256)]
    z.writer.write(b"".join(bomb))  # all at once: each read of it inflates to a lot
    await z.send(b"\r\n")
    line = await z.line(timeout=60)
    assert line.startswith(b"bomb BAD") and b"too long" in line, line
    ok(await z.cmd("n", "NOOP"), "n")  # the stream is still in step
    # a literal over the limit, announced in few compressed octets, is refused the same way
    await z.send(b"big APPEND INBOX {999999999}\r\n")
    line = await z.line()
    assert line.startswith(b"big BAD [TOOBIG]") or line.startswith(b"big NO"), line
    grown = peak_rss_kib(imap.daemon.pid) - before
    assert grown < 24 * 1024, f"the daemon grew by {grown} KiB"
    other = await Raw.connect(imap)  # everyone else is still served
    ok(await other.cmd("L", f"LOGIN {USER} {PASSWORD}"), "L")


async def test_corrupt_deflate_stream_is_a_plain_disconnect(imap) -> None:
    assert imap.daemon is not None
    c, _ = await compressed(imap)
    c.writer.write(b"\xff\xff\xff\xff not deflate at all \r\n")
    await c.writer.drain()
    assert await asyncio.wait_for(c.reader.read(), 10) == b""  # the server closed it
    await imap.daemon.wait_log("corrupt deflate stream")
    assert imap.daemon.errors() == [], imap.log()
    other = await Raw.connect(imap)
    ok(await other.cmd("L", f"LOGIN {USER} {PASSWORD}"), "L")


async def test_compress_over_tls_with_idle(imap) -> None:
    c = await Raw.connect(imap, tls=True)
    ok(await c.cmd("L", f"LOGIN {USER} {PASSWORD}"), "L")
    ok(await c.cmd("z", "COMPRESS DEFLATE"), "z")
    z = Deflated(c)
    ok(await z.cmd("s", "SELECT INBOX"), "s")
    await z.send(b"i IDLE\r\n")
    assert (await z.line()).startswith(b"+ ")
    imap.deliver(message("while idling"))
    assert await z.line() == b"* 1 EXISTS\r\n"
    await z.send(b"DONE\r\n")
    while not (line := await z.line()).startswith(b"i "):
        pass
    assert line.startswith(b"i OK"), line
    lines = ok(await z.cmd("f", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"), "f")
    assert b"while idling" in lines[0]
