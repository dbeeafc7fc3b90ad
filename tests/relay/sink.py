"""A scripted SMTP peer (aiosmtpd) standing in for other MTAs on the Internet."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


@dataclass
class Received:
    sender: str
    rcpts: list[str]
    data: bytes
    tls: bool
    mail_options: list[str]


@dataclass
class Script:
    """How the sink misbehaves. Recipient rules match on the local part."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)  # local part → reply
    data_reply: str | None = None  # e.g. "451 4.3.0 try later"
    temp_failures_left: int = 0  # answer DATA with 451 this many times, then accept
    drop_in_data: int = 0  # close the connection during DATA this many times
    stall: float = 0.0  # sleep this long before answering MAIL
    size: int | None = None
    smtputf8: bool = False  # offer SMTPUTF8 in EHLO
    #: offer AUTH (after STARTTLS when the sink has TLS) and accept only this login/password
    auth: tuple[str, str] | None = None


class SinkHandler:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.messages: list[Received] = []
        self.connections = 0  # opened in all
        self.active = 0  # open now
        self.max_active = 0  # most open at once
        self.mail_times: list[float] = []  # time.time() of every MAIL command
        self.logins: list[tuple[str, str, bool]] = []  # AUTH attempts: login, password, TLS?

    def authenticate(self, server, session, envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password, server._tls_protocol is not None))
        return AuthResult(success=(login, password) == self.script.auth, handled=False)

    async def handle_MAIL(self, server, session, envelope, address, options) -> str:
        self.mail_times.append(time.time())
        if self.script.stall:
            await asyncio.sleep(self.script.stall)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:
        local = address.partition("@")[0]
        reply = self.script.rcpt_replies.get(local)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.script.drop_in_data:
            self.script.drop_in_data -= 1
            server.transport.close()
            return "421 4.3.0 going away"
        if self.script.temp_failures_left:
            self.script.temp_failures_left -= 1
            return "451 4.3.0 try again later"
        if self.script.data_reply:
            return self.script.data_reply
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content,
                                      server._tls_protocol is not None,
                                      list(envelope.mail_options)))
        return "250 2.0.0 queued at the sink"


class Sink:
    def __init__(self, script: Script | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.script = script or Script()
        self.handler = SinkHandler(self.script)
        self.tls = tls
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1") -> Sink:
        loop = asyncio.get_running_loop()

        handler = self.handler
        script = self.script
        auth: dict[str, Any] = {}
        if script.auth:
            auth = dict(authenticator=handler.authenticate, auth_require_tls=self.tls is not None,
                        auth_exclude_mechanism=["LOGIN"])

        class Counted(SMTP):
            _counted = True

            def connection_lost(self, exc: Exception | None) -> None:
                if self._counted:
                    self._counted = False
                    handler.active -= 1
                super().connection_lost(exc)

        def factory() -> Any:
            handler.connections += 1
            handler.active += 1
            handler.max_active = max(handler.max_active, handler.active)
            return Counted(handler, hostname="sink.example.net", tls_context=self.tls,
                           data_size_limit=script.size, enable_SMTPUTF8=script.smtputf8, **auth)

        self.server = await loop.create_server(factory, host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server:
            self.server.close()

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    async def wait(self, n: int, timeout: float = 15.0) -> list[Received]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.messages) < n and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return self.messages
