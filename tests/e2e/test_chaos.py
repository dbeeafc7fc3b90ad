"""Chaos with exactly-once accounting: submissions under load while the mta and the mda are
killed with SIGKILL at random moments and restarted (once the mda stays down longer than a
retry interval). Every message that got a 250 must end up in its Maildir exactly once; one
that did not may be absent or present once."""

from __future__ import annotations

import collections
import email
import random
import smtplib
import ssl
import threading
import time
from pathlib import Path

import pytest

from ..conftest import write_config
from .helpers import Proc, maildir_files, mailstack, wait_port

pytestmark = pytest.mark.e2e

DURATION = 12.0


def test_random_kills_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[mta]\nretry_initial = "1s"\nretry_max = "1s"\n')
    from mailstack.config import load
    c = load(cfg, env={})
    data = c.data_dir
    for user in ("alice", "bob"):
        mailstack("user", "add", f"{user}@example.test", "--password-stdin", "--config",
                  str(cfg), input="pw\n")
    mailstack("init", "--config", str(cfg))
    ctx = ssl.create_default_context(cafile=str(data / "tls" / "ca.pem"))
    procs = {"mda": Proc("serve", "mda", "--config", str(cfg)),
             "mta": Proc("serve", "mta", "--config", str(cfg))}
    wait_port(c.port("mta", "submission"))
    wait_port(c.port("mda", "lmtp"))
    accepted: set[str] = set()
    attempted: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    rng = random.Random(1234)

    def sender(k: int) -> None:
        n = 0
        while not stop.is_set():
            tag = f"m-{k}-{n}"
            n += 1
            with lock:
                attempted.add(tag)
            body = f"Subject: {tag}\r\nMessage-ID: <{tag}@chaos>\r\n\r\n{tag}\r\n"
            try:
                if k % 2:
                    with smtplib.SMTP("127.0.0.1", c.port("mta", "smtp"), timeout=5) as s:
                        s.sendmail("x@example.org", ["bob@example.test"], body)
                else:
                    with smtplib.SMTP("127.0.0.1", c.port("mta", "submission"), timeout=5) as s:
                        s.starttls(context=ctx)
                        s.login("alice@example.test", "pw")
                        s.sendmail("alice@example.test", ["bob@example.test"], body)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # the mta is down or died mid-transaction
                continue
            with lock:
                accepted.add(tag)

    def chaos() -> None:
        long_outage_done = False
        while not stop.is_set():
            time.sleep(rng.uniform(0.4, 1.2))
            name = rng.choice(["mta", "mda"])
            procs[name].kill9()
            down = 2.5 if name == "mda" and not long_outage_done else rng.uniform(0.05, 0.6)
            long_outage_done = long_outage_done or name == "mda"
            time.sleep(down)
            procs[name] = Proc("serve", name, "--config", str(cfg))

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(20)]
    monkey = threading.Thread(target=chaos)
    try:
        for t in threads:
            t.start()
        monkey.start()
        time.sleep(DURATION)
        stop.set()
        monkey.join()
        for t in threads:
            t.join()
        # let everything settle: both daemons up, queue drained
        for name, proc in list(procs.items()):
            if proc.popen.poll() is not None:
                procs[name] = Proc("serve", name, "--config", str(cfg))
        deadline = time.monotonic() + 60
        while any((data / "queue").glob("*.msg")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any((data / "queue").glob("*.msg")), "queue did not drain"
        time.sleep(0.5)
    finally:
        stop.set()
        for proc in procs.values():
            proc.terminate()
    got = collections.Counter(
        email.message_from_bytes(f.read_bytes())["Subject"]
        for f in maildir_files(data, "bob@example.test"))
    dupes = {k: v for k, v in got.items() if v > 1}
    lost = accepted - set(got)
    print(f"chaos: attempted {len(attempted)}, accepted {len(accepted)}, delivered "
          f"{sum(got.values())}, lost {len(lost)}, duplicated {len(dupes)}")
    assert len(accepted) > 50, "the load generator got too little through"
    assert not lost, sorted(lost)[:10]
    assert not dupes, dupes
    assert set(got) <= attempted
