"""Relay to other MTAs over SMTP with aiosmtplib: routing, TLS policy, per-recipient results.

Routing for a recipient domain: a ``[mta.transport]`` entry for the domain, else ``"*"`` (a
smarthost), else the domain's MX hosts (``mx.py``) on ``[mta].mx_port``. Hosts are tried in
order until one answers; connections are reused for later messages to the same host and at most
``max_per_destination`` run at once per host.

TLS policy per destination: ``none`` (never STARTTLS), ``opportunistic`` (STARTTLS when offered;
if the handshake fails, retry the host in plaintext), ``required`` (no STARTTLS → temporary
failure ``4.7.4``). Certificates are checked only when the transport says ``verify = true``.

Results (RFC 5321 §4.2, §6.1): a 5xx reply is permanent for that recipient; a 4xx reply, a
refused or dropped connection, a timeout or a DNS SERVFAIL is temporary. A message larger than the
peer's SIZE is permanent (``5.3.4``); an SMTPUTF8 message to a peer without SMTPUTF8 is
permanent (``5.6.7``, RFC 6531 §3.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass, field

import aiosmtplib

from ..config import Config, Transport
from ..smtp.reply import Reply
from .mx import DNSFailure, host_addresses, lookup_mx, make_resolver
from .queue import QueueEntry, Recipient

log = logging.getLogger("mailstack.relay")

IDLE_REUSE = 30.0  # seconds an idle connection is kept for the next message


@dataclass(frozen=True)
class Hop:
    """One host to try: its name (for TLS and logs), address, port and policy."""

    name: str
    address: str
    port: int
    tls: str
    verify: bool
    username: str = ""
    password: str = ""

    @property
    def label(self) -> str:
        return f"{self.name}[{self.address}]:{self.port}"

    @property
    def pool_key(self) -> tuple[str, int, str, bool, str]:
        return (self.address, self.port, self.tls, self.verify, self.username)


class HopFailed(Exception):
    """This host could not take the message now; try the next one (``reply`` is temporary)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass
class _Idle:
    smtp: aiosmtplib.SMTP
    since: float = field(default_factory=time.monotonic)


class Relay:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.resolver = make_resolver(cfg.mta.resolver)
        self._idle: dict[tuple, list[_Idle]] = defaultdict(list)
        self._limits: dict[tuple[str, int], asyncio.Semaphore] = {}

    # -- routing ----------------------------------------------------------------------------
    def transport_for(self, domain: str) -> Transport | None:
        t = self.cfg.mta.transport
        return t.get(domain.lower()) or t.get("*")

    async def hops_for(self, domain: str) -> list[Hop]:
        """Hosts to try for ``domain``, best first; raises DNSFailure."""
        t = self.transport_for(domain)
        if t is not None:
            addrs = await host_addresses(t.host, self.resolver)
            return [Hop(t.host, a, t.port, t.tls, t.verify, t.username, t.password)
                    for a in addrs]
        hops: list[Hop] = []
        last: DNSFailure | None = None
        for mx in await lookup_mx(domain, self.resolver):
            try:
                addrs = await host_addresses(mx.name, self.resolver)
            except DNSFailure as exc:
                last = exc
                continue
            hops += [Hop(mx.name, a, int(self.cfg.mta.mx_port), self.cfg.mta.relay_tls, False)
                     for a in addrs]
        if not hops:
            raise last or DNSFailure(Reply(451, "4.4.4", f"no usable MX host for {domain}"))
        return hops

    # -- delivery ---------------------------------------------------------------------------
    async def deliver(self, entry: QueueEntry, rcpts: list[Recipient],
                      message: bytes) -> list[tuple[Reply, str]]:
        """A (reply, relay) per recipient, in order."""
        by_domain: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rcpts):
            by_domain[r.address.rpartition("@")[2].lower()].append(i)
        results: list[tuple[Reply, str]] = [(Reply(451, "4.3.0", "not attempted"), "none")] \
            * len(rcpts)
        groups = list(by_domain.items())
        outcomes = await asyncio.gather(*(
            self._deliver_domain(entry, dom, [rcpts[i].address for i in idx], message)
            for dom, idx in groups))
        for (_, idx), outcome in zip(groups, outcomes, strict=True):
            for i, res in zip(idx, outcome, strict=True):
                results[i] = res
        return results

    async def _deliver_domain(self, entry: QueueEntry, domain: str, rcpts: list[str],
                              message: bytes) -> list[tuple[Reply, str]]:
        try:
            hops = await self.hops_for(domain)
        except DNSFailure as exc:
            return [(exc.reply, f"dns({domain})")] * len(rcpts)
        last = Reply(451, "4.4.1", f"no host for {domain} answered")
        for hop in hops:
            try:
                replies = await self._via(hop, entry, rcpts, message)
            except HopFailed as exc:
                log.info("%s: %s: %s", entry.id, hop.label, exc.reply)
                last = exc.reply
                continue
            return [(r, hop.label) for r in replies]
        return [(last, hops[-1].label if hops else domain)] * len(rcpts)

    def _limit(self, hop: Hop) -> asyncio.Semaphore:
        key = (hop.address, hop.port)
        if key not in self._limits:
            self._limits[key] = asyncio.Semaphore(self.cfg.mta.max_per_destination)
        return self._limits[key]

    async def _via(self, hop: Hop, entry: QueueEntry, rcpts: list[str],
                   message: bytes) -> list[Reply]:
        async with self._limit(hop):
            smtp = self._take_idle(hop)
            if smtp is not None:
                try:
                    return await self._transaction(smtp, hop, entry, rcpts, message)
                except _Stale:
                    smtp.close()  # the peer closed the idle connection: a fresh one
            smtp = await self._connect(hop)
            try:
                return await self._transaction(smtp, hop, entry, rcpts, message)
            except _Stale:
                smtp.close()
                raise HopFailed(Reply(451, "4.4.2", f"{hop.label} closed the connection "
                                      "before MAIL")) from None

    def _take_idle(self, hop: Hop) -> aiosmtplib.SMTP | None:
        pool = self._idle.get(hop.pool_key)
        now = time.monotonic()
        while pool:
            item = pool.pop()
            if now - item.since < IDLE_REUSE and item.smtp.is_connected:
                return item.smtp
            item.smtp.close()
        return None

    def _tls_context(self, hop: Hop) -> ssl.SSLContext:
        if hop.verify:
            ctx = ssl.create_default_context()
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    async def _connect(self, hop: Hop, *, plaintext: bool = False) -> aiosmtplib.SMTP:
        mta = self.cfg.mta
        smtp = aiosmtplib.SMTP(hostname=hop.address, port=hop.port,
                               local_hostname=self.cfg.server.hostname,
                               timeout=float(mta.command_timeout), start_tls=False,
                               use_tls=False, validate_certs=hop.verify)
        try:
            await smtp.connect(timeout=float(mta.connect_timeout))
            await smtp.ehlo()
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            raise HopFailed(Reply(451, "4.4.2", f"{hop.label} greeted us with {exc.code} "
                                  f"{exc.message}")) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            smtp.close()
            raise HopFailed(Reply(451, "4.4.1", f"cannot connect to {hop.label}: "
                                  f"{_describe(exc)}")) from None
        offers_tls = smtp.supports_extension("starttls")
        if hop.tls == "required" and not offers_tls:
            await _quit(smtp)
            raise HopFailed(Reply(451, "4.7.4", f"TLS is required but {hop.label} does not "
                                  "offer STARTTLS"))
        secured = False
        if hop.tls != "none" and offers_tls and not plaintext:
            try:
                await smtp.starttls(tls_context=self._tls_context(hop),
                                    server_hostname=hop.name, validate_certs=hop.verify)
            except (aiosmtplib.SMTPException, ssl.SSLError, OSError, TimeoutError) as exc:
                smtp.close()
                if hop.tls == "required":
                    raise HopFailed(Reply(451, "4.7.5", f"TLS with {hop.label} failed: "
                                          f"{_describe(exc)}")) from None
                log.warning("%s: STARTTLS failed (%s); retrying without TLS", hop.label,
                            _describe(exc))
                return await self._connect(hop, plaintext=True)
            secured = True
        if hop.username:
            if not secured and hop.tls != "none":
                await _quit(smtp)
                raise HopFailed(Reply(451, "4.7.4", f"not sending credentials to {hop.label} "
                                      "without TLS"))
            try:
                await smtp.login(hop.username, hop.password)
            except aiosmtplib.SMTPAuthenticationError as exc:
                await _quit(smtp)
                raise HopFailed(Reply(451, "4.7.8", f"{hop.label} refused our credentials: "
                                      f"{exc.code} {exc.message}")) from None
            except (aiosmtplib.SMTPException, OSError) as exc:
                smtp.close()
                raise HopFailed(Reply(451, "4.4.2", f"AUTH with {hop.label} failed: "
                                      f"{_describe(exc)}")) from None
        return smtp

    async def _transaction(self, smtp: aiosmtplib.SMTP, hop: Hop, entry: QueueEntry,
                           rcpts: list[str], message: bytes) -> list[Reply]:
        """MAIL, RCPT per recipient, DATA. Raises _Stale (reused connection was dead) or
        HopFailed (connection trouble before any recipient got a final answer)."""
        env = entry.envelope
        ext = smtp.esmtp_extensions
        max_size = int(ext.get("size", "0") or 0) if "size" in ext else 0
        if max_size and len(message) > max_size:
            await self._release(smtp, hop)
            return [Reply(552, "5.3.4", f"message of {len(message)} octets exceeds the "
                          f"{max_size} octets {hop.label} accepts")] * len(rcpts)
        if env.smtputf8 and "smtputf8" not in ext:
            await self._release(smtp, hop)
            return [Reply(553, "5.6.7", f"{hop.label} does not support SMTPUTF8, which this "
                          "message needs")] * len(rcpts)
        options = [f"SIZE={len(message)}"] if "size" in ext else []
        if env.body == "8BITMIME" and "8bitmime" in ext:
            options.append("BODY=8BITMIME")
        if env.smtputf8:
            options.append("SMTPUTF8")
        try:
            try:
                await smtp.mail(env.sender, options=options)
            except aiosmtplib.SMTPSenderRefused as exc:
                await self._release(smtp, hop, rset=True)
                return [Reply.parse(exc.code, exc.message)] * len(rcpts)
            except aiosmtplib.SMTPServerDisconnected:
                raise _Stale() from None
            replies: list[Reply | None] = []
            for r in rcpts:
                try:
                    resp = await smtp.rcpt(r)
                    replies.append(None if 200 <= resp.code < 300 else
                                   Reply.parse(resp.code, resp.message))
                except aiosmtplib.SMTPRecipientRefused as exc:
                    replies.append(Reply.parse(exc.code, exc.message))
            if all(r is not None for r in replies):
                await self._release(smtp, hop, rset=True)
                return [r for r in replies if r is not None]
            try:
                resp = await smtp.data(message, timeout=float(self.cfg.mta.data_timeout))
                final = Reply.parse(resp.code, resp.message)
            except aiosmtplib.SMTPDataError as exc:
                final = Reply.parse(exc.code, exc.message)
            await self._release(smtp, hop, rset=not final.ok)
            return [final if r is None else r for r in replies]
        except _Stale:
            raise
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError,
                TimeoutError, aiosmtplib.SMTPException) as exc:
            smtp.close()
            raise HopFailed(Reply(451, "4.4.2", f"lost {hop.label} during the transaction: "
                                  f"{_describe(exc)}")) from None

    async def _release(self, smtp: aiosmtplib.SMTP, hop: Hop, *, rset: bool = False) -> None:
        """Keep a healthy connection for the next message to this host."""
        if rset:
            try:
                await smtp.rset()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()
                return
        if smtp.is_connected:
            self._idle[hop.pool_key].append(_Idle(smtp))

    async def close(self) -> None:
        for pool in self._idle.values():
            for item in pool:
                await _quit(item.smtp)
        self._idle.clear()


class _Stale(Exception):
    """A reused connection turned out to be closed before anything was sent."""


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(smtp.quit(), 5)
    smtp.close()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]
