"""A minimal frontier consumer, run as a real process by tests/test_frontier_processes.py and the benchmark.

    python tests/frontier_consumer.py --redis URL --crawl NAME [--mode lease-ack|hold] [--batch N] [--ttl S]
        [--out FILE] [--phc N] [--delay-ms N] [--hold-ms MIN MAX] [--reclaim-attempts N] [--barrier]
        [--deadline-s S] [--token T]

lease-ack: lease a batch, ack it (the whole batch at once, or each lease after a random hold of MIN-MAX ms with
--hold-ms), write one JSON line per leased URL to --out (flushed per batch), and repeat; exit 0 when the
frontier is idle crawl-wide. When nothing is leasable it waits until the frontier's next_due (polling at most
every 20 ms), running `reclaim` first with --reclaim-attempts.
hold: lease one non-empty batch, record it, print `HELD n` and block until SIGKILLed (or --deadline-s passes).

Record fields: url, attempts, token, lease_now (the `now` the frontier's lease call used, ms), t_call / t_got
(wall clock just before the lease call / just after it returned, ms), t_ack / t_acked (just before the ack call /
after it returned), acked (how many leases that ack call counted) and asked (how many it was given).
With --barrier the consumer pushes its pid to `<prefix>test_ready` once connected and waits for a token on
`<prefix>test_go` before its first lease, so a test can start every consumer at the same moment.
Exit codes: 0 idle, 3 deadline passed, 4 barrier timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import random
import sys
import time
from typing import IO, Any

import redis.asyncio as aioredis

import crawler.frontier as frontier_mod
from crawler.frontier import Frontier, Lease, Politeness

# The `now` a lease call hands to its Lua script, per task (ack tasks may call now_ms() concurrently).
_LAST_NOW: contextvars.ContextVar[int] = contextvars.ContextVar("last_now", default=-1)
_real_now_ms = frontier_mod.now_ms


def _recording_now_ms() -> int:
    value = _real_now_ms()
    _LAST_NOW.set(value)
    return value


POLL_MS = 20


def wall_ms() -> float:
    return time.time() * 1000.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis", required=True)
    p.add_argument("--crawl", required=True)
    p.add_argument("--mode", choices=["lease-ack", "hold"], default="lease-ack")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ttl", type=float, default=30.0, help="lease ttl in seconds")
    p.add_argument("--out", default=None, help="JSON lines of every leased URL (none: no records)")
    p.add_argument("--phc", type=int, default=0, help="per-host concurrency (0: unlimited)")
    p.add_argument("--delay-ms", type=int, default=0, help="per-host delay")
    p.add_argument("--hold-ms", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    p.add_argument("--reclaim-attempts", type=int, default=0, help="reclaim with this max_attempts when idle")
    p.add_argument("--barrier", action="store_true")
    p.add_argument("--deadline-s", type=float, default=60.0)
    p.add_argument("--token", default=f"c{os.getpid()}")
    return p.parse_args(argv)


def record(ls: Lease, token: str, lease_now: int, t_call: float, t_got: float) -> dict[str, Any]:
    return {
        "url": ls.url,
        "attempts": ls.attempts,
        "token": token,
        "lease_now": lease_now,
        "t_call": t_call,
        "t_got": t_got,
        "t_ack": None,
        "t_acked": None,
        "acked": None,
        "asked": None,
    }


def write(out: IO[str] | None, records: list[dict[str, Any]]) -> None:
    if out is None:
        return
    out.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    out.flush()


async def ack_after_hold(f: Frontier, ls: Lease, rec: dict[str, Any], hold_ms: float) -> None:
    await asyncio.sleep(hold_ms / 1000)  # simulated fetch time
    rec["t_ack"] = wall_ms()
    acked, _ = await f.ack([ls])
    rec["t_acked"] = wall_ms()
    rec["acked"], rec["asked"] = acked, 1


async def run(args: argparse.Namespace) -> int:
    client = aioredis.Redis.from_url(args.redis)
    f = Frontier(client, args.crawl, Politeness(args.phc, args.delay_ms))
    out = open(args.out, "a", encoding="utf-8") if args.out else None  # noqa: SIM115, ASYNC230 - opened once; closed below
    rng = random.Random(os.getpid())
    deadline = time.monotonic() + args.deadline_s
    leased = acked_total = 0
    try:
        if args.barrier:
            await client.rpush(f.keys.prefix + "test_ready", os.getpid())
            if await client.blpop([f.keys.prefix + "test_go"], timeout=max(1, int(args.deadline_s))) is None:
                print("barrier timed out", file=sys.stderr)
                return 4
        while True:
            if time.monotonic() > deadline:
                print(f"deadline passed: leased={leased} acked={acked_total}", file=sys.stderr, flush=True)
                return 3
            t_call = wall_ms()
            leases, next_due = await f.lease(args.batch, args.token, args.ttl)
            lease_now = _LAST_NOW.get()
            t_got = wall_ms()
            if leases:
                leased += len(leases)
                recs = [record(ls, args.token, lease_now, t_call, t_got) for ls in leases]
                if args.mode == "hold":
                    write(out, recs)
                    print(f"HELD {len(leases)}", flush=True)
                    await asyncio.sleep(max(0.0, deadline - time.monotonic()))  # until SIGKILLed
                    return 3
                if args.hold_ms:
                    lo, hi = args.hold_ms
                    await asyncio.gather(
                        *(ack_after_hold(f, ls, r, rng.uniform(lo, hi)) for ls, r in zip(leases, recs, strict=True))
                    )
                    acked_total += sum(int(r["acked"]) for r in recs)
                else:
                    t_ack = wall_ms()
                    acked, _ = await f.ack(leases)
                    t_acked = wall_ms()
                    acked_total += acked
                    for r in recs:
                        r.update(t_ack=t_ack, t_acked=t_acked, acked=acked, asked=len(leases))
                write(out, recs)
                continue
            if args.reclaim_attempts:
                await f.reclaim(args.reclaim_attempts)
            if (await f.counters()).idle:
                print(f"DONE leased={leased} acked={acked_total}", flush=True)
                return 0
            wait_ms = next_due - _real_now_ms() if next_due > 0 else POLL_MS
            await asyncio.sleep(min(max(wait_ms, 1), POLL_MS) / 1000)
    finally:
        if out is not None:
            out.close()
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    frontier_mod.now_ms = _recording_now_ms  # Frontier looks the module global up at call time
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
