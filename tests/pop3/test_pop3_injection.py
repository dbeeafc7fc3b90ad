"""A CR (or NUL) inside a POP3 command line is one bad line: it never splits into a second
command, and USER with such a name is not remembered for PASS."""

from __future__ import annotations

import pytest

from mailstack.config import Config

from ..conftest import running
from .pop3_helpers import ALICE, PASSWORD, RawPOP3, make_alice


@pytest.mark.parametrize("line", [
    f"USER {ALICE}\rPASS {PASSWORD}",
    f"USER {ALICE}\rX",
    f"USER {ALICE}\0",
    "USER a\rPASS b",
])
async def test_embedded_cr_in_user_is_one_bad_line(cfg: Config, line: str) -> None:
    make_alice(cfg, messages=1)
    async with running("pop3", cfg):
        c = await RawPOP3.connect(cfg.port("pop3", "pop3"))
        assert (await c.cmd(line)) == "-ERR Bad characters in command"
        # one reply only, and no USER was recorded for a PASS to complete
        assert (await c.cmd(f"PASS {PASSWORD}")).startswith("-ERR")
        assert (await c.cmd("STAT")).startswith("-ERR")
        assert (await c.login()).startswith("+OK")  # the session itself is fine
        assert (await c.cmd("QUIT")).startswith("+OK")
        await c.close()
