"""Messages whose direct delivery may have reached the mda but that could not be queued.

A direct delivery that fails (the mda timed out, the connection broke, some recipient was
refused) may still have left copies in the Maildirs: the mda commits a copy before it answers.
Normally the queue takes the message and its retry carries ``XRETRY``, so the mda's journal
finds those copies under the queue id. When the queue write fails too (a full disk), the
client gets a ``4xx`` and sends the message again later, in a new transaction with a new
queue id: the journal would not know it, and the copies made the first time would be doubled.

So the mta remembers such a message here — a digest of its envelope and octets as the client
sent them, and the queue id it had — and gives the client's retry that same queue id, marked as
a retry: the mda then answers ``250`` for the copies it has (``already delivered``) and writes
only the missing ones. In memory only (the disk is what failed): bounded in size and age; after
an mta restart, or once an entry is older than :data:`KEEP` or pushed out by newer ones, a
retry is a new message again.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

#: how long a message is remembered (clients retry within minutes to hours)
KEEP = 24 * 3600.0
#: at most this many messages (a few hundred octets each)
MOST = 4096


def digest(sender: str, recipients: list[str], raw: bytes) -> bytes:
    """What identifies a client's retry of a message: envelope and octets as received."""
    h = hashlib.sha256()
    for part in (sender, *recipients):
        h.update(part.lower().encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    h.update(raw)
    return h.digest()


class Unsettled:
    """Digest → queue id of messages a direct attempt may have delivered, unqueued."""

    def __init__(self, keep: float = KEEP, most: int = MOST) -> None:
        self.keep, self.most = keep, most
        self._ids: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._ids)

    def remember(self, key: bytes, qid: str) -> None:
        self._ids[key] = (qid, time.monotonic())
        self._ids.move_to_end(key)
        while len(self._ids) > self.most:
            self._ids.popitem(last=False)

    def take(self, key: bytes) -> str | None:
        """The queue id a retry of this message must reuse (forgotten here: it is queued or
        delivered now, or remembered again), or None."""
        found = self._ids.pop(key, None)
        if found is None or time.monotonic() - found[1] > self.keep:
            return None
        return found[0]
