"""Thunderbird autoconfig over HTTP and `mailstack health`, against the real daemons."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from mailstack.config import Config

from ..conftest import running
from ..e2e.helpers import mailstack


def _get(url: str, host: str | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers["content-type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["content-type"]


async def test_autoconfig_xml_matches_the_listeners(cfg: Config) -> None:
    port = cfg.port("autoconfig", "http")
    async with running("autoconfig", cfg):
        for path in ("/mail/config-v1.1.xml?emailaddress=alice%40example.test",
                     "/.well-known/autoconfig/mail/config-v1.1.xml"):
            status, body, ctype = await asyncio.to_thread(
                _get, f"http://127.0.0.1:{port}{path}", "localhost")
            assert status == 200 and ctype == "application/xml"
            root = ET.fromstring(body)
            assert root.tag == "clientConfig" and root.get("version") == "1.1"
            provider = root.find("emailProvider")
            assert provider is not None and provider.get("id") == "example.test"
            servers = {(s.get("type"), s.findtext("socketType")): s
                       for s in [*provider.findall("incomingServer"),
                                 *provider.findall("outgoingServer")]}
            expect = {("imap", "SSL"): cfg.port("imap", "imaps"),
                      ("imap", "STARTTLS"): cfg.port("imap", "imap"),
                      ("pop3", "SSL"): cfg.port("pop3", "pop3s"),
                      ("pop3", "STARTTLS"): cfg.port("pop3", "pop3"),
                      ("smtp", "SSL"): cfg.port("mta", "submissions"),
                      ("smtp", "STARTTLS"): cfg.port("mta", "submission")}
            assert {k: int(v.findtext("port")) for k, v in servers.items()} == expect
            for s in servers.values():
                assert s.findtext("hostname") == "localhost"
                assert s.findtext("username") == "%EMAILADDRESS%"
        status, body, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/ca.pem")
        assert status == 200 and body == (cfg.data_dir / "tls" / "ca.pem").read_bytes()
        status, _, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/nope")
        assert status == 404


async def test_autoconfig_rejects_garbage_and_keeps_serving(cfg: Config) -> None:
    port = cfg.port("autoconfig", "http")
    async with running("autoconfig", cfg):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 400")
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n")
        assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 4")
        status, _, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/")
        assert status == 200


@pytest.mark.parametrize("daemon", ["mda", "autoconfig", "http"])
async def test_health_command(cfg: Config, daemon: str) -> None:
    r = await asyncio.to_thread(mailstack, "health", daemon, "--config", cfg.source, check=False)
    assert r.returncode == 1 and "refused" in r.stderr.lower()
    async with running(daemon, cfg):
        r = await asyncio.to_thread(mailstack, "health", daemon, "--config", cfg.source,
                                    check=False)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("host", ["evil.test", "mail.example.test.evil.test", "evil.test:80",
                                  "<script>", "[::2]", "autoconfig.evil.test"])
async def test_autoconfig_names_only_configured_hosts(cfg: Config, host: str) -> None:
    """A forged Host header must not send clients' passwords to another server."""
    port = cfg.port("autoconfig", "http")
    async with running("autoconfig", cfg):
        for asked, expect in ((host, cfg.server.hostname), ("EXAMPLE.test", "example.test"),
                              ("127.0.0.1:80", "127.0.0.1"), ("[::1]", "::1")):
            status, body, _ = await asyncio.to_thread(
                _get, f"http://127.0.0.1:{port}/mail/config-v1.1.xml", asked)
            assert status == 200
            names = {s.findtext("hostname") for s in ET.fromstring(body).iter()
                     if s.tag in ("incomingServer", "outgoingServer")}
            assert names == {expect}, (asked, names)
