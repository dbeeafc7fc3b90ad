"""AUTHENTICATE LOGIN (Thunderbird's fallback mechanism) and UNAUTHENTICATE (RFC 8437)."""

from __future__ import annotations

import asyncio
import base64
import imaplib

from tests.imap.conftest import PASSWORD, USER, Raw, message, ok


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_authenticate_login_with_imaplib(imap) -> None:
    def run() -> tuple[str, list[bytes]]:
        c = imaplib.IMAP4("127.0.0.1", imap.port, timeout=10)
        assert "AUTH=LOGIN" in c.capabilities
        prompts: list[bytes] = []

        def answer(challenge: bytes) -> bytes:
            prompts.append(challenge)
            return (USER if challenge == b"Username:" else PASSWORD).encode()

        typ, _ = c.authenticate("LOGIN", answer)
        c.select("INBOX")
        c.logout()
        return typ, prompts

    typ, prompts = await asyncio.to_thread(run)
    assert typ == "OK" and prompts == [b"Username:", b"Password:"], (typ, prompts)


async def test_authenticate_login_raw_with_initial_response_and_failures(imap) -> None:
    c = await Raw.connect(imap)
    await c.send(f"a AUTHENTICATE LOGIN {b64(USER)}\r\n")
    assert await c.line() == b"+ " + base64.b64encode(b"Password:") + b"\r\n"
    await c.send(b64("wrong") + "\r\n")
    line = await c.line()
    assert line.startswith(b"a NO [AUTHENTICATIONFAILED]"), line
    await c.send("b AUTHENTICATE LOGIN\r\n")
    assert await c.line() == b"+ " + base64.b64encode(b"Username:") + b"\r\n"
    await c.send("*\r\n")  # cancelled
    assert (await c.line()).startswith(b"b BAD"), "cancel"
    await c.send("c AUTHENTICATE LOGIN\r\n")
    await c.line()
    await c.send("not base64!\r\n")
    assert (await c.line()).startswith(b"c BAD")
    lines = await c.cmd("d", f"AUTHENTICATE LOGIN {b64(USER)}\r\n{b64(PASSWORD)}")
    assert lines[-1].startswith(b"d OK"), lines
    log = imap.log()
    assert PASSWORD not in log and b64(PASSWORD) not in log, log


async def test_unauthenticate_returns_to_not_authenticated(imap) -> None:
    imap.deliver(message("u"))
    c = await Raw.connect(imap)
    ok(await c.cmd("a", f"LOGIN {USER} {PASSWORD}"), "a")
    assert b" UNAUTHENTICATE" in ok(await c.cmd("b", "CAPABILITY"), "b")[0]
    ok(await c.cmd("e", "ENABLE QRESYNC"), "e")
    ok(await c.cmd("s", "SELECT INBOX"), "s")
    ok(await c.cmd("u", "UNAUTHENTICATE"), "u")
    caps = ok(await c.cmd("c", "CAPABILITY"), "c")[0]
    assert b"AUTH=PLAIN" in caps and b"UNAUTHENTICATE" not in caps, caps
    for tag, command in (("f", "FETCH 1 FLAGS"), ("g", "SELECT INBOX"), ("h", "UNAUTHENTICATE")):
        r = await c.cmd(tag, command)
        assert r[-1].startswith(f"{tag} BAD".encode()), r
    ok(await c.cmd("i", f"LOGIN {USER} {PASSWORD}"), "i")
    lines = await c.cmd("j", "SELECT INBOX (QRESYNC (1 1))")
    assert lines[-1].startswith(b"j BAD"), lines  # ENABLE does not outlive the login
    lines = ok(await c.cmd("k", "SELECT INBOX"), "k")
    assert b"* 1 EXISTS\r\n" in lines
