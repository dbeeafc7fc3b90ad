"""The operator's command line cannot be misused: each case found by hand in issue 15.

Every command runs as a real subprocess (``python -m mailstack``), as an operator runs it; a
user error is one ``mailstack: ...`` line naming the file or key and the fix, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailstack.runtime.tls import generate_ca_and_leaf

from ..conftest import write_config
from .helpers import ROOT, cli_env, proc

TRACEBACK = "Traceback (most recent call last)"


def run(*args: str, cwd: Path | None = None, input: str | None = None,
        env: dict[str, str] | None = None, user: int | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mailstack", *args]
    if user is not None:  # as another uid (the tests run as root in CI)
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, input=input,
                       env={**cli_env(), **(env or {})}, timeout=timeout,
                       stdin=None if input is not None else subprocess.DEVNULL)
    assert TRACEBACK not in r.stderr + r.stdout, r.stderr
    return r


def _config(tmp_path: Path, extra: str) -> Path:
    return write_config(tmp_path, extra)


# -- config check validates everything up would use --------------------------------------------
def test_garbage_pem_certificate_is_named_by_config_check_and_up(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    (tmp_path / "key.pem").write_text("also garbage\n")
    conf = _config(tmp_path, f'[tls]\ncert = "{tmp_path}/cert.pem"\nkey = "{tmp_path}/key.pem"')
    r = run("config", "check", "--config", str(conf))
    assert r.returncode == 2
    assert f"{conf}: [tls].cert {tmp_path}/cert.pem: not a PEM certificate" in r.stderr
    assert "leave both empty to generate" in r.stderr
    # up stops at once with the same message instead of crash-looping its daemons
    r = run("up", "--config", str(conf), timeout=120)
    assert r.returncode == 2 and "[tls].cert" in r.stderr, r.stdout + r.stderr
    assert "mailstack is up" not in r.stdout
    r = run("serve", "mta", "--config", str(conf))
    assert r.returncode == 2 and "[tls].cert" in r.stderr


def test_key_that_does_not_match_the_certificate(tmp_path: Path) -> None:
    _, _, cert, _ = generate_ca_and_leaf(["localhost"])
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(other)
    conf = _config(tmp_path, f'[tls]\ncert = "{tmp_path}/cert.pem"\nkey = "{tmp_path}/key.pem"')
    r = run("config", "check", "--config", str(conf))
    assert r.returncode == 2
    assert f"[tls].key {tmp_path}/key.pem does not belong to" in r.stderr


def test_a_matching_pair_passes(tmp_path: Path) -> None:
    _, _, cert, key = generate_ca_and_leaf(["localhost"])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    conf = _config(tmp_path, f'[tls]\ncert = "{tmp_path}/cert.pem"\nkey = "{tmp_path}/key.pem"')
    r = run("config", "check", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    assert f"data_dir  {tmp_path / 'data'}" in r.stdout


@pytest.mark.parametrize(("extra", "expected"), [
    ('[mta.transport]\n"x.test" = "nohostport"',
     "bad value for [mta].transport: x.test: expected host:port"),
    ('[server]\ndomains = "example.test"',
     'bad value for [server].domains: expected a list of strings such as [\'example.test\']'),
    ('[server]\nhostname = 5', "bad value for [server].hostname: expected a string"),
    ('[imap]\nimaps = "993"', "bad value for [imap].imaps: expected a port number"),
])
def test_config_check_names_the_key(tmp_path: Path, extra: str, expected: str) -> None:
    conf = _config(tmp_path, extra)
    r = run("config", "check", "--config", str(conf))
    assert r.returncode == 2
    assert r.stderr.startswith(f"mailstack: {conf}: ") and expected in r.stderr, r.stderr


def test_a_list_from_the_environment_may_be_one_string(tmp_path: Path) -> None:
    conf = _config(tmp_path, "")
    r = run("config", "check", "--config", str(conf),
            env={"MAILSTACK_SERVER_DOMAINS": "other.test"})
    assert r.returncode == 0, r.stderr
    assert "domains   other.test" in r.stdout


def test_data_dir_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    conf = _config(tmp_path, f'[server]\ndata_dir = "{tmp_path}/afile/data"')
    r = run("config", "check", "--config", str(conf))
    assert r.returncode == 2 and "[server].data_dir" in r.stderr
    assert "is not a directory" in r.stderr


# -- user add ---------------------------------------------------------------------------------
def _as_other_user() -> dict:
    if os.getuid() != 0:
        return {}
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to run the CLI as another user")
    return {"user": 65534}


def test_unwritable_data_dir_on_user_add(tmp_path: Path) -> None:
    # under /tmp itself: pytest's own directories are closed to other users
    base = Path(tempfile.mkdtemp(prefix="mailstack-perm-"))
    try:
        base.chmod(0o755)
        data = base / "data"
        data.mkdir(mode=0o555)
        data.chmod(0o555)
        conf = base / "mailstack.toml"
        conf.write_text(f'[server]\ndata_dir = "{data}"\n')
        conf.chmod(0o644)
        r = run("user", "add", "a@example.test", "--password-stdin", "--config", str(conf),
                input="pw\n", **_as_other_user())
        assert r.returncode != 0
        assert f"{conf}: [server].data_dir {data} is not writable" in r.stderr, r.stderr
        assert "chown/chmod" in r.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unreadable_config_file(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="mailstack-perm-"))
    try:
        base.chmod(0o755)
        conf = base / "mailstack.toml"
        conf.write_text("[server]\n")
        conf.chmod(0o600)
        r = run("config", "check", "--config", str(conf), **_as_other_user())
        assert r.returncode == 2
        assert r.stderr.startswith(f"mailstack: {conf}: cannot read the config file"), r.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_user_add_without_a_terminal_says_password_stdin(tmp_path: Path) -> None:
    conf = _config(tmp_path, "")
    r = run("user", "add", "a@example.test", "--config", str(conf))  # stdin: /dev/null
    assert r.returncode == 1
    assert "--password-stdin" in r.stderr and "no terminal" in r.stderr


def test_user_add_warns_before_creating_a_new_data_dir(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run("user", "add", "a@localhost", "--password-stdin", cwd=elsewhere, input="pw\n",
            env={"MAILSTACK_DATA": ""})
    assert r.returncode == 0, r.stderr
    new = elsewhere / "mailstack-data"
    assert f"warning: {new} does not exist: creating a new data directory" in r.stderr
    assert "MAILSTACK_DATA=DIR" in r.stderr
    assert f"(mailbox {new}/" in r.stdout  # the absolute path
    # the same data dir again, with no stack on it: still a warning (defaults, no config)
    r = run("user", "add", "b@localhost", "--password-stdin", cwd=elsewhere, input="pw\n",
            env={"MAILSTACK_DATA": ""})
    assert f"warning: no mailstack runs on {new}" in r.stderr


# -- one stack per data directory ---------------------------------------------------------------
def test_second_up_on_a_data_dir_names_the_first(tmp_path: Path) -> None:
    conf = _config(tmp_path, "")
    (tmp_path / "b").mkdir()
    other = write_config(tmp_path / "b", f'[server]\ndata_dir = "{tmp_path / "data"}"')
    with proc("up", "--config", str(conf)) as first:
        first.wait_for_output("mailstack is up", timeout=60)
        # other ports, same data dir
        r = run("up", "--config", str(other), timeout=120)
        assert r.returncode == 2
        assert f"{tmp_path / 'data'} is in use by mailstack up (pid {first.popen.pid}, " \
               "ports smtp " in r.stderr, r.stderr
        assert "mailstack is up" not in r.stdout
        # one daemon of the running stack, started again by hand
        r = run("serve", "mta", "--config", str(conf))
        assert r.returncode == 2 and "is in use by mailstack serve mta (pid " in r.stderr
        assert first.popen.poll() is None
    assert "all daemons stopped" in first.output


def test_up_on_ports_another_stack_holds_is_not_up(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    conf1 = _config(one, "")
    conf2 = two / "mailstack.toml"  # the same ports, another data dir
    conf2.write_text(conf1.read_text().replace(str(one / "data"), str(two / "data")))
    with proc("up", "--config", str(conf1)) as first:
        first.wait_for_output("mailstack is up", timeout=60)
        r = run("up", "--config", str(conf2), timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "mailstack is up" not in r.stdout  # the first stack's answers do not count
        assert "could not start" in r.stderr


# -- sendmail and the queue ---------------------------------------------------------------------
def test_sendmail_sender_is_the_real_user_at_the_first_domain(tmp_path: Path) -> None:
    import pwd

    conf = _config(tmp_path, "[server]\ndomains = [\"first.test\", \"second.test\"]")
    login = pwd.getpwuid(os.getuid()).pw_name
    # $USER and $LOGNAME are the caller's to set; the envelope follows the real uid
    r = run("sendmail", "--config", str(conf), "bob@remote.test",
            input="Subject: x\n\nhi\n", env={"USER": "mallory", "LOGNAME": "mallory"})
    assert r.returncode == 0, r.stderr
    assert f"envelope sender {login}@first.test" in r.stderr and "has no account" in r.stderr
    r = run("sendmail", "--config", str(conf), "-f", "app@second.test", "bob@remote.test",
            input="Subject: y\n\nhi\n")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    q = run("queue", "list", "--json", "--config", str(conf))
    assert q.returncode == 0, q.stderr
    entries = json.loads(q.stdout)
    assert sorted(e["sender"] for e in entries) == sorted([f"{login}@first.test",
                                                           "app@second.test"])
    assert all(e["recipients"][0]["address"] == "bob@remote.test" for e in entries)
    assert all(e["recipients"][0]["status"] == "pending" for e in entries)


def test_queue_list_json_of_an_empty_queue(tmp_path: Path) -> None:
    conf = _config(tmp_path, "")
    r = run("queue", "list", "--json", "--config", str(conf))
    assert r.returncode == 0 and json.loads(r.stdout) == []


def test_queue_list_prints_a_shared_error_once(tmp_path: Path) -> None:
    from mailstack.config import load
    from mailstack.mta.queue import Envelope, Spool, new_queue_id

    conf = _config(tmp_path, "")
    cfg = load(conf, env={})
    spool = Spool(cfg.data_dir / "queue")
    rcpts = [f"u{i}@example.test" for i in range(3)]
    entry = spool.put(b"Subject: x\r\n\r\nx\r\n", Envelope("a@example.test", rcpts, 20),
                      new_queue_id())
    error = "451 4.4.1 cannot connect to the mda at unix:/x: [Errno 2] No such file"
    for r in entry.recipients:
        r.last_reply, r.attempts = error, 1
    spool.save_state(entry)
    spool.close()
    out = run("queue", "list", "--config", str(conf)).stdout
    assert out.count("cannot connect to the mda") == 1, out
    assert all(f"<{a}>" in out for a in rcpts)


def test_the_readme_docker_commands_work_with_compose_v1_and_v2() -> None:
    text = (ROOT / "README.md").read_text() + (ROOT / "docker-compose.yml").read_text()
    assert "compose cp" not in text  # Compose v1 has no `cp`
    assert "docker-compose exec -T mta cat /data/tls/ca.pem > ca.pem" in text
