"""Fault injection for the mta (``[[faults]]`` in the config): stall and/or a chosen reply.

Applications test their error handling against it: a ``4xx`` must make them retry, a ``5xx``
give up, a stall hit their timeout. Each injected fault is logged.
"""

from __future__ import annotations

import asyncio
import logging

from ..config import Config

log = logging.getLogger("mailstack.mta")


async def inject(cfg: Config, point: str, addresses: list[str], peer: str) -> str | None:
    """Apply the first fault for ``point`` that matches one of ``addresses``: sleep for its
    stall, then return its reply (None: carry on normally)."""
    for address in addresses:
        fault = cfg.faults_at(point, address)
        if fault is None:
            continue
        log.info("%s: fault injected at %s for <%s>: stall=%gs, reply=%s", peer,
                 point.upper(), address, float(fault.stall), fault.reply or "(normal)")
        if fault.stall:
            await asyncio.sleep(float(fault.stall))
        return fault.reply or None
    return None
