"""COMPRESS=DEFLATE (RFC 4978): raw deflate (RFC 1951) both ways after the tagged OK.

Input is inflated lazily, at most :data:`CHUNK` octets at a time and only when the session
reads, so every limit on input (line length, literal and command size, the idle timeout)
applies to decompressed octets: a small "decompression bomb" costs the server no more memory
than the same octets sent plainly. Output is deflated per write with a sync flush, so each
response reaches the client whole.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from .session import AUTH, SELECTED, Bad, No, Session, command
from .wire import Parser

CHUNK = 64 * 1024  # compressed octets read, and inflated octets produced, per step
LEVEL = 6
WBITS = -15  # raw deflate with a 32 KiB window (RFC 4978 section 4)


class CompressionError(ConnectionError):
    """The client's deflate stream is corrupt: the connection cannot go on."""


class InflatingReader(asyncio.StreamReader):
    """A StreamReader whose data is the inflated stream of ``source``.

    The standard reader waits for a protocol to feed it; this one pulls instead: whenever a
    read needs more data, one step of at most CHUNK octets is inflated from ``source``."""

    def __init__(self, source: asyncio.StreamReader, limit: int) -> None:
        super().__init__(limit=limit)
        self._source = source
        self._inflater = zlib.decompressobj(WBITS)
        self._pulling = False

    async def _wait_for_data(self, func_name: str) -> None:  # the StreamReader hook
        if self._pulling:
            raise RuntimeError(f"{func_name}() called while another read is waiting")
        self._pulling = True
        try:
            while not self._eof:
                inflater = self._inflater
                if inflater.unconsumed_tail:
                    raw = inflater.unconsumed_tail
                else:
                    raw = await self._source.read(CHUNK)
                    if not raw:
                        self.feed_eof()
                        return
                try:
                    out = inflater.decompress(raw, CHUNK)
                except zlib.error:
                    raise CompressionError("corrupt deflate stream") from None
                if out:
                    self.feed_data(out)
                if inflater.eof:  # the client ended its deflate stream: nothing can follow
                    self.feed_eof()
                if out or self._eof:
                    return
        finally:
            self._pulling = False


class DeflatingWriter:
    """Stands in for the session's StreamWriter: what is written goes out deflated."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._deflater = zlib.compressobj(LEVEL, zlib.DEFLATED, WBITS)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        out = self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH)
        self._writer.write(out)

    async def drain(self) -> None:
        await self._writer.drain()

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    def close(self) -> None:
        self._writer.close()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.get_extra_info(name, default)

    @property
    def transport(self) -> asyncio.BaseTransport:
        return self._writer.transport


def start(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int
          ) -> tuple[InflatingReader, DeflatingWriter]:
    """The compressed replacements for a session's reader and writer."""
    return InflatingReader(reader, limit), DeflatingWriter(writer)


# -- the command --------------------------------------------------------------------------------


@command("COMPRESS", AUTH, SELECTED)
async def cmd_compress(s: Session, tag: str, p: Parser, uid: bool) -> None:
    p.sp()
    mechanism = p.atom().upper()
    p.end()
    if isinstance(s.writer, DeflatingWriter):
        raise No("compression is already active", "COMPRESSIONACTIVE")
    if mechanism != "DEFLATE":
        raise Bad("unknown compression mechanism")
    s.send(f"{tag} OK DEFLATE active\r\n".encode())
    await s.flush()
    limit = getattr(s.reader, "_limit", 64 * 1024)  # the listener's line limit
    reader, writer = start(s.reader, s.writer, limit)
    s.reader = s.lines.reader = reader
    s.writer = writer  # type: ignore[assignment]  # a StreamWriter's face
