"""JMAP core (RFC 8620), sans I/O: the request object, method dispatch, result references,
creation ids, request- and method-level errors.

A face (the HTTP daemon) hands :func:`parse_request` the body it read and :class:`Dispatcher`
the parsed request; methods are plain functions registered per name, called with a
:class:`Call` (the arguments, the account, the request's creation ids).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..runtime.logsafe import safe

log = logging.getLogger("mailstack.jmap")
CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"
SUBMISSION = "urn:ietf:params:jmap:submission"
VACATION = "urn:ietf:params:jmap:vacationresponse"
CAPABILITIES = (CORE, MAIL, SUBMISSION, VACATION)
MAX_DEPTH = 64  # nesting of a request's JSON (bounded recursion)


class ProblemError(Exception):
    """A request-level error (RFC 8620 3.6.1): answered as RFC 7807 problem details."""

    def __init__(self, kind: str, detail: str, status: int = 400, **extra: Any) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.status, self.extra = kind, detail, status, extra

    def body(self) -> dict[str, Any]:
        return {"type": f"urn:ietf:params:jmap:error:{self.kind}", "status": self.status,
                "detail": self.detail, **self.extra}


class MethodError(Exception):
    """A method-level error (RFC 8620 3.6.2): ``["error", {"type": ...}, callId]``."""

    def __init__(self, kind: str, description: str = "", **extra: Any) -> None:
        super().__init__(description or kind)
        self.kind, self.description, self.extra = kind, description, extra

    def args_out(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, **self.extra}
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Limits:
    max_size_request: int
    max_calls_in_request: int
    max_objects_in_get: int
    max_objects_in_set: int


def is_number(text: str) -> bool:
    """ASCII digits that ``int()`` takes (``str.isdigit`` also admits ``²`` and other
    Unicode digits, and Python refuses ints of over 4,300 digits)."""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


def _depth_ok(value: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(_depth_ok(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_depth_ok(v, depth + 1) for v in value)
    return True


def loads(body: bytes) -> Any:
    """JSON from UTF-8 (RFC 8259), no NaN/Infinity, duplicates resolved as the last."""
    def bad_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    text = body.decode("utf-8")
    return json.loads(text, parse_constant=bad_constant)


def parse_request(body: bytes, limits: Limits) -> dict[str, Any]:
    """The Request object of an API request, checked; raises :class:`ProblemError`."""
    try:
        req = loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProblemError("notJSON", "the request body is not valid I-JSON") from None
    if not _depth_ok(req):
        raise ProblemError("notRequest", f"the request nests deeper than {MAX_DEPTH} levels")
    if not isinstance(req, dict) or not isinstance(req.get("using"), list) \
            or not isinstance(req.get("methodCalls"), list) \
            or not all(isinstance(u, str) for u in req["using"]):
        raise ProblemError("notRequest", "expected {\"using\": [...], \"methodCalls\": [...]}")
    for call in req["methodCalls"]:
        if not (isinstance(call, list) and len(call) == 3 and isinstance(call[0], str)
                and isinstance(call[1], dict) and isinstance(call[2], str)):
            raise ProblemError("notRequest", "each method call is [name, {arguments}, callId]")
    created = req.get("createdIds")
    if created is not None and not (isinstance(created, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in created.items())):
        raise ProblemError("notRequest", "createdIds must map creation ids to ids")
    unknown = [u for u in req["using"] if u not in CAPABILITIES]
    if unknown:
        raise ProblemError("unknownCapability",
                           f"unknown capability {str(unknown[0])[:100]!r}")
    if len(req["methodCalls"]) > limits.max_calls_in_request:
        raise ProblemError("limit", f"more than {limits.max_calls_in_request} method calls",
                           limit="maxCallsInRequest")
    return req


# -- result references (RFC 8620 3.7) ---------------------------------------------------------
def resolve_pointer(value: Any, pointer: str) -> Any:
    """Evaluate a JSON pointer with JMAP's ``*`` (map over an array, flattening arrays)."""
    if pointer == "":
        return value
    if not pointer.startswith("/"):
        raise KeyError(pointer)
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]
    return _walk(value, tokens)


def _walk(value: Any, tokens: list[str]) -> Any:
    for i, tok in enumerate(tokens):
        if isinstance(value, list):
            if tok == "*":
                out: list[Any] = []
                for item in value:
                    got = _walk(item, tokens[i + 1:])
                    if isinstance(got, list):
                        out.extend(got)
                    else:
                        out.append(got)
                return out
            if not is_number(tok) or int(tok) >= len(value):
                raise KeyError(tok)
            value = value[int(tok)]
        elif isinstance(value, dict):
            if tok not in value:
                raise KeyError(tok)
            value = value[tok]
        else:
            raise KeyError(tok)
    return value


def resolve_references(args: dict[str, Any], responses: list[list[Any]]) -> dict[str, Any]:
    """Replace ``#name`` arguments by the values they point to; raises invalidResultReference."""
    out = dict(args)
    for key in [k for k in args if k.startswith("#")]:
        name = key[1:]
        ref = args[key]
        if name in args:
            raise MethodError("invalidArguments", f"both {name} and #{name} given")
        if not (isinstance(ref, dict) and isinstance(ref.get("resultOf"), str)
                and isinstance(ref.get("name"), str) and isinstance(ref.get("path"), str)):
            raise MethodError("invalidResultReference", f"#{name} is not a ResultReference")
        source = next((r for r in responses if r[2] == ref["resultOf"]), None)
        if source is None or source[0] != ref["name"]:
            raise MethodError("invalidResultReference",
                              f"no {ref['name']!r} response for call {ref['resultOf']!r}")
        try:
            out[name] = resolve_pointer(source[1], ref["path"])
        except KeyError:
            raise MethodError("invalidResultReference",
                              f"path {ref['path'][:100]!r} not found") from None
        del out[key]
    return out


# -- dispatch -----------------------------------------------------------------------------------
@dataclass
class Call:
    """One method call as a method sees it."""

    name: str
    args: dict[str, Any]
    account: Any  # the face's account object (None for Core/echo)
    created_ids: dict[str, str]
    limits: Limits
    #: calls this method adds after itself (an implicit call, e.g. onSuccessUpdateEmail)
    extra: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def resolve(self, ident: Any) -> Any:
        """An id, or the id a ``#creationId`` of this request stands for."""
        if isinstance(ident, str) and ident.startswith("#"):
            return self.created_ids.get(ident[1:], ident)
        return ident

    def arg(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        """An argument of the expected JSON type, or invalidArguments."""
        value = self.args.get(name, default)
        if value is None:
            return default
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (
                kind if isinstance(kind, tuple) else (kind,))):
            raise MethodError("invalidArguments", f"{name} has the wrong type")
        return value


Method = Callable[[Call], dict[str, Any]]
#: methods without an accountId argument (about the login, not an account)
NO_ACCOUNT = frozenset({"Core/echo", "PushSubscription/get", "PushSubscription/set"})
METHODS: dict[str, Method] = {}


def method(name: str) -> Callable[[Method], Method]:
    def register(fn: Method) -> Method:
        METHODS[name] = fn
        return fn
    return register


@method("Core/echo")
def core_echo(call: Call) -> dict[str, Any]:
    return call.args


def is_core_only(req: dict[str, Any]) -> bool:
    """True when every call is Core/echo (no account access: answered on the event loop)."""
    return all(c[0] == "Core/echo" for c in req["methodCalls"])


SET_RESULTS = ("created", "updated", "destroyed", "notCreated", "notUpdated", "notDestroyed")


def _finish_set(name: str, result: dict[str, Any]) -> None:
    """A /set-style response says null, not an empty map or list, where nothing was created,
    updated, destroyed or refused (RFC 8620 5.3: "or null if none"). SetErrors carry their
    type and the properties that name the fault; the optional description goes to the debug
    log instead (conformance checkers compare SetErrors whole)."""
    for key in SET_RESULTS:
        if key in result and not result[key]:
            result[key] = None
        elif key.startswith("not") and isinstance(result.get(key), dict):
            for ident, err in result[key].items():
                if isinstance(err, dict) and "description" in err:
                    log.debug("jmap %s %s %s: %s", safe(name, 60), key, safe(str(ident), 60),
                              safe(str(err.pop("description")), 200))


def dispatch(req: dict[str, Any], account: Any, limits: Limits,
             account_id: str) -> dict[str, Any]:
    """Run the calls in order and return the Response object."""
    responses: list[list[Any]] = []
    created: dict[str, str] = dict(req.get("createdIds") or {})
    for name, args, call_id in req["methodCalls"]:
        pending = [(name, args)]
        while pending:
            mname, margs = pending.pop(0)
            try:
                margs = resolve_references(margs, responses)
                fn = METHODS.get(mname)
                if fn is None:
                    raise MethodError("unknownMethod", f"{mname[:100]!r} is not a method here")
                if mname not in NO_ACCOUNT:
                    acc = margs.get("accountId")
                    if not isinstance(acc, str):
                        raise MethodError("invalidArguments", "accountId is required")
                    if acc != account_id:
                        raise MethodError("accountNotFound")
                call = Call(mname, margs, account, created, limits)
                result = fn(call)
                if mname.endswith(("/set", "/copy", "/import")):
                    _finish_set(mname, result)
                responses.append([mname, result, call_id])
                pending = call.extra + pending
            except MethodError as exc:
                log.info("jmap %s %s: %s", getattr(account, "address", "-"), safe(mname, 60),
                         exc.kind)
                responses.append(["error", exc.args_out(), call_id])
            except Exception:  # a bug: this call fails, the request goes on
                log.exception("jmap %s failed", mname[:100])
                responses.append(["error", {"type": "serverFail"}, call_id])
    out: dict[str, Any] = {"methodResponses": responses,
                           "sessionState": getattr(account, "session_state", "0")}
    if "createdIds" in req:
        out["createdIds"] = created
    return out
