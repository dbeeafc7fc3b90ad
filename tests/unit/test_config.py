"""Configuration loading and validation; every file in configs/ must pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailstack.config import ConfigError, load

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


def test_defaults() -> None:
    cfg = load(None, env={})
    assert cfg.server.domains == ("localhost",)
    assert cfg.port("mta", "submission") == 587
    assert cfg.mta.max_message_size == 25 * 1024 * 1024
    # LMTP goes over a unix socket in the data directory; no TCP listener by default
    assert cfg.lmtp_target == cfg.data_dir / "run" / "lmtp.sock" == cfg.lmtp_socket
    assert cfg.port("mda", "lmtp") == 0
    assert (cfg.mta.soft_error_limit, cfg.mta.hard_error_limit, cfg.mta.error_delay) == (3, 20, 1)


def test_port_offset_moves_every_port_and_the_lmtp_target(tmp_path: Path) -> None:
    cfg = load(None, port_offset=10000, env={})
    assert cfg.port("mta", "smtp") == 10025 and cfg.port("imap", "imaps") == 10993
    assert cfg.lmtp_target == cfg.lmtp_socket, "a socket path is not moved"
    p = tmp_path / "c.toml"
    p.write_text('[mda]\nsocket = ""\nlmtp = 24\n')  # the old TCP set-up
    assert load(p, port_offset=10000, env={}).lmtp_target == ("127.0.0.1", 10024)
    p.write_text('[mta]\nlmtp = "mda:24"\n')  # docker-compose: another host, not moved
    assert load(p, port_offset=10000, env={}).lmtp_target == ("mda", 24)
    p.write_text('[mta]\nlmtp = "unix:/run/x.sock"\n')
    assert load(p, env={}).lmtp_target == Path("/run/x.sock")


def test_lmtp_needs_somewhere_to_go(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[mda]\nsocket = ""\n')
    with pytest.raises(ConfigError, match="nowhere to deliver"):
        load(p, env={})


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[mta]\nsmpt = 25\n")
    with pytest.raises(ConfigError, match=r"c\.toml: unknown key \[mta\]\.smpt"):
        load(p, env={})


@pytest.mark.parametrize("body,key", [
    ("[mta]\nsmtp = 70000\n", "[mta].smtp"),
    ('[mta]\nmax_message_size = "lots"\n', "[mta].max_message_size"),
    ('[server]\ndomains = ["bad domain"]\n', "[server].domains"),
    ('[tls]\ncert = "x.pem"\n', "[tls].cert"),
    ('[mta]\nretry_initial = "soon"\n', "[mta].retry_initial"),
    ('[server]\nplaintext_login_networks = ["10.0.0.0/33"]\n',
     "[server].plaintext_login_networks"),
    ('[server]\nevent_loop = "trio"\n', "[server].event_loop"),
    ('[server]\nproxy_networks = ["haproxy.local"]\n', "[server].proxy_networks"),
    ('[server]\nproxy_listeners = ["lmtp"]\n', "[server].proxy_listeners"),
    ('[autoconfig]\nidle_timeout = "a while"\n', "[autoconfig].idle_timeout"),
    ("[server]\nauth_failures_free = -1\n", "[server].auth_failures_free"),
])
def test_bad_values(tmp_path: Path, body: str, key: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(body)
    with pytest.raises(ConfigError) as err:
        load(p, env={})
    assert key in str(err.value) and str(p) in str(err.value)


def test_unknown_section_and_bad_toml(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[smtpd]\nx = 1\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load(p, env={})
    p.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(p, env={})


def test_environment_overrides() -> None:
    cfg = load(None, env={"MAILSTACK_SERVER_HOSTNAME": "mx.example.test",
                          "MAILSTACK_SERVER_DOMAINS": '["a.test", "B.test"]',
                          "MAILSTACK_MTA_SMTP": "2525", "MAILSTACK_DATA": "/srv/mail"})
    assert cfg.server.hostname == "mx.example.test"
    assert cfg.server.domains == ("a.test", "b.test")
    assert cfg.port("mta", "smtp") == 2525 and str(cfg.data_dir) == "/srv/mail"
    with pytest.raises(ConfigError, match="MAILSTACK_"):
        load(None, env={"MAILSTACK_MTA_SMTP": "many"})


def test_sizes_and_durations(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[mta]\nmax_message_size = "10MB"\nqueue_lifetime = "2d"\nretry_initial = 30\n')
    cfg = load(p, env={})
    assert cfg.mta.max_message_size == 10_000_000
    assert cfg.mta.queue_lifetime == 2 * 86400 and cfg.mta.retry_initial == 30


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid(path: Path) -> None:
    load(path, env={})


def test_users_db_is_consistent_under_concurrent_first_use(tmp_path: Path) -> None:
    """Regression: threads racing on the first load saw an empty user table."""
    import concurrent.futures

    from mailstack.accounts.users import UserDB

    UserDB(tmp_path / "users").add("a@x.test", "pw")
    for _ in range(5):
        db = UserDB(tmp_path / "users")
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            assert all(pool.map(lambda _, db=db: db.exists("a@x.test"), range(64)))


async def test_auth_cache_hits_and_misses_on_password_change(tmp_path: Path) -> None:
    from mailstack.accounts.users import UserDB

    db = UserDB(tmp_path / "users")
    db.add("a@x.test", "pw1")
    assert await db.authenticate("a@x.test", "pw1")
    assert len(db._auth_cache) == 1 and await db.authenticate("A@x.test", "pw1")
    assert not await db.authenticate("a@x.test", "wrong")
    db.set_password("a@x.test", "pw2")
    assert not await db.authenticate("a@x.test", "pw1"), "old password no longer accepted"
    assert await db.authenticate("a@x.test", "pw2")
    db.delete("a@x.test")
    assert not await db.authenticate("a@x.test", "pw2")


def test_concurrent_user_adds_are_not_lost(tmp_path: Path) -> None:
    import concurrent.futures

    from mailstack.accounts.users import UserDB

    def add(i: int) -> str:
        return UserDB(tmp_path / "users").add(f"u{i}@x.test", "pw")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(add, range(16)))
    assert len(UserDB(tmp_path / "users").list()) == 16
    assert oct((tmp_path / "users").stat().st_mode & 0o777) == "0o600"


def test_plaintext_login_networks_match_listener_addresses() -> None:
    """arrived_on() decides by the address the connection arrived on (sockname)."""
    from mailstack.runtime.netserver import arrived_on

    class Writer:
        def __init__(self, host: str) -> None:
            self.host = host

        def get_extra_info(self, name: str) -> tuple[str, int]:
            assert name == "sockname"
            return (self.host, 143)

    default = load(None, env={}).server.plaintext_login_networks
    for host, want in [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                       ("::ffff:127.0.0.1", True), ("192.0.2.2", False), ("::", False),
                       ("fe80::1%eth0", False), ("not-an-address", False)]:
        assert arrived_on(Writer(host), default) is want, host  # type: ignore[arg-type]
    assert not arrived_on(Writer("127.0.0.2"), ["127.0.0.1/32"])  # type: ignore[arg-type]
    assert not arrived_on(Writer("127.0.0.1"), [])  # type: ignore[arg-type]


def test_health_probe_answers_by_the_greeting(tmp_path) -> None:
    """The compose health probe: exit 0 on a protocol greeting, 1 on anything else or nothing."""
    import socket
    import subprocess
    import sys
    import threading

    def serve(greeting: bytes) -> int:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def once() -> None:
            conn, _ = srv.accept()
            conn.sendall(greeting)
            conn.close()
            srv.close()

        threading.Thread(target=once, daemon=True).start()
        return srv.getsockname()[1]

    def run(port: int) -> int:
        return subprocess.run([sys.executable, "-m", "mailstack.runtime.probe", str(port)],
                              timeout=30).returncode

    assert run(serve(b"220 mail.example ESMTP\r\n")) == 0
    assert run(serve(b"* OK ready\r\n")) == 0
    assert run(serve(b"554 go away\r\n")) == 1
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert run(port) == 1
