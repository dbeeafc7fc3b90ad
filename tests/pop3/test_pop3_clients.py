"""Real third-party clients against the daemon: curl (pop3://, pop3s://) and fetchmail, plus
``python -m mailstack serve pop3`` as a subprocess (under uvloop, as in production)."""

from __future__ import annotations

import asyncio
import os
import poplib
import shutil
import signal
import ssl
import sys
from pathlib import Path

import pytest

from mailstack.config import Config
from mailstack.runtime.daemon import available_daemons
from mailstack.runtime.tls import ensure_tls_files
from mailstack.store.maildir import Maildir

from ..conftest import running
from .pop3_helpers import ALICE, PASSWORD, make_alice, message

REPO = Path(__file__).resolve().parents[2]

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
needs_fetchmail = pytest.mark.skipif(shutil.which("fetchmail") is None,
                                     reason="fetchmail is not installed")


@pytest.fixture
def alice(cfg: Config) -> Maildir:
    return make_alice(cfg, messages=3)


async def run(*argv: str, env: dict[str, str] | None = None,
              timeout: float = 30) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out, err


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


@needs_curl
async def test_curl_pop3_stls_and_pop3s(cfg: Config, alice: Maildir) -> None:
    ca = str(ensure_tls_files(cfg).ca)
    user = f"{ALICE}:{PASSWORD}"
    plain = f"pop3://127.0.0.1:{cfg.port('pop3', 'pop3')}"
    tls = f"pop3s://127.0.0.1:{cfg.port('pop3', 'pop3s')}"
    async with running("pop3", cfg):
        # LIST over STLS (--ssl-reqd), AUTH PLAIN with the "+" continuation
        rc, out, err = await run("curl", "-sS", "--ssl-reqd", "--cacert", ca, "-u", user,
                                 plain + "/")
        assert rc == 0, err
        sizes = [len(crlf(message(n))) for n in (1, 2, 3)]
        assert out == b"".join(f"{n} {s}\r\n".encode() for n, s in enumerate(sizes, 1))
        # RETR over implicit TLS, AUTH PLAIN with an initial response
        rc, out, err = await run("curl", "-sS", "--sasl-ir", "--cacert", ca, "-u", user,
                                 tls + "/2")
        assert rc == 0, err
        assert out == crlf(message(2))  # curl un-stuffs the ".leading dot" line
        # DELE 1 (+ QUIT) then UIDL
        rc, out, err = await run("curl", "-sS", "--cacert", ca, "-u", user, "-X", "DELE", "-I",
                                 tls + "/1")
        assert rc == 0, err
        rc, out, err = await run("curl", "-sS", "--cacert", ca, "-u", user, "-X", "UIDL",
                                 tls + "/")
        assert rc == 0, err
        assert [line.split()[0] for line in out.splitlines()] == [b"1", b"2"]
        # a wrong password is refused
        rc, out, err = await run("curl", "-sS", "--cacert", ca, "-u", f"{ALICE}:nope",
                                 tls + "/1")
        assert rc == 67, (rc, err)  # CURLE_LOGIN_DENIED
    left = alice.scan()
    assert len(left) == 2
    assert {m.flags for m in left} == {"S", ""}  # message 2 was retrieved: seen


def fetchmail_rc(tmp: Path, cfg: Config, *, implicit_tls: bool, keep: bool, out: Path) -> Path:
    ca = ensure_tls_files(cfg).ca
    port = cfg.port("pop3", "pop3s" if implicit_tls else "pop3")
    tls = "ssl" if implicit_tls else 'sslproto "tls1.2+"'
    rc = tmp / ("fetchmailrc-" + ("ssl" if implicit_tls else "stls"))
    rc.write_text(
        "set no bouncemail\nset no syslog\n"
        f"poll localhost via 127.0.0.1 service {port} protocol pop3 uidl auth password\n"
        f'  user "{ALICE}" there with password "{PASSWORD}" is "localuser" here\n'
        f'  {tls} sslcertck sslcertfile "{ca}" sslcommonname "localhost"\n'
        f"  mda \"/bin/sh -c 'cat >> {out}; echo ==END== >> {out}'\"\n"
        f"  {'keep' if keep else 'no keep fetchall'}\n")
    rc.chmod(0o600)
    return rc


async def fetchmail(tmp: Path, rc: Path) -> tuple[int, str]:
    home = tmp / "fetchmail-home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    code, out, err = await run("fetchmail", "-f", str(rc), "-v", "--idfile",
                               str(home / "ids"), env=env, timeout=60)
    return code, (out + err).decode(errors="replace")


def fetched(out: Path) -> list[bytes]:
    if not out.exists():
        return []
    return [m for m in out.read_bytes().split(b"==END==\n") if m]


@needs_fetchmail
async def test_fetchmail_keep_uses_stable_uidls_then_downloads_and_deletes(
        cfg: Config, alice: Maildir, tmp_path: Path) -> None:
    out = tmp_path / "mbox"
    keep = fetchmail_rc(tmp_path, cfg, implicit_tls=False, keep=True, out=out)
    move = fetchmail_rc(tmp_path, cfg, implicit_tls=True, keep=False, out=out)
    async with running("pop3", cfg):
        code, log = await fetchmail(tmp_path, keep)  # STLS, leave mail on the server
        assert code == 0, log
        assert "POP3> STLS" in log
        assert len(fetched(out)) == 3
        code, log = await fetchmail(tmp_path, keep)  # nothing new: fetchmail's UIDL memory
        assert code == 1, log  # 1: no new mail
        assert len(fetched(out)) == 3
        alice.deliver(message(4))
        code, log = await fetchmail(tmp_path, keep)
        assert code == 0, log
        got = fetched(out)
        assert len(got) == 4 and b"Subject: message 4" in got[3]
        assert len(alice.scan()) == 4
        out.unlink()
        code, log = await fetchmail(tmp_path, move)  # pop3s, fetch all and delete
        assert code == 0, log
        assert "POP3> DELE" in log
    got = fetched(out)
    assert len(got) == 4
    for n in range(1, 5):  # after fetchmail's Received: header, in the store's scan order
        assert sum(msg.endswith(message(n)) for msg in got) == 1, n
    assert alice.scan() == []


async def test_cli_serve_pop3_subprocess(cfg: Config, alice: Maildir,
                                         client_ssl: ssl.SSLContext) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}  # no hooks
    env["PYTHONPATH"] = str(REPO)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailstack", "serve", "pop3", "--config", cfg.source,
        stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stderr is not None
    try:
        lines = [await asyncio.wait_for(proc.stderr.readline(), 20) for _ in range(3)]
        text = b"".join(lines).decode()
        assert "INFO: event loop: uvloop\n" in text  # as `mailstack serve` runs in production
        assert f"listening on 127.0.0.1:{cfg.port('pop3', 'pop3')} (pop3, STLS)" in text
        assert f"listening on 127.0.0.1:{cfg.port('pop3', 'pop3s')} (pop3s, implicit TLS)" \
            in text

        def client() -> None:
            c = poplib.POP3("127.0.0.1", cfg.port("pop3", "pop3"), timeout=10)
            c.stls(client_ssl)
            c.user(ALICE)
            c.pass_(PASSWORD)
            assert c.retr(1)[1] == message(1).rstrip(b"\n").split(b"\n")
            c.dele(1)
            c.quit()

        def many_stls() -> None:
            # the client sends its ClientHello the moment it reads "+OK": the server must not
            # lose it (regression: it used to land in the plaintext buffer STLS discards)
            for _ in range(30):
                c = poplib.POP3("127.0.0.1", cfg.port("pop3", "pop3"), timeout=10)
                c.stls(client_ssl)
                assert c.capa()["IMPLEMENTATION"] == ["mailstack"]
                c.quit()

        await asyncio.to_thread(client)
        await asyncio.to_thread(many_stls)
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 20)
        code = await proc.wait()
    assert code == 0
    log = rest.decode()
    assert "session end: user=alice@example.test ip=127.0.0.1 tls=STLS retr=1/" in log
    assert "del=1/3 reason=quit" in log and PASSWORD not in log
    assert "stopped" in log
    assert len(alice.scan()) == 2


def test_mailstack_up_finds_the_pop3_daemon() -> None:
    assert "pop3" in available_daemons()  # `mailstack up` starts what this lists
