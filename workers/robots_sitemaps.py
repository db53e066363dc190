"""--sitemaps-from-robots: the `Sitemap:` lines of a seed host's robots.txt, enqueued as sitemap seeds once per host.

A stage helper of processing (`Processor._process` asks it about every finished lease). A sitemap on the seed's
host (or an `--allow-domain`) is the host's own; one on another host is vouched for by this robots.txt and speaks
for the seed's host (`Extras.for_host`: its URLs must be there, sitemaps.org cross-submission). Such a vouched
sitemap never has its own host's robots.txt read in turn, so the crawl cannot spread from host to host.
"""

from __future__ import annotations

import contextlib

from crawler.entries import Extras
from crawler.errors import BlockedAddress, GatewayUnreachable, ProxyAuthError
from crawler.frontier import Lease, NewLink
from crawler.retry import Action
from crawler.robots import RobotsState
from crawler.robots_cache import RobotsCache
from crawler.urls import InvalidURL, crawl_url, host_of, in_domain
from workers.outcomes import Outcome

HOSTS_TOLD = 100_000  # hosts per "once per host" set; past it the set starts over (telling twice is harmless)


def first_time(told: set[str], host: str) -> bool:
    """True the first time `host` is seen by `told` (a bounded set: cleared when full), and remembers it. Also
    what the processing stage tells the frontier a host's Crawl-delay with, once per host."""
    if host in told:
        return False
    if len(told) >= HOSTS_TOLD:
        told.clear()
    told.add(host)
    return True


class RobotsSitemaps:
    """The sitemap seeds of each seed host's robots.txt, once per host (bounded), read through the robots cache
    (cached when robots.txt was read for the lease; with --no-robots read here, its rules not enforced)."""

    def __init__(self, robots: RobotsCache, allow_domains: tuple[str, ...]) -> None:
        self.robots = robots
        self.allow_domains = allow_domains
        self._told: set[str] = set()  # hosts whose robots.txt sitemaps were enqueued

    async def links(self, lease: Lease, outcome: Outcome) -> list[NewLink]:
        """The sitemap seeds `lease`'s outcome adds: [] unless it is a seed's record, its host not yet asked."""
        if not _names_robots_sitemaps(lease, outcome):
            return []
        host = host_of(lease.url)
        if not first_time(self._told, host):
            return []
        scheme = lease.url.split("://", 1)[0]
        try:
            rules = await self.robots.rules(f"{scheme}://{host}")
        except (ProxyAuthError, BlockedAddress, GatewayUnreachable):  # not read: the host's next seed tries again
            self._told.discard(host)
            return []
        except BaseException:  # cancelled (shutdown), or a Redis error: the lease goes back, and so does the host
            self._told.discard(host)
            raise
        if rules.state is RobotsState.UNREACHABLE:  # a 5xx or no answer: its Sitemap: lines are not known yet
            self._told.discard(host)
        own = Extras(kind="sitemap").encode()
        vouched = Extras(kind="sitemap", for_host=host).encode()  # on another host: its URLs must be on this one
        out = []
        for loc in rules.sitemaps:
            with contextlib.suppress(InvalidURL):
                n = crawl_url(loc)
                mine = n.host == host or in_domain(n.host, self.allow_domains)
                out.append(NewLink(n.fingerprint, n.host, n.url, 0, own if mine else vouched))
        return out


def _names_robots_sitemaps(lease: Lease, outcome: Outcome) -> bool:
    """Whether a finished lease asks for its host's robots.txt sitemaps: a seed (depth 0) with a record, not
    refused by the SSRF guard (robots.txt would be refused too), and not a sitemap that another host's robots.txt
    vouched for (reading its own host's robots.txt in turn would spread the crawl from host to host)."""
    if outcome.action is not Action.DONE or lease.depth != 0:
        return False
    if outcome.record is not None and outcome.record.error == "blocked_address":
        return False
    return not (lease.is_sitemap and lease.extras is not None and lease.extras.for_host)
