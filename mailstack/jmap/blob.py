"""Blobs (RFC 8620 6): uploads kept per account, messages and their parts by id.

- an Email's ``blobId`` is its email id (the whole message);
- a body part's is ``<emailid>_<partId>`` (decoded content);
- an upload's is ``G`` + 40 hex digits of its SHA-256, a file under the account's
  ``jmap-blobs/`` (fsynced; pruned a day after its upload, RFC 8620 6.1 allows an hour).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from ..store.maildir import to_crlf
from . import message as msgview
from .core import Call, MethodError, method

BLOB_DIR = "jmap-blobs"
KEEP = 86400.0
_UPLOAD_RE = re.compile(r"G[0-9a-f]{40}")
_PART_RE = re.compile(r"(M[0-9a-f]{24})_(\d{1,4})")


def blob_dir(root: Path) -> Path:
    return root / BLOB_DIR


def store_upload(root: Path, data: bytes) -> str:
    """Keep an uploaded blob; returns its id."""
    upload = Upload(root)
    try:
        upload.write(data)
        return upload.finish()
    finally:
        upload.abort()


class Upload:
    """A blob written as it arrives (bounded memory), then named by its digest:
    :meth:`write` pieces (blocking, small), :meth:`finish` (fsync and rename) or
    :meth:`abort`."""

    def __init__(self, root: Path) -> None:
        self.dir = blob_dir(root)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.tmp = self.dir / f".upload-{os.getpid()}-{secrets.token_hex(8)}"
        self.fh = open(self.tmp, "xb")  # noqa: SIM115  (closed by finish or abort)
        os.chmod(self.tmp, 0o600)
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, piece: bytes) -> None:
        self.fh.write(piece)
        self.digest.update(piece)
        self.size += len(piece)

    def finish(self) -> str:
        bid = "G" + self.digest.hexdigest()[:40]
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        path = self.dir / bid
        if path.exists():
            os.utime(path)
            os.unlink(self.tmp)
        else:
            os.rename(self.tmp, path)
        _prune(self.dir)
        return bid

    def abort(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def _prune(d: Path) -> None:
    cutoff = time.time() - KEEP
    try:
        with os.scandir(d) as it:
            for entry in it:
                try:
                    # an upload in progress keeps its mtime fresh; a crashed one goes too
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                except OSError:
                    pass
    except OSError:
        pass


def blob_bytes(account: Any, bid: str) -> bytes | None:
    """The octets of a blob this account may see, or None."""
    if not isinstance(bid, str):
        return None
    if _UPLOAD_RE.fullmatch(bid):
        try:
            fd = os.open(blob_dir(account.root) / bid, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            return fh.read()
    idx = account.index()
    locs = idx.copies.get(bid)
    if locs:
        raw = account.read(locs[0])  # stored with LF line ends; a message blob is RFC 5322
        return to_crlf(raw) if raw is not None else None
    m = _PART_RE.fullmatch(bid)
    if m and m.group(1) in idx.copies:
        locs = idx.copies[m.group(1)]
        p = msgview.parsed(m.group(1), lambda: account.read(locs[0]))
        part = p.part(m.group(2)) if p is not None else None
        if part is not None:
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    return None


@method("Blob/copy")
def blob_copy(call: Call) -> dict[str, Any]:
    raise MethodError("fromAccountNotFound", "there is one account per login")
