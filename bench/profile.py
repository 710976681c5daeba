"""Where the time goes: py-spy on the workers during creations, cProfile around the scan.

py-spy samples every thread of the workers and of the forks that run their jobs
(``--subprocesses``), idle ones included (``--idle``): a chain waiting in ``time.sleep`` or
on a socket counts as much as one computing, which is what an admin waiting on it sees.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.issuance import ours_once
from bench.stack import BenchStack

RATE = 200  # samples per second and thread
RUNS = 5
TOP = 15
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")
OWN = "modoboa_pro/"


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in (OWN, "site-packages/", "lib/python3"):
        if marker in path:
            path = (marker if marker == OWN else "") + path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path}:{match['line']})"


def summarise_stacks(raw: str, rate: int) -> dict:
    """Seconds of job stacks (those with a frame of ours) by the frame they stand in, and
    by the deepest frame of ours under it."""
    leaves: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    pairs: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or OWN not in stack:
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        leaf = _short(frames[-1])
        mine = _short(next(f for f in reversed(frames) if OWN in f))
        leaves[leaf] += n
        own[mine] += n
        pairs[f"{mine}  ->  {leaf}" if mine != leaf else mine] += n

    def top(counter: collections.Counter[str]) -> list[dict]:
        return [
            {"where": k, "seconds": round(v / rate, 3), "share": round(v / total, 3)}
            for k, v in counter.most_common(TOP)
        ]

    return {
        "job_seconds_sampled": round(total / rate, 2),
        "by_leaf_frame": top(leaves),
        "by_own_frame": top(own),
        "by_own_frame_and_leaf": top(pairs),
    }


def creation(stack: BenchStack, py_spy: Path, work: Path) -> dict:
    """RUNS creations to served, one after the other, with py-spy on every worker."""
    if not py_spy.exists():
        return {"skipped": f"{py_spy} absent (make bench installs it)"}
    work.mkdir(parents=True, exist_ok=True)
    spies = {}
    for name, pid in stack.worker_pids().items():
        out = work / f"{name}.txt"
        spies[name] = (
            subprocess.Popen(
                [
                    str(py_spy), "record", "--pid", str(pid), "--subprocesses", "--idle",
                    "--rate", str(RATE), "--format", "raw", "--output", str(out), "--nonblocking",
                ],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            ),
            out,
        )  # fmt: skip
    time.sleep(1.0)  # py-spy attaches
    seconds = []
    try:
        for i in range(RUNS):
            seconds.append(round(ours_once(stack, f"p{i}.ours.bench.test")[0], 3))
    finally:
        for process, _ in spies.values():
            process.send_signal(signal.SIGINT)
        for process, _ in spies.values():
            process.wait(timeout=60)

    def raw(privileged: bool) -> str:
        return "\n".join(
            out.read_text()
            for name, (_, out) in spies.items()
            if out.exists() and ("privileged" in name) == privileged
        )

    return {
        "runs": RUNS,
        "served_s": seconds,
        "rate_hz": RATE,
        "profiler": "py-spy record --subprocesses --idle (workers and their job forks)",
        # The chain (one job at a time here): its sampled seconds are its wall time.
        "modoboa_workers": summarise_stacks(raw(False), RATE),
        # nginx -t and reloads, on request of the chains.
        "privileged_worker": summarise_stacks(raw(True), RATE),
    }


def scan(py_spy: Path | None, run_dir: Path, storage_root: Path, work: Path) -> dict:
    """cProfile around one scan (the hosts and due marks the last size left)."""
    work.mkdir(parents=True, exist_ok=True)
    stats = work / "scan.pstats"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "MODOBOA_PRO_TEST_RUN_DIR": str(run_dir),
    }
    result = subprocess.run(
        [sys.executable, "-m", "bench.scan_child", "profile", "--storage", str(storage_root),
         "--stats", str(stats)],
        env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    return {"profiler": "cProfile", **json.loads(result.stdout.strip().splitlines()[-1])}
