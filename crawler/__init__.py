"""crawl: a high-throughput, crash-safe scraping crawler with a Redis frontier."""

__version__ = "0.1.0"
