"""JMAP mailbox names cannot leave the account's Maildir, cannot reach into another account,
and mean the same mailbox as over IMAP: the store keeps IMAP's modified UTF-7, JMAP shows
Unicode. INBOX cannot be renamed or moved."""

from __future__ import annotations

import asyncio
import imaplib
import os
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from mailstack.imap import mutf7

from .conftest import ALICE, BOB, JMAP, PASSWORD

HOSTILE = ["..", "../x", "a/b", ".hidden", "x.", "a.b", "x\\y", "a\x00b", "a\x01b", "a\nb",
           "a\x7fb", "a\u0085b", "a" * 255, "", " " * 0]


def folders(data_dir: Path) -> list[str]:
    """Every directory under ``data_dir/mail``, relative to it."""
    root = data_dir / "mail"
    return sorted(str(Path(d).relative_to(root)) for d, _, _ in os.walk(root))


async def ids_by_name(jmap: JMAP, user: str = ALICE) -> dict[str, str]:
    got = await jmap.one("Mailbox/get", {"ids": None}, user=user)
    return {m["name"]: m["id"] for m in got["list"]}


def invalid(result: dict[str, Any], key: str, which: str = "notCreated") -> str:
    assert key in (result[which] or {}), (key, result)
    return result[which][key]["type"]


async def test_hostile_names_and_foreign_parents_touch_nothing(jmap: JMAP) -> None:
    # bob gets more folders than alice has, so his last ids are none of hers
    for i in range(8):
        made = await jmap.one("Mailbox/set", {"create": {"x": {"name": f"Bob{i}"}}}, user=BOB)
        assert "x" in made["created"], made
    bob_only = (await ids_by_name(jmap, BOB))["Bob7"]
    made = await jmap.one("Mailbox/set", {"create": {"w": {"name": "Work"}}})
    work = made["created"]["w"]["id"]
    assert bob_only not in (await ids_by_name(jmap)).values()
    before = folders(jmap.cfg.data_dir)

    creates = {f"n{i}": {"name": n} for i, n in enumerate(HOSTILE)}
    creates["foreign"] = {"name": "Stolen", "parentId": bob_only}
    creates["nonstring"] = {"name": ["Work"]}
    creates["badparent"] = {"name": "Fine", "parentId": 1}
    result = await jmap.one("Mailbox/set", {"create": creates})
    assert not result["created"], result["created"]
    for key in creates:
        assert invalid(result, key) == "invalidProperties", (key, creates[key])

    result = await jmap.one("Mailbox/set", {"update": {work: {"name": "../../bob"}}})
    assert invalid(result, work, "notUpdated") == "invalidProperties"
    result = await jmap.one("Mailbox/set", {"update": {work: {"parentId": bob_only}}})
    assert invalid(result, work, "notUpdated") == "invalidProperties"
    for name in HOSTILE[:8]:
        result = await jmap.one("Mailbox/set", {"update": {work: {"name": name}}})
        assert invalid(result, work, "notUpdated") == "invalidProperties", name

    names = await ids_by_name(jmap)
    inbox = names["INBOX"]
    for patch in ({"name": "X"}, {"parentId": work}):
        result = await jmap.one("Mailbox/set", {"update": {inbox: patch}})
        assert invalid(result, inbox, "notUpdated") == "forbidden", patch
    assert folders(jmap.cfg.data_dir) == before
    assert set(await ids_by_name(jmap)) == set(names)
    assert "Stolen" not in await ids_by_name(jmap, BOB)


@pytest.mark.parametrize("name", ["&Jjo", "Café", "日本語", "a&b-c", "&-"])
async def test_names_are_modified_utf7_in_the_store(jmap: JMAP, imap_daemon, name: str) -> None:
    """What JMAP creates, IMAP lists in modified UTF-7 (and IMAP4rev2 in UTF-8), and the
    folder on disk is that name: never a name IMAP would refuse as invalid modified UTF-7."""
    made = await jmap.one("Mailbox/set", {"create": {"m": {"name": name}}})
    assert "m" in made["created"], made
    wire = mutf7.encode(name)
    assert mutf7.decode(wire) == name
    root = jmap.inbox().root
    assert (root / f".{wire}").is_dir(), sorted(os.listdir(root))

    def imap_names() -> tuple[list[str], list[str]]:
        c = imaplib.IMAP4("127.0.0.1", jmap.cfg.port("imap", "imap"), timeout=30)
        c.login(ALICE, PASSWORD)
        typ, data = c.list()
        assert typ == "OK"
        rev1 = [line.decode("ascii").rpartition(' "." ')[2].strip('"') for line in data
                if isinstance(line, bytes)]
        c.logout()
        with IMAPClient("127.0.0.1", port=jmap.cfg.port("imap", "imap"), ssl=False) as ic:
            ic.login(ALICE, PASSWORD)
            ic.enable("UTF8=ACCEPT")
            rev2 = [n for _, _, n in ic.list_folders()]
        return rev1, rev2

    rev1, rev2 = await asyncio.to_thread(imap_names)
    assert wire in rev1 and name in rev2, (rev1, rev2)
    # renamed and moved under another mailbox over JMAP: still the same encoding
    ids = await ids_by_name(jmap)
    parent = ids["Sent"]
    result = await jmap.one("Mailbox/set", {"update": {ids[name]: {
        "name": name + "2", "parentId": parent}}})
    assert result["updated"] == {ids[name]: None}, result
    assert (root / f".Sent.{mutf7.encode(name + '2')}").is_dir(), sorted(os.listdir(root))
    got = await jmap.one("Mailbox/get", {"ids": [ids[name]]})
    assert got["list"][0]["name"] == name + "2" and got["list"][0]["parentId"] == parent


async def test_imap_names_show_in_unicode_over_jmap(jmap: JMAP, imap_daemon) -> None:
    def create() -> None:
        c = imaplib.IMAP4("127.0.0.1", jmap.cfg.port("imap", "imap"), timeout=30)
        c.login(ALICE, PASSWORD)
        for name in ("Caf&AOk-", "Caf&AOk-.Na&AO8-ve", "a&-b"):
            assert c.create(name)[0] == "OK", name
        c.logout()

    await asyncio.to_thread(create)
    names = await ids_by_name(jmap)
    assert {"Café", "Naïve", "a&b"} <= set(names), names
    got = await jmap.one("Mailbox/query", {"filter": {"name": "naï"}})
    assert got["ids"] == [names["Naïve"]]
    for dup in ("café", "CAFÉ"):  # the same name, case aside
        made = await jmap.one("Mailbox/set", {"create": {"dup": {"name": dup}}})
        assert invalid(made, "dup") == "invalidProperties", dup
