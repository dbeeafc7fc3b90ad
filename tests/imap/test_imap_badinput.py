"""Bad input: each gets a tagged BAD/NO (or a clean disconnect), a log line, and the daemon
keeps serving other clients."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.imap.conftest import PASSWORD, USER, Raw, message


def ok(lines: list[bytes], tag: str) -> list[bytes]:
    assert lines[-1].startswith(f"{tag} OK".encode()), lines
    return lines


async def login(imap) -> Raw:
    c = await Raw.connect(imap)
    ok(await c.cmd("L", f"LOGIN {USER} {PASSWORD}"), "L")
    return c


async def still_serving(imap) -> None:
    c = await login(imap)
    ok(await c.cmd("z", "NOOP"), "z")
    await c.close()


@pytest.mark.parametrize("line,reply", [
    (b"a FROB", b"a BAD"),
    (b"a", b"a BAD"),
    (b"", b"* BAD"),
    (b"(x) NOOP", b"* BAD"),
    (b"a NOOP extra", b"a BAD"),
    (b"a UID", b"a BAD"),
    (b"a UID NOOP", b"a BAD"),
    (b"a CAPABILITY\x00", b"a BAD"),
])
async def test_malformed_commands(imap, line, reply):
    c = await Raw.connect(imap)
    await c.send(line + b"\r\n")
    got = await c.line()
    assert got.startswith(reply), got
    await imap.daemon.wait_log_match(r"imap [\d.]+: (malformed|unknown|BAD)")
    ok(await c.cmd("b", "NOOP"), "b")
    await still_serving(imap)


@pytest.mark.parametrize("cmd", ["SELECT INBOX", "FETCH 1 FLAGS", "LIST \"\" *", "IDLE",
                                 "EXPUNGE", "NAMESPACE"])
async def test_wrong_state_before_login(imap, cmd):
    c = await Raw.connect(imap)
    r = await c.cmd("a", cmd)
    assert r[-1].startswith(b"a BAD"), r


@pytest.mark.parametrize("cmd", ["FETCH 1 FLAGS", "STORE 1 +FLAGS (\\Seen)", "CLOSE",
                                 "UID SEARCH ALL", "STARTTLS", "LOGIN a b"])
async def test_wrong_state_after_login(imap, cmd):
    c = await login(imap)
    r = await c.cmd("a", cmd)
    assert r[-1].startswith(b"a BAD"), r


async def test_literal_larger_than_limit_is_refused_before_reading(config_factory, client_ssl):
    from tests.conftest import add_user, running
    from tests.imap.conftest import Server
    cfg = config_factory("[imap]\nmax_literal = 1000")
    add_user(cfg, USER, PASSWORD)
    async with running("imap", cfg):
        srv = Server(cfg, cfg.port("imap", "imap"), cfg.port("imap", "imaps"), client_ssl)
        c = await login(srv)
        await c.send(b"a APPEND INBOX {5000}\r\n")
        r = await c.line()
        assert r.startswith(b"a BAD [TOOBIG]"), r  # no "+" continuation was sent
        ok(await c.cmd("b", "NOOP"), "b")
        await c.send(b"c APPEND INBOX {5000+}\r\n" + b"x" * 100)
        r = await c.line()
        assert r.startswith(b"c BAD [TOOBIG]")
        assert (await c.line()).startswith(b"* BYE")
        assert await c.line() == b""
        await still_serving(srv)
        assert not list((srv.inbox.root / "new").iterdir())


async def test_unbalanced_parentheses_and_deep_nesting(imap):
    imap.deliver(message("x"))
    c = await login(imap)
    ok(await c.cmd("s", "SELECT INBOX"), "s")
    for tag, cmd in [("a", "FETCH 1 (FLAGS"), ("b", "FETCH 1 FLAGS)"),
                     ("c", "SEARCH " + "(" * 100 + "ALL" + ")" * 100),
                     ("d", "SEARCH " + "NOT " * 5000 + "ALL"),
                     ("e", "SEARCH (OR SEEN"), ("f", "STORE 1 +FLAGS (\\Seen")]:
        r = await c.cmd(tag, cmd)
        assert r[-1].startswith(f"{tag} BAD".encode()), (cmd[:40], r)
    ok(await c.cmd("g", "SEARCH " + "(" * 10 + "ALL" + ")" * 10), "g")
    await still_serving(imap)


@pytest.mark.parametrize("seqset", ["0", "1:0", "a", "1,", ":1", "1:2:3", "4294967296",
                                    "99", "1,,2", "-1"])
async def test_bogus_sequence_sets(imap, seqset):
    imap.deliver(message("x"))
    c = await login(imap)
    ok(await c.cmd("s", "SELECT INBOX"), "s")
    r = await c.cmd("a", f"FETCH {seqset} FLAGS")
    assert r[-1].startswith(b"a BAD"), r
    r = await c.cmd("b", f"UID FETCH {seqset} FLAGS")
    assert r[-1].startswith(b"b BAD" if seqset != "99" else b"b OK"), r


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden", "a..b", "x.", "&Jjo",
                                  "&AGE-", "Tr\\ash", "/etc", "&U,BTF2XlZyyKng-x&-&",
                                  "a\x01b", "..%2F"])
async def test_bad_mailbox_names_touch_nothing(imap, name):
    before = sorted(os.listdir(imap.inbox.root.parent))
    c = await login(imap)
    quoted = '"' + name.replace("\\", "\\\\") + '"'
    for tag, cmd in [("a", f"CREATE {quoted}"), ("b", f"SELECT {quoted}"),
                     ("c", f"RENAME Trash {quoted}"), ("d", f"DELETE {quoted}"),
                     ("e", f"STATUS {quoted} (MESSAGES)"), ("f", f"APPEND {quoted} {{1+}}\r\nx")]:
        r = await c.cmd(tag, cmd)
        if name == "x." and tag == "a":
            continue  # CREATE "x." creates "x" (a trailing delimiter is allowed)
        assert r[-1].startswith((f"{tag} NO".encode(), f"{tag} BAD".encode())), (cmd, r)
    assert sorted(os.listdir(imap.inbox.root.parent)) == before
    assert (imap.inbox.root / ".Trash").is_dir()


async def test_repeated_wrong_passwords_are_delayed(imap):
    c = await Raw.connect(imap)
    times = []
    for i in range(5):
        t0 = time.monotonic()
        r = await c.cmd(f"a{i}", f"LOGIN {USER} wrong{i}", timeout=30)
        times.append(time.monotonic() - t0)
        assert r[-1].startswith(f"a{i} NO".encode())
    assert times[4] > times[0] + 0.4  # 4th and 5th failures wait 0.5 s and 1 s
    assert imap.log().count("auth failed") == 5, imap.log()
    await still_serving(imap)


async def test_disconnect_in_the_middle_of_a_literal(imap):
    c = await login(imap)
    await c.send(b"a APPEND INBOX {100}\r\n")
    assert (await c.line()).startswith(b"+")
    await c.send(b"only part of it")
    c.writer.transport.abort()
    await asyncio.sleep(0.1)
    await still_serving(imap)
    assert not list((imap.inbox.root / "new").iterdir())
    assert not list((imap.inbox.root / "tmp").iterdir())


async def test_bad_arguments(imap):
    imap.deliver(message("x"))
    c = await login(imap)
    ok(await c.cmd("s", "SELECT INBOX"), "s")
    for tag, cmd, want in [
        ("a", "SEARCH CHARSET KOI8-R ALL", b"a NO [BADCHARSET"),
        ("b", "SEARCH FROBNICATE", b"a BAD"),
        ("c", "SEARCH BEFORE 32-Jan-2020", b"c BAD"),
        ("d", "STATUS INBOX (BOGUS)", b"d BAD"),
        ("e", 'APPEND INBOX "bad date" {1+}\r\nx', b"e BAD"),
        ("f", "FETCH 1 BODY[1.]", b"f BAD"),
        ("g", "FETCH 1 BODY[MIME]", b"g BAD"),
        ("h", "STORE 1 FROB (\\Seen)", b"h BAD"),
        ("i", "AUTHENTICATE PLAIN", b"i BAD"),
        ("j", 'ID ("a")', b"j BAD"),
        ("k", "ENABLE", b"k OK"),
        ("l", "FETCH 1 BODY[]<5.0>", b"l BAD"),
    ]:
        r = await c.cmd(tag, cmd)
        assert r[-1].startswith(want.replace(b"a BAD", f"{tag} BAD".encode())), (cmd, r)


async def test_random_garbage_never_breaks_the_server(imap):
    """Hundreds of commands assembled from grammar fragments: every one gets a tagged answer,
    none is an internal error, and the server keeps serving."""
    import random
    rng = random.Random(3501)
    imap.deliver(message("x"))
    tokens = ["FETCH", "UID", "STORE", "SEARCH", "LIST", "SELECT", "INBOX", "(", ")", " ",
              "BODY[", "]", "1", "*", ":", ",", "0", "<1.2>", "+FLAGS", "\\Seen", '"',
              "NOT", "OR", "HEADER.FIELDS", "{2}", "{1+}\r\nx", "COPY", "MOVE", "Trash",
              "STATUS", "(MESSAGES)", "CHARSET", "RENAME", "..", "&", "ENABLE", "APPEND",
              "EXAMINE", "CREATE", "\x00", "\xff", "%", "LSUB", "CLOSE"]
    c = await login(imap)
    ok(await c.cmd("s", "SELECT INBOX"), "s")
    for i in range(300):
        body = "".join(rng.choice(tokens) for _ in range(rng.randint(1, 12)))
        body = body.replace("{2}", "")  # synchronising literals would wait for a "+"
        line = f"g{i} {body}".encode("latin-1")
        await c.send(line + b"\r\n")
        reply = await c.until(f"g{i}")
        assert reply[-1].split(b" ")[1] in (b"OK", b"NO", b"BAD"), (line, reply)
        assert b"SERVERBUG" not in reply[-1], (line, reply)
        if any(r.startswith(b"* BYE") for r in reply):
            c = await login(imap)
            ok(await c.cmd("s", "SELECT INBOX"), "s")
    assert not imap.daemon.errors(), imap.log()
    await still_serving(imap)
