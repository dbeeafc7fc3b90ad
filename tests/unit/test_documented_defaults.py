"""The defaults README's configuration table (and docs/pop3.md, docs/testing.md) promise, one
row each, with the values written as the documentation writes them: a changed default is a
user-visible change and fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailstack.config import Config, load

MiB = 1024**2
S, M, H, D = 1, 60, 3600, 86400

#: (section, key, documented default) in README order
DOCUMENTED = [
    ("server", "hostname", "localhost"),
    ("server", "domains", ("localhost",)),
    ("server", "data_dir", Path("mailstack-data")),
    ("server", "bind", ("127.0.0.1", "::1")),
    ("server", "log_level", "info"),
    ("server", "auth_failures_free", 3),
    ("server", "auth_max_delay", 15 * S),
    ("server", "max_connections", 20000),
    ("server", "max_connections_per_ip", 1000),
    ("server", "tls_handshake_timeout", 10 * S),
    ("server", "postmaster", ""),
    ("server", "plaintext_login_networks", ("127.0.0.0/8", "::1/128")),
    ("server", "proxy_networks", ()),
    ("server", "proxy_listeners", ()),
    ("server", "event_loop", "uvloop"),
    ("tls", "cert", ""),
    ("tls", "key", ""),
    ("mta", "smtp", 25),
    ("mta", "submission", 587),
    ("mta", "submissions", 465),
    ("mta", "max_message_size", 25 * MiB),
    ("mta", "max_recipients", 100),
    ("mta", "lmtp", ""),
    ("mta", "direct_delivery", 5 * S),
    ("mta", "soft_error_limit", 3),
    ("mta", "hard_error_limit", 20),
    ("mta", "error_delay", 1 * S),
    ("mta", "idle_timeout", 5 * M),
    ("mta", "retry_initial", 1 * M),
    ("mta", "retry_max", 1 * H),
    ("mta", "queue_lifetime", 5 * D),
    ("mta", "max_hops", 50),
    ("mta", "transport", {}),
    ("mda", "socket", "run/lmtp.sock"),
    ("mda", "lmtp", 0),
    ("mda", "bind", ("127.0.0.1",)),
    ("mda", "quota", 0),
    ("mda", "quota_messages", 0),
    ("imap", "imap", 143),
    ("imap", "imaps", 993),
    ("imap", "max_literal", 50 * MiB),
    ("imap", "idle_timeout", 30 * M),
    ("pop3", "pop3", 110),
    ("pop3", "pop3s", 995),
    ("pop3", "idle_timeout", 10 * M),
    ("pop3", "login_delay", 0),  # docs/pop3.md
    ("http", "http", 80),
    ("http", "https", 443),
    ("http", "idle_timeout", 30 * S),
    ("http", "max_size_request", 10 * MiB),
    ("http", "max_size_upload", 50 * MiB),
    ("http", "max_concurrent_requests", 8),
    ("http", "max_concurrent_upload", 4),
    ("http", "max_calls_in_request", 64),
    ("http", "max_objects_in_get", 1000),
    ("http", "max_objects_in_set", 1000),
    ("http", "push_allowlist", ()),
    ("capture", "enabled", False),
    ("capture", "address", "capture@capture.test"),
    ("capture", "password", "capture"),
    ("capture", "outbound", False),
    ("chaos", "file", ""),
    ("chaos", "seed", 0),
    (None, "faults", ()),
]


@pytest.fixture(scope="module")
def defaults() -> Config:
    return load(None, env={})


@pytest.mark.parametrize("section,key,want", DOCUMENTED,
                         ids=[f"{s}.{k}" for s, k, _ in DOCUMENTED])
def test_documented_default(defaults: Config, section: str | None, key: str,
                            want: object) -> None:
    got = getattr(getattr(defaults, section) if section else defaults, key)
    if isinstance(want, Path):  # "./mailstack-data": relative to where the command runs
        assert Path(got).resolve() == (Path.cwd() / want).resolve(), got
    else:
        assert got == want


def test_the_failed_login_delay_of_the_docs(defaults: Config) -> None:
    """docs/testing.md: "after three, 0.5 s doubling to 15 s" (the throttle's schedule)."""
    from mailstack.accounts.authlimit import AuthThrottle

    throttle = AuthThrottle(defaults.server.auth_failures_free,
                            float(defaults.server.auth_max_delay))
    # three failures are free, the fourth waits 0.5 s
    assert [throttle.delay(n) for n in range(10)] == [0, 0, 0, 0, 0.5, 1, 2, 4, 8, 15]


def test_a_test_stack_keeps_the_failed_login_defaults() -> None:
    """A MailStack's generated config does not change the throttle docs/testing.md describes
    (only ``extra_config`` does)."""
    from mailstack.testing import MailStack

    with MailStack() as stack:
        server = stack.config.server
        assert (server.auth_failures_free, server.auth_max_delay) == (3, 15)
