"""JMAP push (EventSource) driven by store changes from any face, and a JMAP client library."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import ssl

import pytest

from .conftest import ALICE, JMAP, PASSWORD, message


async def _open_stream(jmap: JMAP, query: str) -> tuple[asyncio.StreamReader,
                                                        asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("localhost", jmap.cfg.port("http", "https"),
                                         ssl=jmap.ssl)
    auth = base64.b64encode(f"{ALICE}:{PASSWORD}".encode()).decode()
    w.write(f"GET /jmap/eventsource?{query} HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Basic {auth}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await w.drain()
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 15)
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head, head
    while b"mailstack event stream" not in await asyncio.wait_for(r.readline(), 15):
        pass  # the stream's opening comment: changes from now on are pushed
    return r, w


async def _next_event(r: asyncio.StreamReader, timeout: float = 15) -> tuple[str, dict]:
    """The next SSE event (name, data), skipping comments and chunk sizes."""
    name, data = "", ""
    while True:
        line = (await asyncio.wait_for(r.readline(), timeout)).decode().rstrip("\r\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name:
            return name, json.loads(data)


async def test_event_stream_sees_imap_store_and_delivery(jmap: JMAP, imap_daemon) -> None:
    jmap.deliver(message("watched"))
    ids = (await jmap.one("Email/query", {}))["ids"]
    r, w = await _open_stream(jmap, "types=Email,Mailbox&closeafter=no&ping=0")
    imap = imaplib.IMAP4("127.0.0.1", jmap.cfg.port("imap", "imap"), timeout=30)
    try:
        imap.login(ALICE, PASSWORD)
        imap.select("INBOX")
        imap.store("1", "+FLAGS", "(\\Seen)")
        name, data = await _next_event(r)
        assert name == "state" and data["@type"] == "StateChange"
        changed = data["changed"][jmap.account()]
        assert "Email" in changed and "Thread" not in changed  # not asked for
        ch = await jmap.one("Email/changes", {"sinceState": str(int(changed["Email"]) - 1)})
        assert ch["updated"] == ids
        # a delivery (a file in new/, as the mda writes it) is pushed too
        jmap.deliver(message("second"))
        name, data = await _next_event(r)
        assert int(data["changed"][jmap.account()]["Email"]) > int(changed["Email"])
    finally:
        imap.logout()
        w.close()


async def test_closeafter_state_and_ping(jmap: JMAP) -> None:
    r, w = await _open_stream(jmap, "types=*&closeafter=no&ping=1")
    name, data = await _next_event(r)
    assert name == "ping" and data == {"interval": 1}
    w.close()
    r, w = await _open_stream(jmap, "types=*&closeafter=state&ping=0")
    await jmap.one("Mailbox/set", {"create": {"x": {"name": "Pushed"}}})
    name, data = await _next_event(r)
    assert name == "state" and "Mailbox" in data["changed"][jmap.account()]
    rest = await asyncio.wait_for(r.read(), 15)  # then the response ends
    assert b"event:" not in rest
    w.close()
    async with jmap.client() as c:
        bad = await c.get("/jmap/eventsource", params={"types": "*", "closeafter": "maybe",
                                                       "ping": "0"})
        assert bad.status_code == 400


async def test_many_idle_streams_and_the_daemon_keeps_serving(jmap: JMAP) -> None:
    """Hundreds of open event streams of one account: one watcher, and other requests are
    answered meanwhile; a change reaches every stream."""
    streams = []
    ctx = jmap.ssl
    assert isinstance(ctx, ssl.SSLContext)
    for _ in range(200):
        streams.append(await _open_stream(jmap, "types=Email&closeafter=state&ping=0"))
    got = await jmap.one("Mailbox/get", {"ids": []})
    assert got["list"] == []
    jmap.deliver(message("for everyone"))
    results = await asyncio.gather(*(_next_event(r, 30) for r, _ in streams))
    assert all(name == "state" for name, _ in results)
    for _, w in streams:
        w.close()


async def test_jmapc_client_library(jmap: JMAP, monkeypatch: pytest.MonkeyPatch) -> None:
    from jmapc import Client, Ref
    from jmapc.methods import EmailGet, EmailQuery, MailboxGet

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(jmap.cfg.data_dir / "tls" / "ca.pem"))
    jmap.deliver(message("from jmapc's point of view"))
    host = f"localhost:{jmap.cfg.port('http', 'https')}"

    def run() -> tuple:
        client = Client.create_with_password(host, ALICE, PASSWORD)
        boxes = client.request(MailboxGet(ids=None))
        results = client.request([EmailQuery(limit=10),
                                  EmailGet(ids=Ref("/ids"), properties=["subject", "from"])])
        return client.account_id, boxes, results

    account, boxes, results = await asyncio.to_thread(run)
    assert account == jmap.account()
    assert {m.role for m in boxes.data} >= {"inbox", "sent", "drafts", "trash"}
    emails = results[1].response.data
    assert [e.subject for e in emails] == ["from jmapc's point of view"]
