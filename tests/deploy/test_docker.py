"""docker-compose.yml in a real Docker engine, as an operator runs it.

The image is built from the Dockerfile (its base from ``.ci/docker-base``: python:3.11-slim, or a
Debian stand-in when no registry is reachable), then the real compose file is brought up with
its published ports moved to free ones (``MAILSTACK_PUBLISH_*``): every service healthy, a user
added with ``run --rm init``, mail sent on 587 and read on 993 and 995, the mta stopped with a
delivery in flight and a client in the middle of DATA (421, a clean exit, the message delivered
once after the start), ``down`` + ``up`` keeping users and mail, daemons not running as root, and
no health-check lines in the logs.

Without a Docker engine the test is skipped. ``.ci/run`` tries to start one first and sets
``MAILSTACK_DOCKER_UNAVAILABLE`` to the reason when it cannot: only then does the skip not count
against ``MAILSTACK_TEST_MAX_SKIPS``.
"""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.testing.ports import compose_published, free_port

from ..e2e.helpers import ROOT

SERVICES = ["mda", "mta", "imap", "pop3", "autoconfig"]
#: every port the compose file publishes (each moved to a free one: never a standard port)
PUBLISH = compose_published(ROOT / "docker-compose.yml")
IMAGE = "mailstack-e2e:latest"
#: the skip reason's prefix that tests/conftest.py excuses when .ci/run could not start an engine
UNAVAILABLE = "no Docker engine (MAILSTACK_DOCKER_UNAVAILABLE)"


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return f"docker info: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    if _compose_cmd() is None:
        return "neither docker-compose nor `docker compose` is installed"
    return None


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    r = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
    return ["docker", "compose"] if r.returncode == 0 else None


class Compose:
    """``docker-compose -f docker-compose.yml -p PROJECT`` with the test's environment."""

    def __init__(self, project: str, env: dict[str, str]) -> None:
        cmd = _compose_cmd()
        assert cmd is not None
        self.base = [*cmd, "-f", str(ROOT / "docker-compose.yml"), "-p", project]
        self.env = env
        self.project = project

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 180) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*self.base, *args], input=input, capture_output=True, text=True,
                           env=self.env, timeout=timeout, cwd=ROOT)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n"
                                 f"{r.stderr}\n{self.logs()}")
        return r

    def logs(self, *services: str) -> str:
        r = subprocess.run([*self.base, "logs", "--no-color", *services], capture_output=True,
                           text=True, env=self.env, timeout=60, cwd=ROOT)
        return r.stdout

    def container(self, service: str) -> str:
        return self("ps", "-q", service).stdout.strip()

    def inspect(self, service: str) -> dict:
        cid = self.container(service)
        assert cid, f"{service} has no container"
        r = subprocess.run(["docker", "inspect", cid], capture_output=True, text=True,
                           timeout=60, check=True)
        return json.loads(r.stdout)[0]

    def wait_healthy(self, services: list[str], timeout: float = 120) -> None:
        """Poll every service's health with one ``docker`` call each 0.1 s (compose v1's ``ps``
        costs about 0.5 s of CPU a call: polling with it would slow down what is measured)."""
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run(["docker", "ps", "-a", "--filter",
                                f"label=com.docker.compose.project={self.project}", "--format",
                                '{{.Label "com.docker.compose.service"}} {{.Status}}'],
                               capture_output=True, text=True, timeout=60, check=True)
            states = dict.fromkeys(services, "missing")
            for line in r.stdout.splitlines():
                name, _, status = line.partition(" ")
                if name in states:
                    states[name] = status
            if all("(healthy)" in v for v in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy within {timeout}s: {states}\n{self.logs()}")
            time.sleep(0.1)


def _wait(what: str, cond, timeout: float = 60, logs=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{logs()}")
        time.sleep(0.2)


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _imap_count(port: int, ctx: ssl.SSLContext) -> int:
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=15) as imap:
        imap.login("alice@localhost", "alice-pw")
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK"
        return int(data[0])


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Compose, dict]]:
    problem = _engine_problem()
    if problem is not None:
        if os.environ.get("MAILSTACK_DOCKER_UNAVAILABLE"):
            pytest.skip(f"{UNAVAILABLE}: {os.environ['MAILSTACK_DOCKER_UNAVAILABLE']}")
        pytest.skip(f"no Docker engine: {problem}")
    base = subprocess.run([str(ROOT / ".ci" / "docker-base")], capture_output=True, text=True,
                          timeout=900)
    assert base.returncode == 0, base.stderr
    base_image = base.stdout.strip().splitlines()[-1]
    build = subprocess.run(["docker", "build", "-q", "--network", "host", "--build-arg",
                            f"PYTHON_IMAGE={base_image}", "-t", IMAGE, str(ROOT)],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    ports = {name: free_port() for name in PUBLISH}
    env = dict(os.environ, MAILSTACK_IMAGE=IMAGE, MAILSTACK_PYTHON_IMAGE=base_image)
    env.update({f"MAILSTACK_PUBLISH_{name}": str(port) for name, port in ports.items()})
    c = Compose(f"mailstacke2e{os.getpid()}", env)
    try:
        yield c, ports
    finally:
        c("down", "-v", "--remove-orphans", check=False)


def test_compose_in_a_real_docker_engine(compose: tuple[Compose, dict],
                                         tmp_path: Path) -> None:
    c, ports = compose
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    c("up", "-d")
    c.wait_healthy(SERVICES)
    timings["up to all healthy"] = time.monotonic() - t0

    # the daemons do not run as root (uid 1000, the image's user)
    for s in SERVICES:
        status = c("exec", "-T", s, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()
        assert uids[1:] == ["1000"] * 4, (s, uids)

    # the README's commands: add a user, fetch the CA
    r = c("run", "--rm", "-T", "init", "user", "add", "alice@localhost", "--password-stdin",
          input="alice-pw\n")
    assert "added alice@localhost" in r.stdout, r.stdout + r.stderr
    ca = tmp_path / "ca.pem"
    ca.write_text(c("exec", "-T", "mta", "cat", "/data/tls/ca.pem").stdout)
    ctx = ssl.create_default_context(cafile=str(ca))

    # in on 587, out on 993 and 995
    with smtplib.SMTP("127.0.0.1", ports["SUBMISSION"], timeout=15) as smtp:
        smtp.starttls(context=ctx)
        smtp.login("alice@localhost", "alice-pw")
        smtp.sendmail("alice@localhost", ["alice@localhost"],
                      "Subject: through docker\r\n\r\nhello\r\n")
    _wait("the first message in INBOX", lambda: _imap_count(ports["IMAPS"], ctx) == 1,
          logs=c.logs)
    pop = poplib.POP3_SSL("127.0.0.1", ports["POP3S"], context=ctx, timeout=15)
    try:
        pop.user("alice@localhost")
        pop.pass_("alice-pw")
        assert pop.stat()[0] == 1
        assert b"Subject: through docker" in b"\r\n".join(pop.top(1, 0)[1])
    finally:
        pop.quit()  # no DELE: the message stays for the checks below

    # the mta stops with a delivery in flight (the mda frozen) and a client inside DATA
    c("pause", "mda")
    with smtplib.SMTP("127.0.0.1", ports["SUBMISSION"], timeout=15) as smtp:
        smtp.starttls(context=ctx)
        smtp.login("alice@localhost", "alice-pw")
        smtp.sendmail("alice@localhost", ["alice@localhost"],
                      "Subject: in flight\r\n\r\nduring the restart\r\n")

    def lmtp_connected() -> bool:  # the mta holds a connection to mda:24 (port 0x0018)
        tcp = c("exec", "-T", "mta", "cat", "/proc/net/tcp").stdout.splitlines()[1:]
        return any(f.split()[2].endswith(":0018") and f.split()[3] == "01"
                   for f in tcp if len(f.split()) > 3)
    _wait("the delivery to the frozen mda in flight", lmtp_connected, logs=c.logs)
    client = socket.create_connection(("127.0.0.1", ports["SMTP"]), timeout=30)
    with client:
        assert _reply(client).startswith(b"220")
        client.sendall(b"EHLO client.test\r\n")
        _reply(client)
        for cmd in (b"MAIL FROM:<x@remote.test>", b"RCPT TO:<alice@localhost>", b"DATA"):
            client.sendall(cmd + b"\r\n")
            assert _reply(client)[:1] in b"23", cmd
        client.sendall(b"Subject: half\r\n\r\nhalf a message\r\n")
        t_stop = time.monotonic()
        c("stop", "mta")
        timings["mta stop with a delivery in flight"] = time.monotonic() - t_stop
        assert _reply(client).startswith(b"421 4.3.2")
    state = c.inspect("mta")["State"]
    assert state["ExitCode"] == 0, state  # 137 when Docker had to SIGKILL it
    mta_log = c.logs("mta")
    assert "mta stopping: 421 to the client" in mta_log and "mta[1] INFO: stopped" in mta_log
    c("unpause", "mda")
    c("start", "mta")
    _wait("the in-flight message delivered", lambda: _imap_count(ports["IMAPS"], ctx) == 2,
          logs=c.logs)
    _wait("the queue empty", lambda: "Mail queue is empty" in c(
        "exec", "-T", "mta", "mailstack", "queue", "list").stdout, logs=c.logs)
    assert _imap_count(ports["IMAPS"], ctx) == 2  # once, and the half message was not taken

    # down + up: users and mail are kept in the volume
    c("down")
    t0 = time.monotonic()
    c("up", "-d")
    c.wait_healthy(SERVICES)
    timings["up again to all healthy"] = time.monotonic() - t0
    assert _imap_count(ports["IMAPS"], ctx) == 2

    # health checks ran, and left no trace at info level
    for s in SERVICES:
        health = c.inspect(s)["State"]["Health"]
        assert health["Log"] and all(h["ExitCode"] == 0 for h in health["Log"][-1:]), health
    logs = c.logs()
    noise = [line for line in logs.splitlines()
             if "GET /health" in line or "TLS handshake failed" in line
             or ("session end: user=-" in line and "reason=disconnected" in line)]
    assert not noise, noise[:5]
    print("docker timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
