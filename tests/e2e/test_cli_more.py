"""The command line beyond `up`/`serve`: `user del|passwd|list`, `serve --capture`; `up`
without the http daemon; autoconfig's idle timeout."""

from __future__ import annotations

import asyncio
import email
import smtplib
import socket
import time
from pathlib import Path

import pytest

from mailstack.accounts.users import UserDB
from mailstack.config import Config, load

from ..conftest import running, write_config
from .helpers import maildir_files, mailstack, proc, submit, wait_files, wait_port

pytestmark = pytest.mark.e2e


def test_user_add_list_passwd_del(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path))
    users = tmp_path / "data" / "users"
    for who in ("Bob@Example.Test", "alice@example.test"):
        mailstack("user", "add", who, "--password-stdin", "--config", cfg, input="first-pw\n")
    assert mailstack("user", "list", "--config", cfg).stdout.split() == [
        "alice@example.test", "bob@example.test"]
    db = UserDB(users)
    assert db.check_password("alice@example.test", "first-pw")

    out = mailstack("user", "passwd", "alice@example.test", "--password-stdin", "--config", cfg,
                    input="second-pw\n").stdout
    assert "password changed for alice@example.test" in out
    db = UserDB(users)
    assert db.check_password("alice@example.test", "second-pw")
    assert not db.check_password("alice@example.test", "first-pw")
    assert db.check_password("bob@example.test", "first-pw")  # the other account is unchanged

    box = tmp_path / "data" / "mail" / "example.test" / "alice"
    out = mailstack("user", "del", "alice@example.test", "--config", cfg).stdout
    assert "deleted alice@example.test" in out and "mail stays" in out
    assert mailstack("user", "list", "--config", cfg).stdout.split() == ["bob@example.test"]
    assert box.is_dir(), "user del keeps the mail on disk"
    assert not UserDB(users).check_password("alice@example.test", "second-pw")

    for args in (("passwd", "alice@example.test", "--password-stdin"),
                 ("del", "nobody@example.test")):
        r = mailstack("user", *args, "--config", cfg, input="x\n", check=False)
        assert r.returncode == 1 and r.stderr.startswith("mailstack: "), r
        assert "Traceback" not in r.stderr
    r = mailstack("user", "add", "bob@example.test", "--password-stdin", "--config", cfg,
                  input="\n", check=False)
    assert r.returncode == 1 and "empty password" in r.stderr


def test_serve_capture_keeps_mail_for_any_address(tmp_path: Path) -> None:
    """`mailstack serve mda|mta --capture`: mail to any domain lands in the catch-all account,
    with the original recipients in X-Original-To, and nothing is relayed."""
    cfg_path = write_config(tmp_path)
    cfg = load(cfg_path, env={})
    data = cfg.data_dir
    with proc("serve", "mda", "--capture", "--config", str(cfg_path)), \
            proc("serve", "mta", "--capture", "--config", str(cfg_path)) as mta:
        wait_port(cfg.port("mda", "lmtp"))
        wait_port(cfg.port("mta", "smtp"))
        with smtplib.SMTP("127.0.0.1", cfg.port("mta", "smtp"), timeout=10) as s:
            s.sendmail("app@example.org", ["someone@elsewhere.example", "x@example.net"],
                       "Subject: captured\r\n\r\nhello\r\n")
        [got] = wait_files(data, "capture@capture.test", 1)
        msg = email.message_from_bytes(got.read_bytes())
        assert msg["Subject"] == "captured"
        assert sorted(msg.get_all("X-Original-To")) == ["someone@elsewhere.example",
                                                        "x@example.net"]
        # the copy is in the Maildir before the mda's 250 reaches the mta and it logs the
        # outcome: one line per recipient
        deadline = time.monotonic() + 30
        while mta.output.count("relay=") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        relays = [line.split("relay=", 1)[1].split(",", 1)[0]
                  for line in mta.output.splitlines() if "relay=" in line]
        assert len(relays) == 2 and all(r.startswith("mda[") for r in relays), mta.output
    assert maildir_files(data, "someone@elsewhere.example") == []


def test_up_runs_without_the_http_daemon_when_its_port_is_taken(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    cfg = load(cfg_path, env={})
    data = cfg.data_dir
    mailstack("user", "add", "alice@example.test", "--password-stdin", "--config",
              str(cfg_path), input="alice-pw\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", cfg.port("autoconfig", "http")))
        taken.listen()
        with proc("up", "--config", str(cfg_path)) as up:
            up.wait_for_output("http | could not start (see above); the rest of the "
                               "stack runs without it")
            assert "address already in use" in up.output
            for port in (cfg.port("mta", "submission"), cfg.port("imap", "imap"),
                         cfg.port("pop3", "pop3"), cfg.port("mda", "lmtp")):
                wait_port(port)
            submit(cfg.port("mta", "submission"), data / "tls" / "ca.pem",
                   "alice@example.test", "alice-pw", ["alice@example.test"],
                   "Subject: without autoconfig\r\n\r\nx\r\n")
            assert len(wait_files(data, "alice@example.test", 1)) == 1, up.output
            assert "http | exited with code" not in up.output  # not restarted
            assert up.terminate() == 0, up.output


async def test_autoconfig_disconnects_an_idle_client(config_factory) -> None:
    cfg: Config = config_factory('[autoconfig]\nidle_timeout = "1s"\n')
    port = cfg.port("autoconfig", "http")
    async with running("autoconfig", cfg):
        silent = await asyncio.open_connection("127.0.0.1", port)
        half = await asyncio.open_connection("127.0.0.1", port)
        half[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes the request
        t0 = time.monotonic()
        for r, _ in (silent, half):
            assert await asyncio.wait_for(r.read(), 20) == b""  # closed without an answer
        assert time.monotonic() - t0 >= 0.9
        r, w = await asyncio.open_connection("127.0.0.1", port)  # still serving
        w.write(b"GET /ca.pem HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(r.read(), 10)).startswith(b"HTTP/1.1 200")
        for _, writer in (silent, half, (r, w)):
            writer.close()
