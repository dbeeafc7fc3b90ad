"""JMAP push over EventSource (RFC 8620 7.3), driven by the store's folder watcher.

One :class:`AccountHub` per account in the process, however many streams it has: it watches
the account's folders (inotify), and on a change syncs the store once (a delivery becomes
indexed), asks which types changed since the state it last announced, and hands one
StateChange to every stream of the account. A stream is then a queue slot and a waiting
response: thousands of idle streams cost no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from ..store import watch
from ..store.account import AccountStore, ChangesUnavailable, StoreError
from ..store.maildir import Maildir

log = logging.getLogger("mailstack.http.push")
TYPES = ("Mailbox", "Email", "Thread")
RESCAN = 30.0  # seconds between looks for new folders to watch


class _Mark(asyncio.Event):
    """A folder's wake-up: notes which mailbox changed, then wakes the hub."""

    def __init__(self, hub_event: asyncio.Event, woken: set[str], name: str) -> None:
        super().__init__()
        self.hub_event, self.woken, self.name = hub_event, woken, name

    def set(self) -> None:
        self.woken.add(self.name)
        self.hub_event.set()


class AccountHub:
    def __init__(self, root: Path, account_id: str, hubs: dict[Path, AccountHub]) -> None:
        self.root = root
        self.account_id = account_id
        self.hubs = hubs
        self.streams: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.state = 0
        self.event: asyncio.Event | None = None
        self.ready = asyncio.Event()  # watching, and the state known: changes are seen

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=4)
        self.streams.add(q)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.streams.discard(q)
        if not self.streams and self.task is not None:
            self.task.cancel()
            self.task = None
            if self.hubs.get(self.root) is self:
                del self.hubs[self.root]

    def _folders(self) -> dict[str, Path]:
        """Mailbox name → its Maildir folder."""
        return {"INBOX": self.root, **{n: self.root / f".{n}"
                                       for n in Maildir(self.root).list_folders()}}

    def _current(self) -> int:
        store = AccountStore.open(self.root)
        store.mailboxes()  # syncs every folder (a first look creates the mailbox rows)
        return store.highest_modseq()

    def _changed_types(self, names: set[str]) -> tuple[int, dict[str, str]]:
        """(new state, {type: state}) of the types changed since the last announcement,
        after syncing the folders ``names`` (a delivery gets indexed)."""
        store = AccountStore.open(self.root)
        for name in names:
            with contextlib.suppress(StoreError):
                store.sync(name)
        top = store.highest_modseq()
        if top == self.state:
            return top, {}
        changed = {}
        for kind in TYPES:
            try:
                ch = store.changes(kind, self.state, 1)
            except ChangesUnavailable:
                changed[kind] = str(top)
                continue
            if ch.created or ch.updated or ch.destroyed:
                changed[kind] = str(top)
        return top, changed

    async def run(self) -> None:
        try:
            self.state = await asyncio.to_thread(self._current)
            while self.streams:
                event = self.event = asyncio.Event()
                woken: set[str] = set()
                with contextlib.ExitStack() as stack:
                    folders = await asyncio.to_thread(self._folders)
                    for name, path in folders.items():
                        stack.enter_context(watch.watching(path, _Mark(event, woken, name)))
                    # a change between the state read and the watch start: look once
                    woken.update(folders)
                    event.set()
                    self.ready.set()
                    while self.streams:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(event.wait(), RESCAN)
                        if not event.is_set():
                            break  # rescan the folders (a mailbox may have been created)
                        event.clear()
                        names = set(woken)
                        woken.clear()
                        try:
                            top, changed = await asyncio.to_thread(self._changed_types, names)
                        except (StoreError, OSError) as exc:
                            log.warning("push: %s: %s", self.root.name, exc)
                            continue
                        self.state = top
                        if changed:
                            self.publish({"@type": "StateChange",
                                          "changed": {self.account_id: changed}})
        except asyncio.CancelledError:
            pass
        except Exception:  # the account cannot be watched: its streams end, clients reconnect
            log.exception("push: watching %s failed", self.root.name)
            if self.hubs.get(self.root) is self:
                del self.hubs[self.root]
            self.task = None
            self.publish(None)
            self.ready.set()

    def poke(self) -> None:
        """Look now (a change this process made that moved no message file)."""
        if self.event is not None:
            self.event.set()

    def close(self) -> None:
        """The daemon stops: every stream ends (None), the watch task too."""
        self.publish(None)
        if self.task is not None:
            self.task.cancel()

    def publish(self, change: dict[str, Any] | None) -> None:
        for q in list(self.streams):
            if q.full():  # a stream that does not keep up gets the latest change only
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(change)

