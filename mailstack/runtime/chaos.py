"""Runtime faults: added and removed on a running stack, seen by the next command.

A fault names a point (``smtp.rcpt``, ``imap.fetch``, ``pop3.retr``, ...), a glob on what that
point is about (``match``: the recipient, the sender, the login, the client address), and what
to do: ``reply`` (a ``4xx``/``5xx`` SMTP reply, an IMAP ``NO``/``BAD``/``BYE``, a POP3 ``-ERR``),
``drop`` (close the connection), ``latency`` (wait, then carry on or reply). ``times=N`` fires
it N times at most, ``probability=p`` draws for each match from a random generator seeded with
the stack's seed and the fault itself, so a run repeats exactly.

Control channel: a JSON file (``[chaos] file``; test stacks use ``<data_dir>/run/chaos.json``)
that the test process writes whole and renames into place. Each daemon reads it at every fault
point and parses it again only when its bytes changed (a read of a few hundred bytes, ~10 µs;
no file: one failed ``open``). Nothing to connect to, no signal, no start-up race: once the
rename returned, the next command any daemon handles sees the change. Each injection appends
the fault's id to ``<file>.hits`` (one short ``O_APPEND`` write: atomic between the daemons)
and logs a line. Counts for ``times`` live in the daemon that owns the point (every point
belongs to one daemon), so they are exact. The file format::

    {"seed": 0, "faults": [{"id": 1, "at": "smtp.rcpt", "match": "*@later.test",
                             "reply": "451 4.3.0 try later", "times": 2}]}

Daemons load this module only when ``[chaos] file`` is set (:func:`install`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..smtp.reply import is_failure_reply

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("mailstack.chaos")

SERVICES = ("smtp", "lmtp", "imap", "pop3")
#: the points each service checks (any IMAP/POP3 command name works too: imap.store, ...)
POINTS = {
    "smtp": ("connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "rset", "noop",
             "quit"),
    "lmtp": ("connect", "ehlo", "mail", "rcpt", "data", "reply"),
    "imap": ("connect", "login", "authenticate", "select", "examine", "fetch", "append",
             "store", "search", "list", "idle", "copy", "move", "expunge", "logout"),
    "pop3": ("connect", "auth", "stat", "list", "uidl", "retr", "top", "dele", "quit"),
}
#: short names: SMTP commands, and the points [[faults]] has always had
ALIASES = {"fetch": "imap.fetch", "login": "imap.login", "select": "imap.select",
           "append": "imap.append", "retr": "pop3.retr", "helo": "smtp.ehlo",
           "bdat": "smtp.data"}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*")
KEYS = {"id", "at", "match", "reply", "drop", "latency", "stall", "times", "probability"}


class FaultError(ValueError):
    """A fault that cannot work: the message names the key."""


def seconds(value: Any) -> float:
    """``0.2``, ``"200ms"``, ``"2s"``, ``"1m"`` → seconds."""
    if isinstance(value, bool):
        raise FaultError(f"latency: expected seconds or a duration such as 200ms, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise FaultError(f"latency must not be negative, got {value!r}")
        return float(value)
    m = _DURATION.fullmatch(str(value))
    if not m:
        raise FaultError(f"latency: expected seconds or a duration such as 200ms, got {value!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


def canonical_point(at: str) -> str:
    """``"rcpt"`` → ``"smtp.rcpt"``, ``"fetch"`` → ``"imap.fetch"``; checks the name."""
    name = str(at).strip().lower()
    if "." not in name:
        name = ALIASES.get(name, f"smtp.{name}")
    service, _, point = name.partition(".")
    if service not in SERVICES:
        raise FaultError(f"at: unknown service {service!r} in {at!r} (use "
                         f"{', '.join(s + '.<point>' for s in SERVICES)})")
    if service in ("smtp", "lmtp") and point not in POINTS[service]:
        raise FaultError(f"at: unknown point {at!r} (for {service}: "
                         f"{', '.join(POINTS[service])})")
    if not re.fullmatch(r"[a-z]+", point):
        raise FaultError(f"at: bad point {at!r}")
    return f"{service}.{point}"


def normalize(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a fault as the API or a marker gives it; the form written to the file."""
    unknown = set(spec) - KEYS
    if unknown:
        raise FaultError(f"unknown fault key(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(KEYS - {'id'}))})")
    if "at" not in spec:
        raise FaultError("at: every fault names its point, e.g. at='smtp.rcpt'")
    point = canonical_point(spec["at"])
    service = point.partition(".")[0]
    out: dict[str, Any] = {"at": point, "match": str(spec.get("match", "*") or "*")}
    if "id" in spec:
        out["id"] = int(spec["id"])
    reply = str(spec.get("reply") or "")
    if reply:
        if service in ("smtp", "lmtp"):
            if not is_failure_reply(reply):
                raise FaultError(f"reply: expected a 4xx or 5xx reply such as "
                                 f"'451 4.3.0 try later', got {reply!r}")
        elif service == "imap":
            if reply.split(" ", 1)[0].upper() not in ("NO", "BAD", "BYE"):
                reply = "NO " + reply
        elif not reply.startswith("-ERR"):
            reply = "-ERR " + reply
        out["reply"] = reply
    drop = spec.get("drop", False)
    if not isinstance(drop, bool):
        raise FaultError(f"drop: expected true or false, got {drop!r}")
    if drop:
        out["drop"] = True
    if drop and reply:
        raise FaultError("reply and drop exclude each other")
    delay = spec.get("latency", spec.get("stall"))
    if delay is not None:
        out["latency"] = seconds(delay)
    if not (reply or drop or out.get("latency")):
        raise FaultError(f"fault at {point} for {out['match']!r} needs reply, drop or latency")
    times = spec.get("times")
    if times is not None:
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise FaultError(f"times: expected a whole number >= 1, got {times!r}")
        out["times"] = times
    prob = spec.get("probability", 1.0)
    if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0 <= prob <= 1:
        raise FaultError(f"probability: expected a number from 0 to 1, got {prob!r}")
    if prob != 1:
        out["probability"] = float(prob)
    return out


def write(path: Path, faults: Sequence[Mapping[str, Any]], seed: int) -> None:
    """Replace the fault file (atomically); no faults: no file."""
    if not faults:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"seed": seed, "faults": list(faults)}))
    os.replace(tmp, path)


def hits_path(path: Path) -> Path:
    return path.with_name(path.name + ".hits")


def clear_hits(path: Path) -> None:
    try:
        hits_path(path).unlink()
    except FileNotFoundError:
        pass


def hits(path: Path) -> dict[int, int]:
    """How often each fault fired so far (fault id → count)."""
    try:
        data = hits_path(path).read_bytes()
    except FileNotFoundError:
        return {}
    out: dict[int, int] = {}
    for word in data.split():
        out[int(word)] = out.get(int(word), 0) + 1
    return out


# -- in the daemons --------------------------------------------------------------------------
@dataclass
class _Live:
    spec: dict[str, Any]
    rng: random.Random
    fired: int = 0


@dataclass(frozen=True)
class Action:
    """What a fired fault asks of the protocol after any latency: a reply, or a drop."""

    reply: str = ""
    drop: bool = False


class Engine:
    """One daemon's view of the fault file."""

    def __init__(self, path: Path, seed: int = 0) -> None:
        self.path = path
        self.seed = seed
        self._raw: bytes | None = None
        self._faults: list[_Live] = []
        self._live: dict[str, _Live] = {}

    def _current(self) -> list[_Live]:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            raw = b""
        if raw != self._raw:
            self._raw = raw
            self._faults = self._parse(raw)
        return self._faults

    def _parse(self, raw: bytes) -> list[_Live]:
        if not raw:
            return []
        try:
            doc = json.loads(raw)
            seed = int(doc.get("seed", self.seed))
            specs = [normalize(f) for f in doc.get("faults", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            log.error("fault file %s ignored: %s", self.path, exc)
            return []
        live: dict[str, _Live] = {}
        out = []
        for spec in specs:
            key = json.dumps(spec, sort_keys=True)
            state = self._live.get(key)
            if state is None:  # the draws depend on the seed and the fault, not on its order
                state = _Live(spec, random.Random(f"{seed}:" + json.dumps(
                    {k: v for k, v in spec.items() if k != "id"}, sort_keys=True)))
            live[key] = state
            out.append(state)
        self._live = live
        return out

    def pick(self, point: str, subjects: Iterable[str]) -> _Live | None:
        """The first fault at ``point`` matching a subject that fires now (counted)."""
        faults = self._current()
        if not faults:
            return None
        subjects = [s.lower() for s in subjects] or [""]
        for f in faults:
            spec = f.spec
            if spec["at"] != point:
                continue
            glob = spec["match"].lower()
            if not any(fnmatch.fnmatchcase(s, glob) for s in subjects):
                continue
            if "times" in spec and f.fired >= spec["times"]:
                continue
            if "probability" in spec and f.rng.random() >= spec["probability"]:
                continue
            f.fired += 1
            return f
        return None

    async def check(self, point: str, subjects: Iterable[str], peer: str) -> Action | None:
        """Fire the fault for ``point`` if one applies: log it, count it, wait its latency;
        then the reply or drop it asks for (None: carry on normally)."""
        subjects = list(subjects)
        f = self.pick(point, subjects)
        if f is None:
            return None
        spec = f.spec
        fid = spec.get("id", 0)
        log.info("%s: fault injected at %s (id %s, %d%s) for %s: %s", peer, point, fid,
                 f.fired, f"/{spec['times']}" if "times" in spec else "",
                 ", ".join(f"<{s}>" for s in subjects) or "-",
                 "drop" if spec.get("drop") else spec.get("reply") or "(normal reply)")
        try:
            fd = os.open(hits_path(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{fid}\n".encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot count fault hit in %s: %s", hits_path(self.path), exc)
        if spec.get("latency"):
            await asyncio.sleep(spec["latency"])
        if spec.get("drop") or spec.get("reply"):
            return Action(spec.get("reply", ""), bool(spec.get("drop")))
        return None


ENGINE: Engine | None = None


def install(cfg: Config) -> None:
    """Called by :func:`mailstack.runtime.daemon.run` when ``[chaos] file`` is set."""
    global ENGINE
    path = Path(cfg.chaos.file)
    ENGINE = Engine(path if path.is_absolute() else cfg.data_dir / path, cfg.chaos.seed)


# -- protocol hooks (each a line in the protocol code) ----------------------------------------
def smtp_subjects(command: str, arg: str | None, envelope: Any) -> list[str]:
    """What a fault's ``match`` is compared with at an SMTP/LMTP command."""
    from ..smtp.address import split_path

    arg = arg or ""
    if command in ("MAIL", "RCPT"):
        split = split_path(arg.partition(":")[2]) if ":" in arg else None
        return [split[0]] if split else [""]
    if command in ("DATA", "BDAT"):
        return list(getattr(envelope, "rcpt_tos", None) or [])
    if command in ("EHLO", "HELO", "LHLO"):
        return [arg.strip()]
    if command == "AUTH":  # the user of an initial PLAIN or LOGIN response, when there is one
        words = arg.split()
        if len(words) == 2 and words[0].upper() in ("PLAIN", "LOGIN"):
            try:
                blob = base64.b64decode(words[1], validate=True)
            except (binascii.Error, ValueError):
                return [""]
            if words[0].upper() == "LOGIN":
                return [blob.decode("utf-8", "replace")]
            parts = blob.split(b"\0")
            return [parts[1].decode("utf-8", "replace")] if len(parts) == 3 else [""]
    return [""]


SMTP_POINT = {"HELO": "ehlo", "EHLO": "ehlo", "LHLO": "ehlo", "BDAT": "data"}


def imap_subject(name: str, user: str, raw: bytes) -> str:
    """The login for LOGIN/AUTHENTICATE before it succeeded (best effort), else the user."""
    if user or name != "LOGIN":
        return user
    m = re.match(rb'\S+\s+LOGIN\s+("?)([^"\s]+)\1', raw, re.I)
    return m.group(2).decode("utf-8", "replace") if m else ""
