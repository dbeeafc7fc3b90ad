"""The mta's durable spool under ``<data_dir>/queue``.

Each entry is one or two files named by its queue id:

- ``<id>.msg``   one line of JSON (the envelope: sender, recipients, ESMTP options, client —
  and the entry's first state under ``"state"``), then the message as it will be sent (CRLF
  line ends, our Received header first). Written once.
- ``<id>.state`` per-recipient status, attempt count, next attempt, last error — written only
  once that changes from the first state (a deferral, a `queue flush`), then rewritten.

Durability contract of :meth:`Spool.put` (called before the mta answers ``250``): the entry is
written to ``.<id>.msg.tmp`` and fsynced, renamed to ``<id>.msg`` (the commit point) and the
directory is fsynced — one file and one directory fsync. Concurrent SMTP sessions share the
directory fsync and the trip to the writer thread (:meth:`Spool.aput`, a group commit).
The first state already records the first attempt (``attempts = 1``, ``next_attempt = now +
backoff``), because the runner makes that attempt at once: every attempt is on disk before any
connection is made. ``.state`` is replaced by an atomic rename without fsync: a process crash
never loses it, and after an OS crash an older or missing state only means an extra attempt,
which the mda recognises as already delivered (see ``mda/delivery.py``). A ``.state`` without
its ``.msg`` is the leftover of an aborted write and is removed by :meth:`Spool.recover`.
Entries that cannot be parsed are renamed ``*.broken`` and kept for the operator.

An entry queued for JMAP (``listener == "jmap"``) leaves, when it is done, its final
per-recipient outcome in ``outcomes/<id>.json`` (written durably before the entry is removed,
kept :data:`OUTCOME_DAYS` days): what ``EmailSubmission.deliveryStatus`` reports once the
entry is gone. Mail from SMTP clients never pays for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.fsutil import atomic_write, fsync_dir, write_fsync
from ..runtime.groupcommit import GroupCommit

log = logging.getLogger("mailstack.queue")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
OUTCOMES = "outcomes"  # subdirectory of final outcomes (entries queued for JMAP)
OUTCOME_DAYS = 7
_random = random.Random()

#: a commit slower than this (seconds) is not done in the event loop (runtime.groupcommit)
INLINE_BELOW = 0.005

def new_queue_id() -> str:
    """Sortable by time (µs since the epoch, hex) plus randomness: ``19AC1F2E5D3B47C2A9``."""
    return f"{time.time_ns() // 1000:013X}{_random.getrandbits(24):06X}"


def queue_id_time(qid: str) -> float | None:
    """When :func:`new_queue_id` made ``qid`` (seconds since the epoch); None for another id."""
    if len(qid) != 19:
        return None
    try:
        micros = int(qid[:13], 16)
    except ValueError:
        return None
    return micros / 1e6 if 10**15 < micros < 10**17 else None


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
    #: the message, while it is in memory anyway (just received); otherwise read from disk
    message: bytes | None = field(default=None, repr=False)
    #: when the runner tries it next (in memory; ``next_attempt`` is what is on disk)
    due: float = 0.0
    #: a direct delivery was tried before it was queued and may have reached the mda: the
    #: next attempt asks the mda to check its journal (XRETRY)
    tried: bool = False

    @property
    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status == PENDING]

    @property
    def done(self) -> bool:
        return not self.pending


@dataclass(frozen=True)
class NewEntry:
    """What :meth:`Spool.put` stores."""

    message: bytes
    envelope: Envelope
    qid: str | None = None
    first_attempt_at: float | None = None
    backoff: float = 60.0
    #: the recipients' state after an attempt made before the entry was written (a failed
    #: direct delivery); None: every recipient pending, never tried
    recipients: list[Recipient] | None = None


class Spool:
    """Files of the queue; blocking I/O (call from a worker thread in the event loop)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._dir = str(directory)
        self._outcomes_saved = 0
        # sparse puts and removes are done in the event loop, no thread trip (groupcommit)
        self._puts: GroupCommit[NewEntry, QueueEntry] = GroupCommit(
            self.put_many, name="queue-put", inline_below=INLINE_BELOW)
        self._removes: GroupCommit[str, bool] = GroupCommit(
            self.remove_many, name="queue-remove", inline_below=INLINE_BELOW)

    def _p(self, qid: str, ext: str) -> str:
        return f"{self._dir}/{qid}.{ext}"  # a str: this is on every message's path

    # -- writing ----------------------------------------------------------------------------
    def put(self, message: bytes, envelope: Envelope, qid: str | None = None, *,
            first_attempt_at: float | None = None, backoff: float = 60.0,
            recipients: list[Recipient] | None = None) -> QueueEntry:
        """Store a new entry durably; returns it. Raises OSError (disk full, …).

        ``first_attempt_at``: when the runner will attempt it (now, for new mail); the attempt
        is recorded in the entry's first state (see the module docstring). ``recipients``:
        their state after an attempt before the entry was written (:class:`NewEntry`).
        """
        result = self.put_many([NewEntry(message, envelope, qid, first_attempt_at, backoff,
                                         recipients)])[0]
        if isinstance(result, OSError):
            raise result
        return result

    def put_many(self, items: Sequence[NewEntry]) -> list[QueueEntry | OSError]:
        """Store new entries durably together: a file fsync each, one directory fsync for all.

        Returns, per item, its entry or the OSError that kept it out of the queue (nothing of
        a failed item is left behind).
        """
        results: list[QueueEntry | OSError] = []
        written: list[QueueEntry] = []
        for item in items:
            try:
                entry = self._write(item)
            except OSError as exc:
                results.append(exc)
                continue
            results.append(entry)
            written.append(entry)
        if written:
            try:
                fsync_dir(self.dir)
            except OSError as exc:
                for entry in written:
                    self._discard(entry.id)
                return [exc if isinstance(r, QueueEntry) else r for r in results]
        return results

    def _write(self, item: NewEntry) -> QueueEntry:
        """Write one entry and rename it into place (not yet durable: the caller fsyncs the
        directory)."""
        qid = item.qid or new_queue_id()
        envelope = item.envelope
        entry = QueueEntry(qid, envelope, [Recipient(a) for a in envelope.recipients])
        if item.first_attempt_at is not None:
            entry.attempts = 1
            entry.next_attempt = item.first_attempt_at + item.backoff
        state: dict[str, object] = {"attempts": entry.attempts,
                                    "next_attempt": entry.next_attempt}
        if item.recipients is not None:
            entry.recipients = [Recipient(**vars(r)) for r in item.recipients]
            entry.last_error = next((r.last_reply for r in entry.recipients
                                     if r.status != DELIVERED), "")
            state.update(last_error=entry.last_error,
                         recipients=[vars(r) for r in entry.recipients])
        tmp = f"{self._dir}/.{qid}.msg.tmp"
        head = {**vars(envelope), "state": state}
        line = json.dumps(head, separators=(",", ":")).encode() + b"\n"
        try:
            write_fsync(tmp, line + item.message)
            os.rename(tmp, self._p(qid, "msg"))
        except BaseException:
            self._discard(qid)
            raise
        entry.message = item.message
        return entry

    def _discard(self, qid: str) -> None:
        for path in (f"{self._dir}/.{qid}.msg.tmp", self._p(qid, "msg"), self._p(qid, "state")):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def save_state(self, entry: QueueEntry) -> None:
        state = {"attempts": entry.attempts, "next_attempt": entry.next_attempt,
                 "last_error": entry.last_error,
                 "recipients": [vars(r) for r in entry.recipients]}
        tmp = f"{self._dir}/.{entry.id}.state.tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600),
                  "wb") as fh:
            fh.write(json.dumps(state).encode())
        os.replace(tmp, self._p(entry.id, "state"))

    def save_outcome(self, entry: QueueEntry) -> None:
        """Record a finished entry's per-recipient outcome, durably, before it is removed
        (older outcomes are pruned now and then)."""
        folder = self.dir / OUTCOMES
        folder.mkdir(mode=0o700, exist_ok=True)
        atomic_write(folder / f"{entry.id}.json", json.dumps(
            {"finished": time.time(), "recipients": [vars(r) for r in entry.recipients]}
        ).encode())
        self._outcomes_saved += 1
        if self._outcomes_saved % 64 == 1:
            horizon = time.time() - OUTCOME_DAYS * 86400
            with os.scandir(folder) as it:
                for item in it:
                    with contextlib.suppress(OSError):
                        if item.stat().st_mtime < horizon:
                            os.unlink(item.path)

    def recipients(self, qid: str) -> tuple[bool, list[Recipient]] | None:
        """(still queued?, each recipient's status) of an entry queued or finished with an
        outcome; None when neither is known."""
        entry = self.load(qid)
        if entry is not None:
            return True, entry.recipients
        try:
            data = json.loads((self.dir / OUTCOMES / f"{qid}.json").read_bytes())
            return False, [Recipient(**r) for r in data["recipients"]]
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def remove(self, qid: str) -> bool:
        """Delete an entry (message first: a leftover state alone is cleaned up at start).
        Returns False when it was not there."""
        existed = False
        for ext in ("msg", "state"):
            try:
                os.unlink(self._p(qid, ext))
                existed = True
            except FileNotFoundError:
                pass
        return existed

    def remove_many(self, qids: Sequence[str]) -> list[bool]:
        return [self.remove(qid) for qid in qids]

    # -- from the event loop: concurrent calls are batched (group commit) ------------------
    async def aput(self, message: bytes, envelope: Envelope, qid: str | None = None, *,
                   first_attempt_at: float | None = None, backoff: float = 60.0,
                   recipients: list[Recipient] | None = None) -> QueueEntry:
        """:meth:`put`, committed together with concurrent ones in the spool's writer thread."""
        # an OSError that put_many returns for this entry is raised here by the group commit
        return await self._puts.submit(NewEntry(message, envelope, qid, first_attempt_at,
                                                backoff, recipients))

    async def aremove(self, qid: str) -> bool:
        """:meth:`remove`, batched with concurrent ones in a worker thread."""
        return await self._removes.submit(qid)

    def close(self) -> None:
        self._puts.close()
        self._removes.close()

    # -- reading ----------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return sorted(n[:-4] for n in os.listdir(self.dir) if n.endswith(".msg")
                      and not n.startswith("."))

    def load(self, qid: str) -> QueueEntry | None:
        try:
            with open(self._p(qid, "msg"), "rb") as fh:
                head = json.loads(fh.readline())
            first = head.pop("state", None) or {}
            envelope = Envelope(**head)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, AttributeError) as exc:
            self._quarantine(qid, f"unreadable envelope: {exc}")
            return None
        entry = QueueEntry(qid, envelope, [Recipient(a) for a in envelope.recipients],
                           recovered=True)
        try:
            state = json.loads(Path(self._p(qid, "state")).read_bytes())
        except FileNotFoundError:
            state = first  # never changed since it was queued
        except ValueError as exc:
            log.warning("%s: state file unreadable (%s); retrying every recipient", qid, exc)
            state = first
        try:
            entry.attempts = int(state.get("attempts", 0))
            entry.next_attempt = float(state.get("next_attempt", 0.0))
            entry.last_error = str(state.get("last_error", ""))
            if "recipients" in state:
                entry.recipients = [Recipient(**r) for r in state["recipients"]]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("%s: state unreadable (%s); retrying every recipient", qid, exc)
        return entry

    def read_message(self, qid: str) -> bytes:
        """The message without its envelope line."""
        raw = Path(self._p(qid, "msg")).read_bytes()
        return raw[raw.index(b"\n") + 1:]

    def load_all(self) -> list[QueueEntry]:
        out = []
        for qid in self.ids():
            entry = self.load(qid)
            if entry is not None:
                out.append(entry)
        return out

    def recover(self) -> int:
        """Remove leftovers of interrupted writes; returns how many files went."""
        removed = 0
        entries = set(self.ids())
        for name in os.listdir(self.dir):
            stale = (name.startswith(".") and name.endswith(".tmp")) or \
                (name.endswith(".state") and name[:-6] not in entries)
            if stale:
                with contextlib.suppress(OSError):
                    os.unlink(self.dir / name)
                    removed += 1
        return removed

    def _quarantine(self, qid: str, why: str) -> None:
        log.error("%s: %s; moved aside as %s.*.broken", qid, why, qid)
        for ext in ("msg", "state"):
            with contextlib.suppress(OSError):
                os.rename(self._p(qid, ext), self.dir / f"{qid}.{ext}.broken")
