"""HTTP Basic and Bearer failures (JMAP on 443) count in the failed-login throttle shared with
SMTP AUTH, IMAP and POP3: per client address and per account, in the data directory, with the
same growing delays. The http daemon runs as its own process beside the mta and imap daemons;
httpx connects from chosen loopback source addresses."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest

from mailstack.config import Config

from ..conftest import Daemon, running
from .conftest import ALICE, INITIAL_DELAY, PASSWORD
from .test_auth_shared import IMAP, SMTP, timed

pytestmark = pytest.mark.e2e



@pytest.fixture
async def faces(scfg: Config) -> AsyncIterator[tuple[Daemon, Daemon, Daemon]]:
    async with running("mta", scfg) as mta, running("imap", scfg) as imap, \
            running("http", scfg) as http:
        yield mta, imap, http


def https(cfg: Config, source: str, tls: ssl.SSLContext) -> httpx.AsyncClient:
    """An HTTPS client whose connections come from ``source``."""
    transport = httpx.AsyncHTTPTransport(local_address=source, verify=tls)
    return httpx.AsyncClient(base_url=f"https://127.0.0.1:{cfg.port('http', 'https')}",
                             transport=transport, timeout=30)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_imap_failures_delay_http_basic_from_the_same_client(
        faces: tuple[Daemon, Daemon, Daemon], scfg: Config, tls: ssl.SSLContext) -> None:
    _, _, http = faces
    src = "127.0.0.2"
    imap = await IMAP.open(scfg, src)
    for n in (1, 2):  # auth_failures_free = 2, other accounts: only the address counts
        assert (await imap.login(f"nobody{n}@example.test", f"wrong-imap-{n}")).startswith("a NO")
    imap.close()
    async with https(scfg, src, tls) as c:
        r, took = await timed(c.get("/.well-known/jmap",
                                    headers=basic("nobody3@example.test", "wrong-http-3")))
        assert r.status_code == 401 and took >= INITIAL_DELAY, (r.status_code, took)
        # the client's own address is what counts (not a constant, not the listener's)
        m = await http.wait_log_match(
            r"http auth failed for 'nobody3@example\.test' from 127\.0\.0\.2 \(delay (\S+)s\)")
        assert float(m.group(1)) >= INITIAL_DELAY, m.group(0)
        # a right password still works, and clears the address's count for every daemon
        r = await c.get("/.well-known/jmap", headers=basic(ALICE, PASSWORD))
        assert r.status_code == 200, r.text
    imap = await IMAP.open(scfg, src)
    assert (await imap.login("nobody4@example.test", "wrong-imap-4")).startswith("a NO")
    imap.close()
    await faces[1].wait_log("auth failed for 'nobody4@example.test' from 127.0.0.2 (delay 0.0s)")
    text = http.log()
    assert "wrong-http-3" not in text and PASSWORD not in text


async def test_http_basic_failures_against_an_account_delay_smtp_auth_for_it(
        faces: tuple[Daemon, Daemon, Daemon], scfg: Config, tls: ssl.SSLContext) -> None:
    _, _, http = faces
    async with https(scfg, "127.0.0.3", tls) as c:
        for n in (1, 2):
            r = await c.get("/jmap/session", headers=basic(ALICE, f"guess-{n}"))
            assert r.status_code == 401
    smtp = await SMTP.submissions(scfg, "127.0.0.4", tls)  # another address: the account counts
    reply, took = await timed(smtp.auth(ALICE, "guess-3"))
    assert reply.startswith("535") and took >= INITIAL_DELAY, took
    smtp.close()
    await http.wait_log("http auth failed for 'alice@example.test' from 127.0.0.3", count=2)
    text = http.log()
    assert "guess-" not in text and PASSWORD not in text
    assert base64.b64encode(f"{ALICE}:guess-1".encode()).decode() not in text


async def test_bearer_failures_count_and_are_delayed(
        faces: tuple[Daemon, Daemon, Daemon], scfg: Config, tls: ssl.SSLContext) -> None:
    _, _, http = faces
    src = "127.0.0.5"
    async with https(scfg, src, tls) as c:
        for n in (1, 2):
            r = await c.get("/.well-known/jmap",
                            headers={"Authorization": f"Bearer mst_bogus{n}"})
            assert r.status_code == 401
        r, took = await timed(c.get("/.well-known/jmap",
                                    headers={"Authorization": "Bearer mst_bogus3"}))
        assert r.status_code == 401 and took >= INITIAL_DELAY, took
    imap = await IMAP.open(scfg, src)  # and they delay the same client over IMAP
    reply, took = await timed(imap.login("nobody@example.test", "x"))
    assert reply.startswith("a NO") and took >= INITIAL_DELAY, took
    imap.close()
    assert "mst_bogus" not in http.log()
