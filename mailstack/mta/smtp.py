"""The mta's SMTP protocol: aiosmtpd's ``SMTP`` with the behaviour real clients expect.

- Every reply carries an enhanced status code (see ``smtpreply.enhance``).
- AUTH LOGIN uses the standard prompts ``334 VXNlcm5hbWU6`` / ``334 UGFzc3dvcmQ6`` (Thunderbird
  understands no others); AUTH PLAIN and LOGIN check the password in a worker thread (argon2)
  and failures are answered after a delay that grows per client and per account.
- Listener roles: ``smtp`` (25: MX, STARTTLS offered, AUTH optional after TLS), ``submission``
  (587: STARTTLS required, then AUTH), ``submissions`` (465: implicit TLS, AUTH required).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import ssl
from base64 import b64decode
from dataclasses import dataclass
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, syntax

from ..runtime.netserver import starttls
from ..smtp.address import AddressError, parse_mailbox, split_path
from ..smtp.base import ProtocolMixin

log = logging.getLogger("mailstack.mta")

_chatter = logging.getLogger("mail.log")
_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log_if_enabled(func: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd logs every command line through ``sanitized_log`` (a regex over the line to
    mask AUTH data) at debug and info level; the daemons keep ``mail.log`` at ERROR, so
    skip the masking when nothing would be logged (two calls a command)."""
    if _chatter.isEnabledFor(logging.INFO):
        _sanitized_log(func, msg, *args, **kwargs)


aiosmtpd.smtp.sanitized_log = _sanitized_log_if_enabled


@dataclass(frozen=True)
class ErrorLimits:
    """Postfix's smtpd_soft/hard_error_limit: beyond ``soft`` errors in a session each error
    reply waits ``delay`` times the errors beyond ``soft``; at ``hard`` the session ends."""

    soft: int = 3
    hard: int = 20
    delay: float = 1.0


class MailstackSMTP(ProtocolMixin, SMTP):
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(self, handler: Any, *, listener: str,
                 error_limits: ErrorLimits = ErrorLimits(), **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.listener = listener
        self.error_limits = error_limits
        self.errors = 0
        self.committing = False  # the DATA hook is writing the message to the queue

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command != "DATA":
            return await super()._call_handler_hook(command, *args)
        self.committing = True
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            self.committing = False

    async def shut_down(self, grace: float) -> None:
        """The mta is stopping: a message being queued gets its reply first (up to ``grace``
        seconds), then the client gets ``421`` (RFC 5321 §3.8) and the connection is closed —
        also in the middle of DATA, where the client then knows the message was not taken."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.committing and loop.time() < deadline:
            await asyncio.sleep(0.01)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        peer = self.session.peer if self.session else None
        log.info("%s: mta stopping: 421 to the client", peer[0] if peer else "?")
        with contextlib.suppress(Exception):
            transport.write(b"421 4.3.2 mailstack shutting down, try again later\r\n")
        transport.close()

    async def push(self, status: Any) -> None:
        """Count error replies: slow a client down that collects them (address probing,
        password guessing, fuzzing) and disconnect it at the hard limit."""
        code = status[:3] if isinstance(status, str) else ""
        if code[:1] not in ("4", "5") or code == "421" or self.transport is None:
            await super().push(status)
            return
        if self.transport.is_closing():
            return  # disconnected at the hard limit: commands still buffered get no reply
        self.errors += 1
        limits = self.error_limits
        if self.errors > limits.soft and limits.delay > 0:
            await asyncio.sleep(limits.delay * (self.errors - limits.soft))
        await super().push(status)
        if self.errors >= limits.hard and self.transport is not None:
            peer = self.session.peer if self.session else None
            log.warning("%s: too many errors (%d): disconnecting", peer[0] if peer else "?",
                        self.errors)
            await super().push("421 4.7.0 Too many errors, closing connection")
            self.transport.close()

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._greeting_reply(super().smtp_EHLO, hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        await self._greeting_reply(super().smtp_HELO, hostname)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self._path_ok(arg, "FROM:", null_ok=True):
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._path_ok(arg, "TO:", null_ok=False):
            return
        await super().smtp_RCPT(arg)

    async def _path_ok(self, arg: str | None, keyword: str, null_ok: bool) -> bool:
        """Strict RFC 5321 path syntax; aiosmtpd's parser is lenient (it accepts
        ``<no spaces@x>`` as ``"no spaces"@x``)."""
        if not arg or arg[: len(keyword)].upper() != keyword:
            return True  # aiosmtpd answers the syntax error itself
        if self.session is None or not self.session.host_name:
            return True  # ditto: 503 send HELO first
        split = split_path(arg[len(keyword):])
        code = "5.1.7" if keyword == "FROM:" else "5.1.3"
        if split is None:
            await self.push(f"501 {code} Bad address syntax: expected <local@domain>")
            return False
        path, _ = split
        if not path and null_ok:
            return True
        if not null_ok and path.lower() == "postmaster":
            return True  # RFC 5321 §4.1.1.3: <Postmaster> without a domain
        try:
            parse_mailbox(path)
        except AddressError as exc:
            await self.push(f"501 {code} Bad address syntax: {exc}")
            return False
        return True

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        """RFC 3207 STARTTLS through ``loop.start_tls`` (uvloop's own TLS layer).

        aiosmtpd wraps the transport in asyncio's pure-Python ``SSLProtocol`` itself; under
        uvloop that kept 2.5-3 KiB of C memory per upgraded connection for good (measured over
        6,000 connections); ``start_tls`` keeps none. Whatever the client pipelined behind the
        command is discarded (RFC 3207 §4.2; the CVE-2011-0411 injection), and the session
        starts afresh, as after a new connection.
        """
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if not self.tls_context or self._tls_protocol is not None:
            await self.push("454 4.7.0 TLS not available" if not self.tls_context
                            else "503 5.5.1 TLS already active")
            return
        peer = self.session.peer if self.session else None
        buffered = self._reader._buffer  # type: ignore[attr-defined]
        dropped = len(buffered)
        buffered.clear()  # before the 220, which is held back while input is pending
        await self.push("220 2.0.0 Ready to start TLS")
        try:
            dropped += await starttls(self._reader, self._writer, self.tls_context,
                                      timeout=self.handshake_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("%s: TLS handshake failed: %s", peer[0] if peer else "?", exc)
            if self.transport is not None:
                self.transport.close()
            return
        if dropped:
            log.warning("%s: discarded %d octets pipelined after STARTTLS",
                        peer[0] if peer else "?", dropped)
        transport = self._writer.transport
        self.transport = transport
        self._tls_protocol = transport  # aiosmtpd tests it for "TLS is on"
        self._set_rset_state()
        self.session = self._create_session()
        self.session.peer = peer
        self.session.ssl = {key: transport.get_extra_info(key) for key in
                            ("sslcontext", "ssl_object", "peercert", "cipher", "compression")}
        self._reset_timeout()
        hook = self._handle_hooks.get("STARTTLS")
        self._tls_handshake_okay = True if hook is None else hook(self, self.session,
                                                                    self.envelope)

    # -- AUTH -------------------------------------------------------------------------------
    async def smtp_AUTH(self, arg: str) -> None:
        """RFC 4954 §4: AUTH during a mail transaction gets ``503``: the sender and the relay
        decision were taken for the client as it was at MAIL."""
        if self.envelope is not None and self.envelope.mail_from is not None:
            await self.push("503 5.5.1 AUTH not permitted during a mail transaction")
            return
        await super().smtp_AUTH(arg)

    async def _client_response(self, args: list[str], challenge: str) -> bytes | None:
        """The SASL initial response, or the answer to a challenge; None when aborted/bad."""
        if len(args) > 1:
            try:
                return b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Cannot decode base64")
                return None
        blob = await self.challenge_auth(challenge)
        return None if blob is MISSING else blob  # type: ignore[return-value]

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        blob = await self._client_response(args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 AUTH PLAIN wants authzid NUL authcid NUL password")
            return AuthResult(success=False, handled=True)
        return await self._check(parts[1], parts[2], "PLAIN", authzid=parts[0])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        user = await self._client_response(args, self.AuthLoginUsernameChallenge)
        if user is None:
            return AuthResult(success=False, handled=True)
        password = await self._client_response(["LOGIN"], self.AuthLoginPasswordChallenge)
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._check(user, password, "LOGIN")

    async def _check(self, user_b: bytes, pw_b: bytes, mech: str,
                     authzid: bytes = b"") -> AuthResult:
        handler = self.event_handler
        peer = self.session.peer[0] if self.session and self.session.peer else "unknown"
        try:
            user, password = user_b.decode("utf-8"), pw_b.decode("utf-8")
            authz = authzid.decode("utf-8")
        except UnicodeDecodeError:
            user, password, authz = "?", "", ""
        if authz and authz.lower() != user.lower():
            ok = False  # acting as someone else is not supported
        else:
            ok = bool(user) and await handler.users.authenticate(user, password)
        if not ok:
            await handler.throttle.fail(peer, user, f"smtp {mech}")
            return AuthResult(success=False, handled=False)
        await handler.throttle.record_success(peer)
        log.info("%s: sasl_method=%s, sasl_username=%s", peer, mech, user.lower())
        return AuthResult(success=True, auth_data=user.lower())
