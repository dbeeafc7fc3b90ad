"""App tokens end with their account: a token of a deleted account stops working at once (the
running http daemon re-reads the users and tokens files), and ``mailstack user del`` revokes
the account's tokens, so adding the address again (perhaps for someone else) does not revive
them."""

from __future__ import annotations

import asyncio

import httpx

from mailstack.accounts.users import UserDB
from tests.e2e.helpers import mailstack

from .conftest import ALICE, BOB, JMAP


async def session(jmap: JMAP, token: str) -> int:
    async with httpx.AsyncClient(base_url=jmap.base, verify=jmap.ssl, timeout=30) as c:
        r = await c.get("/.well-known/jmap", headers={"authorization": f"Bearer {token}"})
        return r.status_code


async def cli(*args: str, input: str | None = None) -> str:
    return (await asyncio.to_thread(mailstack, *args, input=input)).stdout


async def test_user_del_revokes_tokens_and_re_adding_does_not_revive_them(jmap: JMAP) -> None:
    cfg = str(jmap.cfg.source)
    tokens = jmap.cfg.data_dir / "tokens"
    token = (await cli("user", "token", ALICE, "--config", cfg)).strip()
    bob_token = (await cli("user", "token", BOB, "--config", cfg)).strip()
    assert await session(jmap, token) == 200

    out = await cli("user", "del", ALICE, "--config", cfg)
    assert "revoked its 1 app token(s)" in out, out
    assert await session(jmap, token) == 401  # the same daemon: no restart
    assert f"{ALICE}:" not in tokens.read_text()  # revoked, not only refused

    await cli("user", "add", ALICE, "--password-stdin", "--config", cfg, input="new-owner-pw\n")
    assert await session(jmap, token) == 401  # the new account starts without the old tokens
    assert await session(jmap, bob_token) == 200  # other accounts keep theirs


async def test_a_token_of_an_account_removed_by_hand_is_refused(jmap: JMAP) -> None:
    """Without ``user del`` (a users file edited by hand): the token is still in the tokens
    file, and the daemon refuses it because its account is gone."""
    token = (await cli("user", "token", BOB, "--config", str(jmap.cfg.source))).strip()
    assert await session(jmap, token) == 200
    UserDB(jmap.cfg.data_dir / "users").delete(BOB)
    assert f"{BOB}:" in (jmap.cfg.data_dir / "tokens").read_text()
    assert await session(jmap, token) == 401
    await jmap.http.wait_log("http auth failed for '(token)'")
    assert token not in jmap.http.log()
