"""Profiling one `crawl worker` pass with py-spy (not timed) and summarising self time by function and area.

py-spy's own idle detection misses blocked threads inside containers, so wait frames are recognised here by
their innermost native frames; parse-pool processes are sampled by :class:`PoolSpy` as they appear.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from benchkit.contenders import Env, Variant, contender_crawl_worker

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("garbage collector", ("gc_collect",)),
    ("URL normalisation", ("crawler/urls.py", "urllib/parse.py", "hashlib")),
    ("HTML parsing (selectolax/lexbor)", ("selectolax", "lexbor", "crawler/parse.py", "codecs")),
    (
        "parse-pool IPC (pickle, pipes)",
        (
            "concurrent/futures/process.py",
            "multiprocessing/",
            "pickle",
            "workers/parse_pool.py",
            "_dataclass_getstate",
            "_dataclass_setstate",
        ),
    ),
    ("redis client", ("redis/", "crawler/frontier.py")),
    ("JSON + records + sink", ("json/", "crawler/records.py", "crawler/sinks.py", "dataclasses.py")),
    (
        "aiohttp / yarl / aiohappyeyeballs (HTTP, connects)",
        ("aiohttp", "yarl", "multidict", "aiohappyeyeballs", "crawler/fetch.py", "socket.py"),
    ),
    ("tenacity (retry wrapper)", ("tenacity/",)),
    ("metrics / psutil", ("crawler/metrics.py", "psutil")),
    ("crawl pipeline logic", ("workers/", "crawler/")),
    (
        "event loop (asyncio/uvloop)",
        ("asyncio/", "uvloop", "selectors.py", "threading.py", "concurrent/futures/thread"),
    ),
)
# Innermost native frames that mean "this thread is blocked, not on CPU" (py-spy's own idle detection misses
# them inside containers): pipe reads, poll/epoll, futex waits (shown as bare libc addresses), condition waits.
WAIT_LEAVES = frozenset(
    {
        "read",
        "__libc_read",
        "poll",
        "__poll",
        "ppoll",
        "epoll_wait",
        "epoll_pwait",
        "select",
        "pselect",
        "pselect6",
        "pthread_cond_wait",
        "pthread_cond_timedwait",
        "__pthread_cond_wait",
        "__pthread_cond_timedwait",
        "sem_wait",
        "sem_timedwait",
        "sem_clockwait",
        "nanosleep",
        "clock_nanosleep",
        "__futex_abstimed_wait_common",
        "syscall",
        "accept",
        "accept4",
        "take_gil",
        "PyThread_acquire_lock_timed",
        "waitpid",
        "wait4",
    }
)


def _is_native(frame: str) -> bool:
    return ".py:" not in frame and "<frozen" not in frame


def _is_wait(leaf: str) -> bool:
    name, _, where = leaf.partition(" (")
    return name in WAIT_LEAVES or (name.startswith("0x") and "libc" in where)


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other (interpreter start-up, imports, ...)"


def _python_leaf(frames: list[str]) -> str:
    """The innermost Python function: native work is charged to its caller, except the garbage collector."""
    for frame in reversed(frames):
        if "gc_collect" in frame:
            return "[garbage collector] (gc_collect_main, libpython)"
        if not _is_native(frame):
            return frame
    return frames[-1]


def summarise_profile(files: list[tuple[str, Path]]) -> dict[str, Any]:
    """py-spy `--native --format raw` files (collapsed stacks), each labelled with its process role.

    Samples whose innermost frame is a blocking wait are counted as waiting and left out of the rest; the on-CPU
    samples are ranked by self time in the Python view (native frames charged to the calling Python function) and
    by area (the innermost frame that names one), overall and per process.
    """
    py_self: Counter[str] = Counter()
    native_self: Counter[str] = Counter()
    by_proc_fn: dict[str, Counter[str]] = {}
    by_cat: Counter[str] = Counter()
    by_proc_cat: dict[str, Counter[str]] = {}
    by_proc: Counter[str] = Counter()
    waits: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()  # crawl's own functions: samples with the function anywhere on the stack
    total = 0
    for label, raw in files:
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            if not frames:
                continue
            if _is_wait(frames[-1]):
                waits[label] += n
                continue
            total += n
            for fn in {f.rsplit(":", 1)[0] + ")" for f in frames if "crawler/" in f or "workers/" in f}:
                inclusive[fn] += n
            leaf = _python_leaf(frames)
            py_self[leaf] += n
            if _is_native(frames[-1]):
                native_self[frames[-1]] += n
            by_proc_fn.setdefault(label, Counter())[leaf] += n
            cat = _category(frames)
            by_cat[cat] += n
            by_proc_cat.setdefault(label, Counter())[cat] += n
            by_proc[label] += n

    def pct(c: int, t: int) -> float:
        return round(100 * c / t, 1) if t else 0.0

    return {
        "samples": total,
        "wait_samples": dict(waits),
        "by_process": {p: {"samples": c, "share_pct": pct(c, total)} for p, c in by_proc.most_common()},
        "top_self": [{"function": f, "samples": c, "share_pct": pct(c, total)} for f, c in py_self.most_common(15)],
        "top_native": [
            {"function": f, "samples": c, "share_pct": pct(c, total)} for f, c in native_self.most_common(10)
        ],
        "top_self_by_process": {
            p: [{"function": f, "samples": c, "share_pct": pct(c, by_proc[p])} for f, c in fns.most_common(10)]
            for p, fns in by_proc_fn.items()
        },
        "by_area": [{"area": a, "samples": c, "share_pct": pct(c, total)} for a, c in by_cat.most_common()],
        "inclusive_crawl": [
            {"function": f, "samples": c, "share_pct": pct(c, total)}
            for f, c in inclusive.most_common(40)
            if "<module>" not in f and "cli.py" not in f
        ][:16],
        "by_area_by_process": {
            p: [{"area": a, "share_pct": pct(c, by_proc[p])} for a, c in cats.most_common()]
            for p, cats in by_proc_cat.items()
        },
    }


class PoolSpy(threading.Thread):
    """Attaches `py-spy record --pid` to each parse-pool process as it appears.

    `py-spy --subprocesses` does not follow the forkserver's children, so pool workers are found here: processes
    descending from this bench process (never anyone else's) whose parent is a multiprocessing forkserver.
    """

    def __init__(self, pyspy: str, out_prefix: Path, rate: int) -> None:
        super().__init__(daemon=True)
        self.pyspy, self.out_prefix, self.rate = pyspy, out_prefix, rate
        self.stop_event = threading.Event()
        self.spies: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop_event.is_set():
            with contextlib.suppress(psutil.Error):
                for p in me.children(recursive=True):
                    if p.pid in self.spies:
                        continue
                    with contextlib.suppress(psutil.Error):
                        parent = p.parent()
                        if parent is None or "multiprocessing.forkserver" not in " ".join(parent.cmdline()):
                            continue
                        out = Path(f"{self.out_prefix}-pool-{p.pid}.txt")
                        spy = subprocess.Popen(
                            [
                                self.pyspy,
                                "record",
                                "--format",
                                "raw",
                                "--rate",
                                str(self.rate),
                                *PYSPY_MODE,
                                "-o",
                                str(out),
                                "--pid",
                                str(p.pid),
                            ],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        self.spies[p.pid] = (spy, out)
            self.stop_event.wait(0.05)

    def finish(self) -> list[Path]:
        self.stop_event.set()
        self.join()
        outs: list[Path] = []
        for spy, out in self.spies.values():
            try:
                spy.wait(timeout=30)  # ends by itself when its target exits
            except subprocess.TimeoutExpired:
                spy.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(timeout=10)
            if out.exists():
                outs.append(out)
        return outs


PROFILE_RATE = 100
PYSPY_MODE: list[str] = os.environ.get("BENCH_PYSPY_MODE", "--native").split()


def run_profile(e: Env, out_dir: Path, stamp: str, variant: Variant | None = None) -> dict[str, Any] | None:
    pyspy = shutil.which("py-spy")
    if not pyspy:
        print("py-spy not installed (pip install py-spy): no profile", flush=True)
        return None
    raw = out_dir / f"profile-{stamp}-worker.txt"
    prefix = [pyspy, "record", "--format", "raw", "--rate", str(PROFILE_RATE), *PYSPY_MODE, "-o", str(raw), "--"]
    run_dir = e.workdir / "profile"
    run_dir.mkdir(parents=True, exist_ok=True)
    what = f" ({variant.what})" if variant else ""
    print(f"profiling one crawl-worker{what} pass under py-spy (not timed) ...", flush=True)
    pool_spy = PoolSpy(pyspy, out_dir / f"profile-{stamp}", PROFILE_RATE)
    pool_spy.start()
    try:
        m, extra = contender_crawl_worker(e, run_dir, prefix, timeout_s=e.args.contender_timeout_s * 2, variant=variant)
    finally:
        pool_files = pool_spy.finish()
    if not raw.exists():
        print(f"py-spy wrote no profile; see {run_dir / 'log.txt'}", flush=True)
        return None
    files = [("worker process (event loop)", raw)] + [("parse pool process", f) for f in pool_files]
    summary = summarise_profile(files)
    summary["raw"] = [str(f) for _, f in files]
    summary["pages"] = len(set(extra["urls"]))
    summary["wall_s_under_profiler"] = round(m.wall_s, 2)
    summary["cpu_s_under_profiler"] = round(m.cpu_tree_s + m.cpu_redis_s, 2)
    summary["crawl"] = extra.get("crawl")
    return summary
