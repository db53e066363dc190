"""Scrapy settings for the benchmark: tuned for throughput, as a fair competitor would tune them.

High global and per-domain concurrency (one host), no AutoThrottle, no download delay, no HTTP cache, no robots,
no cookies (crawl keeps none either), the asyncio reactor on uvloop (crawl runs on uvloop too), and the
scrapy-redis scheduler + dupefilter so the frontier and the dedup set live in Redis, as crawl's do.
"""

from __future__ import annotations

from typing import Any


def bench_settings(concurrency: int, redis_url: str, output: str) -> dict[str, Any]:
    return {
        "BOT_NAME": "bench",
        "CONCURRENT_REQUESTS": concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
        "CONCURRENT_REQUESTS_PER_IP": 0,
        "DOWNLOAD_DELAY": 0,
        "AUTOTHROTTLE_ENABLED": False,
        "HTTPCACHE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "COOKIES_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "LOG_LEVEL": "INFO",
        "LOGSTATS_INTERVAL": 10.0,
        "REACTOR_THREADPOOL_MAXSIZE": 20,
        "TWISTED_REACTOR": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
        "ASYNCIO_EVENT_LOOP": "uvloop.Loop",
        # 404s are pages too: hand them to the spider so they are counted like the other contenders count them
        "HTTPERROR_ALLOWED_CODES": [404],
        "RETRY_TIMES": 3,
        "DOWNLOAD_TIMEOUT": 30,
        "USER_AGENT": "scrapy-bench (+https://scrapy.org)",
        # scrapy-redis: the scheduler's queue and the dupefilter in Redis
        "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
        "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
        "SCHEDULER_PERSIST": False,
        "SCHEDULER_FLUSH_ON_START": True,
        "REDIS_URL": redis_url,
        "FEEDS": {output: {"format": "jsonlines", "encoding": "utf8", "overwrite": True}},
    }
