"""Scenario 4: the renewal scan over N hosts with real certificate files.

Against the bare loop (read and parse each fullchain.pem) and ``certbot renew`` over as
many lineages. Certbot's lineages: ``--certbot-lineages`` issued from Pebble (during the
stack phase, cached), then cloned (renewal conf, archive, live links renamed) up to N:
with nothing due ``certbot renew`` reads each lineage's conf and certificate and never
talks to the CA, so a clone costs what an issued lineage costs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import certfiles
from modoboa_pro.testing import RedisServer

REPO = Path(__file__).resolve().parents[1]
LINEAGES_VERSION = 1
SCAN_REPEAT = 3
TARGET_SCAN_OVER_BARE = 1.5
TARGET_GROWTH = 11.0


def _child(run_dir: Path, *args: str) -> dict:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "MODOBOA_PRO_TEST_RUN_DIR": str(run_dir),
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-m", "bench.scan_child", *args],
        env=env, cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"scan_child {args[0]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- Certbot's lineages -----------------------------------------------------------------------


def lineages_dir(cache: Path) -> Path:
    return cache / f"certbot-lineages-v{LINEAGES_VERSION}"


def lineages_cached(cache: Path, count: int) -> bool:
    meta = lineages_dir(cache) / "meta.json"
    return meta.exists() and json.loads(meta.read_text())["count"] >= count


def issue_lineages(certbot, count: int, cache: Path) -> None:  # noqa: ANN001 (issuance.Certbot)
    """``count`` lineages from Pebble with ``certbot certonly --webroot``, kept in the cache."""
    if lineages_cached(cache, count):
        return
    target = lineages_dir(cache)
    shutil.rmtree(target, ignore_errors=True)
    began = time.monotonic()
    certbot.register()
    for i in range(count):
        certbot.certonly(f"l{i:04d}.certbot.bench.test")
    shutil.copytree(certbot.root / "config", target / "config", symlinks=True)
    (target / "meta.json").write_text(
        json.dumps(
            {
                "count": count,
                "config_dir": str(certbot.root / "config"),
                "seconds": round(time.monotonic() - began, 1),
            }
        )
    )
    print(f"  {count} certbot lineages issued in {time.monotonic() - began:.1f}s", flush=True)


def _clone_lineages(source: Path, config: Path, count: int) -> int:
    """A config dir with ``count`` lineages: the issued ones, then renamed copies of them."""
    shutil.copytree(source / "config", config, symlinks=True)
    # Renewal confs hold absolute paths into the config dir they were issued in.
    issued_in = json.loads((source / "meta.json").read_text())["config_dir"]
    confs = sorted((config / "renewal").glob("*.conf"))
    for conf in confs:
        conf.write_text(conf.read_text().replace(issued_in, str(config)))
    issued = [p.stem for p in confs]
    for j in range(len(issued), count):
        original = issued[j % len(issued)]
        clone = f"k{j:05d}.certbot.bench.test"
        shutil.copytree(config / "archive" / original, config / "archive" / clone)
        (config / "live" / clone).mkdir()
        for link in (config / "live" / original).iterdir():
            if not link.is_symlink():  # Certbot's README
                shutil.copy(link, config / "live" / clone / link.name)
                continue
            target = os.readlink(link).replace(original, clone)
            (config / "live" / clone / link.name).symlink_to(target)
        text = (config / "renewal" / f"{original}.conf").read_text()
        text = re.sub(re.escape(original), clone, text)
        (config / "renewal" / f"{clone}.conf").write_text(text)
    return max(count, len(issued))


def certbot_renew(binary: Path, cache: Path, work: Path, count: int) -> dict:
    """``certbot renew`` over ``count`` lineages, nothing due (median of 3)."""
    root = work / f"certbot-{count}"
    shutil.rmtree(root, ignore_errors=True)
    lineages = _clone_lineages(lineages_dir(cache), root / "config", count)
    argv = [
        str(binary), "renew", "--no-random-sleep-on-renew", "--non-interactive",
        "--config-dir", str(root / "config"), "--work-dir", str(root / "work"),
        "--logs-dir", str(root / "logs"),
    ]  # fmt: skip
    seconds = []
    for _ in range(SCAN_REPEAT):
        began = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        seconds.append(time.perf_counter() - began)
        if result.returncode != 0 or "No renewals were attempted" not in result.stdout:
            raise RuntimeError(f"certbot renew: {result.stdout[-1500:]}{result.stderr[-1500:]}")
    median = statistics.median(seconds)
    return {
        "lineages": lineages,
        "seconds": [round(s, 3) for s in seconds],
        "median_s": round(median, 3),
        "ms_per_lineage": round(1000 * median / lineages, 3),
    }


# -- the scenario ---------------------------------------------------------------------------------


def run(
    sizes: list[int],
    cache: Path,
    work: Path,
    certbot: Path | None,
    certbot_sizes: list[int],
    py_spy: Path | None,
) -> dict:
    sizes = sorted(sizes)
    began = time.monotonic()
    storage_root = certfiles.ensure(cache, max(sizes))
    print(f"  certificate files ready in {time.monotonic() - began:.1f}s", flush=True)
    run_dir = work / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(run_dir, socket_path=run_dir / "redis.sock").start()
    out: dict[str, object] = {"scan_repeat": SCAN_REPEAT, "sizes": {}}
    try:
        for n in sizes:
            setup = _child(run_dir, "setup", "--storage", str(storage_root), "--count", str(n))
            figures = {
                "hosts": setup["hosts"],
                "first_scan_sql_queries": setup["first_scan_sql_queries"],
                "nothing_due": _child(
                    run_dir, "scan", "--storage", str(storage_root),
                    "--due-percent", "0",
                ),
                "one_percent_due": _child(
                    run_dir, "scan", "--storage", str(storage_root),
                    "--due-percent", "1",
                ),
                "bare_loop": _child(
                    run_dir, "bare", "--storage", str(storage_root), "--count", str(n)
                ),
            }  # fmt: skip
            nothing = figures["nothing_due"]["median_s"]
            figures["ms_per_host_nothing_due"] = round(1000 * nothing / n, 4)
            figures["ms_per_host_bare"] = round(1000 * figures["bare_loop"]["median_s"] / n, 4)
            figures["scan_over_bare"] = round(nothing / figures["bare_loop"]["median_s"], 2)
            if certbot is not None and n in certbot_sizes:
                figures["certbot_renew"] = certbot_renew(certbot, cache, work, n)
                figures["certbot_over_scan"] = round(
                    figures["certbot_renew"]["median_s"] / nothing, 2
                )
            print(f"  N={n}: {json.dumps(figures)}", flush=True)
            out["sizes"][str(n)] = figures  # type: ignore[index]
        if py_spy is not None:
            from bench import profile

            out["profile"] = profile.scan(py_spy, run_dir, storage_root, work / "prof")
    finally:
        redis.stop()
    if len(sizes) >= 2:
        summarise(out)
    return out


def summarise(out: dict) -> None:
    """Growth between the smallest and the largest N, and the issue's targets.

    SQL queries compare the last of each size's scans: the first scan in a process also
    records what changed since the previous one (one UPDATE per host, e.g. the hosts the
    previous measurement made due), which is not the daily cost.
    """
    by_size = out["sizes"]
    sizes = sorted(int(n) for n in by_size)
    small, large = by_size[str(sizes[0])], by_size[str(sizes[-1])]
    growth = large["nothing_due"]["median_s"] / small["nothing_due"]["median_s"]
    queries = [small["nothing_due"]["sql_queries"][-1], large["nothing_due"]["sql_queries"][-1]]
    peak = [small["nothing_due"]["peak_growth_kib"], large["nothing_due"]["peak_growth_kib"]]
    out["growth"] = {
        "sizes": [sizes[0], sizes[-1]],
        "time_ratio": round(growth, 2),
        "size_ratio": sizes[-1] / sizes[0],
        "sql_queries": [small["nothing_due"]["sql_queries"], large["nothing_due"]["sql_queries"]],
        "peak_growth_kib": peak,
    }
    out["targets"] = {
        "scan_over_bare_at_largest": {
            "measured": large["scan_over_bare"],
            "at_most": TARGET_SCAN_OVER_BARE,
            "met": large["scan_over_bare"] <= TARGET_SCAN_OVER_BARE,
        },
        "growth": {"measured": round(growth, 2), "at_most": TARGET_GROWTH,
                   "met": growth <= TARGET_GROWTH},
        "sql_constant": {"measured": queries, "met": queries[0] == queries[1]},
        # Flat: the largest N's peak growth within a quarter of the smallest's.
        "peak_memory_flat": {"measured_kib": peak, "met": peak[1] <= 1.25 * peak[0]},
    }  # fmt: skip
