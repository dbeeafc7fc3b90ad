"""The mta's durable spool under ``<data_dir>/queue``.

Each entry is three files named by its queue id:

- ``<id>.msg``   the message as it will be sent (CRLF line ends, our Received header first);
- ``<id>.env``   the envelope (sender, recipients, ESMTP options, client) as JSON — written once;
- ``<id>.state`` per-recipient status, attempt count, next attempt, last error — rewritten.

Durability contract of :meth:`Spool.put` (called before the mta answers ``250``): the message
and the envelope are fsynced, the envelope is renamed into place (its presence is the commit
point), and the directory is fsynced. A ``.msg`` without ``.env`` is an aborted write and is
removed by :meth:`Spool.recover`. ``.state`` is replaced by an atomic rename without fsync: a
process crash never loses it, and after an OS crash an older or missing state only means an
extra attempt, which the mda recognises as already delivered (see ``mda/delivery.py``).
Entries whose files cannot be parsed are renamed ``*.broken`` and kept for the operator.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..fsutil import fsync_dir, write_fsync

log = logging.getLogger("mailstack.queue")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_random = random.Random()


def new_queue_id() -> str:
    """Sortable by time (µs since the epoch, hex) plus randomness: ``19AC1F2E5D3B47C2A9``."""
    return f"{time.time_ns() // 1000:013X}{_random.getrandbits(24):06X}"


@dataclass
class Recipient:
    address: str
    status: str = PENDING
    attempts: int = 0
    last_reply: str = ""
    #: the MTA (or mda) that gave ``last_reply``: Remote-MTA of a bounce
    remote: str = ""
    #: a failure notice for this recipient was queued (or not owed: null sender)
    notified: bool = False


@dataclass
class Envelope:
    """What the client told us; never changes once queued."""

    sender: str
    recipients: list[str]
    size: int
    body: str = "7BIT"  # 7BIT or 8BITMIME
    smtputf8: bool = False
    created: float = field(default_factory=time.time)
    client_ip: str = ""
    client_helo: str = ""
    auth_user: str = ""
    tls: str = ""
    listener: str = ""
    is_bounce: bool = False


@dataclass
class QueueEntry:
    id: str
    envelope: Envelope
    recipients: list[Recipient]
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    #: loaded from disk at start-up: it may have been attempted by a previous process
    recovered: bool = False

    @property
    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status == PENDING]

    @property
    def done(self) -> bool:
        return not self.pending


class Spool:
    """Files of the queue; blocking I/O (call from a worker thread in the event loop)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _p(self, qid: str, ext: str) -> Path:
        return self.dir / f"{qid}.{ext}"

    # -- writing ----------------------------------------------------------------------------
    def put(self, message: bytes, envelope: Envelope, qid: str | None = None) -> QueueEntry:
        """Store a new entry durably; returns it. Raises OSError (disk full, …)."""
        qid = qid or new_queue_id()
        msg_path, env_path = self._p(qid, "msg"), self._p(qid, "env")
        tmp_env = self.dir / f".{qid}.env.tmp"
        write_fsync(msg_path, message)
        try:
            write_fsync(tmp_env, json.dumps(asdict(envelope)).encode())
            os.rename(tmp_env, env_path)
            fsync_dir(self.dir)
        except BaseException:
            for p in (tmp_env, env_path, msg_path):
                with contextlib.suppress(OSError):
                    os.unlink(p)
            raise
        return QueueEntry(qid, envelope, [Recipient(a) for a in envelope.recipients])

    def save_state(self, entry: QueueEntry) -> None:
        state = {"attempts": entry.attempts, "next_attempt": entry.next_attempt,
                 "last_error": entry.last_error,
                 "recipients": [asdict(r) for r in entry.recipients]}
        tmp = self.dir / f".{entry.id}.state.tmp"
        with open(tmp, "wb") as fh:
            fh.write(json.dumps(state).encode())
        os.replace(tmp, self._p(entry.id, "state"))

    def remove(self, qid: str) -> bool:
        """Delete an entry (envelope first, so a crash never leaves a half entry that looks
        complete). Returns False when it was not there."""
        existed = False
        for ext in ("env", "state", "msg"):
            try:
                os.unlink(self._p(qid, ext))
                existed = True
            except FileNotFoundError:
                pass
        return existed

    # -- reading ----------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return sorted(n[:-4] for n in os.listdir(self.dir) if n.endswith(".env")
                      and not n.startswith("."))

    def load(self, qid: str) -> QueueEntry | None:
        try:
            env_raw = json.loads(self._p(qid, "env").read_bytes())
            envelope = Envelope(**env_raw)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            self._quarantine(qid, f"unreadable envelope: {exc}")
            return None
        entry = QueueEntry(qid, envelope, [Recipient(a) for a in envelope.recipients],
                           recovered=True)
        try:
            state = json.loads(self._p(qid, "state").read_bytes())
            entry.attempts = int(state["attempts"])
            entry.next_attempt = float(state["next_attempt"])
            entry.last_error = str(state.get("last_error", ""))
            entry.recipients = [Recipient(**r) for r in state["recipients"]]
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("%s: state file unreadable (%s); retrying every recipient", qid, exc)
        return entry

    def read_message(self, qid: str) -> bytes:
        return self._p(qid, "msg").read_bytes()

    def load_all(self) -> list[QueueEntry]:
        out = []
        for qid in self.ids():
            entry = self.load(qid)
            if entry is not None:
                out.append(entry)
        return out

    def recover(self, older_than: float = 3600.0) -> int:
        """Remove leftovers of interrupted writes; returns how many files went."""
        now = time.time()
        removed = 0
        envs = set(self.ids())
        for name in os.listdir(self.dir):
            path = self.dir / name
            stale = False
            if name.startswith(".") and name.endswith(".tmp"):
                stale = name.endswith(".env.tmp") or name.endswith(".state.tmp")
            elif name.endswith(".msg") and name[:-4] not in envs:
                with contextlib.suppress(OSError):
                    stale = now - path.stat().st_mtime > older_than
            elif name.endswith(".state") and name[:-6] not in envs:
                stale = True
            if stale:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    removed += 1
        return removed

    def _quarantine(self, qid: str, why: str) -> None:
        log.error("%s: %s; moved aside as %s.*.broken", qid, why, qid)
        for ext in ("env", "state", "msg"):
            with contextlib.suppress(OSError):
                os.rename(self._p(qid, ext), self.dir / f"{qid}.{ext}.broken")
