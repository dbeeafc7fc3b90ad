"""HTTP authentication: Basic against the users file, Bearer with app tokens.

Passwords travel only over TLS or on a listener in ``[server] plaintext_login_networks``
(loopback by default), as IMAP's LOGINDISABLED. Failures count in the failed-login throttle
shared with SMTP, IMAP and POP3 (and are delayed like theirs). A verified password is not
hashed again on every request: :meth:`UserDB.authenticate` remembers it, keyed by address,
password and stored hash, so a changed password misses at once.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass

from ..accounts.authlimit import AuthThrottle
from ..accounts.tokens import TokenDB
from ..accounts.users import UserDB, UserError, normalize_address
from ..config import Config
from ..runtime.netserver import in_networks


@dataclass(frozen=True)
class AuthResult:
    address: str | None  # the login, or None
    status: int = 200  # 401 (no or bad credentials) or 403 (not over plain HTTP here)
    reason: str = ""


class Authenticator:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.users = UserDB(cfg.data_dir / "users")
        self.tokens = TokenDB(cfg.data_dir / "tokens")
        self.throttle = AuthThrottle.for_config(cfg)
        self.networks = [ipaddress.ip_network(n, strict=False)
                         for n in cfg.server.plaintext_login_networks]

    def login_allowed(self, scheme: str, local: str | None) -> bool:
        """Credentials may be sent here: HTTPS, or plain HTTP on a plaintext-login network."""
        if scheme == "https":
            return True
        return bool(local) and in_networks(str(local), self.networks)

    async def check(self, header: str | None, scheme: str, local: str | None,
                    client: str) -> AuthResult:
        if not header:
            return AuthResult(None, 401, "authentication required")
        if not self.login_allowed(scheme, local):
            return AuthResult(None, 403, "credentials are accepted over HTTPS only")
        kind, _, value = header.partition(" ")
        kind = kind.lower()
        if kind == "basic":
            try:
                user, sep, password = base64.b64decode(value.strip(), validate=True).decode(
                    "utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return AuthResult(None, 401, "malformed Basic credentials")
            if not sep:
                return AuthResult(None, 401, "malformed Basic credentials")
            try:
                addr = normalize_address(user) if user == user.strip() else ""
            except UserError:
                addr = ""
            if addr and await self.users.authenticate(addr, password):
                await self.throttle.record_success(client)
                return AuthResult(addr)
            await self.throttle.fail(client, user, "http")
            return AuthResult(None, 401, "authentication failed")
        if kind == "bearer":
            owner = self.tokens.owner(value.strip())
            if owner is not None and self.users.exists(owner):
                return AuthResult(owner)
            await self.throttle.fail(client, "(token)", "http")
            return AuthResult(None, 401, "authentication failed")
        return AuthResult(None, 401, "use Basic or Bearer authentication")

    def close(self) -> None:
        self.throttle.close()
