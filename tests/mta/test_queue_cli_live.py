"""``queue delete`` and ``queue flush`` act on the running mta at once (README: "it signals the
running mta"): with retries an hour away and outside the start-up window (the mda answers 4xx,
it is not down), a deleted entry is never delivered and the other arrives after the flush."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time

from mailstack.runtime import chaos

from ..conftest import running
from ..e2e.helpers import mailstack
from .conftest import make_stack

SLOW = ('[mta]\nretry_initial = "1h"\nretry_max = "1h"\n'
        '[chaos]\nfile = "run/chaos.json"\n')


def _send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example.org")
        refused = s.sendmail("carol@example.org", ["bob@example.test"],
                             f"Subject: {subject}\r\n\r\nbody of {subject}\r\n")
    assert refused == {}


def _queue(cfg) -> dict[str, dict]:
    out = mailstack("queue", "list", "--json", "--config", str(cfg.source)).stdout
    return {e["id"]: e for e in json.loads(out)}


async def test_delete_then_flush_act_on_the_running_mta(config_factory) -> None:
    cfg = config_factory(SLOW)
    st = make_stack(cfg)
    fault_file = cfg.data_dir / "run" / "chaos.json"
    fault = chaos.normalize({"at": "lmtp.data", "match": "bob@*",
                             "reply": "451 4.3.0 busy"})
    chaos.write(fault_file, [{**fault, "id": 1}], 0)
    async with running("mda", cfg), running("mta", cfg) as mta:
        await asyncio.to_thread(_send, st.smtp, "first")
        await asyncio.to_thread(_send, st.smtp, "second")
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # both deferred by the mda's 451, their next attempt an hour away
            queue = await asyncio.to_thread(_queue, cfg)
            if len(queue) == 2 and all(e["attempts"] >= 1 and e["next_attempt"] >
                                       time.time() + 1800 for e in queue.values()):
                break
            assert asyncio.get_running_loop().time() < deadline, mta.log()
            await asyncio.sleep(0.1)
        assert chaos.hits(fault_file)[1] >= 2
        assert st.messages("bob@example.test") == []
        chaos.write(fault_file, [], 0)  # the mda takes mail again; only a retry brings it
        by_subject = {}
        for qid in queue:
            shown = mailstack("queue", "show", qid, "--config", str(cfg.source)).stdout
            by_subject["first" if "Subject: first" in shown else "second"] = qid
        first, second = by_subject["first"], by_subject["second"]
        out = mailstack("queue", "delete", first, "--config", str(cfg.source)).stdout
        assert f"{first}: removed" in out
        out = mailstack("queue", "flush", "--config", str(cfg.source)).stdout
        assert out.startswith("1 message(s) scheduled"), out
        log = await mta.wait_log(f"{second}: removed", timeout=30)
        got = st.messages("bob@example.test")
        assert len(got) == 1 and b"Subject: second" in got[0], log
        assert "flush requested" in log
        after = log[log.index("flush requested"):]
        assert f"{first}: to=" not in after, log
        assert not mta.errors() and "Traceback" not in log
        assert await asyncio.to_thread(_queue, cfg) == {}
