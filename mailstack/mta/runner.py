"""The queue runner: delivers spooled entries, retries with backoff, bounces what fails.

Scheduling: every entry has a ``due`` time (in memory; ``next_attempt`` on disk); a heap orders
them and an event wakes the loop when new mail arrives. Each attempt is recorded (``attempts +=
1``, ``next_attempt = now + backoff``) *before* any connection is made — for new mail already in
the state written with it (``Spool.put(first_attempt_at=...)``) — so a crash during delivery
never causes a retry storm. Recipient results: 2xx → delivered; 5xx → failed (bounced to the
sender); 4xx or a connection problem → pending, retried until ``queue_lifetime`` has passed,
then failed.

Capture mode (``[capture] enabled``): nothing is relayed; every message, bounces included, is
delivered once over LMTP to the catch-all account with an ``X-Original-To`` header per
original recipient. ``[capture] outbound`` does the same for recipients on domains the stack
does not serve only (test stacks: nothing leaves the machine); local mail is delivered as usual.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable

from ..config import Config
from ..smtp.reply import Reply
from .dsn import FailedRecipient, make_bounce
from .lmtp_client import LMTPError, LMTPPool
from .queue import DELIVERED, FAILED, PENDING, Envelope, QueueEntry, Recipient, Spool

log = logging.getLogger("mailstack.queue")

#: how long a stopping mta waits for deliveries in flight; what is not done by then stays
#: queued and is retried (once: the mda recognises the queue id). Shorter than the
#: supervisor's and docker-compose's grace periods (10 s and 30 s) before SIGKILL.
STOP_DRAIN = 5.0
#: after a direct delivery failed, local mail goes through the queue for this long (or until
#: the runner delivers locally again), so that a hung mda does not hold every SMTP session
DIRECT_PAUSE = 5.0
#: for this long after the mta starts, mail the local mda refuses to take because it is not
#: listening yet (containers started side by side) is retried every second, not after
#: retry_initial
STARTUP_WINDOW = 30.0

#: remote delivery: (entry, recipients, message) → (reply, relay name) per recipient
RemoteDeliver = Callable[[QueueEntry, list[Recipient], bytes],
                         Awaitable[list[tuple[Reply, str]]]]


class QueueRunner:
    def __init__(self, cfg: Config, spool: Spool, *, remote: RemoteDeliver | None = None,
                 concurrency: int = 32, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.spool = spool
        self.remote = remote
        self.clock = clock
        self.entries: dict[str, QueueEntry] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._in_flight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(concurrency)
        self.started = clock()
        #: direct delivery is paused until then (monotonic clock): see DIRECT_PAUSE
        self._direct_paused_until = 0.0
        target = cfg.lmtp_target
        if isinstance(target, tuple):
            host, port = target
            self.lmtp_name = f"mda[{host}]:{port}"
            self.lmtp = LMTPPool(host, port, cfg.server.hostname)
        else:
            self.lmtp_name = f"mda[unix:{target}]"
            self.lmtp = LMTPPool(target, 0, cfg.server.hostname)

    # -- scheduling -------------------------------------------------------------------------
    async def load(self) -> None:
        removed = await asyncio.to_thread(self.spool.recover)
        if removed:
            log.info("queue recovery removed %d leftover files of interrupted writes", removed)
        entries = await asyncio.to_thread(self.spool.load_all)
        for e in entries:
            self._add(e, e.next_attempt)
        if entries:
            log.info("queue holds %d entries from before the restart", len(entries))

    def _add(self, entry: QueueEntry, due: float) -> None:
        self.entries[entry.id] = entry
        entry.due = due
        heapq.heappush(self._heap, (due, entry.id))
        self._wake.set()

    def submit(self, entry: QueueEntry) -> None:
        """A new entry, just made durable (its first attempt recorded with it): try it now."""
        self._add(entry, 0.0)

    def rescan(self) -> None:
        """Pick up on-disk changes: drop the entries ``queue delete`` removed, add the ones
        ``sendmail``, JMAP or a vacation reply wrote (each when its ``next_attempt`` says); no
        other entry's next attempt moves."""
        known = set(self.spool.ids())
        for qid in list(self.entries):
            if qid not in known and qid not in self._in_flight:
                del self.entries[qid]
        for qid in known - set(self.entries):
            e = self.spool.load(qid)
            if e is not None:
                self._add(e, e.next_attempt)

    def flush(self) -> None:
        """Try every entry now (``mailstack queue flush``); also picks up on-disk changes."""
        self.rescan()
        self._heap = [(0.0, qid) for qid in self.entries]
        heapq.heapify(self._heap)
        for e in self.entries.values():
            e.due = 0.0
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()

        async def stop_watcher() -> None:
            await stop.wait()
            self._wake.set()

        watcher = asyncio.create_task(stop_watcher())
        try:
            while not stop.is_set():
                now = self.clock()
                while self._heap and self._heap[0][0] <= now:
                    when, qid = heapq.heappop(self._heap)
                    entry = self.entries.get(qid)
                    if entry is None or qid in self._in_flight:
                        continue
                    if entry.due != when:  # rescheduled since this heap item was pushed
                        continue
                    self._in_flight.add(qid)
                    task = asyncio.create_task(self._attempt(entry))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                timeout = min(30.0, self._heap[0][0] - now) if self._heap else 30.0
                self._wake.clear()
                alarm = loop.call_later(max(0.0, timeout), self._wake.set)
                await self._wake.wait()
                alarm.cancel()
        finally:
            watcher.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=STOP_DRAIN)
            await self.lmtp.close()

    def backoff(self, attempts: int) -> float:
        return min(float(self.cfg.mta.retry_max),
                   float(self.cfg.mta.retry_initial) * 2 ** max(0, attempts - 1))

    # -- delivery inside the SMTP transaction ------------------------------------------------
    def direct_ok(self, recipients: list[str]) -> bool:
        """Whether a new message for ``recipients`` may be delivered at once: every recipient
        local, not capture mode (which files everything in the catch-all account), direct
        delivery on and not paused by a recent failure."""
        cfg = self.cfg
        return (cfg.mta.direct_delivery > 0 and not cfg.capture.enabled
                and time.monotonic() >= self._direct_paused_until
                and all(self._is_local(r) for r in recipients))

    async def deliver_direct(self, qid: str, env: Envelope, message: bytes, *,
                             retry: bool = False) -> list[Recipient] | None:
        """Hand a new message to the mda before it is queued; None when every recipient's
        copy is durable (the mda answered 250 for each).

        Otherwise it must go through the queue (the mda is down, refused a recipient, or did
        not answer within ``[mta] direct_delivery``), and this returns the recipients with
        this attempt's outcome for the queue entry's first state: ``mailstack queue list``
        says at once why the mail waits, and copies the mda took are not sent again. The
        copies may also have been made without an answer (a timeout): the queue's attempt
        carries XRETRY and the mda's journal recognises the queue id, so no second copy
        appears. After a failure, local mail goes through the queue for DIRECT_PAUSE seconds,
        or until the runner delivers locally again.
        ``retry``: the queue id may have reached the mda before (``XRETRY``).
        """
        started = time.monotonic()
        try:
            async with asyncio.timeout(float(self.cfg.mta.direct_delivery)):
                result = await self.lmtp.deliver(
                    qid, env.sender, env.recipients, message,
                    body8=env.body == "8BITMIME", smtputf8=env.smtputf8, retry=retry)
            replies = result.replies
        except LMTPError as exc:
            replies = [Reply(451, "4.4.1", str(exc))] * len(env.recipients)
        except TimeoutError:
            replies = [Reply(451, "4.4.1", "mda timed out")] * len(env.recipients)
        ok = all(r.ok for r in replies)
        delay = time.monotonic() - started
        for rcpt, reply in zip(env.recipients, replies, strict=True):
            log.info("%s: to=<%s>, relay=%s, delay=%.3f, attempts=1, dsn=%s, status=%s (%s)",
                     qid, rcpt, self.lmtp_name, delay, reply.enhanced,
                     "sent" if reply.ok else "deferred", reply)
        if ok:
            return None
        log.info("%s: direct delivery failed: queued; local mail goes through the queue "
                 "for %.0f s", qid, DIRECT_PAUSE)
        self._direct_paused_until = time.monotonic() + DIRECT_PAUSE
        return [Recipient(rcpt, DELIVERED if reply.ok else PENDING, 1, str(reply),
                          self.lmtp_name)
                for rcpt, reply in zip(env.recipients, replies, strict=True)]

    # -- one attempt ------------------------------------------------------------------------
    async def _attempt(self, entry: QueueEntry) -> None:
        try:
            async with self._sem:
                await self._deliver(entry)
        except Exception:
            log.exception("%s: delivery attempt crashed; will retry", entry.id)
            self._add(entry, entry.next_attempt)
        finally:
            self._in_flight.discard(entry.id)
            self._wake.set()

    async def _deliver(self, entry: QueueEntry) -> None:
        message, entry.message = entry.message, None
        try:
            if message is None or entry.attempts == 0 or entry.recovered:
                # not the first attempt recorded at put(): record this one before dialling
                entry.attempts += 1
                entry.next_attempt = self.clock() + self.backoff(entry.attempts)
                await asyncio.to_thread(self.spool.save_state, entry)
            if message is None:
                message = await asyncio.to_thread(self.spool.read_message, entry.id)
        except FileNotFoundError:
            log.info("%s: removed from the queue by the operator", entry.id)
            self.entries.pop(entry.id, None)
            return
        env = entry.envelope
        pending = entry.pending
        capture = self.cfg.capture.enabled
        local = [r for r in pending if capture or self._is_local(r.address)]
        remote = [r for r in pending if not capture and not self._is_local(r.address)]
        if local:
            await self._deliver_local(entry, local, message)
        if remote:
            await self._deliver_remote(entry, remote, message)
        if entry.pending and self.clock() - env.created > float(self.cfg.mta.queue_lifetime):
            for r in entry.pending:
                r.status = FAILED
                r.last_reply = f"4.4.7 message expired after {entry.attempts} attempts; last " \
                               f"error: {r.last_reply}"
                log.info("%s: to=<%s>, status=expired (%s)", entry.id, r.address, r.last_reply)
        await self._bounce_failures(entry, message)
        if entry.done:
            if env.listener == "jmap":  # EmailSubmission.deliveryStatus outlives the entry
                await asyncio.to_thread(self.spool.save_outcome, entry)
            await self.spool.aremove(entry.id)
            self.entries.pop(entry.id, None)
            log.info("%s: removed", entry.id)
        else:
            await asyncio.to_thread(self.spool.save_state, entry)
            self._add(entry, entry.next_attempt)
            log.info("%s: deferred, %d recipient(s) pending, next attempt in %.0fs", entry.id,
                     len(entry.pending), entry.next_attempt - self.clock())

    def _is_local(self, address: str) -> bool:
        return self.cfg.is_local_domain(address.rpartition("@")[2])

    async def _deliver_local(self, entry: QueueEntry, rcpts: list[Recipient],
                             message: bytes) -> None:
        env = entry.envelope
        to = [r.address for r in rcpts]
        if self.cfg.capture.active and (self.cfg.capture.enabled
                                        or not self._is_local(to[0])):
            # one copy for the catch-all, the recipients in headers
            message = b"".join(f"X-Original-To: {a}\r\n".encode() for a in to) + message
            to = [self.cfg.capture.address]
        try:
            result = await self.lmtp.deliver(
                entry.id, env.sender, to, message,
                body8=env.body == "8BITMIME", smtputf8=env.smtputf8,
                retry=entry.recovered or entry.tried or entry.attempts > 1)
            replies = result.replies * len(rcpts) if len(to) < len(rcpts) else result.replies
            if all(r.ok for r in replies):
                self._direct_paused_until = 0.0  # the mda takes mail again
        except LMTPError as exc:
            replies = [Reply(451, "4.4.1", str(exc))] * len(rcpts)
            if str(exc).startswith("cannot connect") and \
                    self.clock() - self.started < STARTUP_WINDOW:
                entry.next_attempt = min(entry.next_attempt, self.clock() + 1.0)
        self._apply(entry, rcpts, [(r, self.lmtp_name) for r in replies])

    async def _deliver_remote(self, entry: QueueEntry, rcpts: list[Recipient],
                              message: bytes) -> None:
        if self.cfg.capture.outbound:  # kept in the catch-all account, never relayed
            await self._deliver_local(entry, rcpts, message)
            return
        if self.remote is None:
            results = [(Reply(550, "5.7.1", "relaying to other domains is not configured"),
                        "none")] * len(rcpts)
        else:
            results = await self.remote(entry, rcpts, message)
        self._apply(entry, rcpts, results)

    def _apply(self, entry: QueueEntry, rcpts: list[Recipient],
               results: list[tuple[Reply, str]]) -> None:
        delay = self.clock() - entry.envelope.created
        for r, (reply, relay) in zip(rcpts, results, strict=True):
            r.attempts += 1
            r.last_reply = str(reply)
            r.remote = relay
            if reply.ok:
                r.status, word = DELIVERED, "sent"
            elif reply.permanent:
                r.status, word = FAILED, "bounced"
            else:
                word = "deferred"
            log.info("%s: to=<%s>, relay=%s, delay=%.2f, attempts=%d, dsn=%s, status=%s (%s)",
                     entry.id, r.address, relay, delay, entry.attempts, reply.enhanced, word,
                     reply)
        entry.last_error = next((str(x) for x, _ in results if not x.ok), "")

    async def _bounce_failures(self, entry: QueueEntry, message: bytes) -> None:
        """Queue one DSN for recipients that failed in this attempt (never to ``<>``)."""
        env = entry.envelope
        failed = [r for r in entry.recipients if r.status == FAILED and not r.notified]
        if not failed:
            return
        for r in failed:
            r.notified = True
        if not env.sender or env.is_bounce:
            log.info("%s: not bouncing to the null sender: %d recipient(s) failed", entry.id,
                     len(failed))
            return
        info = [FailedRecipient(r.address, _status_of(r.last_reply), f"smtp; {r.last_reply}",
                                "" if r.remote.startswith("mda[") else r.remote)
                for r in failed]
        dsn = make_bounce(hostname=self.cfg.server.hostname, qid=entry.id, sender=env.sender,
                          arrival=env.created, failed=info, original=message)
        bounce_env = Envelope(sender="", recipients=[env.sender], size=len(dsn),
                              body="8BITMIME", listener="bounce", is_bounce=True)
        new = await asyncio.to_thread(self.spool.put, dsn, bounce_env,
                                      first_attempt_at=self.clock(), backoff=self.backoff(1))
        log.info("%s: sender non-delivery notification: %s", entry.id, new.id)
        self.submit(new)


def _status_of(reply: str) -> str:
    for word in reply.split():
        if word[:2] in ("5.", "4.") and word.count(".") == 2:
            return "5" + word[1:] if word.startswith("4.") else word
    return "5.0.0"

