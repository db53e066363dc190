"""The benchmark's report: medians over runs, ratios to the bare loop, targets, and the Markdown tables.

The README quotes these tables, so their format is part of the contract: change it only on purpose.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchkit import ROOT
from benchkit.contenders import CONTENDERS, OPTIONAL_CONTENDERS, VARIANTS
from benchkit.profile import PROFILE_RATE, PYSPY_MODE


def code_identity(src: Path = ROOT) -> dict[str, Any]:
    """Which code was measured: HEAD, uncommitted files, and a hash of crawler/ + workers/ (read-only git)."""
    import hashlib

    out: dict[str, Any] = {"src": str(src)}
    marker = src / ".bench-commit"  # an extracted tree (git archive) names its commit here
    if src != ROOT:
        out["git_head"] = marker.read_text().strip() if marker.exists() else None
    else:
        out.update(_git_state())
    h = hashlib.sha256()
    for f in sorted([*src.glob("crawler/**/*.py"), *src.glob("crawler/lua/*.lua"), *src.glob("workers/*.py")]):
        h.update(f.relative_to(src).as_posix().encode() + b"\0" + f.read_bytes())
    out["code_sha256"] = h.hexdigest()[:16]
    return out


def _git_state() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["git_head"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "crawler", "workers"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        out["dirty_code_files"] = [d.strip() for d in dirty if d.strip()]
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


def aggregate(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["contender"], []).append(r)
    agg: dict[str, dict[str, Any]] = {}
    for name, rs in by.items():
        a: dict[str, Any] = {"runs": len(rs), "all_match": all(r["match"] for r in rs)}
        for key in (
            "pages_found",
            "pages_expected",
            "wall_s",
            "pages_per_s",
            "cpu_s",
            "cpu_ms_per_page",
            "peak_rss_main_mb",
            "peak_rss_tree_mb",
            "peak_rss_redis_mb",
            "foreign_cores",
            "cpu_redis_s",
        ):
            vals = [r[key] for r in rs if r.get(key) is not None]
            a[key] = round(median(vals), 3) if vals else None
        a["pages_per_s_all"] = [r["pages_per_s"] for r in rs]
        for key in ("loop_lag_p99_ms", "parse_wait_share", "peak_rss_mb_self", "loop_lag_p99_ms_worst_window"):
            vals = [r["crawl"][key] for r in rs if r.get("crawl") and r["crawl"].get(key) is not None]
            vals += [r["bare"][key] for r in rs if r.get("bare") and r["bare"].get(key) is not None]
            if vals:
                a[key] = round(median(vals), 3)
        outs = [r["variant_outputs"] for r in rs if r.get("variant_outputs")]
        if outs:
            a["variant_outputs"] = {k: median([o[k] for o in outs]) for k in ("items", "warc_files", "warc_mb")}
            a["variant_outputs"]["http_versions"] = outs[-1].get("http_versions")
        for sname in ("nginx", "static", "proxy"):
            vals = [r["servers_cpu_s"].get(sname) for r in rs if r["servers_cpu_s"].get(sname) is not None]
            if vals:
                a[f"{sname}_cpu_s"] = round(median(vals), 2)
        agg[name] = a
    return agg


def ratios(agg: dict[str, dict[str, Any]]) -> None:
    bare = agg.get("bare-pool")
    scrapy = agg.get("scrapy")
    for a in agg.values():
        if bare and bare["pages_per_s"]:
            a["x_bare_pages_per_s"] = round(a["pages_per_s"] / bare["pages_per_s"], 2)
        if bare and bare.get("cpu_ms_per_page") and a.get("cpu_ms_per_page"):
            a["x_bare_cpu_ms_per_page"] = round(a["cpu_ms_per_page"] / bare["cpu_ms_per_page"], 2)
        if scrapy and scrapy["pages_per_s"]:
            a["x_scrapy_pages_per_s"] = round(a["pages_per_s"] / scrapy["pages_per_s"], 2)
    worker = agg.get("crawl-worker")
    for name in VARIANTS:
        a = agg.get(name) or {}
        if worker and a and worker["pages_per_s"]:
            a["x_worker_pages_per_s"] = round(a["pages_per_s"] / worker["pages_per_s"], 2)
        if worker and a.get("cpu_ms_per_page") and worker.get("cpu_ms_per_page"):
            a["x_worker_cpu_ms_per_page"] = round(a["cpu_ms_per_page"] / worker["cpu_ms_per_page"], 2)


def targets(agg: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in ("crawl-run", "crawl-worker"):
        a = agg.get(name)
        if not a:
            continue

        def add(what: str, value: Any, limit: str, ok: bool | None, name: str = name) -> None:
            out.append(
                {
                    "contender": name,
                    "target": what,
                    "value": value,
                    "limit": limit,
                    "met": ok,
                    "verdict": "n/a" if ok is None else ("met" if ok else "NOT met"),
                }
            )

        xs = a.get("x_scrapy_pages_per_s")
        add("pages/s vs Scrapy", xs, ">= 8x", None if xs is None else xs >= 8)
        xb = a.get("x_bare_pages_per_s")
        add("pages/s vs bare loop (parse pool)", xb, ">= 0.8x", None if xb is None else xb >= 0.8)
        xc = a.get("x_bare_cpu_ms_per_page")
        add("CPU-ms/page (tree + Redis) vs bare loop", xc, "<= 1.3x", None if xc is None else xc <= 1.3)
        rss = a.get("peak_rss_main_mb")
        add("peak RSS of the worker process (MB)", rss, "<= 250", None if rss is None else rss <= 250)
        lag = a.get("loop_lag_p99_ms")
        add("event-loop lag p99 (ms)", lag, "<= 50", None if lag is None else lag <= 50)
        add("pages found == reachable (every run)", a["all_match"], "true", a["all_match"])
    for name, v in VARIANTS.items():
        a = agg.get(name)
        if not a:
            continue
        xw = a.get("x_worker_pages_per_s")
        out.append(
            {
                "contender": name,
                "target": f"pages/s vs crawl-worker ({v.what}, issue {v.issue})",
                "value": xw,
                "limit": f">= {v.goal}x",
                "met": None if xw is None else xw >= v.goal,
                "verdict": "n/a" if xw is None else ("met" if xw >= v.goal else "NOT met"),
            }
        )
    return out


def markdown(agg: dict[str, dict[str, Any]], tgt: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def f(x: Any, nd: int = 1) -> str:
        if x is None:
            return "-"
        if isinstance(x, float):
            return f"{x:.{nd}f}"
        return str(x)

    lines = [
        f"Site: {meta['site']['pages']} pages generated ({meta['site']['mean_page_kb']} KB mean, "
        f"{meta['site']['links_per_page_mean']} links/page), **{meta['site']['reachable']} URLs reachable** from "
        f"page 0 ({meta['site']['reachable_200']} x 200, {meta['site']['reachable_404']} x 404); origin: "
        f"{meta['server']['impl']}; proxy: {meta['proxy']['impl']} (BasicAuth); concurrency {meta['concurrency']}; "
        f"medians of {meta['runs_done']} run(s) (Scrapy: {min(meta['runs_done'], meta['scrapy_runs'])}); "
        f"{meta['cpus']} CPUs; code {meta['code'].get('git_head')} (+{len(meta['code'].get('dirty_code_files', []))} "
        f"uncommitted files, sha {meta['code'].get('code_sha256')}).",
        "",
        "| contender | pages found / reachable | wall s | pages/s | x bare | x Scrapy | CPU s (tree+Redis) "
        "| CPU-ms/page | CPU x bare | peak RSS main MB | peak RSS tree MB | Redis RSS MB | foreign load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CONTENDERS + OPTIONAL_CONTENDERS:
        a = agg.get(name)
        if not a:
            continue
        ok = "" if a["all_match"] else " **MISMATCH**"
        lines.append(
            f"| {name} | {f(a['pages_found'], 0)} / {f(a['pages_expected'], 0)}{ok} | {f(a['wall_s'], 2)} "
            f"| {f(a['pages_per_s'], 0)} | {f(a.get('x_bare_pages_per_s'), 2)} | {f(a.get('x_scrapy_pages_per_s'), 2)} "
            f"| {f(a['cpu_s'], 2)} | {f(a['cpu_ms_per_page'], 3)} | {f(a.get('x_bare_cpu_ms_per_page'), 2)} "
            f"| {f(a['peak_rss_main_mb'])} | {f(a['peak_rss_tree_mb'])} | {f(a['peak_rss_redis_mb'])} "
            f"| {f(a['foreign_cores'], 2)} |"
        )
    crawl = [n for n in ("crawl-run", "crawl-worker", *VARIANTS, "bare-pool", "bare-inline") if n in agg]
    if crawl:
        lines += [
            "",
            "| contender | event-loop lag p99 ms (whole run) | worst 1 s window lag p99 ms "
            "| parse_wait_share | self-reported peak RSS MB | Redis CPU s |",
            "|---|---|---|---|---|---|",
        ]
        for n in crawl:
            a = agg[n]
            redis_cpu = "in tree" if n == "crawl-run" else f(a.get("cpu_redis_s"), 2) if n.startswith("crawl") else "-"
            lines.append(
                f"| {n} | {f(a.get('loop_lag_p99_ms'))} | {f(a.get('loop_lag_p99_ms_worst_window'))} "
                f"| {f(a.get('parse_wait_share'), 3)} | {f(a.get('peak_rss_mb_self'))} | {redis_cpu} |"
            )
    lines += variant_lines(agg, f)
    if tgt:
        lines += ["", "| target | contender | value | limit | verdict |", "|---|---|---|---|---|"]
        for t in tgt:
            lines.append(f"| {t['target']} | {t['contender']} | {f(t['value'], 2)} | {t['limit']} | {t['verdict']} |")
    return "\n".join(lines)


def variant_lines(agg: dict[str, dict[str, Any]], f: Callable[..., str]) -> list[str]:
    """The crawl-worker variants against the plain run, with what each feature wrote (0 items: not wired)."""
    names = [n for n in VARIANTS if n in agg]
    if not names:
        return []
    lines = [
        "",
        "| variant | pages/s | x crawl-worker | CPU-ms/page | CPU x crawl-worker | items | WARC files | WARC MB "
        "| records' http_version |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        a = agg[n]
        o = a.get("variant_outputs") or {}
        lines.append(
            f"| {n} | {f(a['pages_per_s'], 0)} | {f(a.get('x_worker_pages_per_s'), 2)} | {f(a['cpu_ms_per_page'], 3)} "
            f"| {f(a.get('x_worker_cpu_ms_per_page'), 2)} | {f(o.get('items'), 0)} | {f(o.get('warc_files'), 0)} "
            f"| {f(o.get('warc_mb'), 1)} | {versions_cell(o.get('http_versions'))} |"
        )
    return lines


def versions_cell(versions: dict[str, int] | None) -> str:
    """`None: 964` means no record says its HTTP version (the aiohttp fetcher today, or curl not wired yet)."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(versions.items())) if versions else "-"


def profile_markdown(p: dict[str, Any]) -> str:
    waits = ", ".join(f"{k}: {v}" for k, v in p.get("wait_samples", {}).items())
    lines = [
        f"py-spy {' '.join(PYSPY_MODE)} at {PROFILE_RATE} Hz over one crawl-worker pass ({p['pages']} pages, "
        f"{p['wall_s_under_profiler']} s under the profiler, {p['cpu_s_under_profiler']} CPU s): {p['samples']} "
        f"on-CPU samples (blocked-thread samples left out: {waits}); raw collapsed stacks: "
        + ", ".join(f"`{Path(r).name}`" for r in p["raw"])
        + ".",
        "",
        "| process | share of on-CPU samples |",
        "|---|---|",
    ]
    for proc, v in p["by_process"].items():
        lines.append(f"| {proc} | {v['share_pct']}% |")
    lines += ["", "| # | function (self time; native code charged to its Python caller) | share |", "|---|---|---|"]
    for i, row in enumerate(p["top_self"][:10], 1):
        lines.append(f"| {i} | `{row['function']}` | {row['share_pct']}% |")
    lines += ["", "| area (innermost frame that names one) | share |", "|---|---|"]
    for row in p["by_area"]:
        lines.append(f"| {row['area']} | {row['share_pct']}% |")
    lines += ["", "| crawl function (inclusive: on the stack) | share |", "|---|---|"]
    for row in p.get("inclusive_crawl", [])[:14]:
        lines.append(f"| `{row['function']}` | {row['share_pct']}% |")
    lines += ["", "| native leaf | share |", "|---|---|"]
    for row in p.get("top_native", [])[:8]:
        lines.append(f"| `{row['function']}` | {row['share_pct']}% |")
    return "\n".join(lines)
