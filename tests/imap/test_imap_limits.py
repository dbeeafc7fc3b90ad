"""Command-size limits against the real daemon: 8 KiB before login (lines and literals
together), a cap on literals per command, and over-long lines answered with the tag."""

from __future__ import annotations

import pytest

from mailstack.imap.command import MAX_LITERALS, PREAUTH_MAX_COMMAND
from tests.imap.conftest import PASSWORD, USER, Raw


async def closed(c: Raw) -> bool:
    return await c.line() == b""


async def test_prelogin_synchronising_literal_over_8k_is_refused_without_continuation(imap):
    c = await Raw.connect(imap)
    await c.send(b"a LOGIN {%d}\r\n" % (PREAUTH_MAX_COMMAND + 1))
    reply = await c.line()
    assert reply.startswith(b"a BAD [TOOBIG]"), reply  # no "+": the client sends nothing more
    r = await c.cmd("b", f"LOGIN {USER} {PASSWORD}")
    assert r[-1].startswith(b"b OK"), r


async def test_prelogin_non_synchronising_literal_over_8k_gets_bye(imap):
    c = await Raw.connect(imap)
    await c.send(b"a LOGIN {%d+}\r\n" % (PREAUTH_MAX_COMMAND + 1) + b"x" * 1000)
    assert (await c.line()).startswith(b"a BAD [TOOBIG]")
    assert (await c.line()).startswith(b"* BYE")
    assert await closed(c)


async def test_prelogin_many_small_literals_add_up_to_the_cap(imap):
    """Lines and literals count together: 100-octet literals pass one by one, not in sum."""
    c = await Raw.connect(imap)
    n = PREAUTH_MAX_COMMAND // 100 + 1
    assert n < MAX_LITERALS  # the size cap, not the count cap, is what refuses this one
    await c.send(b"a ID (" + b"{100+}\r\n" + b"k" * 100
                 + b"".join(b" {100+}\r\n" + b"v" * 100 for _ in range(n)) + b")\r\n")
    assert (await c.line()).startswith(b"a BAD [TOOBIG] command too long")
    assert (await c.line()).startswith(b"* BYE")
    assert await closed(c)


async def test_prelogin_line_over_8k_is_refused_with_the_tag(imap):
    c = await Raw.connect(imap)
    r = await c.cmd("a", "LOGIN " + "x" * PREAUTH_MAX_COMMAND + " y")
    assert r == [b"a BAD command too long\r\n"], r
    r = await c.cmd("b", f"LOGIN {USER} {PASSWORD}")
    assert r[-1].startswith(b"b OK"), r


async def test_login_with_literals_within_the_cap_works(imap):
    c = await Raw.connect(imap)
    user, pw = USER.encode(), PASSWORD.encode()
    await c.send(b"a LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(user), user, len(pw), pw))
    r = await c.until("a")
    assert r[-1].startswith(b"a OK"), r


@pytest.mark.parametrize("login", [False, True], ids=["before-login", "after-login"])
async def test_too_many_literals_in_one_command(imap, login):
    c = await Raw.connect(imap)
    if login:
        assert (await c.cmd("L", f"LOGIN {USER} {PASSWORD}"))[-1].startswith(b"L OK")
    await c.send(b"a NOOP " + b"{0+}\r\n" * (MAX_LITERALS + 1) + b"\r\n")
    assert (await c.line()).startswith(b"a BAD [LIMIT]")
    assert (await c.line()).startswith(b"* BYE")
    assert await closed(c)
    c = await Raw.connect(imap)  # within the cap a command of empty literals is fine
    r = await c.cmd("b", b'ID ("a" ' + b"{0+}\r\n" * 1 + b")")
    assert r[-1].startswith(b"b OK"), r


@pytest.mark.parametrize("login", [False, True], ids=["before-login", "after-login"])
async def test_overlong_line_is_answered_with_its_tag(imap, login):
    c = await Raw.connect(imap)
    if login:
        assert (await c.cmd("L", f"LOGIN {USER} {PASSWORD}"))[-1].startswith(b"L OK")
    await c.send(b"t1 NOOP " + b"x" * 200_000 + b"\r\n")
    assert await c.line() == b"t1 BAD line too long\r\n"
    assert (await c.cmd("b", "NOOP"))[-1].startswith(b"b OK")
    await imap.daemon.wait_log("too long")  # the daemon's own log


async def test_overlong_continuation_line_is_answered_with_the_commands_tag(imap):
    c = await Raw.connect(imap)
    assert (await c.cmd("L", f"LOGIN {USER} {PASSWORD}"))[-1].startswith(b"L OK")
    await c.send(b"t2 SEARCH TEXT {1+}\r\nx " + b"y" * 200_000 + b"\r\n")
    assert await c.line() == b"t2 BAD line too long\r\n"
    assert (await c.cmd("b", "NOOP"))[-1].startswith(b"b OK")


async def test_overlong_line_without_a_tag_gets_bye(imap):
    c = await Raw.connect(imap)
    await c.send(b"(" * 200_000 + b"\r\n")
    assert (await c.line()).startswith(b"* BYE line too long")
    assert await closed(c)


@pytest.mark.parametrize("length", [255, 256, 300, 4000])
async def test_mailbox_names_too_long_for_the_file_system_get_a_clean_no(imap, length):
    """A folder is one directory entry "." + name: 254 octets fit NAME_MAX, 255 do not."""
    c = await Raw.connect(imap)
    assert (await c.cmd("L", f"LOGIN {USER} {PASSWORD}"))[-1].startswith(b"L OK")
    name = "a" * length
    for tag, cmd in [("c", f"CREATE {name}"), ("s", f"SELECT {name}"),
                     ("r", f"RENAME Trash {name}"), ("t", f"STATUS {name} (MESSAGES)"),
                     ("d", f"DELETE {name}"), ("p", f"APPEND {name} {{1+}}\r\nx")]:
        r = await c.cmd(tag, cmd)
        assert r[-1].startswith(f"{tag} NO [CANNOT]".encode()), (tag, r)
    assert "Traceback" not in imap.daemon.log() and "ERROR" not in imap.daemon.log()
    assert (imap.inbox.root / ".Trash").is_dir()


async def test_rename_that_would_make_a_child_name_too_long_changes_nothing(imap):
    c = await Raw.connect(imap)
    assert (await c.cmd("L", f"LOGIN {USER} {PASSWORD}"))[-1].startswith(b"L OK")
    assert (await c.cmd("a", "CREATE p.child"))[-1].startswith(b"a OK")
    longest = "n" * 254
    assert (await c.cmd("b", f"CREATE {longest}"))[-1].startswith(b"b OK")  # 254 octets fit
    assert (await c.cmd("x", f"DELETE {longest}"))[-1].startswith(b"x OK")
    r = await c.cmd("r", f"RENAME p {'q' * 250}")  # p fits (250), p.child would not (256)
    assert r[-1].startswith(b"r NO [CANNOT]"), r
    assert (imap.inbox.root / ".p").is_dir() and (imap.inbox.root / ".p.child").is_dir()
    assert "Traceback" not in imap.daemon.log() and "ERROR" not in imap.daemon.log()
