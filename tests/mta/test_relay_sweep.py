"""Open-relay and injection sweep: no address trick relays without AUTH, on any listener."""

from __future__ import annotations

import base64

import pytest

from .conftest import Stack
from .test_bad_input import Client

TRICKS = [
    "bob@example.net", "bob%example.net@example.test", '"bob@example.net"@example.test',
    "@example.test:bob@example.net", "@a.example,@example.test:bob@example.net",
    "bob@example.net@example.test", "example.net!bob@example.test", "bob@[127.0.0.1]",
    "bob@bücher.example", "bob@example.net.", '"bob%example.net"@example.test',
    "bob@example.net\r\nRCPT TO:<x@example.net>",
]


@pytest.mark.parametrize("trick", TRICKS)
async def test_port_25_never_relays(stack: Stack, trick: str) -> None:
    c = await Client.connect(stack.smtp)
    await c.cmd("EHLO x")
    assert (await c.cmd("MAIL FROM:<a@example.org>")).startswith("250")
    reply = await c.cmd(f"RCPT TO:<{trick}>\r\n".encode())
    assert reply[:1] == "5", (trick, reply)
    for _ in range(trick.count("\r\n")):  # an injected line is its own (refused) command
        injected = await c.reply()
        assert injected[:1] == "5", (trick, injected)
    assert (await c.cmd("DATA"))[:3] in ("503", "554"), "no recipient was accepted"
    c.close()


@pytest.mark.parametrize("port_name", ["submission", "submissions"])
async def test_submission_without_auth_refuses_everything(stack: Stack, port_name: str) -> None:
    port = getattr(stack, port_name)
    c = await Client.connect(port, stack.ssl if port_name == "submissions" else None)
    await c.cmd("EHLO x")
    if port_name == "submission":
        await c.starttls(stack.ssl)
        await c.cmd("EHLO x")
    assert (await c.cmd("MAIL FROM:<alice@example.test>")).startswith("530")
    for trick in TRICKS[:4]:
        assert (await c.cmd(f"RCPT TO:<{trick}>"))[:1] == "5"
    c.close()


async def test_crlf_in_auth_identity_does_not_become_a_command(stack: Stack) -> None:
    c = await Client.connect(stack.submissions, stack.ssl)
    await c.cmd("EHLO x")
    blob = base64.b64encode(b"\0alice@example.test\r\nMAIL FROM:<evil@x>\0alice-pw").decode()
    assert (await c.cmd(f"AUTH PLAIN {blob}")).startswith("535")
    assert (await c.cmd("RCPT TO:<bob@example.net>")).startswith(("503", "530"))
    c.close()
