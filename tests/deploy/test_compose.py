"""docker-compose.yml, checked without a Docker engine.

1. `docker-compose config -q` validates the file (when docker-compose is installed).
2. Each service's published ports are the standard ports of its daemon's listeners.
3. Each service's command runs as a local process with the compose environment — service names
   mapped to 127.0.0.1 and every standard port to a free one — healthchecks pass, and a message
   goes through the result: submission → mta → mda → IMAP and POP3.
"""

from __future__ import annotations

import email
import imaplib
import os
import poplib
import re
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mailstack.config import load
from mailstack.runtime.banner import listeners
from mailstack.testing.ports import compose_published

from ..conftest import free_port
from ..e2e.helpers import ROOT, cli_env, submit, wait_files

COMPOSE = ROOT / "docker-compose.yml"
ORDER = ["init", "mda", "mta", "imap", "pop3", "autoconfig"]
PORT_ENV = {  # standard port → the environment variable that moves it
    25: "MAILSTACK_MTA_SMTP", 587: "MAILSTACK_MTA_SUBMISSION", 465: "MAILSTACK_MTA_SUBMISSIONS",
    24: "MAILSTACK_MDA_LMTP", 143: "MAILSTACK_IMAP_IMAP", 993: "MAILSTACK_IMAP_IMAPS",
    110: "MAILSTACK_POP3_POP3", 995: "MAILSTACK_POP3_POP3S", 80: "MAILSTACK_AUTOCONFIG_HTTP",
    443: "MAILSTACK_HTTP_HTTPS",
}
#: the compose service that runs a daemon, where the names differ (the http daemon's service
#: keeps its earlier name, autoconfig, which `mailstack serve` still accepts)
SERVICE = {"http": "autoconfig"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_is_valid() -> None:
    r = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_published_ports_match_the_listeners() -> None:
    cfg = load(ROOT / "configs" / "docker.toml", env={})
    services = compose()["services"]
    for lst in listeners(cfg):
        if lst.daemon == "mda":
            assert "ports" not in services["mda"], "the mda is internal"
            continue
        service = services[SERVICE.get(lst.daemon, lst.daemon)]
        published = {int(p.rsplit(":", 1)[1]): p for p in service["ports"]}
        assert lst.port in published, (lst, published)
        # "${MAILSTACK_PUBLISH_ADDRESS:-127.0.0.1}:${MAILSTACK_PUBLISH_SMTP:-25}:25"
        m = re.fullmatch(r"\$\{MAILSTACK_PUBLISH_ADDRESS:-([^}]*)\}:"
                         r"\$\{MAILSTACK_PUBLISH_[A-Z0-9]+:-(\d+)\}:(\d+)", published[lst.port])
        assert m, published[lst.port]
        assert m.group(1) == "127.0.0.1", "loopback only by default"
        assert m.group(2) == m.group(3) == str(lst.port), "the standard port by default"
    probe_port = {"mda": "24", "mta": "25", "imap": "143", "pop3": "110", "autoconfig": "80"}
    for name in ORDER[1:]:
        http = ["--http"] if name == "autoconfig" else []
        assert services[name]["healthcheck"]["test"] == [
            "CMD", "python3", "-m", "mailstack.runtime.probe", probe_port[name], *http,
            "--wait", "4"]


def test_compose_commands_run_as_local_processes(tmp_path: Path) -> None:
    services = compose()["services"]
    ports = {std: free_port() for std in PORT_ENV}
    names = set(services)
    env = cli_env()
    env["MAILSTACK_CONFIG"] = str(ROOT / "configs" / "docker.toml")  # as in the image
    env["MAILSTACK_SERVER_DATA_DIR"] = str(tmp_path / "data")
    env["MAILSTACK_SERVER_BIND"] = '["127.0.0.1"]'
    env["MAILSTACK_MDA_BIND"] = '["127.0.0.1"]'
    env.update({var: str(ports[std]) for std, var in PORT_ENV.items()})

    def service_env(name: str) -> dict[str, str]:
        out = dict(env)
        for key, value in (services[name].get("environment") or {}).items():
            value = str(value)
            m = re.fullmatch(r"([a-z0-9_-]+):(\d+)", value)
            if m and m.group(1) in names:  # "mda:24" → 127.0.0.1:<moved port>
                value = f"127.0.0.1:{ports[int(m.group(2))]}"
            out[key] = value
        return out

    def run(name: str, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mailstack", *args], env=service_env(name),
                              capture_output=True, text=True, timeout=60, **kw)

    r = run("init", *services["init"]["command"])
    assert r.returncode == 0, r.stderr
    r = run("init", "user", "add", "alice@localhost", "--password-stdin", input="alice-pw\n")
    assert r.returncode == 0, r.stderr
    procs = []
    try:
        for name in ORDER[1:]:
            p = subprocess.Popen([sys.executable, "-m", "mailstack", *services[name]["command"]],
                                 env=service_env(name), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            procs.append(p)
        for name in ORDER[1:]:
            deadline = 50
            while True:
                _, _, _, module, port, *rest = services[name]["healthcheck"]["test"]
                hc = subprocess.run([sys.executable, "-m", module, str(ports[int(port)]), *rest],
                                    capture_output=True, text=True, timeout=60)
                if hc.returncode == 0:
                    break
                deadline -= 1
                assert deadline, f"{name} never became healthy: {hc.stderr}"
                time.sleep(0.2)
        data = tmp_path / "data"
        ca = data / "tls" / "ca.pem"
        submit(ports[587], ca, "alice@localhost", "alice-pw", ["alice@localhost"],
               "Subject: through compose\r\n\r\nhello\r\n")
        assert len(wait_files(data, "alice@localhost", 1)) == 1
        ctx = ssl.create_default_context(cafile=str(ca))
        imap = imaplib.IMAP4_SSL("127.0.0.1", ports[993], ssl_context=ctx, timeout=10)
        imap.login("alice@localhost", "alice-pw")
        imap.select("INBOX")
        typ, fetched = imap.fetch("1", "(BODY.PEEK[HEADER])")
        assert typ == "OK" and b"Subject: through compose" in fetched[0][1]
        imap.logout()
        pop = poplib.POP3_SSL("127.0.0.1", ports[995], context=ctx, timeout=10)
        pop.user("alice@localhost")
        pop.pass_("alice-pw")
        msg = email.message_from_bytes(b"\r\n".join(pop.retr(1)[1]))
        assert msg["Subject"] == "through compose"
        pop.quit()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)


async def test_the_waiting_probe_reports_a_late_daemon_as_soon_as_it_answers(
        config_factory) -> None:
    """Docker 20.10 runs the first health check one interval after the start: a probe with
    ``--wait`` that finds no daemon yet keeps trying and succeeds once it answers; without it,
    or when the wait runs out, it fails."""
    import asyncio

    from ..conftest import running

    cfg = config_factory()
    port = cfg.port("pop3", "pop3")

    def probe(*extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "mailstack.runtime.probe", str(port),
                                 *extra], env=cli_env())

    assert probe().wait(30) == 1  # nothing listens yet
    assert probe("--wait", "0.3").wait(30) == 1
    waiting = probe("--wait", "60")
    async with running("pop3", cfg):
        assert waiting.poll() in (None, 0)  # still trying (or has just seen the daemon)
        rc = await asyncio.to_thread(waiting.wait, 60)
    assert rc == 0


async def test_mailstack_health_wait_is_the_same_wait(config_factory) -> None:
    """``mailstack health NAME --wait S`` (scripts; ``mailstack up`` waits for its daemons with
    the same check): started before the daemon, it answers once the daemon greets."""
    import asyncio

    from ..conftest import running

    cfg = config_factory()
    cmd = [sys.executable, "-m", "mailstack", "health", "imap", "--config", str(cfg.source)]
    quick = subprocess.run([*cmd, "--wait", "0.2"], capture_output=True, text=True,
                           env=cli_env(), timeout=60)
    assert quick.returncode == 1 and "imap imap on 127.0.0.1" in quick.stderr
    waiting = subprocess.Popen([*cmd, "--wait", "60"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=cli_env())
    async with running("imap", cfg):
        out, _ = await asyncio.to_thread(waiting.communicate, timeout=60)
    assert waiting.returncode == 0 and "* OK" in out


def test_tests_move_every_published_port() -> None:
    """The docker end-to-end test and bench/compose_up.py move each published port to a free
    one through ``compose_published``: it must find every port the file publishes (HTTPS was
    once left on 443, so two runs on one machine collided on the standard port)."""
    names = compose_published(COMPOSE)
    published = [p for s in compose()["services"].values() for p in s.get("ports", [])]
    assert len(names) == len(published) and names["HTTPS"] == 443
    for port in published:
        name = port.split("${MAILSTACK_PUBLISH_")[2].partition(":-")[0]
        assert name in names, port
