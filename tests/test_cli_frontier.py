"""The real `crawl` CLI (enqueue, stats, dead, purge) as subprocesses, against the session's Redis and the embedded one.

User errors (a missing file, an unreachable Redis) end with one line on stderr and exit status 2, never a
traceback, and a password in the Redis URL is never printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from crawler.embedded import stop_embedded_server
from crawler.entries import Extras
from crawler.frontier import DeadLetter, Frontier, Lease, now_ms
from crawler.urls import normalize
from tests.conftest import crawl_cmd

pytestmark = pytest.mark.timeout(60)


def crawl(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run `python -m crawler ARGS`; subprocess.run kills it (by its PID) if it outlives the timeout."""
    return subprocess.run(
        crawl_cmd(*args), cwd=cwd, env=env or dict(os.environ), capture_output=True, text=True, timeout=timeout_s
    )


def stats(redis_url: str, name: str, cwd: Path) -> dict[str, Any]:
    r = crawl("stats", "--json", "--redis", redis_url, "--crawl", name, cwd=cwd)
    assert r.returncode == 0, r.stderr
    snapshot: dict[str, Any] = json.loads(r.stdout)
    return snapshot


async def queued_urls(redis_url: str, name: str) -> list[str]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        f = Frontier(client, name)
        out: list[str] = []
        async for key in client.scan_iter(match=f.keys.prefix + "q:*", count=1000):
            for e in await client.lrange(key, 0, -1):
                out.append((e.decode() if isinstance(e, bytes) else e).split(" ", 2)[2])
        return out
    finally:
        await client.aclose()


# (raw line without its line ending, line ending, what it is)
MIXED: list[tuple[bytes, bytes, str]] = [
    (b"\xef\xbb\xbfhttp://example.com/a", b"\n", "valid"),  # 1: BOM
    (b"http://example.com/b", b"\r\n", "valid"),  # 2: CRLF
    (b"HTTP://EXAMPLE.COM:80/a#top", b"\n", "dup"),  # 3: = line 1
    (b"http://example.com/b", b"\r\n", "dup"),  # 4
    (b"", b"\n", "skip"),  # 5: blank
    (b"# a comment", b"\n", "skip"),  # 6
    (b"http://exa\x00mple.com/nul", b"\n", "invalid"),  # 7: NUL byte
    (b"http://example.com/\xff\xfe", b"\n", "invalid"),  # 8: not UTF-8
    (b"http://example.com/" + b"x" * (100 * 1024), b"\n", "invalid"),  # 9: 100 KiB line
    (b"javascript:alert(1)", b"\n", "invalid"),  # 10
    (b"data:text/html,<h1>hi</h1>", b"\n", "invalid"),  # 11
    (b"file:///etc/passwd", b"\r\n", "invalid"),  # 12
    (b"mailto:someone@example.com", b"\n", "invalid"),  # 13
    (b"http://example.com:99999/", b"\n", "invalid"),  # 14: port out of range
    (b"http://user:hunter2@example.com/", b"\n", "invalid"),  # 15: credentials
    (b"http://[2001:DB8::1]:8080/v6", b"\n", "valid"),  # 16: IPv6 literal
    ("http://bücher.example/straße".encode(), b"\n", "valid"),  # 17: IDN host
    (b"http://xn--bcher-kva.example/stra%C3%9Fe", b"\n", "dup"),  # 18: = line 17
    (b"  http://example.org/ws\t ", b"\r\n", "valid"),  # 19: surrounding whitespace
    (b"http://example.com/a?utm_source=mail", b"\n", "dup"),  # 20: = line 1
    (b"http://example.com/c?b=2&a=1", b"\r\n", "valid"),  # 21
    (b"http://example.net/last", b"", "valid"),  # 22: no final newline
]


def write_mixed(path: Path) -> None:
    path.write_bytes(b"".join(raw + end for raw, end, _ in MIXED))


def expected_valid_urls() -> set[str]:
    out = set()
    for raw, _, kind in MIXED:
        if kind == "valid":
            out.add(normalize(raw.decode("utf-8").lstrip("\ufeff")).url)
    return out


def test_enqueue_mixed_file(redis_server: Any, crawl_name: str, tmp_path: Path) -> None:
    src = tmp_path / "urls.txt"
    write_mixed(src)
    n_valid = sum(1 for *_, k in MIXED if k == "valid")
    n_dup = sum(1 for *_, k in MIXED if k == "dup")
    bad_lines = [i for i, (*_, k) in enumerate(MIXED, start=1) if k == "invalid"]

    r = crawl("enqueue", str(src), "--redis", redis_server.url, "--crawl", crawl_name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"added={n_valid} duplicates={n_dup} invalid={len(bad_lines)}\n"
    assert "Traceback" not in r.stderr
    err_lines = r.stderr.splitlines()
    assert len(err_lines) == len(bad_lines), r.stderr
    for line, lineno in zip(err_lines, bad_lines, strict=True):
        assert line.startswith(f"{src}:{lineno}: invalid URL: "), line
    reasons = dict(zip(bad_lines, err_lines, strict=True))
    assert "NUL" in reasons[7]
    assert "UTF-8" in reasons[8]
    assert "longer than" in reasons[9]
    assert all("scheme" in reasons[i] for i in (10, 11, 12, 13))
    assert "port" in reasons[14]
    assert "credentials" in reasons[15]
    assert "hunter2" not in r.stderr  # a refused URL's password is not echoed either
    assert len(r.stderr) < 4000  # the 100 KiB line is not echoed

    s = stats(redis_server.url, crawl_name, tmp_path)
    assert (s["enqueued"], s["queued"], s["done"], s["consistent"]) == (n_valid, n_valid, 0, True)
    assert sorted(asyncio.run(queued_urls(redis_server.url, crawl_name))) == sorted(expected_valid_urls())

    # dedup is crawl-wide: the same file again adds nothing
    again = crawl("enqueue", str(src), "--redis", redis_server.url, "--crawl", crawl_name, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"added=0 duplicates={n_valid + n_dup} invalid={len(bad_lines)}\n"

    # stdin works the same way
    piped = subprocess.run(
        crawl_cmd("enqueue", "-", "--redis", redis_server.url, "--crawl", crawl_name),
        cwd=tmp_path,
        input=b"http://example.com/a\nhttp://stdin.example/new\nftp://x/\n",
        capture_output=True,
        timeout=30,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == b"added=1 duplicates=1 invalid=1\n"
    assert piped.stderr.startswith(b"<stdin>:3: invalid URL")
    assert stats(redis_server.url, crawl_name, tmp_path)["queued"] == n_valid + 1
    asyncio.run(purge(redis_server.url, crawl_name))


# (line, what it is): JSON lines and plain lines mixed in one file
JSON_MIXED: list[tuple[str, str]] = [
    ("http://shop.example/plain", "valid"),  # 1
    (
        '{"url": "http://shop.example/c/books?s=a&p=2", "data": {"category": "Books", "n": [1, 2]}, "label": "list"}',
        "valid",
    ),  # 2
    ('  {"url": "http://shop.example/sitemap.xml", "kind": "sitemap", "priority": "high"}', "valid"),  # 3
    ('{"url": "http://shop.example/urgent", "priority": 5, "data": {"why": "a b\\nc"}}', "valid"),  # 4
    ('{"url": "http://shop.example/later", "priority": "normal"}', "valid"),  # 5
    ('{"url": "http://shop.example/c/books?p=2&s=a", "data": {"other": 1}}', "dup"),  # 6: same key as line 2
    ('{"url": "http://shop.example/x", "data": ', "bad JSON"),  # 7
    ('{"url": "http://shop.example/x", "data": [1, 2]}', "JSON object"),  # 8
    ('{"url": "http://shop.example/x", "data": {"big": "' + "y" * 9000 + '"}}', "8192-byte limit"),  # 9
    ('{"url": "ftp://shop.example/x", "data": {}}', "scheme ftp:"),  # 10
    ('{"url": "http://shop.example/x", "dat": {}}', "unknown field 'dat'"),  # 11
    ('{"url": "http://shop.example/x", "priority": "urgent"}', "priority"),  # 12
    ('["http://shop.example/x"]', "invalid URL: scheme (none)"),  # 13: only a line starting with "{" is JSON
    ('{"data": {}}', '"url" must be a string'),  # 14
    ("http://shop.example/last", "valid"),  # 15
]


def test_enqueue_json_lines(redis_server: Any, crawl_name: str, tmp_path: Path) -> None:
    src = tmp_path / "seeds.jsonl"
    src.write_text("\n".join(line for line, _ in JSON_MIXED) + "\n", encoding="utf-8")
    r = crawl("enqueue", str(src), "--redis", redis_server.url, "--crawl", crawl_name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    bad = {n: what for n, (_, what) in enumerate(JSON_MIXED, start=1) if what not in ("valid", "dup")}
    assert r.stdout == f"added=6 duplicates=1 invalid={len(bad)}\n"
    reported = dict(line.split(": ", 1) for line in r.stderr.splitlines())
    assert set(reported) == {f"{src}:{n}" for n in bad}, r.stderr
    for n, what in bad.items():
        assert what in reported[f"{src}:{n}"], (n, reported[f"{src}:{n}"])
    assert len(r.stderr) < 4000  # the 9 KiB line is not echoed

    async def leased() -> list[Lease]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            leases, _ = await Frontier(client, crawl_name).lease(20, "t", 60)
            return leases
        finally:
            await client.aclose()

    redis_url = redis_server.url
    got = [(ls.url, ls.extras) for ls in asyncio.run(leased())]
    assert got == [  # one host's queue: "high" and priority > 0 at the head (last added first), then file order
        ("http://shop.example/urgent", Extras(data={"why": "a b\nc"})),  # a newline in the data survives
        ("http://shop.example/sitemap.xml", Extras(kind="sitemap")),
        ("http://shop.example/plain", None),
        ("http://shop.example/c/books?s=a&p=2", Extras(data={"category": "Books", "n": [1, 2]}, label="list")),
        ("http://shop.example/later", None),  # "normal": the file's default
        ("http://shop.example/last", None),
    ]
    asyncio.run(purge(redis_server.url, crawl_name))


async def purge(redis_url: str, name: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await Frontier(client, name).purge()
    finally:
        await client.aclose()


def assert_one_line_error(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("crawl: error: "), lines


def test_missing_file(redis_server: Any, crawl_name: str, tmp_path: Path) -> None:
    r = crawl("enqueue", str(tmp_path / "nope.txt"), "--redis", redis_server.url, "--crawl", crawl_name, cwd=tmp_path)
    assert_one_line_error(r)
    assert "nope.txt" in r.stderr
    assert r.stdout == ""


UNREACHABLE = "redis://127.0.0.1:1"
WITH_PASSWORD = "redis://user:s3cretpw@127.0.0.1:1"


@pytest.mark.parametrize(
    "args",
    [["enqueue", "URLS"], ["stats", "--json"], ["dead", "--json"], ["dead", "--requeue"], ["purge", "--yes"]],
    ids=lambda a: " ".join(a),
)
def test_unreachable_redis_password_never_shown(args: list[str], tmp_path: Path) -> None:
    src = tmp_path / "urls.txt"
    src.write_text("http://example.com/\n")
    argv = [str(src) if a == "URLS" else a for a in args]
    r = crawl(*argv, "--redis", WITH_PASSWORD, "--crawl", "x", cwd=tmp_path)
    assert_one_line_error(r)
    assert "127.0.0.1:1" in r.stderr  # says where it tried
    assert "s3cretpw" not in r.stderr + r.stdout


def test_unreachable_redis(tmp_path: Path) -> None:
    r = crawl("stats", "--redis", UNREACHABLE, "--crawl", "x", cwd=tmp_path)
    assert_one_line_error(r)
    assert UNREACHABLE in r.stderr
    # the URL from the environment, with a password
    env = dict(os.environ, CRAWL_REDIS_URL=WITH_PASSWORD)
    from_env = crawl("stats", "--crawl", "x", cwd=tmp_path, env=env)
    assert_one_line_error(from_env)
    assert "s3cretpw" not in from_env.stderr + from_env.stdout


def test_dead_list_and_requeue(redis_server: Any, crawl_name: str, tmp_path: Path) -> None:
    err = {"kind": "http", "status": 404, "message": "not found"}

    async def dead_letter_one() -> str:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            f = Frontier(client, crawl_name)
            await f.add([normalize("http://example.com/gone"), normalize("http://example.com/fine")], depth=2)
            leases, _ = await f.lease(2, "t", 30)
            gone = next(ls for ls in leases if ls.url.endswith("/gone"))
            assert await f.dead([DeadLetter(gone, 4, err)]) == 1
            assert await f.ack([ls for ls in leases if ls is not gone]) == (1, 0)
            return gone.url
        finally:
            await client.aclose()

    before = now_ms()
    url = asyncio.run(dead_letter_one())
    common = ["--redis", redis_server.url, "--crawl", crawl_name]

    r = crawl("dead", "--json", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert (row["url"], row["depth"], row["attempts"], row["error"]) == (url, 2, 4, err)
    assert before / 1000 - 1 <= row["at"] <= now_ms() / 1000 + 1

    text = crawl("dead", *common, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert text.stdout == f"{url}\tattempts=4\thttp: not found\n"

    s = stats(redis_server.url, crawl_name, tmp_path)
    assert (s["dead"], s["done"], s["queued"], s["consistent"]) == (1, 1, 0, True)

    rq = crawl("dead", "--requeue", *common, cwd=tmp_path)
    assert rq.returncode == 0, rq.stderr
    assert rq.stdout == "requeued=1\n"
    s = stats(redis_server.url, crawl_name, tmp_path)
    assert (s["dead"], s["done"], s["queued"], s["enqueued"], s["consistent"]) == (0, 1, 1, 2, True)
    assert asyncio.run(queued_urls(redis_server.url, crawl_name)) == [url]
    empty = crawl("dead", "--json", *common, cwd=tmp_path)
    assert (empty.returncode, empty.stdout) == (0, "")
    asyncio.run(purge(redis_server.url, crawl_name))


def test_purge(redis_server: Any, crawl_name: str, tmp_path: Path) -> None:
    other = crawl_name + "-other"

    async def fill() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            for name in (crawl_name, other):
                f = Frontier(client, name)
                await f.add([normalize(f"http://h{i}.example/") for i in range(5)])
                leases, _ = await f.lease(2, "t", 30)
                await f.ack(leases[:1])
        finally:
            await client.aclose()

    async def keys_of(name: str) -> list[bytes]:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            return [k async for k in client.scan_iter(match=Frontier(client, name).keys.pattern, count=1000)]
        finally:
            await client.aclose()

    asyncio.run(fill())
    n_keys = len(asyncio.run(keys_of(crawl_name)))
    assert n_keys >= 5

    refused = crawl("purge", "--redis", redis_server.url, "--crawl", crawl_name, cwd=tmp_path)
    assert_one_line_error(refused)
    assert "--yes" in refused.stderr
    assert len(asyncio.run(keys_of(crawl_name))) == n_keys  # nothing removed

    r = crawl("purge", "--yes", "--redis", redis_server.url, "--crawl", crawl_name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"removed {n_keys} keys of crawl {crawl_name!r}\n"
    assert asyncio.run(keys_of(crawl_name)) == []
    s = stats(redis_server.url, crawl_name, tmp_path)
    assert (s["enqueued"], s["queued"], s["done"]) == (0, 0, 0)
    # another crawl on the same Redis is untouched
    assert len(asyncio.run(keys_of(other))) == n_keys
    assert stats(redis_server.url, other, tmp_path)["enqueued"] == 5
    asyncio.run(purge(redis_server.url, other))


def test_embedded_redis_shared_between_processes(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="ch", dir="/tmp"))  # short: the unix socket path must fit in 108 bytes
    env = dict(os.environ, CRAWL_HOME=str(home))
    src = tmp_path / "urls.txt"
    src.write_text("http://a.example/1\nhttp://a.example/2\nhttp://b.example/\nhttp://a.example/1\n")
    try:
        r = crawl("enqueue", str(src), "--crawl", "emb", cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "added=3 duplicates=1 invalid=0\n"
        s = crawl("stats", "--json", "--crawl", "emb", cwd=tmp_path, env=env)
        assert s.returncode == 0, s.stderr
        snap = json.loads(s.stdout)
        assert (snap["enqueued"], snap["queued"], snap["consistent"]) == (3, 3, True)
        again = crawl("enqueue", str(src), "--crawl", "emb", cwd=tmp_path, env=env)
        assert again.stdout == "added=0 duplicates=4 invalid=0\n"  # the seen set survived the restart
        assert not (tmp_path / ".crawl").exists()  # CRAWL_HOME was used, not the default
    finally:
        stop_embedded_server(home)
        shutil.rmtree(home, ignore_errors=True)
