"""One mailbox, every face: IMAP announces JMAP (RFC 9698), a POP3 deletion is an Email
destroyed."""

from __future__ import annotations

import asyncio
import imaplib
import poplib

import httpx

from tests.conftest import running

from .conftest import ALICE, JMAP, PASSWORD, message


async def test_imap_getjmapaccess_names_the_session(jmap: JMAP, imap_daemon) -> None:
    def ask() -> tuple[bytes, list]:
        imap = imaplib.IMAP4("127.0.0.1", jmap.cfg.port("imap", "imap"), timeout=30)
        try:
            imap.login(ALICE, PASSWORD)
            _, caps = imap.capability()
            typ, _ = imap.xatom("GETJMAPACCESS")
            assert typ == "OK"
            return caps[0], imap.untagged_responses.get("GETJMAPACCESS", [])
        finally:
            imap.logout()

    caps, urls = await asyncio.to_thread(ask)
    assert b"JMAPACCESS" in caps.split()
    (url,) = urls
    port = jmap.cfg.port("http", "https")
    assert url == f'"https://mail.example.test:{port}/.well-known/jmap"'.encode()  # quoted
    async with httpx.AsyncClient(verify=jmap.ssl) as c:  # the same server, by its local name
        r = await c.get(url.decode().strip('"').replace("mail.example.test", "localhost"),
                        auth=(ALICE, PASSWORD))
        assert r.status_code == 200 and r.json()["username"] == ALICE


async def test_pop3_deletion_is_an_email_destroyed(jmap: JMAP) -> None:
    jmap.deliver(message("popped"))
    (eid,) = (await jmap.one("Email/query", {}))["ids"]
    state = (await jmap.one("Email/get", {"ids": []}))["state"]
    async with running("pop3", jmap.cfg):
        def pop() -> None:
            p = poplib.POP3("127.0.0.1", jmap.cfg.port("pop3", "pop3"), timeout=30)
            p.user(ALICE)
            p.pass_(PASSWORD)
            p.dele(1)
            p.quit()
        await asyncio.to_thread(pop)
    ch = await jmap.one("Email/changes", {"sinceState": state})
    assert ch["destroyed"] == [eid]
    assert (await jmap.one("Email/get", {"ids": [eid]}))["notFound"] == [eid]
