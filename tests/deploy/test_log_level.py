"""``[server] log_level`` (README: debug, info, warning, error) and probes logged at debug only
(README: "The daemons log probes at debug level only (a session without a command;
autoconfig's `/health`)"), on real pop3 and http daemons outside Docker."""

from __future__ import annotations

import asyncio
import http.client
import poplib
import subprocess
import sys

import pytest

from ..conftest import add_user, running, wait_port
from ..e2e.helpers import cli_env


def _probe(port: int, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "mailstack.runtime.probe", str(port), *extra],
                   check=True, env=cli_env(), timeout=60)


def _traffic(cfg) -> None:
    for _ in range(3):
        _probe(cfg.port("pop3", "pop3"))
    _probe(cfg.port("http", "http"), "--http")
    conn = http.client.HTTPConnection("127.0.0.1", cfg.port("http", "http"), timeout=15)
    conn.request("GET", "/mail/config-v1.1.xml?emailaddress=alice%40example.test")
    assert conn.getresponse().status == 200
    conn.close()
    pop = poplib.POP3("127.0.0.1", cfg.port("pop3", "pop3"), timeout=15)
    pop.user("alice@example.test")
    pop.pass_("secret")
    pop.quit()
    pop = poplib.POP3("127.0.0.1", cfg.port("pop3", "pop3"), timeout=15)
    pop.user("alice@example.test")
    with pytest.raises(poplib.error_proto):
        pop.pass_("wrong")
    pop.quit()


@pytest.mark.parametrize("level", ["warning", "info", "debug"])
async def test_log_level_and_probes(config_factory, level: str) -> None:
    cfg = config_factory(f'[server]\nlog_level = "{level}"\n')
    add_user(cfg, "alice@example.test")
    # below info there is no "listening on" line to wait for: wait for the ports instead
    ready = {"ready": []} if level == "warning" else {}
    async with running("pop3", cfg, **ready) as pop3, running("http", cfg, **ready) as web:
        for daemon, key in (("pop3", "pop3"), ("pop3", "pop3s"), ("http", "http")):
            await wait_port(cfg.port(daemon, key), timeout=30)
        await asyncio.to_thread(_traffic, cfg)
        await pop3.wait_log("auth failed for")
    pop_log, web_log = pop3.log(), web.log()  # complete: both daemons have stopped
    ends = [x for x in pop_log.splitlines() if "session end:" in x]
    login = [x for x in ends if "user=alice@example.test" in x and "reason=quit" in x]
    probes = [x for x in ends if "reason=disconnected" in x and "user=- " in x]
    health = [x for x in web_log.splitlines() if " GET /health " in x]
    page = [x for x in web_log.splitlines() if " GET /mail/config-v1.1.xml" in x]
    assert any(" WARNING: " in x and "auth failed for" in x for x in pop_log.splitlines())
    if level == "warning":
        assert ends == [] and page == [] and health == [], (pop_log, web_log)
        assert " INFO: " not in pop_log and " INFO: " not in web_log
    elif level == "info":
        assert login and all(" INFO: " in x for x in login), pop_log
        assert probes == [] and health == [], (pop_log, web_log)
        assert page and " DEBUG: " not in pop_log + web_log
    else:
        assert len(probes) >= 3 and all(" DEBUG: " in x for x in probes), pop_log
        assert len(health) == 1 and " DEBUG: " in health[0], web_log
        assert page and " INFO: " in page[0]
