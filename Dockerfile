# syntax=docker/dockerfile:1.7
# The `crawl` image: one stateless worker per container, the frontier in Redis (see docker-compose.yml).
#
#   docker build -t crawl:local .
#   docker run --rm -e CRAWL_REDIS_URL=redis://redis.internal:6379/0 crawl:local worker --concurrency 128
#   docker run --rm -e CRAWL_REDIS_URL=... crawl:local stats
#
# BuildKit is required (the default builder since Docker 23): the build uses a cache mount, a bind mount from
# the builder stage and a heredoc.

# Base image: an exact Python patch release on an exact Debian release, the same in both stages (a floating tag
# such as python:3.11-slim changes under a rebuild). For byte-for-byte reproducible builds also pin the digest,
# the convention being `FROM python:3.11.11-slim-bookworm@sha256:<digest>` (get it with
# `docker buildx imagetools inspect python:3.11.11-slim-bookworm`); Docker then ignores the tag and a tool such
# as Renovate or Dependabot can propose digest updates as ordinary changes.

# ---------------------------------------------------------------------------------------------------- builder
# Builds a wheel of the project and of every dependency. x86_64 and arm64 get manylinux wheels for all of them
# from PyPI; the compiler is here for any platform where one is missing (pip then builds it from the sdist), and
# it never reaches the final image.
FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build needs (README.md is the package's long description in pyproject.toml).
COPY pyproject.toml README.md ./
COPY crawler ./crawler
COPY workers ./workers
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------------- runtime
FROM python:3.11.11-slim-bookworm AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed non-root uid/gid, so bind-mounted output directories can be chowned to it on the host.
# /data/output exists in the image, owned by that user: Docker initialises a new named volume mounted there
# with this ownership, so the worker can write its JSONL files into the compose `output` volume.
RUN groupadd --system --gid 10001 crawl \
 && useradd --system --uid 10001 --gid crawl --home-dir /data --no-create-home --shell /usr/sbin/nologin crawl \
 && mkdir -p /data/output \
 && chown -R crawl:crawl /data

# Wheels only: --no-index means pip can neither download nor compile anything here (there is no compiler in
# the slim image). The wheels are bind-mounted from the builder, so they do not become a layer of the image.
# `crawl --version` proves the console script and its imports work before the image is tagged.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels crawl \
 && crawl --version

# Health = "this container's worker is heartbeating to the crawl's Redis", asked the way an operator would
# (`crawl workers --json`), filtered to this container's hostname (the worker's heartbeat records it).
# Why not the alternatives:
#  - `crawl --version`, or a check that the worker process exists, are cheap but say nothing: the worker is the
#    container's main process, so if it is gone the container has already exited, and a worker whose event loop
#    is wedged still passes them. The heartbeat is written by a task on that same event loop.
#  - A plain Redis-dependent check would turn every worker unhealthy during a Redis outage, which the worker is
#    built to ride out (it backs off and keeps its results); an orchestrator that restarts unhealthy containers
#    would then throw away all in-flight work at once. So when Redis cannot be reached (or no Redis URL is set:
#    an embedded Redis is private to the container) the check passes, and the worker's own log lines report the
#    outage. It fails only when Redis answers and this container has no live heartbeat (--heartbeat-ttl-s, 15 s).
# Cost: one short Python process and one Redis round trip per interval (about 0.4 s of CPU every 30 s, measured).
# It reads CRAWL_NAME / CRAWL_REDIS_URL from the container's environment, as the worker does; a worker whose
# crawl name is given by a command-line flag instead needs CRAWL_NAME set too.
COPY --chmod=0755 <<'EOF' /usr/local/bin/crawl-healthcheck
#!/usr/local/bin/python
"""Docker HEALTHCHECK: exit 0 if this container's worker has a live heartbeat, or if Redis cannot be asked."""
import json
import os
import socket
import subprocess
import sys

if not (os.environ.get("CRAWL_REDIS_URL") or os.environ.get("REDIS_URL")):
    sys.exit(0)  # embedded Redis: no fleet to report to
try:
    run = subprocess.run([sys.executable, "-m", "crawler", "workers", "--json"], capture_output=True, text=True,
                         timeout=8, stdin=subprocess.DEVNULL)
except subprocess.TimeoutExpired:
    print("crawl workers timed out: Redis slow or unreachable; not judging the worker", file=sys.stderr)
    sys.exit(0)
if run.returncode != 0:
    print((run.stderr.strip() or "crawl workers failed") + "; not judging the worker", file=sys.stderr)
    sys.exit(0)
host = socket.gethostname()
mine = [w for w in json.loads(run.stdout or "[]") if w.get("host") == host]
if not mine:
    print(f"Redis answers but no live heartbeat from host {host}", file=sys.stderr)
    sys.exit(1)
print(" ".join(f"{w.get('id')} pages/s={w.get('pages_per_s')} inflight={w.get('inflight')}" for w in mine))
EOF

USER 10001:10001
WORKDIR /data
ENTRYPOINT ["crawl"]
CMD ["worker"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["crawl-healthcheck"]
