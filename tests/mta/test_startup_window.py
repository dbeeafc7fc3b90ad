"""Mail the mta takes before the mda listens is retried every second during the mta's first
30 s (README: containers started side by side), whatever ``retry_initial`` says."""

from __future__ import annotations

import asyncio
import json
import smtplib

from mailstack.mta.runner import STARTUP_WINDOW

from ..conftest import running
from ..e2e.helpers import mailstack
from .conftest import make_stack

SLOW = '[mta]\nretry_initial = "1h"\nretry_max = "1h"\n'


def _queue(cfg) -> list[dict]:
    out = mailstack("queue", "list", "--json", "--config", str(cfg.source)).stdout
    return json.loads(out)


async def test_mail_before_the_mda_listens_is_retried_every_second(config_factory) -> None:
    cfg = config_factory(SLOW)
    stack = make_stack(cfg)
    async with running("mta", cfg) as mta:
        def send() -> None:
            with smtplib.SMTP("127.0.0.1", stack.smtp, timeout=15) as s:
                s.sendmail("carol@example.org", ["bob@example.test"],
                           b"Subject: early\r\n\r\nbefore the mda\r\n")
        await asyncio.to_thread(send)  # 250: queued after the failed direct attempt
        # attempts keep coming (a lower bound, no clock): with retry_initial = 1h there would
        # be one in the first hour without the start-up window
        # and the next one, on the entry's own clock, is within the window, not an hour away.
        # The state on disk is saved before each attempt dials (next attempt: an hour away)
        # and again after it failed (a second away): read until the second kind shows.
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            (entry,) = await asyncio.to_thread(_queue, cfg)
            if entry["attempts"] >= 3 and \
                    entry["next_attempt"] <= entry["arrived"] + STARTUP_WINDOW + 2:
                break
            assert asyncio.get_running_loop().time() < deadline, (entry, mta.log())
            await asyncio.sleep(0.2)
        assert entry["recipients"][0]["status"] == "pending"
        assert stack.messages("bob@example.test") == []
        async with running("mda", cfg):
            got = await stack.wait_messages("bob@example.test", 1, timeout=30)
            assert len(got) == 1 and b"before the mda" in got[0], mta.log()
            await mta.wait_log(": removed")
    assert "flush requested" not in mta.log()
