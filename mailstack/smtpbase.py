"""What the mta's SMTP and the mda's LMTP protocol classes share on top of aiosmtpd.

- Every reply passes through ``smtpreply.enhance`` (enhanced status codes), except the
  EHLO/HELO/LHLO replies, which RFC 2034 leaves without them.
- Paths in MAIL/RCPT are split by ``address.split_path`` (strict RFC 5321 syntax, a fraction
  of the cost of aiosmtpd's RFC 5322 header parser).
"""

from __future__ import annotations

from typing import Any

from .address import split_path
from .smtpreply import enhance


class ProtocolMixin:
    """Mix in before aiosmtpd's ``SMTP``/``LMTP`` class."""

    _plain_reply = False

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and not self._plain_reply:
            status = enhance(status)
        await super().push(status)  # type: ignore[misc]

    async def _greeting_reply(self, method: Any, arg: str) -> None:
        self._plain_reply = True
        try:
            await method(arg)
        finally:
            self._plain_reply = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """(address, parameters); ``"<>"`` for the null path; (None, None) when malformed."""
        if not arg:
            return "", ""
        split = split_path(arg)
        if split is None:
            return None, None
        path, params = split
        return (path or "<>"), params
