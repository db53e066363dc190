"""Measuring one contender run: wall time, CPU of its process tree and of the servers, peak RSS.

A :class:`Sampler` thread polls the contender's tree with psutil; :func:`measure` runs it under a deadline,
charges CPU from getrusage(RUSAGE_CHILDREN) deltas, and reaps strays so no run leaks into the next.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchkit import ROOT
from benchkit.processes import Managed, children_cpu_s, proc_cpu_s

SAMPLE_S = 0.1


@dataclass
class Measurement:
    wall_s: float = 0.0
    exit_code: int | None = None
    timed_out: bool = False
    cpu_tree_s: float = 0.0  # getrusage(RUSAGE_CHILDREN) delta: the contender's whole tree (+ embedded redis)
    cpu_redis_s: float = 0.0  # a separate redis-server's CPU delta (psutil)
    cpu_sampled_s: float = 0.0  # psutil cross-check: sum over sampled pids of their last CPU reading
    peak_rss_main_mb: float = 0.0
    peak_rss_tree_mb: float = 0.0
    peak_rss_redis_mb: float = 0.0
    servers_cpu_s: dict[str, float] = field(default_factory=dict)  # origin server, proxy
    foreign_cpu_s: float = 0.0  # busy CPU on the machine not explained by the above: other users' load
    cpu_extra_sampled_s: float = 0.0  # psutil: last CPU reading of the extra process (the embedded redis)
    harness_cpu_s: float = 0.0  # this bench process itself (sampling), not charged to anyone
    loadavg_before: float = 0.0


class Sampler(threading.Thread):
    """Polls the contender's process tree every SAMPLE_S: RSS (main, tree) and per-pid CPU."""

    def __init__(self, root_pid: int, extra: Callable[[], psutil.Process | None]) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.extra = extra
        self.stop_event = threading.Event()
        self.cpu: dict[int, float] = {}
        self.extra_cpu: dict[int, float] = {}
        self.peak_main = 0
        self.peak_tree = 0
        self.peak_extra = 0

    def run(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
        except psutil.Error:
            return
        while not self.stop_event.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            tree = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    with p.oneshot():
                        rss = p.memory_info().rss
                        t = p.cpu_times()
                    tree += rss
                    if p.pid == self.root_pid:
                        self.peak_main = max(self.peak_main, rss)
                    self.cpu[p.pid] = t.user + t.system
            self.peak_tree = max(self.peak_tree, tree)
            ex = self.extra()
            if ex is not None:
                with contextlib.suppress(psutil.Error):
                    self.peak_extra = max(self.peak_extra, ex.memory_info().rss)
                    # a zombie reads as 0: keep the last real reading
                    self.extra_cpu[ex.pid] = max(self.extra_cpu.get(ex.pid, 0.0), proc_cpu_s(ex))
            self.stop_event.wait(SAMPLE_S)


def system_busy_s() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0))


def reap_strays(keep: set[int], timeout_s: float = 20.0) -> list[str]:
    """Wait for (and reap) every child of ours that is not a long-lived helper; kill those that outstay."""
    me = psutil.Process()
    deadline = time.monotonic() + timeout_s
    killed: list[str] = []
    while True:
        strays = [c for c in me.children() if c.pid not in keep]
        for c in strays:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(c.pid, os.WNOHANG)
        alive = [c for c in strays if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        zombies = [c for c in strays if c.is_running() and c.status() == psutil.STATUS_ZOMBIE]
        if not alive and not zombies:
            return killed
        if time.monotonic() > deadline:
            for c in alive:
                with contextlib.suppress(psutil.Error):
                    killed.append(" ".join(c.cmdline())[:120])
                    c.kill()
            deadline = time.monotonic() + 5
        time.sleep(0.05)


def measure(
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    timeout_s: float,
    keep: set[int],
    servers: list[Managed],
    redis: Managed | None = None,
    extra: Callable[[], psutil.Process | None] = lambda: None,
    cwd: Path = ROOT,
) -> Measurement:
    """Run one contender to completion and account for everything it costs."""
    m = Measurement(loadavg_before=os.getloadavg()[0])
    reap_strays(keep, 5)
    cpu0 = children_cpu_s()
    redis0 = redis.cpu_s() if redis else 0.0
    srv0 = {s.name: s.cpu_s() for s in servers}
    busy0 = system_busy_s()
    self0 = proc_cpu_s(psutil.Process())
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sampler = Sampler(proc.pid, extra)
        sampler.start()
        try:
            m.exit_code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            m.timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group of the process we started
            m.exit_code = proc.wait()
        m.wall_s = time.monotonic() - t0
        sampler.stop_event.set()
        sampler.join()
    # the embedded redis shuts down when the last crawl process leaves: wait for it, then reap it
    ex = extra()
    if ex is not None:
        with contextlib.suppress(psutil.Error):
            ex.wait(timeout=15)
    reap_strays(keep)
    m.cpu_tree_s = children_cpu_s() - cpu0
    m.cpu_redis_s = (redis.cpu_s() - redis0) if redis else 0.0
    m.cpu_extra_sampled_s = sum(sampler.extra_cpu.values())
    m.cpu_sampled_s = sum(sampler.cpu.values()) + m.cpu_extra_sampled_s + m.cpu_redis_s
    m.servers_cpu_s = {s.name: round(s.cpu_s() - srv0[s.name], 2) for s in servers}
    busy = system_busy_s() - busy0
    m.harness_cpu_s = proc_cpu_s(psutil.Process()) - self0
    m.foreign_cpu_s = max(0.0, busy - m.cpu_tree_s - m.cpu_redis_s - sum(m.servers_cpu_s.values()) - m.harness_cpu_s)
    m.peak_rss_main_mb = sampler.peak_main / 1e6
    m.peak_rss_tree_mb = sampler.peak_tree / 1e6
    m.peak_rss_redis_mb = (max(sampler.peak_extra, _rss(redis)) if redis else sampler.peak_extra) / 1e6
    return m


def _rss(m: Managed | None) -> int:
    if m is None:
        return 0
    with contextlib.suppress(psutil.Error):
        return int(m.ps.memory_info().rss)
    return 0
