"""`mailstack user add` warns about an address whose domain the config does not serve, and
`mailstack user token` mints no token for an account that does not exist (such a token would
become valid the day the address is added)."""

from __future__ import annotations

from pathlib import Path

from mailstack.accounts.users import UserDB
from tests.conftest import write_config

from .helpers import mailstack


def test_user_add_warns_about_a_domain_not_served(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path))  # domains: example.test
    r = mailstack("user", "add", "carol@other.test", "--password-stdin", "--config", cfg,
                  input="pw\n")
    assert r.returncode == 0 and "added carol@other.test" in r.stdout
    (line,) = [ln for ln in r.stderr.splitlines() if "[server].domains" in ln]
    assert line.startswith("warning: other.test is not in [server].domains of "), r.stderr
    assert line.endswith("mail for it will not be accepted")
    assert UserDB(tmp_path / "data" / "users").exists("carol@other.test")  # added anyway
    r = mailstack("user", "add", "dave@example.test", "--password-stdin", "--config", cfg,
                  input="pw\n")
    assert r.returncode == 0 and "[server].domains" not in r.stderr, r.stderr


def test_user_token_refuses_an_unknown_account(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path))
    tokens = tmp_path / "data" / "tokens"
    r = mailstack("user", "token", "ghost@example.test", "--config", cfg, check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("mailstack: no user ghost@example.test"), r.stderr
    assert "mailstack user add ghost@example.test" in r.stderr
    assert not tokens.exists()

    mailstack("user", "add", "bob@example.test", "--password-stdin", "--config", cfg,
              input="pw\n")
    assert mailstack("user", "token", "bob@example.test", "--config", cfg).stdout.startswith(
        "mst_")
    before = tokens.read_bytes()
    r = mailstack("user", "token", "Ghost@Example.test", "--config", cfg, check=False)
    assert r.returncode == 1 and "no user ghost@example.test" in r.stderr
    assert tokens.read_bytes() == before
