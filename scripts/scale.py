"""Scale-out, proved with real processes: the docker-compose.yml topology without a container engine.

One real `redis-server` (the compose `redis` service's flags: AOF, appendfsync everysec, noeviction) on
127.0.0.1, one generated site (default 20,000 pages, multi-process site server) on 127.0.0.1, and N worker
processes started with exactly the command and environment docker-compose.yml gives the `worker` service:

* command: the service's `command`, run as `python -m crawler ...` (the image's `crawl` console script), with
  the `--output` value replaced by a temporary directory and `--until-idle` appended so the workers stop when the
  frontier is empty (a compose worker runs until stopped instead);
* environment: `.env.example` as the env_file (as after `cp .env.example .env`), then the service's
  `environment` block with CRAWL_REDIS_URL pointed at the local Redis, then three benchmark settings that are
  printed with the results: CRAWL_NAME (a fresh crawl per run), CRAWL_PER_HOST_CONCURRENCY=0 (the whole site is
  one host; the default 8 leases per host crawl-wide would cap the fleet at 8 fetches in flight and measure
  politeness, not scaling) and CRAWL_ALLOW_PRIVATE_NETWORKS=true (the site is on loopback).

For N in 1, 2, 4 it measures the wall time from starting the workers until all have exited, pages/s, and checks
that the set of record URLs equals the site's reachable set (`expected_pages`): nothing lost, duplicates
counted. Then one run with 3 workers in which one worker and its parse processes are SIGKILLed (like
`docker kill`) once ~30% of the pages are written; the others must finish everything, including the killed
worker's leases once they expire (`--lease-ttl-s 5` for that run). CPU seconds are measured per component
(worker event loops, parse pools, site server, Redis) to show where the ceiling is.

Every process this script starts is stopped by PID in a finally block; every run has a deadline.

    python scripts/scale.py                       # the README table (about 4 minutes on 2 cores)
    python scripts/scale.py --pages 2000 --workers 1,2 --kill-workers 0   # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from crawler.testing.envfile import env_assignments
from crawler.testing.services import SITE_SERVER, RedisServer, RunningServer, start_server, stop_process
from crawler.testing.site_server import expected_pages

ROOT = Path(__file__).resolve().parents[1]
SEED = 1
POLL_S = 0.25
BENCH_ENV = {"CRAWL_PER_HOST_CONCURRENCY": "0", "CRAWL_ALLOW_PRIVATE_NETWORKS": "true"}


def say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------ the compose definition
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


@dataclass
class ComposeWorker:
    command: list[str]
    environment: dict[str, str]
    redis_args: list[str]
    env_file: dict[str, str]


def read_compose() -> ComposeWorker:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    env = worker.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    environment = {k: _INTERPOLATION.sub(lambda m: m.group(2) or "", str(v)) for k, v in env.items()}
    redis_cmd = compose["services"]["redis"]["command"]
    redis_cmd = redis_cmd.split() if isinstance(redis_cmd, str) else [str(a) for a in redis_cmd]
    assert redis_cmd[0] == "redis-server", redis_cmd
    example = ROOT / ".env.example"
    return ComposeWorker(
        [str(a) for a in worker["command"]],
        environment,
        redis_cmd[1:],
        env_assignments(example)[0] if example.exists() else {},
    )


def worker_command(spec: ComposeWorker, output: Path, extra: list[str]) -> list[str]:
    cmd = list(spec.command)
    if "--output" in cmd:
        cmd[cmd.index("--output") + 1] = str(output)
    else:
        cmd = [f"--output={output}" if a.startswith("--output=") else a for a in cmd]
    return [sys.executable, "-m", "crawler", *cmd, *extra]


def worker_env(spec: ComposeWorker, redis_url: str, crawl_name: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CRAWL_") and k != "REDIS_URL" and "proxy" not in k.lower()
    }
    env = {**base, "PYTHONUNBUFFERED": "1", **spec.env_file, **spec.environment}
    env["CRAWL_REDIS_URL"] = redis_url
    env.update(BENCH_ENV)
    env["CRAWL_NAME"] = crawl_name
    return env


# ------------------------------------------------------------------------------------------------ processes
def kill_pids(procs: dict[int, psutil.Process]) -> None:
    """SIGKILL processes we started (directly or as a worker's children), by PID, only if still the same process."""
    for pid, p in procs.items():
        with contextlib.suppress(psutil.Error):
            if p.is_running():  # psutil compares the creation time: a recycled pid is not killed
                os.kill(pid, signal.SIGKILL)


def crawl_cli(args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 60) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "crawler", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
    if run.returncode != 0:
        raise RuntimeError(f"crawl {' '.join(args)} exited {run.returncode}: {run.stderr.strip()}")
    return run.stdout


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def tree_cpu_s(p: psutil.Process) -> float:
    total = 0.0
    with contextlib.suppress(psutil.Error):
        total += cpu_s(p)
        for c in p.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += cpu_s(c)
    return total


def busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot (all cores)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


# ------------------------------------------------------------------------------------------------ one run
@dataclass
class RunResult:
    label: str
    workers: int
    pages: int = 0
    wall_s: float = 0.0
    lost: int = 0
    unexpected: int = 0
    duplicates: int = 0
    torn_lines: int = 0
    dead: int = 0
    exit_codes: list[int | None] = field(default_factory=list)
    timed_out: bool = False
    killed_at_pages: int | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.pages / self.wall_s if self.wall_s else 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.timed_out
            and self.lost == 0
            and self.unexpected == 0
            and self.dead == 0
            and all(c == 0 for i, c in enumerate(self.exit_codes) if not (self.killed_at_pages and i == 0))
        )


def count_lines(directory: Path) -> int:
    total = 0
    for f in directory.glob("*.jsonl"):
        with contextlib.suppress(OSError):
            total += f.read_bytes().count(b"\n")
    return total


def read_urls(directory: Path) -> tuple[Counter[str], int]:
    urls: Counter[str] = Counter()
    torn = 0
    for f in sorted(directory.glob("*.jsonl")):
        for line in f.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                urls[json.loads(line)["url"]] += 1
            except (ValueError, KeyError):
                torn += 1  # a line cut by SIGKILL mid-write
    return urls, torn


def wait_for_quiet(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait (bounded) until the machine is mostly idle, so other jobs distort a run less; returns busy share."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = float(psutil.cpu_percent(interval=2.0)) / 100
        if busy < threshold or time.monotonic() >= deadline:
            return busy


@dataclass(frozen=True)
class Setup:
    """What every run shares: the compose definition, the Redis, the site and its reachable set."""

    spec: ComposeWorker
    redis_url: str
    redis_pid: int
    site: RunningServer
    expected: set[str]
    work: Path
    deadline_s: float


class TreeCpu:
    """CPU seconds of each worker's event-loop process and of its descendants (the parse pool), sampled while
    they run; every process ever seen is remembered so that leftovers can be killed by PID at the end."""

    def __init__(self) -> None:
        self.loop_cpu: dict[int, float] = {}
        self.pool_cpu: dict[int, float] = {}
        self.seen: dict[int, psutil.Process] = {}

    def sample(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                root = self.seen.setdefault(p.pid, psutil.Process(p.pid))
                self.loop_cpu[p.pid] = cpu_s(root)
                for c in root.children(recursive=True):
                    self.seen.setdefault(c.pid, c)
                    with contextlib.suppress(psutil.Error):
                        self.pool_cpu[c.pid] = cpu_s(c)


def kill_worker(proc: subprocess.Popen[bytes], done: int, expected: int) -> None:
    """SIGKILL a worker and its forkserver and parse processes, like a `docker kill` of its container."""
    victim = psutil.Process(proc.pid)
    tree = {proc.pid: victim}
    with contextlib.suppress(psutil.Error):
        tree.update({c.pid: c for c in victim.children(recursive=True)})
    kill_pids(tree)  # the worker first, then its descendants
    share = done / expected
    say(f"  SIGKILLed worker pid {proc.pid} and {len(tree) - 1} parse processes at {done:,} records ({share:.0%})")


def watch(
    setup: Setup, procs: list[subprocess.Popen[bytes]], out: Path, result: RunResult, kill_fraction: float | None
) -> TreeCpu:
    """Sample CPU until every worker has exited (or the deadline), SIGKILLing the first one at ``kill_fraction``."""
    cpu = TreeCpu()
    kill_at = int(kill_fraction * len(setup.expected)) if kill_fraction else None
    deadline = time.monotonic() + setup.deadline_s
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            result.timed_out = True
            break
        cpu.sample(procs)
        if kill_at is not None and result.killed_at_pages is None:
            done = count_lines(out)
            if done >= kill_at:
                kill_worker(procs[0], done, len(setup.expected))
                result.killed_at_pages = done
        time.sleep(POLL_S)
    return cpu


def score(setup: Setup, result: RunResult, out: Path, cli_env: dict[str, str], run_dir: Path) -> None:
    """Compare the records with the reachable set (lost, unexpected, duplicates) and read `crawl stats`."""
    urls, result.torn_lines = read_urls(out)
    result.pages = sum(urls.values())
    result.lost = len(setup.expected - set(urls))
    result.unexpected = len(set(urls) - setup.expected)
    result.duplicates = result.pages - len(urls)
    result.stats = json.loads(crawl_cli(["stats", "--json"], cli_env, run_dir))
    result.dead = int(result.stats.get("dead", 0))
    if not result.ok:
        for i in range(result.workers):
            tail = (run_dir / f"worker-{i}.log").read_text(errors="replace").splitlines()[-5:]
            say(f"  worker {i} exit={result.exit_codes[i]} log tail:\n    " + "\n    ".join(tail))


def run_once(setup: Setup, label: str, n: int, extra_flags: list[str], kill_fraction: float | None = None) -> RunResult:
    """One fresh crawl of the site by ``n`` workers started as compose starts them; measured and scored."""
    name = f"scale-{label}-{uuid.uuid4().hex[:6]}"
    run_dir = setup.work / name
    out = run_dir / "output"
    run_dir.mkdir(parents=True)
    env = worker_env(setup.spec, setup.redis_url, name)
    cli_env = {k: v for k, v in env.items() if k in ("CRAWL_REDIS_URL", "CRAWL_NAME") or not k.startswith("CRAWL_")}
    seeds = run_dir / "seeds.txt"
    seeds.write_text(f"{setup.site.url}/p/0\n")
    crawl_cli(["purge", "--yes"], cli_env, run_dir)
    crawl_cli(["enqueue", str(seeds)], cli_env, run_dir)
    cmd = worker_command(setup.spec, out, ["--until-idle", *extra_flags])
    result = RunResult(label, n)

    site_proc, redis_proc, me = psutil.Process(setup.site.pid), psutil.Process(setup.redis_pid), psutil.Process()
    site0, redis0, me0, busy0 = tree_cpu_s(site_proc), cpu_s(redis_proc), cpu_s(me), busy_cpu_s()
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    cpu = TreeCpu()
    t0 = time.monotonic()
    try:
        for i in range(n):
            log = open(run_dir / f"worker-{i}.log", "wb")  # noqa: SIM115 - closed in finally
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    cmd, env=env, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            )
        cpu = watch(setup, procs, out, result, kill_fraction)
        result.wall_s = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                stop_process(p, timeout_s=30)
        kill_pids(cpu.seen)  # any descendant left behind (none expected)
        for log in logs:
            log.close()
    result.exit_codes = [p.returncode for p in procs]
    result.cpu = {
        "worker event loops": sum(cpu.loop_cpu.values()),
        "parse pools": sum(cpu.pool_cpu.values()),
        "site server": tree_cpu_s(site_proc) - site0,
        "redis": cpu_s(redis_proc) - redis0,
        "this script": cpu_s(me) - me0,
    }
    busy = busy_cpu_s() - busy0
    result.cpu["other processes"] = max(0.0, busy - sum(result.cpu.values()))
    result.machine_busy = busy / (result.wall_s * (os.cpu_count() or 1)) if result.wall_s else 0
    score(setup, result, out, cli_env, run_dir)
    crawl_cli(["purge", "--yes"], cli_env, run_dir)
    return result


# ------------------------------------------------------------------------------------------------ report
def report(
    results: list[RunResult], expected: int, args: argparse.Namespace, spec: ComposeWorker, example_cmd: list[str]
) -> None:
    ncpu = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = ncpu
    say("")
    say(
        f"CPUs: os.cpu_count()={ncpu}, usable by this process={affinity}; "
        f"{psutil.cpu_freq().current if psutil.cpu_freq() else '?'} MHz"
    )
    say(
        f"site: {args.pages:,} pages (--page-kb {args.page_kb}, --processes {args.site_processes}), "
        f"{expected:,} reachable URLs from /p/0 (pages, query pages, 404s)"
    )
    say("worker command (compose `worker` service; --output replaced, --until-idle appended so workers exit):")
    say("  " + " ".join(example_cmd))
    env_shown = {**spec.env_file, **spec.environment, "CRAWL_REDIS_URL": "<local redis>", **BENCH_ENV}
    say("worker environment (.env.example, then compose `environment`, then the benchmark's own settings):")
    say("  " + " ".join(f"{k}={v}" for k, v in sorted(env_shown.items())) + " CRAWL_NAME=<fresh per run>")
    say("")
    say("| workers | pages | wall s | pages/s | lost | duplicates |")
    say("|---|---|---|---|---|---|")
    for r in results:
        label = f"{r.workers} (1 SIGKILLed)" if r.killed_at_pages is not None else str(r.workers)
        flag = "" if r.ok else " FAILED"
        say(f"| {label}{flag} | {r.pages:,} | {r.wall_s:.1f} | {r.rate:,.0f} | {r.lost} | {r.duplicates} |")
    say("")
    say(
        "CPU seconds per component during each run (psutil; the parse pool includes the forkserver; other"
        " processes = the machine's busy time minus the components, i.e. jobs this script did not start):"
    )
    say("")
    comps = list(results[0].cpu) if results else []
    say("| workers | " + " | ".join(comps) + " | total | machine busy |")
    say("|---|" + "---|" * (len(comps) + 2))
    for r in results:
        label = f"{r.workers} (kill)" if r.killed_at_pages is not None else str(r.workers)
        cells = " | ".join(f"{r.cpu[c]:.1f} ({r.cpu[c] / r.wall_s:.2f} cores)" for c in comps)
        say(f"| {label} | {cells} | {sum(r.cpu.values()):.1f} | {r.machine_busy:.0%} of {ncpu} cores |")
    say("")
    say("CPU milliseconds per page, and the ceilings they imply on this machine's cores if nothing else ran:")
    say("")
    say("| workers | event loop | parse | site | redis | all | one event loop caps at | all cores cap at |")
    say("|---|---|---|---|---|---|---|---|")
    for r in results:
        if not r.pages:
            continue
        ms = {c: 1000 * r.cpu[c] / r.pages for c in comps}
        loop, parse, site, redis = (ms["worker event loops"], ms["parse pools"], ms["site server"], ms["redis"])
        total = loop + parse + site + redis
        label = f"{r.workers} (kill)" if r.killed_at_pages is not None else str(r.workers)
        say(
            f"| {label} | {loop:.2f} | {parse:.2f} | {site:.2f} | {redis:.3f} | {total:.2f} "
            f"| {1000 / loop:,.0f} pages/s | {ncpu * 1000 / total:,.0f} pages/s |"
        )
    say("")
    for r in results:
        s = r.stats
        extra = f"; killed at {r.killed_at_pages:,} records" if r.killed_at_pages is not None else ""
        say(
            f"{r.label}: exit codes {r.exit_codes}; stats done={s.get('done')} dead={s.get('dead')} "
            f"queued={s.get('queued')} inflight={s.get('inflight')} retried={s.get('retried')}; "
            f"unexpected URLs={r.unexpected}; torn lines={r.torn_lines}{extra}"
            + (" [TIMED OUT]" if r.timed_out else "")
        )


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=20_000)
    ap.add_argument("--page-kb", type=int, default=8)
    ap.add_argument("--site-processes", type=int, default=2)
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    ap.add_argument("--kill-workers", type=int, default=3, help="workers in the SIGKILL run (0: skip it)")
    ap.add_argument("--kill-at", type=float, default=0.3, help="fraction of pages written before the kill")
    ap.add_argument("--kill-lease-ttl-s", type=float, default=5.0)
    ap.add_argument("--deadline-s", type=float, default=300.0, help="per run")
    ap.add_argument(
        "--quiet-wait-s",
        type=float,
        default=60.0,
        help="before each run, wait up to this long for the machine to be <25%% busy",
    )
    ap.add_argument("--keep", action="store_true", help="keep the outputs, logs and Redis files")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    counts = [int(x) for x in args.workers.split(",") if x.strip()]

    spec = read_compose()
    work = Path(tempfile.mkdtemp(prefix="crawl-scale-"))
    redis = RedisServer(work / "redis", config=spec.redis_args)
    site: RunningServer | None = None
    results: list[RunResult] = []
    try:
        redis.start()
        redis_url, redis_pid = redis.url, redis.pid or 0
        say(f"redis: {redis_url} pid {redis_pid} ({' '.join(spec.redis_args)})")
        site = start_server(
            SITE_SERVER,
            "--port",
            0,
            "--pages",
            args.pages,
            "--seed",
            SEED,
            "--processes",
            args.site_processes,
            "--page-kb",
            args.page_kb,
            timeout_s=60,
        )
        say(f"site: {site.url} pid {site.pid}")
        t = time.monotonic()
        expected = set(expected_pages(args.pages, SEED, site.url))
        say(f"expected: {len(expected):,} reachable URLs (computed in {time.monotonic() - t:.1f}s)")
        setup = Setup(spec, redis_url, redis_pid, site, expected, work, args.deadline_s)
        for n in counts:
            say(f"run: {n} worker(s) (machine {wait_for_quiet(args.quiet_wait_s):.0%} busy before) ...")
            r = run_once(setup, f"w{n}", n, [])
            say(
                f"  {r.pages:,} records in {r.wall_s:.1f}s = {r.rate:,.0f} pages/s; lost={r.lost} "
                f"duplicates={r.duplicates} exit={r.exit_codes}"
            )
            results.append(r)
        if args.kill_workers:
            n = args.kill_workers
            busy = wait_for_quiet(args.quiet_wait_s)
            say(
                f"run: {n} workers, one SIGKILLed at {args.kill_at:.0%}, --lease-ttl-s {args.kill_lease_ttl_s:g} "
                f"(machine {busy:.0%} busy before) ..."
            )
            kill_flags = ["--lease-ttl-s", f"{args.kill_lease_ttl_s:g}"]
            r = run_once(setup, f"kill{n}", n, kill_flags, kill_fraction=args.kill_at)
            say(
                f"  {r.pages:,} records in {r.wall_s:.1f}s; lost={r.lost} duplicates={r.duplicates} exit={r.exit_codes}"
            )
            results.append(r)
        example = worker_command(spec, Path("<tmp>/output"), ["--until-idle"])
        report(results, len(expected), args, spec, ["crawl", *example[3:]])
    finally:
        if site is not None:
            site.stop()
        redis.stop()
        if args.keep:
            say(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
