"""The copy log: what makes a Maildir copy durable before ``250`` with one device flush.

A copy's file, its rename into ``new/`` and its journal line are written but not synced;
the copy's bytes are also appended to this log, and that append's ``fdatasync`` is the one
wait before ``250``. The log lives in files written full of zeros once (``0.seg``,
``1.seg``), so an append changes no file-system metadata: its ``fdatasync`` flushes a few
data blocks and the disk's cache (~0.2 ms on this project's machine) where a new file, a
rename and a journal line need the file system's own journal commit (~0.5-0.9 ms).

Every second or so the mda's checkpointer makes everything written so far durable with one
``syncfs`` and moves the log's **checkpoint** past it. After a crash of the machine, the mda
repairs, at its start, the copies of the records after the checkpoint from their bytes here
(:func:`mailstack.mda.delivery.recover_copies`).

One question needs more than the bytes: a record whose copy is nowhere. Either the machine
lost the copy's creation, or a user read and deleted (or moved) it. The **marker** answers it:
a file ``batch.<n>``, renamed to ``batch.<n+1>`` after a batch's files are created and before
they are renamed into ``new/``. File-system metadata survives a crash in the order it was
made where a journal of metadata keeps them (XFS, ext4 with a journal), and no face can touch
a copy before it is in ``new/``; so a marker that reached a batch means its files were
created, and one that did not means none of its copies became visible. The mda uses the log
only on such a file system (:func:`mailstack.runtime.fsutil.metadata_order`), and copies on
another file system than the log get no record (they are synced before ``250`` instead).

Records: a 32-byte header (magic, length, generation, batch, salt, CRC-32 of the rest) and the
body (envid, recipient, key and Maildir, length-prefixed, then the copy). Each batch starts on
a 4 KiB boundary, so a torn write never touches an earlier batch. A segment holds one
generation; the next one starts at offset 0 of the other segment once the checkpoint has
passed everything in it. A scan takes the generation and its random salt from the record at
offset 0 and stops at the first record of another generation or salt: old records left
further on, or a message crafted to look like a record, are never read as records.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..runtime.fsutil import fsync_dir, pwrite_all

SEGMENT_SIZE = 8 << 20
BLOCK = 4096
MAGIC = b"MScl"
#: magic, body length, generation, batch, salt, CRC-32 of everything after it
_HEADER = struct.Struct("<4sIQQII")
_CRC_AT = _HEADER.size - 4  # the CRC covers the header before it and the body
_FIELDS = struct.Struct("<HHHH")

Position = tuple[int, int]  # (generation, offset in its segment)


@dataclass(frozen=True)
class Record:
    """One copy the mda answered ``250`` for (or was about to)."""

    envid: str
    rcpt: str
    key: str
    root: str
    data: bytes
    batch: int
    position: Position


def encode(records: Sequence[tuple[str, str, str, str, bytes]], gen: int, batch: int,
           salt: int) -> bytes:
    """A batch's bytes, padded with zeros to the next block boundary."""
    parts: list[bytes] = []
    for envid, rcpt, key, root, data in records:
        fields = [s.encode("utf-8", "surrogateescape") for s in (envid, rcpt, key, root)]
        body = _FIELDS.pack(*map(len, fields)) + b"".join(fields) + data
        head = _HEADER.pack(MAGIC, len(body), gen, batch, salt, 0)[:_CRC_AT]
        crc = zlib.crc32(body, zlib.crc32(head))
        parts += [head, crc.to_bytes(4, "little"), body]
    raw = b"".join(parts)
    return raw + bytes(-len(raw) % BLOCK)


def record_size(data_len: int, *texts: str) -> int:
    """The room a record takes in a segment (before block padding)."""
    return _HEADER.size + _FIELDS.size + sum(len(t.encode("utf-8", "surrogateescape"))
                                              for t in texts) + data_len


def scan(segment: bytes | mmap.mmap, since: Position = (0, 0)
         ) -> tuple[list[Record], tuple[int, int] | None]:
    """The records of one segment's generation at or after ``since``, in order, and
    (generation, salt) — None for a segment never written. Stops at the first torn or foreign
    record at a block boundary; records before ``since`` are not read."""
    first = _parse(segment, 0, None) if len(segment) >= _HEADER.size else None
    if first is None:
        return [], None
    record, salt, at = first
    gen = record.position[0]
    ident = (gen, salt)
    if gen < since[0]:
        return [], ident
    records = [record] if record.position >= since else []
    if gen == since[0]:
        at = max(at, since[1])  # a batch boundary (or, after skip_pending, a record's end)
    end = len(segment)
    while at + _HEADER.size <= end:
        parsed = _parse(segment, at, ident)
        if parsed is None:
            if at % BLOCK == 0:
                break
            at += -at % BLOCK  # the zeros after a batch: the next batch starts on a boundary
            continue
        records.append(parsed[0])
        at = parsed[2]
    return records, ident


def _parse(buf: bytes | mmap.mmap, at: int, ident: tuple[int, int] | None
           ) -> tuple[Record, int, int] | None:
    """(record, salt, next offset) at ``at``, or None."""
    magic, length, gen, batch, salt, crc = _HEADER.unpack_from(buf, at)
    if magic != MAGIC or at + _HEADER.size + length > len(buf) or length < _FIELDS.size:
        return None
    if ident is not None and (gen, salt) != ident:
        return None
    start = at + _HEADER.size
    body = buf[start:start + length]
    if zlib.crc32(body, zlib.crc32(buf[at:at + _CRC_AT])) != crc:
        return None
    lens = _FIELDS.unpack_from(body)
    if sum(lens) + _FIELDS.size > length:
        return None
    texts, pos = [], _FIELDS.size
    for n in lens:
        texts.append(body[pos:pos + n].decode("utf-8", "surrogateescape"))
        pos += n
    return (Record(*texts, data=body[pos:], batch=batch, position=(gen, at)), salt,
            start + length)


class CopyLog:
    """The log in ``directory``: two preallocated segments, the marker and the checkpoint.

    Appends come from one committer at a time (the mda's group commit); :meth:`position`
    and :meth:`checkpoint` may be called from another thread.
    """

    def __init__(self, directory: Path, segment_size: int = SEGMENT_SIZE) -> None:
        self.dir = directory
        self.segment_size = segment_size
        self.max_record = segment_size // 8
        directory.mkdir(parents=True, exist_ok=True)
        self.device = os.stat(directory).st_dev
        self._fds: list[int] = []
        self._checkpoint_fd = -1
        # one writer: a second mda on this data directory must not move the checkpoint past
        # the first one's records (its start would, before it found its ports taken)
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise OSError(errno.EBUSY, "another mda is using this copy log",
                          str(directory)) from None
        sizes = {p.stat().st_size for p in self._segments() if p.exists()}
        if len(sizes) == 1 and min(sizes) >= BLOCK:  # the size it was made with stays
            segment_size = self.segment_size = sizes.pop()
            self.max_record = segment_size // 8
        made: list[Path] = []
        try:
            for path in self._segments():
                if not path.exists() or path.stat().st_size != segment_size:
                    _preallocate(path, segment_size)
                    made.append(path)
                self._fds.append(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        except OSError:
            self.close()
            for path in made:  # no half-made log left taking space
                path.unlink(missing_ok=True)
            raise
        created = bool(made)
        self.batch = self._find_marker()
        if self.batch is None:
            (directory / "batch.0").touch(0o600)
            self.batch, created = 0, True
        if created:
            fsync_dir(directory)
        self._checkpoint_fd = os.open(directory / "checkpoint",
                                      os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.checkpointed: Position = self._read_checkpoint()
        #: where the next record goes (one tuple: other threads read it whole)
        self._pos: Position = (0, 0)
        self._salt = 0
        self._newest: int | None = None  # the newest generation on disk (by pending())
        self._started = False
        #: makes every record so far durable and moves the checkpoint (set by the mda); an
        #: append that needs the other segment calls it when the checkpoint has not passed it
        self.on_full: Callable[[], None] | None = None
        self.broken = False  # an fdatasync failed: appends stop until the next start
        #: a sync of the copies failed: the checkpoint stays where it is until the next start,
        #: which rebuilds every copy since from the log (see :meth:`hold`)
        self.held = False
        #: held by the committer for a whole batch, by the checkpointer to read positions
        self.commit_lock = threading.Lock()

    @staticmethod
    def exists(directory: Path) -> bool:
        """Whether a copy log was made in ``directory`` (its records must be checked)."""
        return any(p.exists() for p in CopyLog._segments_in(directory))

    def _segments(self) -> list[Path]:
        return CopyLog._segments_in(self.dir)

    @staticmethod
    def _segments_in(directory: Path) -> list[Path]:
        return [directory / "0.seg", directory / "1.seg"]

    # --- recovery -------------------------------------------------------------------------

    def pending(self) -> list[Record]:
        """The records after the checkpoint, oldest first (what a crash may have left undone).
        The last record of an (envid, recipient) pair counts."""
        records, self._newest = _pending(self._fds, self.checkpointed)
        return records

    def begin(self) -> None:
        """Start a new generation after recovery (every record before is durable now)."""
        if self._newest is None:
            self.pending()
        assert self._newest is not None
        self._pos = (self._newest + 1, 0)
        self._salt = secrets.randbits(32)
        self.checkpoint(self._pos)
        self._started = True

    # --- appending ------------------------------------------------------------------------

    def mark(self) -> int:
        """Move the marker to the next batch and return its number: call it after the batch's
        files exist and before any of them is renamed into ``new/``."""
        nxt = self.batch + 1
        os.rename(self.dir / f"batch.{self.batch}", self.dir / f"batch.{nxt}")
        self.batch = nxt
        return nxt

    def append(self, records: Sequence[tuple[str, str, str, str, bytes]], batch: int) -> None:
        """Append ``(envid, rcpt, key, maildir, copy)`` records and fdatasync them: once this
        returns, the copies can be rebuilt after a crash."""
        if not self._started or self.broken:
            raise OSError("the copy log is not open for appends")
        gen, offset = self._pos
        raw = encode(records, gen, batch, self._salt)
        if len(raw) > self.room():  # the committer keeps a batch within it (a bug otherwise)
            raise OSError(errno.EFBIG, "a batch bigger than the copy log takes at once")
        if offset + len(raw) > self.segment_size:
            gen, offset = self._next_segment()
            raw = encode(records, gen, batch, self._salt)
        fd = self._fds[gen % 2]
        try:
            pwrite_all(fd, raw, offset)
            os.fdatasync(fd)
        except OSError:
            self.broken = True
            raise
        self._pos = (gen, offset + len(raw))

    def fits(self, size: int) -> bool:
        return size <= self.max_record

    def room(self) -> int:
        """The most one batch may take (records and padding): half a segment. Written past
        its segment's end it would grow the file, and the next start, finding a segment of
        the wrong size, would write it full of zeros before reading it."""
        return self.segment_size // 2

    def _next_segment(self) -> Position:
        """Go on in the other segment, once the checkpoint has passed what it holds (every
        generation before the current one)."""
        gen = self._pos[0]
        if self.checkpointed < (gen, 0) and self.on_full is not None:
            self.on_full()  # everything so far made durable; the checkpoint moves past it
        if self.checkpointed < (gen, 0):
            self.broken = True  # each copy is synced on its own until the next start
            raise OSError("the copy log is full: its checkpoint did not move")
        self._pos = (gen + 1, 0)
        self._salt = secrets.randbits(32)
        return self._pos

    # --- checkpoint -----------------------------------------------------------------------

    def position(self) -> Position:
        """Where the next record goes: every record before it has been appended."""
        return self._pos

    def hold(self) -> None:
        """A sync of the copies failed (an I/O error: written-back data may be lost): take no
        more copies and never move the checkpoint again in this process: the checkpointer
        syncs the copies since it one by one (``delivery.resync_copies``), and the next start
        checks them again against the log."""
        self.held = self.broken = True

    def checkpoint(self, position: Position) -> None:
        """Every record before ``position`` has its copy durable: a later start skips them.
        Written durably, and never backwards (another process may move it too, see
        :func:`skip_pending`)."""
        if self.held:
            return
        fd = self._checkpoint_fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = _parse_checkpoint(os.pread(fd, 64, 0))
            if position > current:
                os.pwrite(fd, f"{position[0]} {position[1]}".ljust(39).encode() + b"\n", 0)
                os.fdatasync(fd)
                current = position
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self.checkpointed = max(self.checkpointed, current)

    def _read_checkpoint(self) -> Position:
        return _parse_checkpoint(os.pread(self._checkpoint_fd, 64, 0))

    def _find_marker(self) -> int | None:
        numbers = [int(p.name[6:]) for p in self.dir.glob("batch.*") if p.name[6:].isdigit()]
        return max(numbers) if numbers else None

    def close(self) -> None:
        others = [fd for fd in (self._checkpoint_fd, self._lock_fd) if fd >= 0]
        for fd in [*self._fds, *others]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds, self._checkpoint_fd, self._lock_fd = [], -1, -1


def _parse_checkpoint(raw: bytes) -> Position:
    try:
        gen, offset = raw.split()
        return int(gen), int(offset)
    except ValueError:
        return (0, 0)


def _preallocate(path: Path, size: int) -> None:
    """Write ``path`` full of zeros and fsync it (blocks really written, not just reserved:
    an append into them then changes no metadata)."""
    tmp = path.with_name(path.name + ".new")
    st = os.statvfs(path.parent)
    if st.f_bavail * st.f_frsize < 8 * size:  # never the last free space of a small disk
        raise OSError(errno.ENOSPC, f"less than {8 * size >> 20} MiB free for two log files "
                      f"of {size >> 10} KiB", str(path.parent))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        zeros, left = bytes(1 << 20), size
        while left:
            left -= os.write(fd, zeros[:min(left, len(zeros))])
        os.fsync(fd)
    except OSError:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _pending(fds: Sequence[int], since: Position) -> tuple[list[Record], int]:
    """The last record of each (envid, recipient) pair at or after ``since`` in the segments
    open at ``fds``, oldest first, and the newest generation seen."""
    found: list[Record] = []
    newest = since[0]
    for fd in fds:
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as segment:  # only the pages read
            records, ident = scan(segment, since)
        if ident is not None:
            newest = max(newest, ident[0])
        found += records
    found.sort(key=lambda r: r.position)
    last = {(r.envid, r.rcpt): r for r in found}
    return sorted(last.values(), key=lambda r: r.position), newest


def read_pending(directory: Path) -> list[Record]:
    """:meth:`CopyLog.pending` of the log in ``directory`` without opening it for writing
    (another process, the mda, may have it open): for tools and tests."""
    with contextlib.ExitStack() as stack:
        fds = []
        for path in CopyLog._segments_in(directory):
            fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            stack.callback(os.close, fds[-1])
        return _pending(fds, _parse_checkpoint((directory / "checkpoint").read_bytes()))[0]


def skip_pending(directory: Path) -> None:
    """Move the checkpoint of the log in ``directory`` past every record in it, so that no
    later start restores them (a test stack's ``reset()`` empties the mailboxes). Only when
    nothing is being delivered."""
    if not (directory / "checkpoint").exists():
        return
    end: Position = (0, 0)
    for i in (0, 1):
        with contextlib.suppress(OSError, ValueError), open(directory / f"{i}.seg", "rb") as fh, \
                mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as segment:
            records, _ = scan(segment)
            if records:
                last = records[-1]
                size = record_size(len(last.data), last.envid, last.rcpt, last.key, last.root)
                end = max(end, (last.position[0], last.position[1] + size))
    fd = os.open(directory / "checkpoint", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if end > _parse_checkpoint(os.pread(fd, 64, 0)):
            os.pwrite(fd, f"{end[0]} {end[1]}".ljust(39).encode() + b"\n", 0)
            os.fdatasync(fd)
    finally:
        os.close(fd)
