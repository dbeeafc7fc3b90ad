"""``[mta] direct_delivery = 0`` always queues first (the queue's fsync before ``250``), and
capture mode never delivers inside the transaction (README: "`0`: always queue first (not in
capture mode)")."""

from __future__ import annotations

import asyncio
import smtplib

import pytest

from ..conftest import running
from .conftest import make_stack


def _send(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example.org")
        assert s.mail("carol@example.org")[0] == 250
        assert s.rcpt("bob@example.test")[0] == 250
        code, text = s.data(b"Subject: queue first\r\n\r\nthrough the queue\r\n")
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


@pytest.mark.parametrize("extra,where", [
    ("[mta]\ndirect_delivery = 0\n", "bob@example.test"),
    ('[capture]\nenabled = true\n', "capture@capture.test"),
], ids=["direct_delivery_0", "capture_mode"])
async def test_local_mail_goes_through_the_queue(config_factory, extra: str, where: str) -> None:
    cfg = config_factory(extra)
    st = make_stack(cfg)
    async with running("mda", cfg), running("mta", cfg) as mta:
        qid = await asyncio.to_thread(_send, st.smtp)
        log = await mta.wait_log(f"{qid}: removed")
        assert f"{qid}: client=" in log
        (line,) = [x for x in log.splitlines() if f"{qid}: client=" in x]
        assert line.endswith("nrcpt=1 (queued)"), line
        assert "direct delivery" not in log, log
        got = await st.wait_messages(where, 1)
        assert len(got) == 1 and b"through the queue" in got[0]
