"""The mda daemon: an LMTP listener that delivers into Maildir.

It listens on a unix socket, ``<data_dir>/run/lmtp.sock`` (mode 0600: only the account running
the stack can deliver) and, when ``[mda] lmtp`` names a port, on TCP too (docker-compose, where
the mta runs in another container).

Replies: unknown user ``550 5.1.1`` at RCPT; after DATA one reply per recipient — ``250 2.0.0``
delivered, ``552 5.2.2`` over quota, ``452 4.3.1`` when the disk write fails (the mta retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from ..accounts.users import UserDB, resolve_recipient
from ..config import Config
from ..runtime import testhooks, unixsock
from ..runtime.fsutil import metadata_order
from ..runtime.groupcommit import GroupCommit
from ..runtime.netserver import BindError, format_sockname, limiter_for, start_server
from ..smtp.lmtpsession import Transaction
from . import vacation
from .copylog import CopyLog
from .delivery import (
    Copy,
    Delivered,
    DeliveryLog,
    checkpoint_copies,
    commit_copies,
    mailbox_dir,
    mailbox_usage_count,
    prepare,
    recover,
    recover_copies,
    resync_copies,
    valid_envid,
)
from .lmtp import LMTPServerProtocol

log = logging.getLogger("mailstack.mda")
#: a commit slower than this (seconds) sends the next ones through the commit thread, so a
#: slow disk does not stall the event loop (runtime.groupcommit)
INLINE_BELOW = 0.005


def _envid(tx: Transaction) -> str | None:
    """The transaction's queue id (``ENVID``) when it is one the journal can record."""
    return tx.envid if tx.envid is not None and valid_envid(tx.envid) else None


def _note(before: bool) -> str:
    """How a ``250`` and the log name a copy: made now, or found from an earlier attempt."""
    return "already delivered" if before else "delivered"


class DeliveryHandler:
    """What the LMTP listener asks of the mda: which recipients it takes, and delivery."""

    def __init__(self, cfg: Config, users: UserDB, dlog: DeliveryLog) -> None:
        self.cfg = cfg
        self.users = users
        self.dlog = dlog
        #: the copy log, once it is open (until then copies are synced the other way)
        self.copylog: CopyLog | None = None
        # sparse copies are committed in the event loop (no thread trip), concurrent ones
        # together in the commit thread
        self.committer: GroupCommit[Copy, str] = GroupCommit(
            self._commit_batch, name="mda-commit", inline_below=INLINE_BELOW)
        #: (queue id, recipient) of copies being committed: a concurrent repeat waits for them
        self._in_flight: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def _commit_batch(self, copies: Sequence[Copy]) -> list[str | OSError]:
        return commit_copies(copies, self.dlog, self.copylog)

    def resolve(self, address: str) -> str | None:
        """The account a recipient address delivers to, or None."""
        return resolve_recipient(self.users, self.cfg.server.domains, address,
                                 self.cfg.server.postmaster)

    def recipient(self, address: str) -> str | None:
        """The refusal for a recipient at RCPT, or None when it is delivered here."""
        if self.resolve(address) is None:
            return f"550 5.1.1 <{address}>: no such user here"
        return None

    async def deliver(self, tx: Transaction) -> list[str]:
        """Deliver a transaction's message: one reply per recipient, in order."""
        envid = _envid(tx)
        data, sender, retry = tx.content, tx.sender, tx.retry
        rcpts = tx.rcpts
        if len(rcpts) == 1:  # the common case, without gather's tasks
            return [await self._deliver_one(rcpts[0], sender, data, envid, retry)]
        return list(await asyncio.gather(
            *(self._deliver_one(r, sender, data, envid, retry) for r in rcpts)))

    def deliver_now(self, tx: Transaction) -> list[str] | None:
        """:meth:`deliver`, done before returning when it can be: one recipient, and the
        group commit would commit it alone in the event loop anyway (sparse load). None when
        it cannot; the caller then awaits :meth:`deliver`. Saves a task and a trip through
        the event loop per lone message."""
        if len(tx.rcpts) != 1 or not self.committer.can_inline():
            return None
        envid = _envid(tx)
        rcpt = tx.rcpts[0]
        if envid and (envid, rcpt) in self._in_flight:
            return None
        started = time.monotonic()
        step = self._prepare(rcpt, tx.sender, tx.content, envid, tx.retry)
        if isinstance(step, str):
            return [step]
        account, ready = step
        try:  # nothing else runs meanwhile: no repeat of this copy can start
            path = ready.path if isinstance(ready, Delivered) else \
                self.committer.commit_now(ready)
        except OSError as exc:
            return [self._deferred(envid, rcpt, exc)]
        return [self._delivered(envid, rcpt, account, tx.sender, tx.content, started, path,
                                isinstance(ready, Delivered))]

    async def _deliver_one(self, rcpt: str, sender: str, data: bytes, envid: str | None,
                           retry: bool) -> str:
        flight = (envid, rcpt) if envid else None
        while flight and flight in self._in_flight:  # the mta retried while we commit
            await asyncio.shield(self._in_flight[flight])
            retry = True
        started = time.monotonic()
        step = self._prepare(rcpt, sender, data, envid, retry)
        if isinstance(step, str):
            return step
        account, ready = step
        # the durable part goes to the group commit: its thread writes and fsyncs this copy
        # together with those of concurrent sessions
        try:
            path = ready.path if isinstance(ready, Delivered) else \
                await self._commit(ready, flight)
        except OSError as exc:
            return self._deferred(envid, rcpt, exc)
        return self._delivered(envid, rcpt, account, sender, data, started, path,
                               isinstance(ready, Delivered))

    def _prepare(self, rcpt: str, sender: str, data: bytes, envid: str | None,
                 retry: bool) -> str | tuple[str, Copy | Delivered]:
        """The account and the copy to commit (or where it already is); a reply instead when
        the copy is refused or cannot be made. In the event loop: no fsync."""
        qid = envid or "-"
        account = self.resolve(rcpt)
        if account is None:  # removed between RCPT and DATA
            log.info("%s: to=<%s>, status=bounced (550 5.1.1 no such user)", qid, rcpt)
            return f"550 5.1.1 <{rcpt}>: no such user here"
        quota, most = self.cfg.mda.quota, self.cfg.mda.quota_messages
        if (quota or most) and _over(mailbox_usage_count(self.cfg.data_dir, account),
                                     len(data), quota, most):
            log.info("%s: to=<%s>, status=bounced (552 5.2.2 over quota)", qid, rcpt)
            return f"552 5.2.2 <{rcpt}>: mailbox full"
        try:
            return account, prepare(self.cfg.data_dir, account, rcpt, sender, data, envid,
                                    self.dlog, retry=retry)
        except OSError as exc:
            return self._deferred(envid, rcpt, exc)

    @staticmethod
    def _deferred(envid: str | None, rcpt: str, exc: OSError) -> str:
        log.error("%s: to=<%s>, status=deferred (452 4.3.1 %s)", envid or "-", rcpt,
                  exc.strerror or exc)
        return f"452 4.3.1 <{rcpt}>: cannot write the mailbox now, try again later"

    def _delivered(self, envid: str | None, rcpt: str, account: str, sender: str, data: bytes,
                   started: float, path: str, before: bool) -> str:
        # the log line and the vacation check wait until the reply is written: nothing
        # before 250 but what makes the copy durable
        asyncio.get_running_loop().call_soon(
            self._after_delivery, envid, rcpt, account, sender, data,
            time.monotonic() - started, path, before)
        return f"250 2.0.0 <{rcpt}> {_note(before)}"

    def _after_delivery(self, envid: str | None, rcpt: str, account: str, sender: str,
                        data: bytes, delay: float, path: str, before: bool) -> None:
        log.info("%s: to=<%s>, size=%d, delay=%.3f, status=%s (%s)", envid or "-", rcpt,
                 len(data), delay, _note(before), path)
        if not before:
            self._vacation(account, sender, data)

    def _vacation(self, account: str, sender: str, data: bytes) -> None:
        """A vacation reply (RFC 3834) when the account has one on, after the 250.

        Most accounts have none: one ``stat`` here, not a trip to a worker thread per copy."""
        if not sender:
            return
        root = mailbox_dir(self.cfg.data_dir, account)
        if not os.path.exists(f"{root}/{vacation.SETTINGS}"):
            return

        async def run() -> None:
            try:
                await asyncio.to_thread(vacation.respond, self.cfg, Path(root), account, sender,
                                        data)
            except Exception as exc:  # never a reason to fail a delivery
                log.warning("vacation %s: no reply: %s", account, exc)
        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


    async def _commit(self, ready: Copy, flight: tuple[str, str] | None) -> str:
        """Commit one copy (group commit); concurrent repeats of ``flight`` wait for it."""
        mine: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if flight:
            self._in_flight[flight] = mine
        try:
            return await self.committer.submit(ready)  # raises the OSError of this copy
        finally:
            if flight and self._in_flight.get(flight) is mine:
                del self._in_flight[flight]
            mine.set_result("")


async def serve(cfg: Config, stop: asyncio.Event) -> None:
    users = UserDB(cfg.data_dir / "users")
    dlog = DeliveryLog(cfg.data_dir / "mda" / "delivered")
    handler = DeliveryHandler(cfg, users, dlog)
    tasks: list[asyncio.Task[None]] = []
    copies = cfg.data_dir / "mda" / "copies"
    use = cfg.mda.copy_log and _metadata_in_order(copies.parent)
    if CopyLog.exists(copies):  # its records are checked before mail comes in
        await _open_copy_log(handler, copies, int(cfg.mda.copy_log_size), use)
    elif use:  # the first start: its files are written while mail comes in
        tasks.append(asyncio.create_task(_open_copy_log(handler, copies,
                                                        int(cfg.mda.copy_log_size), use)))
    checked, removed = await asyncio.to_thread(recover, cfg.data_dir, dlog)
    if removed:
        log.warning("after a crash: removed %d of %d copies not made durable before their 250 "
                    "(the mta delivers them again)", removed, checked)
    elif checked:
        log.info("after a crash: the %d copies of the last deliveries are whole", checked)
    (cfg.data_dir / "mail").mkdir(parents=True, exist_ok=True)

    limiter = limiter_for(cfg)

    def factory() -> LMTPServerProtocol:
        proto = LMTPServerProtocol(cfg.server.hostname, handler.recipient, handler.deliver,
                                   handler.deliver_now, int(cfg.mta.max_message_size) + 64 * 1024,
                                   cfg.mta.idle_timeout)
        proto.limiter = limiter
        return proto

    servers: list[asyncio.Server] = []
    path = cfg.lmtp_socket
    if path is not None:
        try:
            sock = unixsock.listen(path)
        except unixsock.SocketError as exc:
            raise BindError(f"mda lmtp: {exc}") from None
        servers.append(await asyncio.get_running_loop().create_unix_server(factory, sock=sock))
        log.info("listening on unix:%s (lmtp, mode %o)", path, unixsock.SOCKET_MODE)
    port = cfg.port("mda", "lmtp")
    if port:
        try:
            tcp = await start_server(None, cfg.mda.bind, port, protocol_factory=factory,
                                     name="mda lmtp")
        except BaseException:
            for srv in servers:
                srv.close()
            raise
        servers += tcp
        for srv in tcp:
            for s in srv.sockets:
                log.info("listening on %s (lmtp over TCP: no authentication)",
                         format_sockname(s.getsockname()))
    tasks.append(asyncio.create_task(_prune_forever(dlog)))
    tasks.append(asyncio.create_task(_checkpoint_forever(handler)))
    await stop.wait()
    for task in tasks:
        task.cancel()
    for srv in servers:
        srv.close()
    for srv in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(srv.wait_closed(), 5)
    handler.committer.close()
    if handler.copylog is not None:  # a clean stop leaves nothing for the next start to check
        try:
            await asyncio.to_thread(checkpoint_copies, handler.copylog, dlog)
        except OSError as exc:
            log.warning("copy log: no checkpoint at stop: %s", exc)
    if path is not None:
        unixsock.remove(path)


#: how often the copies delivered since the last checkpoint are synced (one ``syncfs``)
CHECKPOINT_EVERY = 1.0


def _metadata_in_order(directory: Path) -> bool:
    """Whether the copy log may be used: see :mod:`.copylog` (the marker's order)."""
    directory.mkdir(parents=True, exist_ok=True)
    ordered, what = metadata_order(directory)
    if testhooks.PRETEND_ORDERED:
        return True
    if not ordered:
        log.info("copy log off: %s is on %s, which may not keep metadata changes in order "
                 "through a crash; each copy is synced on its own", directory, what)
    return ordered


async def _open_copy_log(handler: DeliveryHandler, directory: Path, size: int,
                         use: bool) -> None:
    """Open the copy log (written full of zeros at the first start), rebuild what a crash
    left of its last copies, and let the handler use it (``use``; else it is only read)."""
    dlog = handler.dlog
    try:
        copylog = await asyncio.to_thread(CopyLog, directory, size)
    except OSError as exc:
        log.warning("copy log %s: cannot open it (%s); each copy is synced on its own instead",
                    directory, exc)
        return
    try:
        checked, rebuilt = await asyncio.to_thread(recover_copies, handler.cfg.data_dir,
                                                   copylog, dlog)
    except OSError as exc:  # its checkpoint stays: the next start tries again
        log.error("copy log %s: cannot rebuild the copies of its last records (%s); fix that "
                  "and restart the mda. Until then each copy is synced on its own",
                  directory, exc)
        copylog.close()
        return
    if rebuilt:
        log.warning("after a crash: rebuilt %d of the %d last copies from the copy log "
                    "(their 250 had gone out)", rebuilt, checked)
    elif checked:
        log.info("after a crash: the %d copies of the copy log's last records are whole",
                 checked)
    if not use:
        copylog.close()
        return
    copylog.on_full = partial(checkpoint_copies, copylog, dlog, in_commit=True)
    handler.copylog = copylog
    log.info("copy log ready: %s (two files of %d KiB)", directory, copylog.segment_size // 1024)


#: after a failed attempt to sync the copies since the checkpoint one by one, the next one
RESYNC_RETRY = 30.0


class Checkpointer:
    """The copy log's checkpointer (:meth:`tick` every second, in a worker thread): one
    ``syncfs`` moves the checkpoint past every copy so far. After a failed one the checkpoint
    stays for good (see :meth:`CopyLog.hold`), and the copies since it are synced one by one
    at once (:func:`resync_copies`), retried every RESYNC_RETRY seconds until that works."""

    def __init__(self, handler: DeliveryHandler) -> None:
        self.handler = handler
        self.resynced = False
        self.next_resync = 0.0

    def tick(self) -> None:
        copylog, dlog = self.handler.copylog, self.handler.dlog
        if copylog is None:
            return
        if copylog.held:
            self._resync(copylog, dlog)
            return
        try:
            checkpoint_copies(copylog, dlog)
        except OSError as exc:
            log.error("copy log: the copies could not be synced (%s): from now on each copy "
                      "is synced on its own, and those since the last checkpoint are synced "
                      "one by one now", exc)
            self._resync(copylog, dlog)

    def _resync(self, copylog: CopyLog, dlog: DeliveryLog) -> None:
        if self.resynced or time.monotonic() < self.next_resync:
            return
        try:
            synced, replaced = resync_copies(copylog, dlog)
        except OSError as exc:
            self.next_resync = time.monotonic() + RESYNC_RETRY
            log.error("copy log: the copies since the last checkpoint could not be synced one "
                      "by one either (%s); trying again in %.0f s (the next start of the mda "
                      "rebuilds them from the log)", exc, RESYNC_RETRY)
            return
        self.resynced = True
        log.warning("copy log: synced the copies since the last checkpoint one by one: %d "
                    "whole, %d replaced by whole ones from the log (they read wrong already)",
                    synced, replaced)


async def _checkpoint_forever(handler: DeliveryHandler) -> None:
    checkpointer = Checkpointer(handler)
    while True:
        await asyncio.sleep(CHECKPOINT_EVERY)
        try:
            await asyncio.to_thread(checkpointer.tick)
        except Exception:  # a bug: logged, and the checkpointer goes on
            log.exception("copy log: the checkpointer failed")


async def _prune_forever(dlog: DeliveryLog) -> None:
    while True:
        removed = await asyncio.to_thread(dlog.prune)
        if removed:
            log.info("pruned %d old delivery records", removed)
        await asyncio.sleep(6 * 3600)


def _over(usage: tuple[int, int], size: int, quota: int, most: int) -> bool:
    """Whether one more message of ``size`` octets exceeds ``[mda] quota`` or
    ``quota_messages`` (0: no limit)."""
    return bool(quota and usage[0] + size > quota) or bool(most and usage[1] + 1 > most)
