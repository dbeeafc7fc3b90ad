"""Files made by the imap, pop3 and http daemons and by ``user token`` are private too
(SECURITY.md: mailbox metadata 0700/0600, ``tokens`` 0600, ``jmap-blobs/`` 0700,
``jmap-*.json`` 0600, ``queue/outcomes/`` 0700/0600): every daemon started as a fresh process
from a test whose own umask is permissive, then the same walk as test_file_modes."""

from __future__ import annotations

import asyncio
import imaplib
import os
import poplib
from pathlib import Path

import httpx

from mailstack.config import load
from mailstack.jmap.account import account_id
from mailstack.runtime.tls import client_context

from ..conftest import running, write_config
from ..e2e.helpers import mailstack
from .test_file_modes import wrong_modes

ALICE, BOB = "alice@example.test", "bob@example.test"
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail",
         "urn:ietf:params:jmap:submission", "urn:ietf:params:jmap:vacationresponse"]


def _imap_and_pop3(cfg) -> None:
    with imaplib.IMAP4("127.0.0.1", cfg.port("imap", "imap"), timeout=15) as imap:
        imap.login(ALICE, "pw")
        assert imap.create("Work")[0] == "OK"
        assert imap.append("INBOX", None, None, b"Subject: kw\r\n\r\nx\r\n")[0] == "OK"
        imap.select("INBOX")
        assert imap.store("1", "+FLAGS", "(kw1)")[0] == "OK"
        assert imap.select("Work")[0] == "OK"
    pop = poplib.POP3("127.0.0.1", cfg.port("pop3", "pop3"), timeout=15)
    pop.user(BOB)
    pop.pass_("pw")
    pop.quit()


async def _jmap(cfg) -> None:
    aid = account_id(ALICE)
    async with httpx.AsyncClient(
            base_url=f"https://localhost:{cfg.port('http', 'https')}", auth=(ALICE, "pw"),
            verify=client_context(cfg.data_dir / "tls" / "ca.pem"), timeout=30) as c:
        async def call(name: str, args: dict) -> dict:
            r = await c.post("/jmap/api", json={"using": USING, "methodCalls": [
                [name, {"accountId": aid, **args}, "0"]]})
            assert r.status_code == 200, r.text
            (resp,) = r.json()["methodResponses"]
            assert resp[0] == name, resp
            return resp[1]

        r = await c.post(f"/jmap/upload/{aid}/", content=b"a blob")
        assert r.status_code == 201, r.text
        ident = (await call("Identity/get", {}))["list"][0]["id"]
        assert (await call("Identity/set", {"update": {ident: {"name": "Alice"}}}))["updated"]
        drafts = (await call("Mailbox/query", {"filter": {"role": "drafts"}}))["ids"][0]
        eid = (await call("Email/set", {"create": {"d": {
            "mailboxIds": {drafts: True}, "from": [{"email": ALICE}], "to": [{"email": BOB}],
            "subject": "modes", "textBody": [{"partId": "1"}],
            "bodyValues": {"1": {"value": "hi"}}}}}))["created"]["d"]["id"]
        got = await call("EmailSubmission/set", {"create": {"s": {"identityId": ident,
                                                                    "emailId": eid}}})
        assert "s" in got["created"], got
        got = await call("VacationResponse/set", {"update": {"singleton": {
            "isEnabled": True, "subject": "away", "textBody": "back soon"}}})
        assert got["updated"] == {"singleton": None}, got


async def test_every_daemon_and_user_token_create_private_files(tmp_path: Path) -> None:
    old = os.umask(0o022)  # what a typical login shell has; fresh processes inherit it
    try:
        config = write_config(tmp_path)
        conf = str(config)
        for user in (ALICE, BOB):
            mailstack("user", "add", user, "--password-stdin", "--config", conf, input="pw\n")
        mailstack("user", "token", ALICE, "--config", conf)
        cfg = load(config, env={})
        async with running("mda", cfg, launcher="subprocess"), \
                running("mta", cfg, launcher="subprocess"), \
                running("imap", cfg, launcher="subprocess"), \
                running("pop3", cfg, launcher="subprocess"), \
                running("http", cfg, launcher="subprocess"):
            await asyncio.to_thread(_imap_and_pop3, cfg)
            await _jmap(cfg)
            bob = cfg.data_dir / "mail" / "example.test" / "bob"
            deadline = asyncio.get_running_loop().time() + 30
            while not any((bob / "new").iterdir()) or not any(
                    (cfg.data_dir / "queue" / "outcomes").glob("*")):
                assert asyncio.get_running_loop().time() < deadline, "no submission outcome"
                await asyncio.sleep(0.05)
    finally:
        os.umask(old)
    data = cfg.data_dir
    alice = data / "mail" / "example.test" / "alice"
    for must in ("tokens", "queue/outcomes", "mail/example.test/alice/.Work",
                 "mail/example.test/alice/mailstack-index.sqlite",
                 "mail/example.test/alice/dovecot-keywords",
                 "mail/example.test/alice/jmap-blobs"):
        assert (data / must).exists(), (must, sorted(p.name for p in alice.iterdir()))
    assert list(alice.glob("jmap-*.json")), sorted(p.name for p in alice.iterdir())
    assert not (wrong := wrong_modes(data)), "\n".join(wrong)
