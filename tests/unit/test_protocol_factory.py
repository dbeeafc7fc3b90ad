"""ProtocolFactory: a copied protocol is what aiosmtpd's own constructor would have built."""

from __future__ import annotations

import asyncio
from types import MethodType
from typing import Any

from mailstack.mta.smtp import MailstackSMTP
from mailstack.smtp.factory import ProtocolFactory


class Handler:
    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"

    async def auth_CUSTOM(self, server: Any, args: list[str]) -> None:
        return None


def _same(a: Any, b: Any, fresh: object, copy: object) -> bool:
    """``a`` (of a freshly constructed instance) and ``b`` (of a copy) are equivalent."""
    if isinstance(a, MethodType):
        owner = copy if a.__self__ is fresh else a.__self__
        return isinstance(b, MethodType) and a.__func__ is b.__func__ and b.__self__ is owner
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            _same(a[k], b[k], fresh, copy) for k in a)
    if isinstance(a, tuple):
        return type(a) is type(b) and len(a) == len(b) and all(
            _same(x, y, fresh, copy) for x, y in zip(a, b, strict=True))
    if isinstance(a, asyncio.StreamReader | asyncio.Future):
        return type(a) is type(b) and a is not b
    return bool(a == b) or (callable(a) and a is b)


def _check(build: Any) -> None:
    async def run() -> None:
        factory = ProtocolFactory(build)
        first, second = factory(), factory()
        fresh = build()
        for copy in (first, second):
            assert type(copy) is type(fresh)
            assert vars(copy).keys() == vars(fresh).keys()
            for key, value in vars(fresh).items():
                if key == "_stream_reader_wr":  # a weak reference to its own reader
                    assert copy._stream_reader_wr() is copy._strong_reader
                    continue
                assert _same(value, vars(copy)[key], fresh, copy), key
        # nothing shared between two connections that one of them could change
        assert first._strong_reader is not second._strong_reader
        assert first._smtp_methods is not second._smtp_methods
        # the per-command line limits are each session's own (EHLO raises MAIL's)
        first.command_size_limits["MAIL"] += 36
        assert second.command_size_limits["MAIL"] == fresh.command_size_limits["MAIL"] == 512
        assert second.command_size_limits["RCPT"] == 512  # the default is kept
        assert first._smtp_methods["EHLO"].__self__ is first
        assert second._auth_methods["PLAIN"].method.__self__ is second
        assert second._auth_methods["CUSTOM"].method.__self__ is first.event_handler
    asyncio.run(run())


def test_a_copied_smtp_protocol_equals_a_constructed_one() -> None:
    handler = Handler()
    _check(lambda: MailstackSMTP(handler, listener="smtp", hostname="mx.example.test",
                                 ident="mailstack ESMTP", enable_SMTPUTF8=True,
                                 decode_data=False, auth_required=False, timeout=300.0))

