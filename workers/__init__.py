"""The worker process: event loop, pipeline, parse pool, signals."""
