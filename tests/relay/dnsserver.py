"""A tiny authoritative DNS server on loopback UDP, built with dnspython, for MX tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


@dataclass
class Zone:
    """records[(name, type)] = [rdata text]; servfail/nxdomain name sets override."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    servfail: set[str] = field(default_factory=set)
    known: set[str] = field(default_factory=set)  # names that exist (NOERROR) without records

    def add(self, name: str, rtype: str, *values: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), rtype.upper()), []).extend(values)


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        query = dns.message.from_wire(data)
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rtype = dns.rdatatype.to_text(q.rdtype)
        if name in self.zone.servfail:
            resp.set_rcode(dns.rcode.SERVFAIL)
        else:
            values = self.zone.records.get((name, rtype))
            exists = values is not None or name in self.zone.known or any(
                n == name for n, _ in self.zone.records)
            if values:
                resp.answer.append(dns.rrset.from_text_list(
                    q.name, 60, dns.rdataclass.IN, q.rdtype, values))
            elif not exists:
                resp.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(resp.to_wire(), addr)


async def start_dns(zone: Zone) -> tuple[asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(zone),
                                                       local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]
