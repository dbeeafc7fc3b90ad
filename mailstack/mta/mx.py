"""Where mail for a domain goes: MX lookup (RFC 5321 §5.1, RFC 7505 null MX) with dnspython.

- MX records, lowest preference first (equal preferences shuffled);
- no MX but the name exists: the domain itself is the implicit MX;
- ``0 .`` (null MX): the domain accepts no mail — a permanent failure;
- NXDOMAIN: permanent; SERVFAIL, timeouts, no reachable name server: temporary.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.inet
import dns.rdatatype
import dns.resolver

from ..smtp.reply import Reply


class DNSFailure(Exception):
    """The lookup failed; ``reply`` is what the recipients get (4xx temporary, 5xx permanent)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True)
class MXHost:
    preference: int
    name: str


def make_resolver(address: str, timeout: float = 10.0) -> dns.asyncresolver.Resolver:
    """The system resolver, or one that asks ``host[:port]`` only (tests, split DNS)."""
    if not address:
        res = dns.asyncresolver.Resolver()
    else:
        res = dns.asyncresolver.Resolver(configure=False)
        m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:]+)(?::(\d+))?|([0-9A-Fa-f:]+)", address)
        if not m:
            raise ValueError(f"bad resolver address {address!r}")
        res.nameservers = [m.group(1) or m.group(3) or m.group(5)]
        res.port = int(m.group(2) or m.group(4) or 53)
    res.lifetime = timeout
    res.timeout = min(timeout, 3.0)
    return res


async def lookup_mx(domain: str, resolver: dns.asyncresolver.Resolver) -> list[MXHost]:
    """MX hosts for ``domain`` in the order to try; raises DNSFailure."""
    try:
        answer = await resolver.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        raise DNSFailure(Reply(550, "5.1.2", f"domain {domain} does not exist (NXDOMAIN)")) \
            from None
    except dns.resolver.NoAnswer:
        return [MXHost(0, domain)]  # implicit MX: the domain's own address records
    except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.LifetimeTimeout) \
            as exc:
        raise DNSFailure(Reply(451, "4.4.3", f"DNS lookup of {domain} MX failed: {exc}")) \
            from None
    except dns.exception.DNSException as exc:
        raise DNSFailure(Reply(451, "4.4.3", f"DNS lookup of {domain} MX failed: {exc}")) \
            from None
    hosts = [MXHost(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer]
    if any(h.name in ("", ".") for h in hosts):
        if len(hosts) == 1:
            raise DNSFailure(Reply(556, "5.1.10", f"domain {domain} accepts no mail (null MX)"))
        hosts = [h for h in hosts if h.name not in ("", ".")]
    random.shuffle(hosts)
    hosts.sort(key=lambda h: h.preference)
    return hosts


async def host_addresses(name: str, resolver: dns.asyncresolver.Resolver) -> list[str]:
    """IPv4 then IPv6 addresses of an MX host (or the address itself); raises DNSFailure."""
    if dns.inet.is_address(name):
        return [name]
    out: list[str] = []
    temporary: Exception | None = None
    for rtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(name, rtype)
            out += [r.to_text() for r in answer]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            temporary = exc
    if not out:
        if temporary is not None:
            raise DNSFailure(Reply(451, "4.4.3", f"DNS lookup of {name} failed: {temporary}"))
        raise DNSFailure(Reply(451, "4.4.4", f"MX host {name} has no address"))
    return out
