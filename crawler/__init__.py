"""crawl: a high-throughput, crash-safe scraping crawler with a Redis frontier.

`from crawler import Follow, Page`: what a `--parser` function yields and is given (see `crawler.scrape.Page`).
"""

from crawler.scrape import Follow, Page

__version__ = "0.1.0"
__all__ = ["Follow", "Page", "__version__"]
