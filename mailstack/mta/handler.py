"""aiosmtpd hooks for the mta: who may send what to whom, and queueing on DATA.

Policy (never an open relay):
- RCPT for a local domain: the account must exist (``550 5.1.1`` otherwise).
- RCPT for any other domain: only after AUTH (``554 5.7.1`` relay access denied).
- An authenticated client may only use its own address as envelope sender (``553 5.7.1``).
- At most ``[mta].max_recipients`` RCPTs a transaction (``452 4.5.3``).
- DATA: a message for local recipients only is handed to the mda at once and ``250`` follows
  once its copies are durable in the Maildirs (one fsync chain, no queue file); any other
  message — or local mail the mda does not take within ``[mta] direct_delivery`` — is written
  to the queue and fsynced before ``250``. When that queue write fails after a failed direct
  attempt, the client's retry of the same message reuses its queue id (``unsettled``), so
  copies the mda made the first time are not made twice. A message with more than ``[mta].max_hops``
  Received headers is refused (``554 5.4.6``, a mail loop).
- Capture mode (``[capture] enabled``): any recipient on any domain is accepted and any envelope
  sender, without AUTH on port 25; the queue runner files everything in the catch-all account.
- ``[[faults]]`` entries for ``rcpt`` and ``data`` stall and/or replace the reply (tests).
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Any

from aiosmtpd.smtp import Envelope as SMTPEnvelope
from aiosmtpd.smtp import Session

from ..accounts.authlimit import AuthThrottle
from ..accounts.users import UserDB, resolve_recipient
from ..config import Config
from ..smtp.address import AddressError, parse_mailbox
from .faults import inject
from .message import (
    count_received,
    header_block,
    normalize_crlf,
    protocol_name,
    received_header,
    submission_fixups,
)
from .queue import Envelope, Spool, new_queue_id
from .runner import QueueRunner
from .unsettled import Unsettled, digest

log = logging.getLogger("mailstack.mta")


def tls_description(server: Any) -> str:
    """``using TLSv1.3 with cipher X`` for a TLS connection (STARTTLS or implicit), else ""."""
    transport = getattr(server, "transport", None)
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is None:
        return ""
    cipher = sslobj.cipher()
    return f"using {sslobj.version()} with cipher {cipher[0] if cipher else 'unknown'}"


def auth_user(session: Session) -> str:
    """The authenticated user of the session (lower case), or ""."""
    return str(session.auth_data or "") if session.authenticated else ""


class MTAHandler:
    def __init__(self, cfg: Config, users: UserDB, spool: Spool, runner: QueueRunner,
                 throttle: AuthThrottle) -> None:
        self.cfg = cfg
        self.users = users
        self.spool = spool
        self.runner = runner
        self.throttle = throttle
        #: messages a failed direct attempt may have delivered and the queue did not take
        self.unsettled = Unsettled()

    async def handle_EHLO(self, server: Any, session: Session, envelope: SMTPEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server: Any, session: Session, envelope: SMTPEnvelope,
                          address: str, mail_options: list[str]) -> str:
        sender = "" if address in ("<>", "") else address
        if sender:
            try:
                parse_mailbox(sender, allow_utf8=envelope.smtp_utf8)
            except AddressError as exc:
                return f"501 5.1.7 Bad sender address syntax: {exc}"
        user = auth_user(session)
        envelope.mail_auth = user  # type: ignore[attr-defined]  # the state RCPT/DATA act on
        if user and not self.cfg.capture.enabled and sender.lower() != user:
            log.warning("%s: sender <%s> rejected: not owned by authenticated user %s",
                        session.peer[0], sender, user)
            return f"553 5.7.1 <{sender}>: sender address not owned by user {user}"
        envelope.mail_from = sender or "<>"  # aiosmtpd treats "" as "no MAIL yet"
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: Any, session: Session, envelope: SMTPEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.cfg.mta.max_recipients:
            return f"452 4.5.3 Too many recipients (at most {self.cfg.mta.max_recipients})"
        if address.lower() == "postmaster":  # RFC 5321 §4.1.1.3: the bare <Postmaster>
            address = f"postmaster@{self.cfg.server.domains[0]}"
        try:
            mbox = parse_mailbox(address, allow_utf8=envelope.smtp_utf8)
        except AddressError as exc:
            return f"501 5.1.3 Bad recipient address syntax: {exc}"
        peer = session.peer[0] if session.peer else "unknown"
        fault = await inject(self.cfg, "rcpt", [address], peer) if self.cfg.faults else None
        if fault:
            return fault
        if self.cfg.capture.enabled:
            pass  # capture mode: every recipient is filed in the catch-all account
        elif self.cfg.is_local_domain(mbox.domain):
            if resolve_recipient(self.users, self.cfg.server.domains, address,
                                 self.cfg.server.postmaster) is None:
                log.info("%s: RCPT <%s> rejected: no such user", peer, address)
                return f"550 5.1.1 <{address}>: Recipient address rejected: no such user here"
        elif not self._relay_allowed(session, envelope):
            log.warning("%s: RCPT <%s> rejected: relay access denied", peer, address)
            return f"554 5.7.1 <{address}>: Relay access denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    @staticmethod
    def _relay_allowed(session: Session, envelope: SMTPEnvelope) -> bool:
        """Relaying needs a client that was authenticated at MAIL and still is the same user
        (AUTH inside a transaction is refused anyway: RFC 4954 §4)."""
        at_mail = getattr(envelope, "mail_auth", "")
        return bool(at_mail) and auth_user(session) == at_mail

    async def handle_DATA(self, server: Any, session: Session, envelope: SMTPEnvelope) -> str:
        raw = normalize_crlf(envelope.original_content or b"")
        peer = session.peer[0] if session.peer else "unknown"
        if self.cfg.faults:
            fault = await inject(self.cfg, "data", list(envelope.rcpt_tos), peer)
            if fault:
                return fault
        head = header_block(raw)
        if head.count(b"\r") != head.count(b"\r\n"):
            # RFC 5322 2.2: a bare CR has no place in a header, and parsers disagree on whether
            # it ends a line: "Subject: x\rBcc: y" would be one field here, two for others
            log.warning("%s: message refused: bare CR in its header", peer)
            return "554 5.6.0 Bare CR in the message header (RFC 5322 2.2): not accepted"
        hops = count_received(head)
        if hops >= self.cfg.mta.max_hops:
            log.warning("%s: message refused: %d Received headers (mail loop?)", peer, hops)
            return f"554 5.4.6 Too many hops ({hops} Received headers): mail loop?"
        listener = getattr(server, "listener", "smtp")
        user = getattr(envelope, "mail_auth", "")
        rcpts = list(envelope.rcpt_tos)
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from or ""
        as_sent = raw
        again = self.unsettled.take(digest(sender, rcpts, raw)) if self.unsettled else None
        if user:
            raw = submission_fixups(raw, self.cfg.server.hostname)
        tls = tls_description(server)
        qid = again or new_queue_id()
        trace = received_header(
            helo=session.host_name or "unknown", client_ip=peer, client_host=None,
            by=self.cfg.server.hostname, qid=qid, rcpt=rcpts[0] if len(rcpts) == 1 else None,
            protocol=protocol_name(session.extended_smtp, bool(tls), bool(user)), tls=tls)
        message = trace + raw
        body = "8BITMIME" if "BODY=8BITMIME" in envelope.mail_options else "7BIT"
        env = Envelope(sender=sender, recipients=rcpts, size=len(message),
                       body=body, smtputf8=bool(envelope.smtp_utf8), client_ip=peer,
                       client_helo=session.host_name or "", auth_user=user, tls=tls,
                       listener=listener)
        tried = again is not None  # the mda may hold copies under this queue id already
        outcome = None  # the recipients after a failed direct attempt
        if self.runner.direct_ok(rcpts):
            outcome = await self.runner.deliver_direct(qid, env, message, retry=tried)
            if outcome is None:
                log.info("%s: client=[%s], helo=%s, listener=%s%s%s, from=<%s>, size=%d, "
                         "nrcpt=%d (delivered)", qid, peer, session.host_name or "unknown",
                         listener, f", sasl_username={user}" if user else "",
                         f", tls={tls}" if tls else "", env.sender, len(message), len(rcpts))
                return f"250 2.0.0 Ok: queued as {qid}"
            tried = True
        try:
            entry = await self.spool.aput(message, env, qid, first_attempt_at=time.time(),
                                          backoff=self.runner.backoff(1), recipients=outcome)
        except OSError as exc:
            log.error("%s: queue write failed: %s", peer, exc)
            if tried:  # copies may exist: a retry of this message must not make them again
                self.unsettled.remember(digest(sender, rcpts, as_sent), qid)
                log.warning("%s: %s may be delivered in part: a retry reuses its queue id",
                            peer, qid)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return "452 4.3.1 Insufficient system storage, try again later"
            return "451 4.3.0 Queue write failed, try again later"
        log.info("%s: client=[%s], helo=%s, listener=%s%s%s, from=<%s>, size=%d, nrcpt=%d "
                 "(queued)", qid, peer, session.host_name or "unknown", listener,
                 f", sasl_username={user}" if user else "",
                 f", tls={tls}" if tls else "", env.sender, len(message), len(rcpts))
        entry.tried = tried
        self.runner.submit(entry)
        return f"250 2.0.0 Ok: queued as {qid}"
