"""The SMTP command line limit stays per session: many EHLOs on earlier connections (each
raises MAIL's limit by 36 for SIZE and SMTPUTF8) never lift a later client's limit. Sessions
are built as copies of a template (``smtp/factory.py``); aiosmtpd keeps the limits on its
class. Real mta process, raw socket client."""

from __future__ import annotations

import asyncio

from .conftest import Stack
from .test_bad_input import Client


async def _session(stack: Stack) -> Client:
    r, w = await asyncio.open_connection("127.0.0.1", stack.smtp)
    c = Client(r, w)
    assert (await c.reply()).startswith("220")
    assert (await c.cmd("EHLO client.example.org")).startswith("250")
    return c


async def test_earlier_sessions_do_not_raise_the_command_line_limit(stack: Stack) -> None:
    for _ in range(4):  # 4 x 36 would take MAIL's limit to 656 if it were shared
        c = await _session(stack)
        c.close()
    c = await _session(stack)
    line = "MAIL FROM:<" + "a" * 570 + "@example.org>"  # 594 octets with CRLF: over 548
    assert (await c.cmd(line)).startswith("500")
    within = "MAIL FROM:<" + "a" * 500 + "@example.org>"  # 524: within 512 + 36
    assert (await c.cmd(within)).startswith("501 5.1.7")  # parsed: the address is too long
    c.close()
