"""Fixtures of the failed-login throttle tests (test_auth_shared.py and
test_auth_shared_http.py): one data directory shared by the daemons, with two free failures,
delays of at most 1 s, and alice."""

from __future__ import annotations

import ssl

import pytest

from mailstack.config import Config
from mailstack.runtime.tls import client_context, ensure_tls_files

from ..conftest import add_user

ALICE, PASSWORD = "alice@example.test", "alice-right-pw"
FREE_AND_DELAY = "[server]\nauth_failures_free = 2\nauth_max_delay = 1\n"
INITIAL_DELAY = 0.5  # the first delayed failure waits this long (authlimit.BASE_DELAY)


@pytest.fixture
def scfg(config_factory) -> Config:
    """The throttle tests' config: two free failures, delays up to 1 s, alice."""
    cfg: Config = config_factory(FREE_AND_DELAY)
    add_user(cfg, ALICE, PASSWORD)
    return cfg


@pytest.fixture
def tls(scfg: Config) -> ssl.SSLContext:
    """A client TLS context trusting ``scfg``'s CA."""
    return client_context(ensure_tls_files(scfg).ca)
