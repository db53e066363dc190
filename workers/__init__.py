"""The worker process as stages: engine, leaser, processing, committer, housekeeping; parse pool, signals."""
