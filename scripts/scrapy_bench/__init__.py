"""The Scrapy contender of scripts/bench.py: Scrapy + scrapy-redis (Redis scheduler and dupefilter).

`run.py` is the entry point (`python scripts/scrapy_bench/run.py START_URL --proxy URL --redis URL`);
`spider.py` holds the spider, `settings.py` the tuning. Install with `pip install -e '.[bench]'`.
"""
