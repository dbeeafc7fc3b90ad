"""Per-folder cache of message metadata: header block, ENVELOPE, BODY and BODYSTRUCTURE.

Messages never change, so what was computed once stays true for a key. The cache lives in
memory (one per folder per process) and in ``mailstack-cache`` in the folder, written
atomically after a FETCH added to it; it is only a cache: a missing or damaged file is ignored
and rebuilt from the Maildir. With it, a header or ENVELOPE fetch of a large folder reads no
message files once warm.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..store.ingest import NotAMessage, open_message
from ..store.maildir import to_crlf
from . import mime

log = logging.getLogger("mailstack.imap.cache")
CACHE_FILE = "mailstack-cache"
MAGIC = b"MSC2\n"  # 2: envelopes keep source routes, names leave comments out
_REC = struct.Struct(">HIIII")
_NONE = 0xFFFFFFFF
HEADER, ENVELOPE, BODY, BODYSTRUCTURE = range(4)
SAVE_AFTER = 200  # additions that trigger a write of the cache file …
SAVE_EVERY = 30.0  # … or seconds since the last write, when anything was added
MAX_HEADER = 1 << 20
#: a message's four fields; a record is an exact tuple of bytes and None, which the garbage
#: collector stops tracking, so 10,000 cached messages add nothing to a full collection (as
#: lists they added 10,000 objects to walk, one stall of the event loop each time)
Record = tuple[bytes | None, bytes | None, bytes | None, bytes | None]
_EMPTY: Record = (None, None, None, None)
KEEP_HEADER = 64 * 1024  # a header longer than this is not kept in the cache (memory)


class FolderCache:
    """Metadata of the messages of one folder, keyed by Maildir key."""

    _registry: OrderedDict[Path, FolderCache] = OrderedDict()
    registry_size = 64  # folders whose metadata stays in memory (least recently used go)
    _lock = threading.Lock()

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / CACHE_FILE
        self.records: dict[str, Record] | None = None
        self.dirty = 0
        self.mutex = threading.Lock()  # FETCH may fill the cache from worker threads
        self.saved_at = 0.0

    @classmethod
    def for_root(cls, root: Path) -> FolderCache:
        with cls._lock:
            inst = cls._registry.get(root)
            if inst is None:
                inst = cls._registry[root] = cls(root)
                while len(cls._registry) > cls.registry_size:
                    cls._registry.popitem(last=False)  # it is on disk anyway
            else:
                cls._registry.move_to_end(root)
            return inst

    # -- persistence ------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.records is not None

    def load(self) -> None:
        """Read the file now (in a worker thread: 10,000 records take 10-30 ms to parse)."""
        self._load()

    def _load(self) -> dict[str, Record]:
        if self.records is not None:
            return self.records
        with self.mutex:
            if self.records is None:
                self.records = self._read()
        return self.records

    def _read(self) -> dict[str, Record]:
        records: dict[str, Record] = {}
        try:
            data = self.path.read_bytes()
        except OSError:
            data = b""
        if data.startswith(MAGIC):
            view = memoryview(data)
            pos = len(MAGIC)
            try:
                while pos < len(data):
                    klen, *lens = _REC.unpack_from(data, pos)
                    pos += _REC.size
                    key = bytes(view[pos:pos + klen]).decode()
                    pos += klen
                    fields: list[bytes | None] = []
                    for n in lens:
                        if n == _NONE:
                            fields.append(None)
                        else:
                            fields.append(bytes(view[pos:pos + n]))
                            pos += n
                    if pos > len(data):
                        raise ValueError("truncated")
                    records[key] = tuple(fields)  # type: ignore[assignment]
            except (struct.error, ValueError, UnicodeDecodeError):
                log.info("ignoring damaged cache %s", self.path)
                records = {}
        return records

    def serialize(self, live_keys: set[str] | None = None) -> bytes | None:
        """The file contents when something was added (keys no longer present dropped)."""
        if not self.dirty or self.records is None:
            return None
        with self.mutex:
            return self._serialize(live_keys)

    def _serialize(self, live_keys: set[str] | None) -> bytes | None:
        assert self.records is not None
        if live_keys is not None:
            for key in [k for k in self.records if k not in live_keys]:
                del self.records[key]
        parts = [MAGIC]
        for key, fields in self.records.items():
            kb = key.encode()
            parts.append(_REC.pack(len(kb), *(_NONE if f is None else len(f) for f in fields)))
            parts.append(kb)
            parts.extend(f for f in fields if f is not None)
        self.dirty = 0
        return b"".join(parts)

    def due(self) -> bool:
        """Worth writing now: many additions, or some additions and a while since the last."""
        return self.dirty >= SAVE_AFTER or (self.dirty > 0
                                             and time.monotonic() - self.saved_at > SAVE_EVERY)

    def save(self, live_keys: set[str] | None = None) -> None:
        """Serialize and write (run it in a worker thread: a big folder takes milliseconds)."""
        data = self.serialize(live_keys)
        if data is not None:
            self.saved_at = time.monotonic()
            self.write(data)

    def write(self, data: bytes) -> None:
        """Replace the cache file atomically (may run in a worker thread)."""
        tmp = self.path.with_name(f".{CACHE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write cache %s: %s", self.path, exc)

    # -- lookups ----------------------------------------------------------------------------
    def get(self, key: str, field: int) -> bytes | None:
        rec = self._load().get(key)
        return rec[field] if rec is not None else None

    def put(self, key: str, field: int, value: bytes) -> None:
        records = self._load()
        with self.mutex:
            rec = list(records.get(key, _EMPTY))
            rec[field] = value
            records[key] = tuple(rec)  # type: ignore[assignment]
            self.dirty += 1

    def header(self, key: str, path: str | Path) -> bytes | None:
        """The message header (CRLF, with its blank line), read from the start of the file."""
        cached = self.get(key, HEADER)
        if cached is not None:
            return cached
        header = read_header(path)
        if header is None:
            return None
        if len(header) <= KEEP_HEADER:  # a huge one is read again when asked for
            self.put(key, HEADER, header)
        return header

    def envelope(self, key: str, path: str | Path) -> bytes | None:
        cached = self.get(key, ENVELOPE)
        if cached is not None:
            return cached
        header = self.header(key, path)
        if header is None:
            return None
        env = mime.envelope_from_header(header)
        self.put(key, ENVELOPE, env)
        return env


_BLANK_RE = re.compile(rb"\n\r?\n")


def read_header(path: str | Path) -> bytes | None:
    """Read only as much of a message file as its header needs; None when the file is gone.

    Gives the same bytes as :func:`mime.split_header` on the whole message."""
    try:
        fd = open_message(str(path))  # no symlink followed, no FIFO waited on
    except NotAMessage:
        return None
    try:
        data = os.read(fd, 8192)  # most headers fit: one system call, no buffered reader
        if data.startswith((b"\n", b"\r\n")):
            return b"\r\n"
        m = _BLANK_RE.search(data)
        if m:
            return to_crlf(data[:m.end()])
        pieces, size = [data], len(data)  # a long header: pieces joined once (no regrowth)
        while size <= MAX_HEADER:
            more = os.read(fd, 65536)
            if not more:
                break
            tail = pieces[-1][-2:]  # a blank line may span two pieces
            m = _BLANK_RE.search(tail + more)
            if m:
                pieces.append(more[:m.end() - len(tail)])
                break
            pieces.append(more)
            size += len(more)
        return to_crlf(b"".join(pieces))
    finally:
        os.close(fd)
