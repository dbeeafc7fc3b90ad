"""Real third-party clients: imapclient, aioimaplib and curl (imap:// and imaps://)."""

from __future__ import annotations

import asyncio
import shutil

import aioimaplib
import pytest
from imapclient import IMAPClient

from tests.imap.conftest import PASSWORD, USER, message


async def test_imapclient_session(imap):
    imap.deliver(message("for imapclient", body="hello from the test\n"))

    def go() -> None:
        with IMAPClient("127.0.0.1", port=imap.tls_port, ssl=True, ssl_context=imap.ssl,
                        timeout=10) as c:
            c.login(USER, PASSWORD)
            caps = c.capabilities()
            assert b"IDLE" in caps and b"UIDPLUS" in caps and b"MOVE" in caps
            folders = {f[2]: f[0] for f in c.list_folders()}
            assert b"\\Trash" in folders["Trash"]
            assert c.find_special_folder(b"\\Sent") == "Sent"
            info = c.select_folder("INBOX")
            assert info[b"EXISTS"] == 1
            uids = c.search(["SUBJECT", "imapclient"])
            assert uids == [1]
            data = c.fetch(uids, ["ENVELOPE", "BODY.PEEK[TEXT]", "FLAGS", "RFC822.SIZE"])
            env = data[1][b"ENVELOPE"]
            assert env.subject == b"for imapclient" and env.from_[0].host == b"example.test"
            assert data[1][b"BODY[TEXT]"] == b"hello from the test\r\n"
            c.add_flags(uids, [b"\\Flagged"])
            assert b"\\Flagged" in c.get_flags(uids)[1]
            c.create_folder("Projects")
            c.move(uids, "Projects")
            assert c.folder_status("Projects", ["MESSAGES"])[b"MESSAGES"] == 1
            c.select_folder("Projects")
            c.idle()
            imap.deliver(message("pushed"), folder="Projects")
            responses = c.idle_check(timeout=2)
            c.idle_done()
            assert (2, b"EXISTS") in responses
            c.append("Sent", message("sent copy").replace(b"\n", b"\r\n"), flags=[b"\\Seen"])
            assert c.folder_status("Sent", ["MESSAGES"])[b"MESSAGES"] == 1
            c.rename_folder("Projects", "Done")
            c.delete_folder("Done")
            c.logout()
    await asyncio.to_thread(go)


async def test_aioimaplib_session(imap):
    imap.deliver(message("for aioimaplib"))
    c = aioimaplib.IMAP4_SSL("127.0.0.1", imap.tls_port, ssl_context=imap.ssl, timeout=10)
    await c.wait_hello_from_server()
    assert (await c.login(USER, PASSWORD)).result == "OK"
    assert (await c.select("INBOX")).result == "OK"
    r = await c.uid("fetch", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert r.result == "OK" and any(b"Subject: for aioimaplib" in bytes(x) for x in r.lines)
    idle = await c.idle_start(timeout=5)
    imap.deliver(message("idle push"))
    pushed = await asyncio.wait_for(c.wait_server_push(), 15)
    c.idle_done()
    await asyncio.wait_for(idle, 5)
    assert any(b"EXISTS" in (x if isinstance(x, bytes) else x.encode()) for x in pushed)
    r = await c.uid("store", "1", "+FLAGS", "(\\Seen)")
    assert r.result == "OK"
    r = await c.search("SEEN")
    assert r.result == "OK" and r.lines[0] == b"1"
    await c.logout()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("scheme", ["imap", "imaps"])
async def test_curl(imap, scheme):
    imap.deliver(message("for curl", body="curl body line\n"))
    port = imap.port if scheme == "imap" else imap.tls_port
    ca = str(imap.cfg.data_dir / "tls" / "ca.pem")
    user = f"{USER}:{PASSWORD}"
    base = f"{scheme}://localhost:{port}"
    extra = ["--ssl-reqd"] if scheme == "imap" else []

    async def curl(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--max-time", "10", "--cacert", ca, "-u", user,
            "--resolve", f"localhost:{port}:127.0.0.1", *extra, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()

    listing = await curl(f"{base}/")
    assert '"." INBOX' in listing and "Sent" in listing
    body = await curl(f"{base}/INBOX;UID=1")
    assert "Subject: for curl" in body and "curl body line" in body
    found = await curl(f"{base}/INBOX?SUBJECT%20curl")
    assert "* SEARCH 1" in found
    status = await curl(f"{base}/", "-X", "STATUS INBOX (MESSAGES)")
    assert "MESSAGES 1" in status
