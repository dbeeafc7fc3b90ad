"""Maildir++ on disk: the one implementation the mda, imap and pop3 daemons share.

Layout of a user's mailbox (``<data_dir>/mail/<domain>/<local>/``)::

    cur/ new/ tmp/              the INBOX
    .Sent/ .Drafts/ .Trash/ .Junk/   folders (each a Maildir with a ``maildirfolder`` file)
    subscriptions               subscribed folder names, one a line (Dovecot's format)

Invariants:
- A message becomes visible only by ``rename(tmp/X, new/X)`` after the file is fsynced, and the
  directory is fsynced after the rename (Maildir spec + durability).
- Files hold LF line ends (the Maildir norm). Names carry ``,S=<bytes on disk>`` and
  ``,W=<bytes with CRLF line ends>`` (Dovecot's convention) so protocol sizes need no read.
- Flags live in the info suffix ``:2,<letters in ASCII order>``; the part before ``:`` (the key)
  never changes for the life of a message, so it is a stable identifier (POP3 UIDL, UID lists).
"""

from __future__ import annotations

import itertools
import os
import random
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..runtime.fsutil import fsync_dir, write_all

SPECIAL_FOLDERS = ("Sent", "Drafts", "Trash", "Junk")
INFO_SEP = ":2,"
_counter = itertools.count(1)
_random = random.Random()  # uniqueness comes from time+pid+counter; this only adds spread
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"
_SIZE_RE = re.compile(r",S=(\d+)")
_VSIZE_RE = re.compile(r",W=(\d+)")


class MaildirError(Exception):
    """A mailbox that cannot be used (bad name, missing, …)."""


def to_lf(data: bytes) -> bytes:
    """Wire format (CRLF) → disk format (LF)."""
    return data.replace(b"\r\n", b"\n")


def to_crlf(data: bytes) -> bytes:
    """Disk format (LF) → wire format (CRLF); CRLF already present is kept."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def crlf_size(disk: bytes) -> int:
    """Size of ``disk`` once its bare LFs become CRLF."""
    return len(disk) + disk.count(b"\n") - disk.count(b"\r\n")


def lf_pieces(data: bytes | memoryview, piece: int = 1 << 20) -> Iterator[bytes]:
    """:func:`to_lf` of ``data`` in pieces of about ``piece`` octets, cut after a LF where the
    piece has one, so that no CR LF of the wire is split (count sizes with :class:`PieceSizes`)."""
    if len(data) <= piece:
        yield to_lf(bytes(data))
        return
    view = memoryview(data)
    pos, n = 0, len(view)
    while pos < n:
        chunk = bytes(view[pos:pos + piece])
        if pos + len(chunk) < n:
            cut = chunk.rfind(b"\n") + 1
            if cut:
                chunk = chunk[:cut]
            elif chunk.endswith(b"\r") and len(chunk) > 1:  # a line longer than a piece:
                # keep the CR with the LF that may follow it
                chunk = chunk[:-1]
        pos += len(chunk)
        yield to_lf(chunk)


class PieceSizes:
    """Size and CRLF size (``W=``) of disk text seen piece by piece (a CR at the end of one
    piece and a LF at the start of the next are one CRLF)."""

    def __init__(self) -> None:
        self.size = self.vsize = 0
        self._cr = False

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        self.vsize += crlf_size(piece) - int(self._cr and piece[:1] == b"\n")
        self._cr = piece[-1:] == b"\r"


def unique_name(size: int, vsize: int) -> str:
    """A Maildir unique name: ``<sec>.M<usec>P<pid>Q<n>R<rand>.<host>,S=<size>,W=<vsize>``."""
    now = time.time()
    sec, usec = int(now), int((now % 1) * 1_000_000)
    rand = f"{_random.getrandbits(32):08x}"
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}R{rand}.{_HOST},S={size},W={vsize}"


def key_size(key: str) -> int | None:
    """The size on disk a unique name carries (``,S=``), or None."""
    m = _SIZE_RE.search(key)
    return int(m.group(1)) if m else None


_ORDER_RE = re.compile(r"(\d+)\.M(\d+)P(\d+)Q(\d+)")


def delivery_order(key: str) -> tuple[int, int, int, str]:
    """Sort key for unique names: second, microsecond and per-process counter as numbers
    (as strings ``M100000`` would sort before ``M99999``), then the name."""
    m = _ORDER_RE.match(key)
    if m:
        return (int(m.group(1)), int(m.group(2)), int(m.group(4)), key)
    head = key.split(".", 1)[0]
    return (int(head) if head.isdigit() else 0, 0, 0, key)


def parse_flags(filename: str) -> str:
    _, sep, info = filename.partition(INFO_SEP)
    return info if sep else ""


def message_from_name(subdir: str, filename: str) -> MaildirMessage | None:
    """The message a directory entry of ``new``/``cur`` stands for (None for dot files).

    For callers that list the directories themselves (e.g. to reuse what they parsed before).
    """
    return _msg_from_name(subdir, filename)


@dataclass(frozen=True)
class MaildirMessage:
    """One message file as found by a scan."""

    key: str  # unique name without the info suffix: stable for the message's life
    subdir: str  # "new" or "cur"
    filename: str
    flags: str  # Maildir flag letters, sorted

    def path(self, root: Path) -> Path:
        return root / self.subdir / self.filename

    @property
    def size(self) -> int | None:
        return key_size(self.key)

    @property
    def vsize(self) -> int | None:
        m = _VSIZE_RE.search(self.key)
        return int(m.group(1)) if m else None

    @property
    def mtime_key(self) -> tuple[int, int, int, str]:
        """Sort key: delivery order (see :func:`delivery_order`)."""
        return delivery_order(self.key)


def _msg_from_name(subdir: str, filename: str) -> MaildirMessage | None:
    if filename.startswith("."):
        return None
    key = filename.split(INFO_SEP, 1)[0] if subdir == "cur" else filename
    flags = "".join(sorted(parse_flags(filename))) if subdir == "cur" else ""
    return MaildirMessage(key, subdir, filename, flags)


class Maildir:
    """One Maildir (the INBOX or a Maildir++ folder)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Maildir({str(self.root)!r})"

    # -- structure --------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.root / "cur").is_dir() and (self.root / "new").is_dir()

    def create(self, *, folder: bool = False) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        if folder:
            marker = self.root / "maildirfolder"
            if not marker.exists():
                marker.touch(mode=0o600)
        fsync_dir(self.root)
        fsync_dir(self.root.parent)

    def folder(self, name: str) -> Maildir:
        """The Maildir++ folder ``name`` (``"INBOX"`` is this Maildir); dots separate levels."""
        if name.upper() == "INBOX":
            return self
        return Maildir(self.root / ("." + validate_folder_name(name)))

    def list_folders(self) -> list[str]:
        """Folder names (without the leading dot), INBOX excluded."""
        out = []
        for entry in os.scandir(self.root):
            if (entry.name.startswith(".") and entry.name not in (".", "..")
                    and entry.is_dir() and (Path(entry.path) / "cur").is_dir()):
                out.append(entry.name[1:])
        return sorted(out)

    # -- messages ---------------------------------------------------------------------------
    def scan(self) -> list[MaildirMessage]:
        """Every message in new/ and cur/, oldest first."""
        msgs = list(self._iter())
        msgs.sort(key=lambda m: m.mtime_key)
        return msgs

    def _iter(self) -> Iterator[MaildirMessage]:
        for subdir in ("new", "cur"):
            try:
                names = os.listdir(self.root / subdir)
            except FileNotFoundError:
                continue
            for name in names:
                msg = _msg_from_name(subdir, name)
                if msg is not None:
                    yield msg

    def find(self, key: str) -> MaildirMessage | None:
        """Locate a message by key (it may have moved to cur/ or changed flags)."""
        new = self.root / "new" / key
        if new.exists():
            return MaildirMessage(key, "new", key, "")
        cur = self.root / "cur"
        for name in (key, key + INFO_SEP):
            if (cur / name).exists():
                return MaildirMessage(key, "cur", name, "")
        prefix = key + INFO_SEP
        try:
            for name in os.listdir(cur):
                if name.startswith(prefix):
                    return _msg_from_name("cur", name)
        except FileNotFoundError:
            pass
        return None

    def read(self, msg: MaildirMessage) -> bytes:
        """The message as stored (LF line ends); follows a concurrent flag rename once."""
        try:
            return msg.path(self.root).read_bytes()
        except FileNotFoundError:
            moved = self.find(msg.key)
            if moved is None:
                raise
            return moved.path(self.root).read_bytes()

    def set_flags(self, msg: MaildirMessage, flags: str) -> MaildirMessage:
        """Move the message into cur/ with ``flags``; returns where it is now."""
        flags = "".join(sorted(set(flags)))
        target = f"{msg.key}{INFO_SEP}{flags}"
        if msg.subdir == "cur" and msg.filename == target:
            return msg
        src = msg.path(self.root)
        try:
            os.rename(src, self.root / "cur" / target)
        except FileNotFoundError:
            moved = self.find(msg.key)
            if moved is None:
                raise
            os.rename(moved.path(self.root), self.root / "cur" / target)
        return MaildirMessage(msg.key, "cur", target, flags)

    def add_flags(self, msg: MaildirMessage, letters: str) -> MaildirMessage | None:
        """Add flag ``letters`` keeping flags another writer set meanwhile; None when gone.

        ``set_flags`` replaces the flag set, so a caller holding a stale ``msg`` would undo a
        concurrent change; this re-reads the current name when ``msg``'s file has moved.
        """
        current: MaildirMessage | None = msg
        root = os.fspath(self.root)  # plain strings: this runs once per POP3 RETR
        for _ in range(3):  # each retry follows one concurrent rename
            if current is None:
                return None
            wanted = "".join(sorted(set(current.flags) | set(letters)))
            target = f"{current.key}{INFO_SEP}{wanted}"
            if current.subdir == "cur" and current.filename == target:
                return current
            try:
                os.rename(f"{root}/{current.subdir}/{current.filename}", f"{root}/cur/{target}")
                return MaildirMessage(current.key, "cur", target, wanted)
            except FileNotFoundError:
                current = self.find(current.key)
        return current

    def remove(self, msg: MaildirMessage) -> bool:
        """Delete a message; False when it was already gone."""
        try:
            os.unlink(msg.path(self.root))
            return True
        except FileNotFoundError:
            moved = self.find(msg.key)
            if moved is None:
                return False
            os.unlink(moved.path(self.root))
            return True

    def deliver(self, data: bytes | memoryview, *, flags: str = "",
                sync: bool = True) -> MaildirMessage:
        """Store ``data`` (CRLF or LF line ends) durably; returns the new message.

        tmp/ → fsync → rename into new/ (or cur/ when flags are given) → fsync the directory.
        A big message is converted and written piece by piece (:func:`lf_pieces`), so storing
        it needs no second copy of it in memory; its name gets its sizes once it is written.
        """
        tmp = self.root / "tmp" / unique_name(0, 0)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        sizes = PieceSizes()
        try:
            for piece in lf_pieces(data):
                sizes.add(piece)
                write_all(fd, piece)
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quiet(tmp)
            raise
        os.close(fd)
        key = unique_name(sizes.size, sizes.vsize)
        if flags:
            flags = "".join(sorted(set(flags)))
            msg = MaildirMessage(key, "cur", f"{key}{INFO_SEP}{flags}", flags)
        else:
            msg = MaildirMessage(key, "new", key, "")
        try:
            os.rename(tmp, msg.path(self.root))
        except BaseException:
            _unlink_quiet(tmp)
            raise
        if sync:
            fsync_dir(self.root / msg.subdir)
        return msg


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_FOLDER_PART_RE = re.compile(r"[^\x00-\x1f\x7f/\\]+")


def validate_folder_name(name: str) -> str:
    """Check a Maildir++ folder name (levels separated by '.'); raises MaildirError.

    Refuses anything that could leave the user's Maildir: empty levels (leading, trailing or
    double dots), '/', '\\', control characters, and the names '.' and '..'.
    """
    if not name or len(name.encode("utf-8", "surrogateescape")) > 254:  # "." + name: NAME_MAX
        raise MaildirError("folder name is empty or too long")
    for part in name.split("."):
        if not part or not _FOLDER_PART_RE.fullmatch(part) or part in (".", ".."):
            raise MaildirError(f"bad folder name {name!r}")
    return name


def mailbox_path(data_dir: Path, address: str) -> Path:
    """``<data_dir>/mail/<domain>/<local>`` for a validated, lower-case account address."""
    local, _, domain = address.lower().rpartition("@")
    if not local or not domain or "/" in address or "\\" in address or local.startswith(".") \
            or domain.startswith(".") or ".." in address or "\x00" in address:
        raise MaildirError(f"bad address for a mailbox: {address!r}")
    return data_dir / "mail" / domain / local


def create_user_mailbox(data_dir: Path, address: str) -> Maildir:
    """Make the INBOX and the special-use folders (subscribed) for an account."""
    box = Maildir(mailbox_path(data_dir, address))
    box.create()
    for name in SPECIAL_FOLDERS:
        box.folder(name).create(folder=True)
    subs = box.root / "subscriptions"
    if not subs.exists():
        subs.write_text("".join(f"{n}\n" for n in SPECIAL_FOLDERS))
    return box


def open_user_mailbox(data_dir: Path, address: str) -> Maildir:
    """The account's INBOX Maildir, created (with folders) if it is missing."""
    box = Maildir(mailbox_path(data_dir, address))
    if not box.exists():
        box = create_user_mailbox(data_dir, address)
    return box
