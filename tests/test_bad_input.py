"""Bad input: URL files full of junk through `crawl enqueue`, and impossible flag values on every command.

A bad line is reported on stderr with its line number and never stops the others. A bad flag is one line on
stderr (click's own usage lines are fine, a traceback is not), exit status 2, before anything starts: no Redis
connection, no output directory.
"""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

from crawler.testing.services import RedisServer
from tests.helpers import CrawlRun, crawl_env, stats

LINE_RE = re.compile(r"^(?P<src>.+):(?P<line>\d+): invalid URL: (?P<reason>.+)$")


def run_cli(args: Sequence[str], cwd: Path, timeout_s: float = 20, stdin: bytes | None = None) -> CrawlRun:
    """Run `crawl`; a command that wrongly starts working and does not stop is SIGTERMed (by its PID) at the
    deadline, so a missing validation shows up as a failed assertion, not a hung test."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "crawler", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        env=crawl_env(),
        cwd=cwd,
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        err += f"\n<test: still running after {timeout_s}s, SIGTERMed>".encode()
    return CrawlRun(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.ping()
    yield client
    client.close()


def connections(client: redis.Redis) -> int:
    """Connections the server ever accepted (our own client reuses its one connection)."""
    return int(client.info("stats")["total_connections_received"])


def invalid_lines(stderr: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in stderr.splitlines():
        m = LINE_RE.match(line)
        if m:
            out[int(m["line"])] = m["reason"]
    return out


def queued_urls(client: redis.Redis, name: str) -> list[str]:
    urls: list[str] = []
    for key in client.scan_iter(match=f"crawl:{{{name}}}:q:*", count=1000):
        for entry in client.lrange(key, 0, -1):
            text = entry.decode() if isinstance(entry, bytes) else str(entry)
            depth, attempts, url = text.split(" ", 2)
            assert (depth, attempts) == ("0", "0")
            urls.append(url)
    return urls


# ------------------------------------------------------------------------------------------------ enqueue
def test_enqueue_reports_every_bad_line_by_number_and_enqueues_the_rest(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, admin: redis.Redis
) -> None:
    long_line = b"http://h1.example/" + b"a" * (100 * 1024)
    lines: list[tuple[bytes, str | None]] = [  # (raw line, expected reason keyword or None when valid)
        (b"\xef\xbb\xbfhttp://h1.example/a", None),  # 1: BOM
        (b"http://h1.example/b", None),  # 2
        (b"", None),  # 3: blank
        (b"# a comment", None),  # 4
        (b"http://h1.example/nul\x00byte", "NUL byte"),  # 5
        (b"http://h1.example/\xff\xfe", "not valid UTF-8"),  # 6
        (long_line, "longer than 8192"),  # 7: 100 KiB
        (b"http://h1.example/after-long", None),  # 8: the rest of line 7 was skipped, numbering goes on
        (b"javascript:alert(1)", "scheme javascript:"),  # 9
        (b"data:text/html,<b>hi</b>", "scheme data:"),  # 10
        (b"file:///etc/passwd", "scheme file:"),  # 11
        (b"mailto:someone@example.com", "scheme mailto:"),  # 12
        (b"http://[::1]:8080/v6", None),  # 13
        (b"http://[2001:DB8::1]/v6", None),  # 14
        (b"http://[::zz]/", "::zz"),  # 15: not an IPv6 address
        ("http://bücher.example/idn".encode(), None),  # 16: IDN -> punycode
        (b"http://user:hunter2-pw@h1.example/creds", "credentials"),  # 17
        (b"http://user@h1.example/", "credentials"),  # 18
        (b"http://h1.example:99999/", "port out of range"),  # 19
        (b"http://h1.example:0/", "port out of range"),  # 20
        (b"http://h1.example:65535/ok", None),  # 21: the highest port is fine
        (b"HTTP://H1.EXAMPLE:80/b#frag", None),  # 22: a duplicate of line 2
        (b"   http://h1.example/spaces\t ", None),  # 23: surrounding whitespace is trimmed
        (b"ftp://h1.example/", "scheme ftp:"),  # 24
        (b"http://", "no host"),  # 25
        (b"not a url", "scheme (none)"),  # 26
        (b"http://h1.example/tab\there", None),  # 27: WHATWG removes tabs and newlines inside a URL
        (b"http://h2.example/last-no-newline", None),  # 28: no line ending at all
    ]
    f = tmp_path / "urls.txt"
    f.write_bytes(b"\r\n".join(raw for raw, _ in lines))  # Windows line endings throughout
    run = run_cli(["enqueue", str(f), "--redis", redis_server.url, "--crawl", crawl_name], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    bad = {n: kw for n, (_, kw) in enumerate(lines, start=1) if kw is not None}
    reported = invalid_lines(run.stderr)
    assert set(reported) == set(bad), run.stderr
    for n, kw in bad.items():
        assert kw in reported[n], (n, reported[n])
    # every stderr line is one of those reports, naming the file
    assert all(LINE_RE.match(ln) and ln.startswith(f"{f}:") for ln in run.stderr.splitlines()), run.stderr
    assert "hunter2-pw" not in run.stderr + run.stdout  # a refused URL's password is not echoed
    expected = {
        "http://h1.example/a",
        "http://h1.example/b",
        "http://h1.example/after-long",
        "http://[::1]:8080/v6",
        "http://[2001:db8::1]/v6",
        "http://xn--bcher-kva.example/idn",
        "http://h1.example:65535/ok",
        "http://h1.example/spaces",
        "http://h2.example/last-no-newline",
        "http://h1.example/tabhere",
    }
    assert run.stdout.strip() == f"added={len(expected)} duplicates=1 invalid={len(bad)}"
    queued = queued_urls(admin, crawl_name)
    assert sorted(queued) == sorted(expected)
    s = stats(redis_server.url, crawl_name)
    assert s["enqueued"] == s["queued"] == len(expected) and s["consistent"], s


def test_enqueue_from_stdin_numbers_lines_too(redis_server: RedisServer, crawl_name: str, tmp_path: Path) -> None:
    data = b"http://s.example/1\nnope\n\xc3\x28\nhttp://s.example/2\n"
    run = run_cli(["enqueue", "-", "--redis", redis_server.url, "--crawl", crawl_name], tmp_path, stdin=data)
    assert run.returncode == 0, run.stderr
    assert sorted(invalid_lines(run.stderr)) == [2, 3] and "<stdin>:2:" in run.stderr, run.stderr
    assert run.stdout.strip() == "added=2 duplicates=0 invalid=2"
    assert stats(redis_server.url, crawl_name)["enqueued"] == 2


def test_enqueue_shows_the_first_twenty_bad_lines_then_counts(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path
) -> None:
    lines = [f"http://m.example/{i}" if i % 4 == 0 else f"bad line {i}" for i in range(200)]
    f = tmp_path / "many.txt"
    f.write_text("\n".join(lines) + "\n")
    run = run_cli(["enqueue", str(f), "--redis", redis_server.url, "--crawl", crawl_name], tmp_path)
    assert run.returncode == 0, run.stderr
    shown = invalid_lines(run.stderr)
    assert sorted(shown) == [i + 1 for i in range(200) if i % 4][:20]
    assert "... and 130 more invalid lines" in run.stderr
    assert run.stdout.strip() == "added=50 duplicates=0 invalid=150"
    assert stats(redis_server.url, crawl_name)["enqueued"] == 50


def test_enqueue_of_binary_garbage_reports_and_survives(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path
) -> None:
    rng = random.Random(1234)
    junk = bytes(rng.randrange(256) for _ in range(64 * 1024))
    f = tmp_path / "junk.bin"
    f.write_bytes(junk + b"\nhttp://g.example/after-junk\n")
    run = run_cli(["enqueue", str(f), "--redis", redis_server.url, "--crawl", crawl_name], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    m = re.fullmatch(r"added=(\d+) duplicates=(\d+) invalid=(\d+)", run.stdout.strip())
    assert m, run.stdout
    added, invalid = int(m[1]), int(m[3])
    assert added == 1 and invalid > 0
    assert stats(redis_server.url, crawl_name)["enqueued"] == 1


# -------------------------------------------------------------------------------------------------- flags
def assert_usage_error(run: CrawlRun, keyword: str) -> None:
    """Exit 2, one error line on stderr (click may add its Usage/Try lines), nothing on stdout, no traceback."""
    assert run.returncode == 2, (run.returncode, run.stdout[-1500:], run.stderr[-1500:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stdout == "", run.stdout[-1500:]
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("crawl: error:", "Error:"))]
    assert len(errors) == 1, run.stderr
    assert all(ln in errors or ln.startswith(("Usage:", "Try ")) for ln in lines), run.stderr
    assert keyword in errors[0], (keyword, errors[0])


def worker_cmd(redis_url: str, out: Path, *extra: str) -> list[str]:
    return [
        "worker",
        "--redis",
        redis_url,
        "--crawl",
        "badflags",
        "--output",
        str(out),
        "--until-idle",
        "--parse-workers",
        "1",
        *extra,
    ]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


WORKER_CASES: list[tuple[str, list[str], str]] = [
    ("concurrency-negative", ["--concurrency", "-1"], "--concurrency"),
    ("concurrency-zero", ["--concurrency", "0"], "--concurrency"),
    ("concurrency-huge", ["--concurrency", "100001"], "--concurrency"),
    ("concurrency-not-int", ["--concurrency", "many"], "--concurrency"),
    ("proxy-not-a-url", ["--proxy", "not-a-url"], "proxy URL"),
    ("proxy-no-port", ["--proxy", "http://u:p@host"], "explicit port"),
    ("proxy-bad-port", ["--proxy", "http://u:p@host:http"], "bad port"),
    ("proxy-socks", ["--proxy", "socks5://u:p@host:1080"], "http://"),
    ("extract-missing", ["--extract", "{tmp}/missing.json"], "cannot read"),
    ("extract-invalid-json", ["--extract", "{invalid_json}"], "not valid JSON"),
    ("extract-bad-css", ["--extract", "{bad_css}"], "bad CSS selector"),
    ("extract-not-object", ["--extract", "{json_list}"], "expected a JSON object"),
    ("log-format", ["--log-format", "xml"], "--log-format"),
    ("max-body-bytes-zero", ["--max-body-bytes", "0"], "--max-body-bytes"),
    ("crawl-name", ["--crawl", "bad name!"], "crawl name"),
    ("timeout-zero", ["--timeout", "0"], "--timeout"),
    ("retries-negative", ["--retries", "-1"], "--retries"),
    ("metrics-port-range", ["--metrics-port", "70000"], "--metrics-port"),
    ("allow-domain-url", ["--allow-domain", "http://example.com/"], "--allow-domain"),
    ("rotate-mb-zero", ["--rotate-mb", "0"], "--rotate-mb"),
    ("lease-ttl-short", ["--lease-ttl-s", "0.5"], "--lease-ttl-s"),
    ("proxy-file-missing", ["--proxy-file", "{tmp}/no-proxies.txt"], "cannot read proxy file"),
    ("output-is-a-file", ["--output", "{a_file}"], "--output"),
]
REDIS_CASES: list[tuple[str, str, str]] = [
    ("redis-ftp", "ftp://x", "must start with redis://"),
    ("redis-port", "redis://h:99999", "malformed Redis URL"),
    ("redis-no-host", "redis://:pw@", "has no host"),
]


def materialise(args: list[str], tmp: Path) -> list[str]:
    files = {
        "tmp": str(tmp),
        "invalid_json": write(tmp / "invalid.json", '{"title": "title",'),
        "bad_css": write(tmp / "bad_css.json", json.dumps({"title": "title", "price": "div >>> !p"})),
        "json_list": write(tmp / "list.json", '["title"]'),
        "a_file": write(tmp / "a-file", "not a directory"),
    }
    return [a.format(**files) for a in args]


@pytest.mark.parametrize(("case", "args", "keyword"), WORKER_CASES, ids=[c[0] for c in WORKER_CASES])
def test_bad_worker_flag_is_one_line_exit_2_before_anything_starts(
    case: str, args: list[str], keyword: str, redis_server: RedisServer, tmp_path: Path, admin: redis.Redis
) -> None:
    out = tmp_path / "out"
    before = connections(admin)
    run = run_cli(worker_cmd(redis_server.url, out, *materialise(args, tmp_path)), tmp_path)
    assert_usage_error(run, keyword)
    assert connections(admin) == before, "the worker connected to Redis before refusing its flags"
    assert not out.exists(), "the worker created its output directory before refusing its flags"
    assert not (tmp_path / ".crawl").exists()


REDIS_MATRIX = [
    *((command, *REDIS_CASES[0]) for command in ("worker", "run", "enqueue", "stats", "dead", "workers", "purge")),
    *((command, *case) for command in ("worker", "enqueue") for case in REDIS_CASES[1:]),
]


@pytest.mark.parametrize(
    ("command", "case", "url", "keyword"), REDIS_MATRIX, ids=[f"{c[0]}-{c[1]}" for c in REDIS_MATRIX]
)
def test_bad_redis_url_is_one_line_exit_2_on_every_command(
    command: str, case: str, url: str, keyword: str, tmp_path: Path
) -> None:
    seeds = write(tmp_path / "seeds.txt", "http://example.com/\n")
    args = {
        "worker": ["worker", "--output", str(tmp_path / "out")],
        "run": ["run", seeds, "--output", str(tmp_path / "out")],
        "enqueue": ["enqueue", seeds],
        "stats": ["stats", "--json"],
        "dead": ["dead"],
        "workers": ["workers"],
        "purge": ["purge", "--yes"],
    }[command]
    run = run_cli([*args, "--redis", url], tmp_path)
    assert_usage_error(run, keyword)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".crawl").exists()


@pytest.mark.parametrize("command", ["enqueue", "stats", "dead", "workers", "purge", "run"])
def test_bad_crawl_name_is_refused_on_every_command(
    command: str, redis_server: RedisServer, tmp_path: Path, admin: redis.Redis
) -> None:
    seeds = write(tmp_path / "seeds.txt", "http://example.com/\n")
    args = {
        "enqueue": ["enqueue", seeds],
        "stats": ["stats"],
        "dead": ["dead", "--json"],
        "workers": ["workers"],
        "purge": ["purge", "--yes"],
        "run": ["run", seeds, "--output", str(tmp_path / "out")],
    }[command]
    before = connections(admin)
    run = run_cli([*args, "--redis", redis_server.url, "--crawl", "bad name!"], tmp_path)
    assert_usage_error(run, "crawl name")
    assert connections(admin) == before


def test_bad_value_from_the_environment_is_refused_the_same_way(
    redis_server: RedisServer, tmp_path: Path, admin: redis.Redis
) -> None:
    before = connections(admin)
    proc = subprocess.run(
        [sys.executable, "-m", "crawler", *worker_cmd(redis_server.url, tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=crawl_env({"CRAWL_CONCURRENCY": "0", "CRAWL_LOG_FORMAT": "json"}),
    )
    # JSON logs asked for: the error is one JSON line (issue 12), with the same message
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    err = json.loads(line)
    assert err["level"] == "error" and "--concurrency" in err["message"] and "CRAWL_CONCURRENCY" in err["message"]
    assert connections(admin) == before and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ regressions (found by these tests, fixed)
# NaN and inf pass `value < 0` and `value == 0`. Before d970d3f: --lease-ttl-s nan/inf killed the lease task and
# the worker hung for ever; --timeout nan/inf dead-lettered every URL as "internal"; --per-host-delay nan was a
# traceback. The run is SIGTERMed after 6 s, so a hang fails the test instead of blocking it.
NON_FINITE = [
    ("lease-ttl-nan", ["--lease-ttl-s", "nan"], "--lease-ttl-s"),
    ("lease-ttl-inf", ["--lease-ttl-s", "inf"], "--lease-ttl-s"),
    ("timeout-nan", ["--timeout", "nan"], "--timeout"),
    ("timeout-inf", ["--timeout", "inf"], "--timeout"),
    ("per-host-delay-nan", ["--per-host-delay", "nan"], "--per-host-delay"),
]


@pytest.mark.parametrize(("case", "args", "keyword"), NON_FINITE, ids=[c[0] for c in NON_FINITE])
def test_non_finite_float_flags_are_refused(
    case: str, args: list[str], keyword: str, redis_server: RedisServer, tmp_path: Path, admin: redis.Redis
) -> None:
    out = tmp_path / "out"
    before = connections(admin)
    run = run_cli(worker_cmd(redis_server.url, out, *args), tmp_path, timeout_s=6)
    assert_usage_error(run, keyword)
    assert connections(admin) == before and not out.exists()


# Flags whose names are not their field's: the message must name the flag as typed (before d970d3f it said
# "--grace", "--lease-ttl", "--max-links-per-page", flags that do not exist).
MISNAMED = [
    ("grace-s", ["--grace-s", "-1"], "--grace-s "),
    ("lease-ttl-s", ["--lease-ttl-s", "0"], "--lease-ttl-s "),
    ("max-links", ["--max-links", "-1"], "--max-links "),
]


@pytest.mark.parametrize(("case", "args", "flag"), MISNAMED, ids=[c[0] for c in MISNAMED])
def test_error_names_the_flag_the_user_typed(
    case: str, args: list[str], flag: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    run = run_cli(worker_cmd(redis_server.url, tmp_path / "out", *args), tmp_path)
    assert_usage_error(run, flag)


def test_metrics_port_in_use_is_one_line_exit_2(redis_server: RedisServer, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = run_cli(worker_cmd(redis_server.url, tmp_path / "out", "--metrics-port", str(port)), tmp_path)
    assert_usage_error(run, str(port))


def test_output_directory_under_a_file_is_one_line_exit_2(redis_server: RedisServer, tmp_path: Path) -> None:
    """Was a NotADirectoryError traceback from JsonlSink, exit 1, before d970d3f."""
    a_file = write(tmp_path / "a-file", "x")
    run = run_cli(worker_cmd(redis_server.url, tmp_path / "unused", "--output", f"{a_file}/out"), tmp_path)
    assert_usage_error(run, "a-file")


@pytest.mark.parametrize("worker_id", ["team/worker-1", "../escaped"])
def test_worker_id_that_is_not_a_file_name_is_refused(
    worker_id: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    out = tmp_path / "nested" / "out"
    run = run_cli(worker_cmd(redis_server.url, out, "--worker-id", worker_id), tmp_path)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jsonl"))
    assert written == [], f"results written at {written}"
    assert_usage_error(run, "--worker-id")
