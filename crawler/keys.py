"""Every Redis key of a crawl, in one screen.

All keys of crawl NAME live under `crawl:{NAME}:`; the braces are a Redis Cluster hash tag, so one crawl's keys
share a slot and one Lua script may touch several of them. Per-host queue keys are built inside the Lua scripts
from `prefix` (`prefix .. "q:" .. host`), which is why the prefix is passed to every script: that is the one key
name not declared in KEYS, and it shares the hash tag. To shard a crawl later, hash the host to `{NAME#k}`.
`<url>` is always the fetch URL (crawler/urls.py); the extras (user data, label, headers, kind: crawler/frontier.py
`Extras`) follow it only when a URL has some, so a URL without them costs no more than before. A recurring URL's
entry ends in a TAB and its recurring state (`<recur>`: period, generation, validators; crawler/schedule.py), so
its whole footprint between passes is its entry in the list of the second it is due (`recur:<s>`): no per-URL
key, hash field or zset node.

| key                 | type   | holds                                                                 |
|---------------------|--------|-----------------------------------------------------------------------|
| seen                | set    | 8-byte URL fingerprints: crawl-wide dedup                             |
| q:<host>            | list   | queued entries "<depth> <attempts> <url>[ <extras JSON>][<TAB><recur>]"|
| hosts               | zset   | hosts with queued work, scored by the next time they may be leased    |
| host_inflight       | hash   | host -> leases outstanding (per-host concurrency, crawl-wide)          |
| host_next           | hash   | host -> earliest next lease in ms (per-host delay, crawl-wide)         |
| host_delay          | hash   | host -> robots.txt Crawl-delay in ms (capped), enforced by lease       |
| traffic             | hash   | gateway:<redacted> -> bytes; not_modified, bytes_200, pages_200        |
| leases              | zset   | "<token> <entry>" scored by lease deadline in ms                       |
| deferred            | zset   | entries waiting for a retry, scored by due time in ms                  |
| dead                | hash   | url -> "<depth> <attempts> <at> <error JSON>[<LF><extras JSON>]"      |
| stats               | hash   | counters: enqueued, queued, done, dead, retried, recurring, scheduled, |
|                     |        | passes, failed_passes                                                 |
| recur               | zset   | seconds that have waiting recurring entries (score: that second in ms) |
| recur:<epoch second>| list   | recurring entries whose next pass is due then (a time wheel)          |
| recur_cancel        | set    | URLs cancelled while a pass is in progress (ends at its ack)          |
| recur_gen           | string | schedule generation: `crawl schedule --all` bumps it                   |
| rate:<epoch second> | string | pages done in that second (expires): pages/s without a key per URL     |
| workers             | zset   | worker id -> last heartbeat (epoch s); details in worker:<id>         |
| worker:<id>         | string | one worker's heartbeat record, JSON, expiring with the heartbeat TTL  |
| proxy_slots         | zset   | fleet-wide proxy connection slots, scored by expiry                    |
| seed_hosts          | set    | hosts of enqueued seeds: trusted by the SSRF guard                    |
"""

from __future__ import annotations

from dataclasses import dataclass

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True, slots=True)
class CrawlKeys:
    name: str

    def __post_init__(self) -> None:
        if not self.name or not set(self.name) <= _NAME_CHARS or len(self.name) > 64:
            raise ValueError(f"crawl name {self.name!r}: use 1-64 of letters, digits, '-', '_', '.'")

    @property
    def prefix(self) -> str:
        return f"crawl:{{{self.name}}}:"

    def _k(self, suffix: str) -> str:
        return self.prefix + suffix

    @property
    def seen(self) -> str:
        return self._k("seen")

    def queue(self, host: str) -> str:
        return self._k("q:" + host)

    @property
    def hosts(self) -> str:
        return self._k("hosts")

    @property
    def host_inflight(self) -> str:
        return self._k("host_inflight")

    @property
    def host_next(self) -> str:
        return self._k("host_next")

    @property
    def traffic(self) -> str:
        return self._k("traffic")

    @property
    def host_delay(self) -> str:
        return self._k("host_delay")

    @property
    def leases(self) -> str:
        return self._k("leases")

    @property
    def deferred(self) -> str:
        return self._k("deferred")

    @property
    def dead(self) -> str:
        return self._k("dead")

    @property
    def stats(self) -> str:
        return self._k("stats")

    @property
    def recur(self) -> str:
        return self._k("recur")

    def recur_bucket(self, second: int | str) -> str:
        return self._k(f"recur:{second}")

    @property
    def recur_cancel(self) -> str:
        return self._k("recur_cancel")

    @property
    def recur_gen(self) -> str:
        return self._k("recur_gen")

    def rate(self, epoch_s: int) -> str:
        return self._k(f"rate:{epoch_s}")

    @property
    def workers(self) -> str:
        return self._k("workers")

    def worker(self, worker_id: str) -> str:
        return self._k("worker:" + worker_id)

    @property
    def proxy_slots(self) -> str:
        return self._k("proxy_slots")

    @property
    def seed_hosts(self) -> str:
        return self._k("seed_hosts")

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every key of this crawl (for purge)."""
        return self.prefix.replace("[", "\\[").replace("]", "\\]") + "*"
