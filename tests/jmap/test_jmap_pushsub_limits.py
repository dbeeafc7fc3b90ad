"""PushSubscription limits that stand between a client and server-side request forgery or
unbounded work: a callback's redirect is never followed (the only barrier between an
allowlisted host and cloud metadata or the LAN), at most 50 subscriptions per login, at most
7 days of life, and verified subscriptions resume when the daemon starts again."""

from __future__ import annotations

import asyncio
import json
import ssl
import stat
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import trustme

from mailstack.jmap.pushsub import PUSH_FILE
from mailstack.runtime.tls import client_context, ensure_tls_files
from mailstack.store.maildir import mailbox_path
from tests.conftest import add_user, running

from .conftest import ALICE, JMAP, PASSWORD, message
from .test_jmap_pushsub import Receiver

DAY = 86400


async def receivers(tmp_path: Path, n: int) -> tuple[list[Receiver], Path]:
    """``n`` receivers on localhost with certificates from one new CA, and the CA file."""
    ca = trustme.CA()
    ca_file = tmp_path / "push-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    out = []
    for _ in range(n):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(ctx)
        r = Receiver(ctx)
        await r.start()
        out.append(r)
    return out, ca_file


async def get(r: Receiver, timeout: float = 20) -> tuple[str, Any]:
    return await asyncio.wait_for(r.got.get(), timeout)


def epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def utc_in(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


async def test_redirects_quota_lifetime_and_resume(config_factory, tmp_path: Path) -> None:
    (redirector, inside), ca_file = await receivers(tmp_path, 2)
    # an allowlisted host answering with a redirect to somewhere the server must not go
    redirector.reply = (f"HTTP/1.1 307 Temporary Redirect\r\nlocation: "
                        f"https://localhost:{inside.port}/internal\r\ncontent-length: 0\r\n"
                        f"\r\n").encode()
    cb = f"https://localhost:{redirector.port}/cb"
    cfg = config_factory('[http]\npush_allowlist = ["localhost"]\n')
    add_user(cfg, ALICE, PASSWORD)
    files = ensure_tls_files(cfg)
    env = {"SSL_CERT_FILE": str(ca_file)}
    root = mailbox_path(cfg.data_dir, ALICE)
    async with running("http", cfg, env=env) as daemon:
        jmap = JMAP(cfg, daemon, client_context(files.ca))
        (resp,) = await jmap.call([["PushSubscription/set", {"create": {
            "a": {"deviceClientId": "phone", "url": cb, "types": ["Email"]}}}, "0"]])
        sid = resp[1]["created"]["a"]["id"]
        path, verification = await get(redirector)
        assert path == "/cb" and verification["@type"] == "PushVerification"
        await daemon.wait_log(f"push PushVerification to {cb}: 307")
        (resp,) = await jmap.call([["PushSubscription/set", {"update": {
            sid: {"verificationCode": verification["verificationCode"]}}}, "0"]])
        assert resp[1]["updated"] == {sid: None}
        await daemon.wait_log("push: watching example.test/alice")
        jmap.deliver(message("redirected"))
        _, change = await get(redirector)
        assert change["@type"] == "StateChange"
        await daemon.wait_log(f"push StateChange to {cb}: 307")
        # a followed redirect would have reached `inside` before the 307 was logged
        assert inside.got.empty(), inside.got

        # expires: at most 7 days, on create and on update
        far = utc_in(30 * DAY)
        (resp,) = await jmap.call([["PushSubscription/set", {"create": {
            "b": {"deviceClientId": "tablet", "url": f"https://localhost:{inside.port}/b",
                  "expires": far}},
            "update": {sid: {"expires": far}}}, "0"]])
        created = resp[1]["created"]["b"]
        now = time.time()
        assert now + 7 * DAY - 120 <= epoch(created["expires"]) <= now + 7 * DAY + 1
        (resp,) = await jmap.call([["PushSubscription/get", {"ids": None}, "0"]])
        by_id = {s["id"]: s for s in resp[1]["list"]}
        assert all(epoch(s["expires"]) <= now + 7 * DAY + 1 for s in by_id.values()), by_id
        assert all("url" not in s and "keys" not in s for s in by_id.values())

        # at most 50 per login: two exist, so 48 of these 49 are created, one is overQuota
        (resp,) = await jmap.call([["PushSubscription/set", {"create": {
            f"q{i}": {"deviceClientId": f"d{i}", "url": f"https://localhost:{inside.port}/q"}
            for i in range(49)}}, "0"]])
        assert len(resp[1]["created"]) == 48
        assert [v["type"] for v in resp[1]["notCreated"].values()] == ["overQuota"]
        (resp,) = await jmap.call([["PushSubscription/get", {"ids": None}, "0"]])
        assert len(resp[1]["list"]) == 50

    push_file = root / PUSH_FILE
    assert stat.S_IMODE(push_file.stat().st_mode) == 0o600
    assert len(json.loads(push_file.read_text())) == 50

    # a new daemon on the same data: the verified subscription resumes without any request
    while not redirector.got.empty():
        redirector.got.get_nowait()
    async with running("http", cfg, env=env) as daemon:
        await daemon.wait_log("push: watching example.test/alice")
        JMAP(cfg, daemon, client_context(files.ca)).deliver(message("after restart"))
        _, change = await get(redirector)
        assert change["@type"] == "StateChange"
        await daemon.wait_log(f"push StateChange to {cb}: 307")
    while not inside.got.empty():  # verifications of the unverified ones, nothing redirected
        assert inside.got.get_nowait()[0] != "/internal"
    for r in (redirector, inside):
        assert r.server is not None
        r.server.close()
