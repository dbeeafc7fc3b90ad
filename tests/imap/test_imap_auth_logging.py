"""Login names and log lines: padded names never log in and are counted under the account,
client strings are logged escaped, nothing that may carry a password is logged."""

from __future__ import annotations

import base64

from mailstack.accounts.authlimit import AuthThrottle, db_path
from tests.imap.conftest import PASSWORD, USER, Raw


def user_failures(imap) -> int:
    throttle = AuthThrottle(path=db_path(imap.cfg))
    try:
        return throttle.failures("user:" + USER)
    finally:
        throttle.close()


async def test_padded_login_names_are_refused_and_counted_under_the_account(imap):
    c = await Raw.connect(imap)
    for i, name in enumerate([f'"  {USER}"', f'"{USER} "', f'"\t{USER.upper()}"']):
        r = await c.cmd(f"a{i}", f"LOGIN {name} {PASSWORD}", timeout=30)
        assert r[-1].startswith(f"a{i} NO [AUTHENTICATIONFAILED]".encode()), r
    assert user_failures(imap) == 3  # one budget for every spelling of the account
    plain = base64.b64encode(f"\0 {USER}\0{PASSWORD}".encode()).decode()
    r = await c.cmd("b", f"AUTHENTICATE PLAIN {plain}", timeout=30)
    assert r[-1].startswith(b"b NO"), r
    assert user_failures(imap) == 4
    r = await c.cmd("c", f"LOGIN {USER} {PASSWORD}", timeout=30)
    assert r[-1].startswith(b"c OK"), r  # the exact name still works


async def test_id_values_cannot_forge_log_lines(imap):
    c = await Raw.connect(imap)
    forged = b"x\r\n2026-11-27 00:00:00 imap[1] INFO: imap login root@example.test from 10.0.0.1"
    await c.send(b'a ID ("name" {%d+}\r\n' % len(forged) + forged + b' "version" "1\x01")\r\n')
    r = await c.until("a")
    assert r[-1].startswith(b"a OK"), r
    log = await imap.daemon.wait_log(": client ")  # the daemon's own log
    line = next(ln for ln in log.splitlines() if ": client " in ln)
    assert "2026-11-27 00:00:00 imap[1]" not in log.replace("\\r\\n2026", "")
    assert "\n" not in line and "\r" not in line and "\x01" not in line, line
    assert "x\\r\\n2026-11-27" in line and "1\\x01" in line  # escaped, still readable


async def test_out_of_step_sasl_response_and_literals_are_not_logged(imap):
    secret = "s3cr3t-Pa55"
    blob = base64.b64encode(f"\0{USER}\0{secret}".encode()).decode()
    c = await Raw.connect(imap)
    # the server refused the AUTHENTICATE (bad mechanism), the client sends its response anyway
    r = await c.cmd("a", "AUTHENTICATE BOGUS")
    assert r[-1].startswith(b"a NO"), r
    await c.send(blob + "\r\n")
    assert (await c.line()).endswith(b" BAD malformed command\r\n")
    # a password literal refused before login, sent anyway as a line with a space in it
    await c.send(b"b LOGIN alice {9000}\r\n")
    assert (await c.line()).startswith(b"b BAD")
    await c.send(b"my " + secret.encode() + b"\r\n")
    assert (await c.line()).startswith(b"my BAD")
    assert (await c.cmd("z", "NOOP"))[-1].startswith(b"z OK")
    text = await imap.daemon.wait_log("unknown command")  # the daemon's own log
    assert blob not in text and secret not in text and secret.upper() not in text, text
    assert "malformed command" in text and "unknown command" in text
