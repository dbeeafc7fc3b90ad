"""Vacation replies (RFC 3834) never go where they would loop or scatter: to the null sender,
mailer daemons and list robots, bulk mail, mail that names the account only in the envelope
(a Bcc copy), or outside the response's dates. The reply itself has a null envelope sender.

Mail arrives over port 25 (smtplib) through the real mta and mda. Every sender that must get
no reply is an account of its own, so a wrong reply would land in its Maildir; each refusal
is awaited in the mda's log before the next step, and one normal message at the end proves
replies do go out."""

from __future__ import annotations

import asyncio
import smtplib
import time

from mailstack.config import Config
from mailstack.store.maildir import Maildir, mailbox_path
from tests.conftest import add_user, running

from .conftest import ALICE, BOB, JMAP

#: envelope sender, extra header lines, To, the reason the mda logs
REFUSED = [
    ("mailer-daemon@example.test", "", ALICE, "an automatic sender"),
    ("owner-x@example.test", "", ALICE, "an automatic sender"),
    ("list-request@example.test", "", ALICE, "an automatic sender"),
    ("erin@example.test", "Precedence: bulk\r\n", ALICE, "bulk mail"),
    ("dave@example.test", "", "carol@example.test", "the account is not in To or Cc"),
]


def smtp_send(cfg: Config, sender: str, extra: str, to: str, subject: str) -> None:
    """One message to alice over port 25 (no AUTH: local delivery)."""
    frm = sender or "robot@example.test"
    data = (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n{extra}\r\n"
            "hello\r\n").encode()
    with smtplib.SMTP("127.0.0.1", cfg.port("mta", "smtp"), timeout=30) as s:
        assert s.sendmail(sender, [ALICE], data) == {}


def files(cfg: Config, address: str) -> list[bytes]:
    box = Maildir(mailbox_path(cfg.data_dir, address))
    return [p.read_bytes() for sub in ("new", "cur") for p in (box.root / sub).iterdir()]


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


async def vacation(jmap: JMAP, **dates: str | None) -> None:
    got = await jmap.one("VacationResponse/set", {"update": {"singleton": {
        "isEnabled": True, "subject": "Away", "textBody": "back soon", **dates}}})
    assert got["updated"] == {"singleton": None}, got


async def test_no_reply_to_robots_bulk_bcc_or_outside_the_dates(jmap: JMAP) -> None:
    cfg = jmap.cfg
    senders = [s for s, *_ in REFUSED if s] + ["gina@example.test", "hank@example.test"]
    for address in senders:
        add_user(cfg, address)
    await vacation(jmap)
    async with running("mda", cfg) as mda, running("mta", cfg):
        # the null sender: the mda does not even look at the response (no log line of its
        # own); a reply would be logged "reply to <> queued", checked at the end
        await asyncio.to_thread(smtp_send, cfg, "", "", ALICE, "bounce")
        await mda.wait_log("status=delivered", 30)
        for n, (sender, extra, to, reason) in enumerate(REFUSED, 1):
            await asyncio.to_thread(smtp_send, cfg, sender, extra, to, f"refused {n}")
            await mda.wait_log(f"vacation {ALICE}: no reply to <{sender}>: {reason}", 30)

        await vacation(jmap, fromDate=iso(86400), toDate=None)  # not yet
        await asyncio.to_thread(smtp_send, cfg, "gina@example.test", "", ALICE, "early")
        await mda.wait_log("no reply to <gina@example.test>: outside fromDate/toDate", 30)
        await vacation(jmap, fromDate=iso(-2 * 86400), toDate=iso(-86400))  # over
        await asyncio.to_thread(smtp_send, cfg, "hank@example.test", "", ALICE, "late")
        await mda.wait_log("no reply to <hank@example.test>: outside fromDate/toDate", 30)

        await vacation(jmap, fromDate=iso(-86400), toDate=iso(86400))  # now
        await asyncio.to_thread(smtp_send, cfg, BOB, "", ALICE, "normal")
        await mda.wait_log(f"vacation {ALICE}: reply to <{BOB}> queued", 30)

        async def replied() -> list[bytes]:
            return [f for f in files(cfg, BOB) if b"Auto-Submitted: auto-replied" in f]
        (answer,) = await jmap.wait_for(replied, 30)
    assert answer.startswith(b"Return-Path: <>\n"), answer[:200]  # the null envelope sender
    assert "reply to <> queued" not in mda.log()
    assert b"Subject: Away" in answer
    for address in senders:
        assert files(cfg, address) == [], address
    assert len(files(cfg, ALICE)) == len(REFUSED) + 4
