#!/usr/bin/env python3
"""Run the Scrapy contender: `python scripts/scrapy_bench/run.py START_URL --proxy URL --redis URL [--concurrency N]
[--output FILE]`. Prints `{"event": "summary", ...}` (pages, elapsed, Scrapy's own stats) at the end."""

from __future__ import annotations

import argparse
import json
import sys
import time

from scrapy.crawler import CrawlerProcess
from settings import bench_settings
from spider import SiteSpider


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("start")
    ap.add_argument("--proxy", default=None)
    ap.add_argument("--redis", default=None, help="scrapy-redis scheduler + dupefilter in this Redis")
    ap.add_argument(
        "--memory-scheduler",
        action="store_true",
        help="reference only: Scrapy's own in-memory scheduler and dupefilter instead of scrapy-redis",
    )
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--output", default="scrapy-out.jsonl")
    args = ap.parse_args()
    if not args.redis and not args.memory_scheduler:
        ap.error("give --redis URL (scrapy-redis) or --memory-scheduler")
    settings = bench_settings(args.concurrency, args.redis or "", args.output)
    if args.memory_scheduler:
        for key in ("SCHEDULER", "DUPEFILTER_CLASS", "SCHEDULER_PERSIST", "SCHEDULER_FLUSH_ON_START", "REDIS_URL"):
            settings.pop(key)
    process = CrawlerProcess(settings, install_root_handler=True)
    crawler = process.create_crawler(SiteSpider)
    t0 = time.monotonic()
    process.crawl(crawler, start_url=args.start, proxy=args.proxy)
    process.start()
    elapsed = time.monotonic() - t0
    stats = crawler.stats.get_stats() if crawler.stats else {}
    pages = int(stats.get("response_received_count", 0))
    keep = (
        "response_received_count",
        "item_scraped_count",
        "downloader/request_count",
        "scheduler/enqueued/redis",
        "scheduler/enqueued/memory",
        "dupefilter/filtered",
        "finish_reason",
        "log_count/ERROR",
        "retry/count",
        "downloader/response_status_count/200",
        "downloader/response_status_count/404",
    )
    print(
        json.dumps(
            {
                "event": "summary",
                "pages": pages,
                "elapsed_s": round(elapsed, 3),
                "pages_per_s": round(pages / elapsed, 1) if elapsed else 0,
                "stats": {k: str(v) for k, v in stats.items() if k in keep},
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
