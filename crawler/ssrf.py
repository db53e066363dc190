"""Server-side request forgery guard: never fetch private, loopback, link-local or unique-local addresses that
the user did not ask for.

Hosts of the seeds the user enqueued are trusted (recorded in Redis at enqueue time); `--allow-private-networks`
turns the guard off. Without a proxy the check is on the resolved address (a DNS name that resolves to 10.x is
refused too), through `GuardedResolver`; every redirect target is checked by `Fetcher`, which follows them itself.
With a proxy, the gateway resolves names, so only literal addresses can be checked here: that is the limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

TrustFn = Callable[[str], Awaitable[bool]]


def is_private_address(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # not global: private, loopback, link-local, unique-local, shared (100.64/10: a cloud's metadata service),
    # reserved, documentation ranges; multicast is global in the registry but never a web server
    return not ip.is_global or ip.is_multicast


def bare_host(hostport: str) -> str:
    """'host:port' or '[v6]:port' -> 'host' / 'v6' (no brackets)."""
    if hostport.startswith("["):
        return hostport[1 : hostport.index("]")]
    return hostport.rsplit(":", 1)[0] if ":" in hostport else hostport


def literal_ip(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return None


class BlockedAddressOSError(OSError):
    """Raised inside aiohttp's connector (which wraps OSErrors); translated to BlockedAddress at the boundary."""


class TrustCache:
    """host -> trusted? (seed host), asked of Redis once per host, bounded LRU."""

    def __init__(self, lookup: TrustFn, size: int = 10_000) -> None:
        self._lookup = lookup
        self._size = size
        self._cache: OrderedDict[str, bool] = OrderedDict()
        # host -> lookup in progress: a thousand fetch tasks asking about one new host cost one Redis call
        self._pending: dict[str, asyncio.Task[bool]] = {}

    async def refuses(self, host: str) -> bool:
        """The literal-address check: a private IP literal that is not a seed host. (Names are checked on their
        resolved addresses by GuardedResolver.)"""
        return literal_ip(host) is not None and is_private_address(host) and not await self.trusted(host)

    async def trusted(self, host: str) -> bool:
        hit = self._cache.get(host)
        if hit is not None:
            self._cache.move_to_end(host)
            return hit
        task = self._pending.get(host)
        if task is None:
            task = asyncio.ensure_future(self._lookup(host))
            self._pending[host] = task
            task.add_done_callback(lambda _t: self._pending.pop(host, None))
        value = await asyncio.shield(task)
        self._cache[host] = value
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return value


class GuardedResolver(AbstractResolver):
    """Resolves as aiohttp would, then refuses private addresses for hosts that are not trusted."""

    def __init__(self, trust: TrustCache) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._trust = trust

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if any(is_private_address(r["host"]) for r in results) and not await self._trust.trusted(host.lower()):
            raise BlockedAddressOSError(f"{host} resolves to a private address")
        return results

    async def close(self) -> None:
        await self._inner.close()
