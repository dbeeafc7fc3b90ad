"""`mailstack up` and the daemons as real processes: end to end, crashes, outages, CLI."""

from __future__ import annotations

import collections
import email
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ..conftest import write_config
from .helpers import (
    Proc,
    cli_env,
    free_offset,
    maildir_files,
    mailstack,
    proc,
    submit,
    wait_files,
    wait_port,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    cfg = write_config(tmp_path)
    mailstack("user", "add", "alice@example.test", "--password-stdin", "--config", str(cfg),
              input="alice-pw\n")
    mailstack("user", "add", "bob@example.test", "--password-stdin", "--config", str(cfg),
              input="bob-pw\n")
    return cfg, tmp_path / "data"


def ports(cfg: Path) -> dict[str, int]:
    from mailstack.config import load
    c = load(cfg, env={})
    return {"smtp": c.port("mta", "smtp"), "submission": c.port("mta", "submission"),
            "submissions": c.port("mta", "submissions"), "lmtp": c.port("mda", "lmtp")}


def test_up_submit_587_and_465_then_sigterm(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    data = tmp_path / "data"
    cfg.write_text(f'[server]\nhostname = "mail.example.test"\ndomains = ["example.test"]\n'
                   f'data_dir = "{data}"\n')
    mailstack("user", "add", "alice@example.test", "--password-stdin", "--config", str(cfg),
              input="alice-pw\n")
    off = free_offset()
    with proc("up", "--config", str(cfg), "--port-offset", str(off)) as up:
        up.wait_for_output("mailstack is up")
        banner = up.output
        assert str(data / "tls" / "ca.pem") in banner
        assert f"port {587 + off}" in banner and "mailstack user add" in banner
        assert f"autoconfig: http://127.0.0.1:{80 + off}/mail/config-v1.1.xml" in banner
        ca = data / "tls" / "ca.pem"
        submit(587 + off, ca, "alice@example.test", "alice-pw", ["alice@example.test"],
               "Subject: via 587\r\n\r\nhello\r\n")
        submit(465 + off, ca, "alice@example.test", "alice-pw", ["alice@example.test"],
               "Subject: via 465\r\n\r\nhello\r\n", implicit=True)
        files = wait_files(data, "alice@example.test", 2)
        assert len(files) == 2, up.output
        subjects = sorted(email.message_from_bytes(f.read_bytes())["Subject"] for f in files)
        assert subjects == ["via 465", "via 587"]
        for f in files:
            head = f.read_bytes().split(b"\n\n", 1)[0]
            assert b"Return-Path:" in head and b"Delivered-To:" in head and b"Received:" in head
        assert up.terminate() == 0
        assert "all daemons stopped" in up.output
        assert "mda[" in up.output  # children's lines are prefixed with their names
        assert re.search(r"^mta +\| .* mta\[\d+\] INFO: listening", up.output, re.M)


def test_supervisor_restarts_a_crashed_child(setup) -> None:
    cfg, data = setup
    p = ports(cfg)
    with proc("up", "--config", str(cfg)) as up:
        up.wait_for_output("mailstack is up")
        mda_pid = int(up.output.split("mda[", 1)[1].split("]", 1)[0])
        os.kill(mda_pid, signal.SIGKILL)
        up.wait_for_output("exited with code")
        up.wait_for_output("restarting in")
        deadline = time.monotonic() + 15
        while up.output.count("listening on") < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        submit(p["submission"], data / "tls" / "ca.pem", "alice@example.test", "alice-pw",
               ["bob@example.test"], "Subject: after restart\r\n\r\nx\r\n")
        assert len(wait_files(data, "bob@example.test", 1)) == 1, up.output


def test_mda_outage_then_delivery_and_queue_cli(setup) -> None:
    cfg, data = setup
    p = ports(cfg)
    ca = data / "tls" / "ca.pem"
    with proc("serve", "mta", "--config", str(cfg)) as mta:
        wait_port(p["submission"])
        submit(p["submission"], ca, "alice@example.test", "alice-pw", ["bob@example.test"],
               "Subject: queued while mda down\r\n\r\nx\r\n")
        # the queue runner's own attempt (the direct attempt inside the SMTP transaction also
        # logs "deferred", before the queue entry holds any error)
        deadline = time.monotonic() + 30
        while "recipient(s) pending" not in mta.output and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "recipient(s) pending" in mta.output, mta.output
        listing = mailstack("queue", "list", "--config", str(cfg)).stdout
        assert "<bob@example.test>" in listing and "pending" in listing, listing
        assert "cannot connect to the mda" in listing
        qid = listing.split()[0]
        shown = mailstack("queue", "show", qid, "--config", str(cfg)).stdout
        assert "Subject: queued while mda down" in shown
        assert maildir_files(data, "bob@example.test") == []
        with proc("serve", "mda", "--config", str(cfg)):
            wait_port(p["lmtp"])
            mailstack("queue", "flush", "--config", str(cfg))
            files = wait_files(data, "bob@example.test", 1)
            assert len(files) == 1, mta.output
        assert "Mail queue is empty" in mailstack("queue", "list", "--config", str(cfg)).stdout


def test_queue_delete(setup) -> None:
    cfg, data = setup
    p = ports(cfg)
    with proc("serve", "mta", "--config", str(cfg)):
        wait_port(p["submission"])
        submit(p["submission"], data / "tls" / "ca.pem", "alice@example.test", "alice-pw",
               ["bob@example.test"], "Subject: to delete\r\n\r\nx\r\n")
        qid = mailstack("queue", "list", "--config", str(cfg)).stdout.split()[0]
        assert f"{qid}: removed" in mailstack("queue", "delete", qid, "--config", str(cfg)).stdout
        assert mailstack("queue", "delete", qid, "--config", str(cfg), check=False).returncode == 1
        assert "Mail queue is empty" in mailstack("queue", "list", "--config", str(cfg)).stdout


def wait_queue_empty(data: Path, timeout: float = 30) -> None:
    queue = data / "queue"
    deadline = time.monotonic() + timeout
    while [p for p in queue.iterdir() if p.is_file()]:
        assert time.monotonic() < deadline, sorted(p.name for p in queue.iterdir())
        time.sleep(0.02)


def _subjects(data: Path, address: str) -> collections.Counter[str]:
    return collections.Counter(email.message_from_bytes(f.read_bytes())["Subject"]
                               for f in maildir_files(data, address))


def test_kill9_mta_with_queued_mail_delivers_exactly_once(setup) -> None:
    """mta killed between `250` and delivery (mda down), restarted: each message once."""
    cfg, data = setup
    p = ports(cfg)
    ca = data / "tls" / "ca.pem"
    mta = Proc("serve", "mta", "--config", str(cfg))
    try:
        wait_port(p["submission"])
        for i in range(5):
            submit(p["submission"], ca, "alice@example.test", "alice-pw", ["bob@example.test"],
                   f"Subject: crash-{i}\r\n\r\nx\r\n")
    finally:
        mta.kill9()
    assert maildir_files(data, "bob@example.test") == []
    with proc("serve", "mda", "--config", str(cfg)), proc("serve", "mta", "--config", str(cfg)):
        wait_port(p["lmtp"])
        wait_files(data, "bob@example.test", 5)
        wait_queue_empty(data)  # every entry done: no duplicate can come after this
        assert _subjects(data, "bob@example.test") == {f"crash-{i}": 1 for i in range(5)}


def test_kill9_mta_during_deliveries_never_loses_or_duplicates(setup) -> None:
    """Submit while the mta delivers, kill -9 it right after the last 250, restart."""
    cfg, data = setup
    p = ports(cfg)
    ca = data / "tls" / "ca.pem"
    accepted: list[str] = []
    with proc("serve", "mda", "--config", str(cfg)):
        wait_port(p["lmtp"])
        mta = Proc("serve", "mta", "--config", str(cfg))
        try:
            wait_port(p["submission"])

            def sender(k: int) -> None:
                for i in range(10):
                    subject = f"load-{k}-{i}"
                    submit(p["submission"], ca, "alice@example.test", "alice-pw",
                           ["bob@example.test", "alice@example.test"],
                           f"Subject: {subject}\r\n\r\nx\r\n")
                    accepted.append(subject)
            threads = [threading.Thread(target=sender, args=(k,)) for k in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            mta.kill9()
        with proc("serve", "mta", "--config", str(cfg)):
            for who in ("bob@example.test", "alice@example.test"):
                wait_files(data, who, len(accepted))
            wait_queue_empty(data)  # every entry done: no duplicate can come after this
            for who in ("bob@example.test", "alice@example.test"):
                got = _subjects(data, who)
                assert got == {s: 1 for s in accepted}, (who, got)


def test_sendmail_t(setup) -> None:
    cfg, data = setup
    p = ports(cfg)
    with proc("serve", "mda", "--config", str(cfg)), proc("serve", "mta", "--config", str(cfg)):
        wait_port(p["smtp"])
        wait_port(p["lmtp"])
        msg = ("From: Alice <alice@example.test>\nTo: bob@example.test\n"
               "Bcc: alice@example.test\nSubject: via sendmail\n\nhello from cron\n")
        mailstack("sendmail", "-t", "-f", "alice@example.test", "--config", str(cfg), input=msg)
        [bob] = wait_files(data, "bob@example.test", 1)
        [alice] = wait_files(data, "alice@example.test", 1)
        parsed = email.message_from_bytes(bob.read_bytes())
        assert parsed["Subject"] == "via sendmail" and parsed["Bcc"] is None
        assert parsed["Message-ID"] and parsed["Date"]
        assert alice.read_bytes().count(b"hello from cron") == 1


def test_sendmail_rejects_bad_input(setup) -> None:
    cfg, _ = setup
    r = mailstack("sendmail", "--config", str(cfg), input="Subject: x\n\nbody\n", check=False)
    assert r.returncode == 64 and "no recipients" in r.stderr
    r = mailstack("sendmail", "bad address", "--config", str(cfg), input="Subject: x\n\nb\n",
                  check=False)
    assert r.returncode == 65


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_privileged_port_message_names_the_fixes(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'[server]\ndata_dir = "{tmp_path / "d"}"\nbind = ["127.0.0.1"]\n'
                   "[mda]\nlmtp = 24\n")
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start <= 24:
        pytest.skip(f"net.ipv4.ip_unprivileged_port_start = {start}: port 24 is not privileged")
    # without CAP_NET_BIND_SERVICE (even as root) port 24 is refused
    r = subprocess.run(["setpriv", "--bounding-set", "-net_bind_service", sys.executable, "-m",
                        "mailstack", "serve", "mda", "--config", str(cfg)],
                       capture_output=True, text=True, env=cli_env(), timeout=30)
    if r.returncode != 0 and r.stderr.startswith("setpriv:"):
        pytest.skip(f"setpriv cannot drop the capability here: {r.stderr.strip()}")
    # a daemon that exits 0 here (without serving) is a bug, not a reason to skip
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "CAP_NET_BIND_SERVICE" in r.stderr and "--port-offset" in r.stderr
    assert "Traceback" not in r.stderr
