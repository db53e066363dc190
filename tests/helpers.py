"""Helpers for end-to-end tests: run the real `crawl` CLI as a subprocess and read what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PROXY_USER = "crawler"
PROXY_PASSWORD = "pr0xy-s3cret-pw"


def crawl_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWL_") and "proxy" not in k.lower()}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class CrawlRun:
    returncode: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in (self.stdout + "\n" + self.stderr).splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def summary(self) -> dict[str, Any]:
        for obj in reversed(self.json_lines()):
            if obj.get("event") == "summary":
                return obj
        raise AssertionError(f"no summary line in output:\n{self.stdout}\n{self.stderr}")


def crawl(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout_s: float = 120, cwd: Path | None = None
) -> CrawlRun:
    proc = subprocess.run(
        [sys.executable, "-m", "crawler", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=crawl_env(env),
        cwd=cwd or REPO_ROOT,
        stdin=subprocess.DEVNULL,
    )
    return CrawlRun(proc.returncode, proc.stdout, proc.stderr)


def spawn_crawl(
    args: Sequence[str], env: Mapping[str, str] | None = None, log: Path | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, "-m", "crawler", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=crawl_env(env),
        cwd=cwd or REPO_ROOT,
        stdin=subprocess.DEVNULL,
    )


def read_records(directory: Path) -> list[dict[str, Any]]:
    records = []
    for f in sorted(directory.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def count_lines(directory: Path) -> int:
    if not directory.exists():
        return 0
    return sum(f.read_bytes().count(b"\n") for f in directory.glob("*.jsonl"))


def stats(redis_url: str, crawl_name: str) -> dict[str, Any]:
    run = crawl(["stats", "--json", "--redis", redis_url, "--crawl", crawl_name])
    assert run.returncode == 0, run.stderr
    data: dict[str, Any] = json.loads(run.stdout)
    return data


def enqueue(redis: Any, name: str, tmp_path: Path, urls: list[str]) -> None:
    """`crawl enqueue` of `urls` through a file, as a user would; every URL must be new."""
    f = tmp_path / "seeds.txt"
    f.write_text("\n".join(urls) + "\n")
    run = crawl(["enqueue", str(f), "--redis", redis.url, "--crawl", name])
    assert run.returncode == 0, run.stderr
    assert f"added={len(set(urls))} " in run.stdout, run.stdout


def worker_args(redis_url: str, crawl_name: str, output: Path, *extra: str) -> list[str]:
    return [
        "worker",
        "--redis",
        redis_url,
        "--crawl",
        crawl_name,
        "--output",
        str(output),
        "--log-format",
        "json",
        "--log-interval",
        "1",
        "--parse-workers",
        "1",
        *extra,
    ]
