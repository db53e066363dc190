"""Secrets never leave the process: the proxy password and the Redis password appear in no byte `crawl` writes.

One end-to-end scenario drives every output channel we know of (JSON and text logs, throughput and summary lines,
result files, `crawl stats/dead/workers`, Prometheus `/metrics`, configuration errors, an unreachable Redis, a
gateway that refuses the credentials) and greps everything for both passwords. Reprs are checked directly.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from crawler.proxies import ProxyPool
from crawler.redact import redact_url
from crawler.settings import ProxySettings, Settings
from crawler.testing.services import RedisServer, RunningServer, free_port, start_server, wait_until
from tests.fetch_params import FETCHERS, fetcher_flags
from tests.helpers import PROXY_PASSWORD, PROXY_USER, CrawlRun, crawl, read_records, spawn_crawl, worker_args

REDIS_PASSWORD = "redis-s3cret-pw"
WRONG_PROXY_PASSWORD = "wr0ng-pr0xy-s3cret"
SECRETS = (PROXY_PASSWORD, REDIS_PASSWORD, WRONG_PROXY_PASSWORD)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RunningServer, RunningServer, RunningServer]]:
    with (
        start_server("crawler.testing.site_server", "--port", 0, "--pages", 30, "--seed", 11) as site,
        start_server("crawler.testing.hostile_server", "--port", 0) as hostile,
        start_server(
            "crawler.testing.proxy_server", "--port", 0, "--user", PROXY_USER, "--password", PROXY_PASSWORD
        ) as proxy,
    ):
        yield site, hostile, proxy


@pytest.fixture(params=FETCHERS)
def fetcher(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """Worker flags selecting each fetcher in turn: the guarantees below hold for both."""
    return fetcher_flags(str(request.param))


class Transcript:
    """Every byte `crawl` wrote, by where it went."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, bytes]] = []

    def add(self, label: str, data: str | bytes) -> None:
        self.parts.append((label, data.encode() if isinstance(data, str) else data))

    def run(self, label: str, run: CrawlRun) -> CrawlRun:
        self.add(f"{label}: stdout", run.stdout)
        self.add(f"{label}: stderr", run.stderr)
        return run

    def tree(self, label: str, root: Path) -> None:
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            self.add(f"{label}: {f.relative_to(root)}", f.read_bytes())

    def leaks(self) -> list[str]:
        return [f"{secret!r} in {label}" for label, data in self.parts for secret in SECRETS if secret.encode() in data]


def get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        body: bytes = resp.read()
    return body.decode()


def seeds(path: Path, urls: list[str]) -> str:
    path.write_text("\n".join(urls) + "\n")
    return str(path)


def test_no_password_appears_in_any_output(
    private_redis: RedisServer,
    servers: tuple[RunningServer, RunningServer, RunningServer],
    tmp_path: Path,
    fetcher: tuple[str, ...],
) -> None:
    site, hostile, proxy = servers
    t = Transcript()
    redis_url = private_redis.url
    assert REDIS_PASSWORD in redis_url
    gateway = proxy.url.replace("http://", f"http://{PROXY_USER}-session-{{session}}:{PROXY_PASSWORD}@")
    h = hostile.url

    def urls(tag: str) -> list[str]:
        return [
            *(f"{site.url}/p/{i}" for i in range(10)),
            f"{h}/flaky/503/1/{tag}",  # dead: http_503 on its only attempt
            f"{h}/flaky/reset/{tag}",  # dead: reset mid-body
            f"{h}/hang",  # dead: timeout
            f"{h}/redirect/loop",  # done with error too_many_redirects
            f"{site.url}/missing/1",  # 404
        ]

    common = ["--no-robots", "--no-follow", "--timeout", "2", "--retries", "0", "--proxy", gateway, *fetcher]

    # 1. a long-running worker with JSON logs and /metrics; scraped and listed while it runs
    run_tag = "-".join(fetcher) or "default"  # the hostile server is shared by both fetchers' runs: own tokens
    first = urls(f"a{run_tag}")
    t.run("enqueue", crawl(["enqueue", seeds(tmp_path / "a.txt", first), "--redis", redis_url, "--crawl", "sa"]))
    metrics_port = free_port()
    log = tmp_path / "worker-json.log"
    w = spawn_crawl(
        worker_args(redis_url, "sa", tmp_path / "out-json", *common, "--metrics-port", str(metrics_port)), log=log
    )
    try:

        def settled() -> bool:
            run = crawl(["stats", "--json", "--redis", redis_url, "--crawl", "sa"])
            s = json.loads(run.stdout) if run.returncode == 0 else {}
            return bool(s) and s["done"] + s["dead"] == len(first)

        wait_until(settled, timeout_s=40, interval_s=0.2)
        metrics = get(f"http://127.0.0.1:{metrics_port}/metrics")
        t.add("/metrics", metrics)
        assert "crawl_pages_total" in metrics
        workers_json = t.run("workers --json", crawl(["workers", "--json", "--redis", redis_url, "--crawl", "sa"]))
        assert workers_json.returncode == 0 and json.loads(workers_json.stdout), workers_json.stdout
        assert any(
            p["proxy"].endswith(f":***@{proxy.url[len('http://') :]}")
            for w_ in json.loads(workers_json.stdout)
            for p in w_["proxies"]
        ), workers_json.stdout
        t.run("workers", crawl(["workers", "--redis", redis_url, "--crawl", "sa"]))
        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    t.add("worker json log", log.read_bytes())
    assert '"event":"summary"' in log.read_text()
    records = read_records(tmp_path / "out-json")
    assert any(r["proxy"] for r in records), "no record went through the gateway: the test proves nothing"

    # 2. `crawl run` with text logs
    second = urls(f"b{run_tag}")
    run2 = t.run(
        "run text",
        crawl(
            [
                "run",
                seeds(tmp_path / "b.txt", second),
                "--redis",
                redis_url,
                "--crawl",
                "sb",
                "--output",
                str(tmp_path / "out-text"),
                "--log-format",
                "text",
                "--log-interval",
                "1",
                "--parse-workers",
                "1",
                *common,
            ]
        ),
    )
    assert run2.returncode == 0, run2.stderr[-3000:]
    assert "done:" in run2.stderr

    # 3. every read-only command, both crawls
    for name in ("sa", "sb"):
        for args in (["stats"], ["stats", "--json"], ["dead"], ["dead", "--json"], ["workers", "--json"]):
            r = t.run(f"{' '.join(args)} {name}", crawl([*args, "--redis", redis_url, "--crawl", name]))
            assert r.returncode == 0, r.stderr
    dead_run = crawl(["dead", "--json", "--redis", redis_url, "--crawl", "sa"])
    dead = [json.loads(line) for line in dead_run.stdout.splitlines()]
    assert {d["error"]["kind"] for d in dead} >= {"timeout", "http_503"}, dead

    # 4. error paths that print a URL
    closed = free_port()
    unreachable = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed}/0"
    for label, args in [
        ("stats, Redis down", ["stats", "--redis", unreachable]),
        ("enqueue, Redis down", ["enqueue", str(tmp_path / "a.txt"), "--redis", unreachable]),
        (
            "worker, Redis down",  # waits --redis-wait, then exit 4 (not a configuration error)
            ["worker", "--redis", unreachable, "--output", str(tmp_path / "o-down"), "--redis-wait", "1"],
        ),
        (
            "stats, wrong user",
            ["stats", "--redis", f"redis://nobody:{REDIS_PASSWORD}@127.0.0.1:{private_redis.port}/0"],
        ),
        ("malformed Redis URL", ["stats", "--redis", f"redis://:{REDIS_PASSWORD}@127.0.0.1:99999/0"]),
        (
            "proxy without port",
            ["worker", "--redis", redis_url, "--proxy", f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1"],
        ),
        (
            "proxy bad port",
            ["worker", "--redis", redis_url, "--proxy", f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:x"],
        ),
        (
            "proxy bad scheme",
            ["worker", "--redis", redis_url, "--proxy", f"socks5://{PROXY_USER}:{PROXY_PASSWORD}@h:1"],
        ),
    ]:
        r = t.run(label, crawl(args, timeout_s=60))
        want = 4 if label == "worker, Redis down" else 2
        assert r.returncode == want and "crawl: error:" in r.stderr, (label, r.returncode, r.stderr[-2000:])
        assert "***" in r.stderr, (label, r.stderr)  # the URL is shown, redacted

    # 5. the gateway refuses the credentials: 407s, the worker stops with exit 3
    bad_gateway = proxy.url.replace("http://", f"http://{PROXY_USER}:{WRONG_PROXY_PASSWORD}@")
    t.run(
        "enqueue c",
        crawl(
            [
                "enqueue",
                seeds(tmp_path / "c.txt", [f"{site.url}/p/{i}" for i in range(10)]),
                "--redis",
                redis_url,
                "--crawl",
                "sc",
            ]
        ),
    )
    for fmt in ("json", "text"):
        r = t.run(
            f"407 {fmt}",
            crawl(
                [
                    "worker",
                    "--redis",
                    redis_url,
                    "--crawl",
                    "sc",
                    "--until-idle",
                    "--no-robots",
                    "--proxy",
                    bad_gateway,
                    "--log-format",
                    fmt,
                    "--parse-workers",
                    "1",
                    "--output",
                    str(tmp_path / f"out-407-{fmt}"),
                    *fetcher,
                ],
                timeout_s=60,
            ),
        )
        assert r.returncode == 3 and "407" in r.stdout + r.stderr, (r.returncode, r.stderr[-2000:])

    # 6. every file any command wrote, and what the crawler stored in Redis (the append-only file)
    for d in sorted(tmp_path.glob("out*")) + sorted(tmp_path.glob("o-*")):
        t.tree(d.name, d)
    assert (tmp_path / "out-json").exists() and (tmp_path / "out-text").exists()
    private_redis.stop()  # flush and close the AOF
    t.tree("redis data", private_redis.dir)

    assert len(t.parts) > 40
    assert t.leaks() == []


# --------------------------------------------------------------------------------------------------- reprs
def test_settings_repr_masks_both_passwords() -> None:
    s = Settings(
        redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        proxy=ProxySettings(
            urls=(
                f"http://{PROXY_USER}-session-{{session}}:{PROXY_PASSWORD}@gw.example:8000",
                f"http://{PROXY_USER}:{PROXY_PASSWORD}@gw2.example:8000",
            )
        ),
    )
    for text in (repr(s), str(s), f"{s}", repr(ProxyPool(s.proxy.urls))):
        assert PROXY_PASSWORD not in text and REDIS_PASSWORD not in text, text
    assert "redis://:***@127.0.0.1:6379/0" in repr(s)
    assert f"http://{PROXY_USER}:***@gw2.example:8000" in repr(s)
    assert set(s.secrets()) == {PROXY_PASSWORD, REDIS_PASSWORD}


def test_settings_repr_masks_a_user_and_password_redis_url() -> None:
    s = Settings(redis_url=f"rediss://default:{REDIS_PASSWORD}@redis.example:6380/2")
    assert REDIS_PASSWORD not in repr(s)
    assert "rediss://default:***@redis.example:6380/2" in repr(s)


@pytest.mark.parametrize("url", ["redis://:p@ss-w0rd-tail@127.0.0.1:6379/0", "http://u:p@ss-w0rd-tail@gw.example:8000"])
def test_password_with_a_raw_at_sign_is_masked_whole(url: str) -> None:
    """urlsplit (and so redis-py and aiohttp) ends user-info at the LAST '@': such a password works. Before d970d3f
    redaction stopped at the first '@' and printed the tail: 'redis://:***@ss-w0rd-tail@127.0.0.1:6379/0'."""
    shown = redact_url(url)
    s = Settings(redis_url=url) if url.startswith("redis") else Settings(proxy=ProxySettings(urls=(url,)))
    assert "ss-w0rd-tail" not in shown
    assert "ss-w0rd-tail" not in repr(s)
    assert "p@ss-w0rd-tail" in s.secrets()  # free-text scrubbing removes the whole password too


def test_the_transcript_grep_can_fail() -> None:
    t = Transcript()
    t.add("planted", f"x {PROXY_PASSWORD} y".encode())
    t.add("clean", "nothing here")
    assert t.leaks() == [f"{PROXY_PASSWORD!r} in planted"]
