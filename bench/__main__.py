"""``python -m bench``: run the scenarios, print every figure, write bench/results/latest.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
SCENARIOS = ("issuance", "scan", "burst", "profile", "rss", "mail")
# The keys of results.json each scenario writes (kept by --merge).
SCENARIO_KEYS = (
    "issuance", "scan", "burst", "profile_creation", "profile_creation_first_run", "worker_rss",
    "mail", "runs_merged",
)  # fmt: skip
# "rss" takes 500 issuances: on demand; "mail" is skipped (said why) without Postfix/Dovecot.
DEFAULT = ("issuance", "scan", "burst", "profile", "mail")


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "absent"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def machine() -> dict[str, object]:
    """What the figures were taken on: they mean little without it."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            **{p: metadata.version(p) for p in ("acme", "josepy", "cryptography", "Django", "rq")},
            "nginx": _version(["nginx", "-v"]),
            "pebble": _version(["dpkg-query", "-W", "-f", "${Version}", "pebble"]),
            "redis-server": _version(["redis-server", "--version"]),
        },
    }


def _mail(results: dict[str, object], root: Path, hosts: int) -> None:
    """Scenario 5 on a stack of its own (its settings point at a Postfix and a Dovecot)."""
    from bench import mail

    missing = mail.missing_binaries()
    if missing:
        print(
            f"scenario 5 skipped: {', '.join(missing)} not found (it needs Postfix and Dovecot: "
            "apt-get install postfix dovecot-imapd dovecot-pop3d)",
            flush=True,
        )
        return
    from bench.stack import running_stack
    from modoboa_pro.testing.mail import plugin_settings

    print(f"scenario 5: {hosts} mail hosts renewed by one scan (Postfix, Dovecot)", flush=True)
    with (
        mail.mail_servers() as (postfix, dovecot),
        running_stack(root / "mail", extra_settings=plugin_settings(postfix, dovecot)) as stack,
    ):
        results["mail"] = mail.run(stack, postfix, dovecot, hosts, root / "mail-floor")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only", default=",".join(DEFAULT),
        help=f"comma-separated, among {', '.join(SCENARIOS)} (default: all but rss)",
    )  # fmt: skip
    parser.add_argument(
        "--rss-issuances", default="50,500", help="worker RSS compared after these counts"
    )
    parser.add_argument("--runs", type=int, default=5, help="samples of scenario 1 (median)")
    parser.add_argument("--burst", type=int, default=100, help="hosts of scenarios 2 and 3")
    parser.add_argument("--mail-hosts", type=int, default=50, help="hosts of scenario 5")
    parser.add_argument(
        "--scan-sizes", default="1000,10000", help="host counts of scenario 4 (comma-separated)"
    )
    parser.add_argument(
        "--certbot-lineages", type=int, default=50,
        help="lineages issued from Pebble for `certbot renew` (then cloned up to each size)",
    )  # fmt: skip
    parser.add_argument(
        "--certbot-sizes", default="",
        help="lineage counts `certbot renew` is timed at (default: the scan sizes)",
    )  # fmt: skip
    parser.add_argument(
        "--venv", type=Path, default=REPO / ".venv-bench",
        help="the virtualenv holding certbot and py-spy (make bench creates it)",
    )  # fmt: skip
    parser.add_argument(
        "--database", choices=("sqlite", "postgresql"), default="sqlite",
        help="the instance's database for scenarios 1 to 3 (default: SQLite, as make demo)",
    )  # fmt: skip
    parser.add_argument("--cache", type=Path, default=REPO / ".bench-cache")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument(
        "--merge", action="store_true",
        help="keep the other scenarios' figures already in --out (rerun some of them)",
    )  # fmt: skip
    args = parser.parse_args()
    only = set(args.only.split(","))
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    certbot = args.venv / "bin" / "certbot"
    py_spy = args.venv / "bin" / "py-spy"
    args.cache.mkdir(parents=True, exist_ok=True)

    previous = json.loads(args.out.read_text()) if args.merge and args.out.exists() else {}
    results: dict[str, object] = {
        **{k: v for k, v in previous.items() if k in SCENARIO_KEYS},
        "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "make bench",
        "database": args.database,
        "machine": machine(),
        "certbot": _version([str(certbot), "--version"]) if certbot.exists() else "absent",
    }
    # Short: unix socket paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="mpbench-"))
    began = time.monotonic()
    try:
        from bench import scan

        need_lineages = (
            "scan" in only
            and certbot.exists()
            and not scan.lineages_cached(args.cache, args.certbot_lineages)
        )
        if only & {"issuance", "burst", "profile", "rss"} or need_lineages:
            from bench.stack import running_stack

            with running_stack(root / "stack", postgres=args.database == "postgresql") as stack:
                if "issuance" in only:
                    from bench import issuance

                    print("scenario 1: creation to served", flush=True)
                    results["issuance"] = issuance.run(
                        stack, args.runs, certbot if certbot.exists() else None, root / "s1"
                    )
                    print(json.dumps(results["issuance"]["ratios"]), flush=True)  # type: ignore[index]
                if "scan" in only and certbot.exists():
                    from bench import issuance

                    print(f"{args.certbot_lineages} certbot lineages for scenario 4", flush=True)
                    scan.issue_lineages(
                        issuance.Certbot(certbot, root / "lineages", stack),
                        args.certbot_lineages,
                        args.cache,
                    )
                if "profile" in only:
                    from bench import profile

                    print("profile: py-spy on the workers during creations", flush=True)
                    results["profile_creation"] = profile.creation(stack, py_spy, root / "prof")
                if "burst" in only:
                    from bench import burst

                    print(f"scenarios 2 and 3: {args.burst} creations, then renewals", flush=True)
                    results["burst"] = burst.run(stack, args.burst, root / "burst")
                if "rss" in only:
                    from bench import burst

                    first, last = (int(n) for n in args.rss_issuances.split(","))
                    print(f"worker RSS after {first} and {last} issuances", flush=True)
                    results["worker_rss"] = burst.rss_growth(stack, first, last)
        if "scan" in only:
            sizes = [int(n) for n in args.scan_sizes.split(",")]
            print(f"scenario 4: the renewal scan over {sizes} hosts", flush=True)
            results["scan"] = scan.run(
                sizes, args.cache, root / "scan", certbot if certbot.exists() else None,
                [int(n) for n in (args.certbot_sizes or args.scan_sizes).split(",")],
                py_spy if "profile" in only else None,
            )  # fmt: skip
        if "mail" in only:
            _mail(results, root, args.mail_hosts)
    finally:
        results["wall_seconds"] = round(time.monotonic() - began, 1)
        if previous:
            results["runs_merged"] = [
                *previous.get("runs_merged", [previous.get("taken_at")]),
                results["taken_at"],
            ]
        results["machine"]["load_average_at_end"] = [  # type: ignore[index]
            round(x, 2) for x in os.getloadavg()
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"raw figures: {args.out}", flush=True)
        if args.keep:
            print(f"working directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
