"""``python -m bench.report [results.json]``: the tables of docs/benchmarks.md, from raw figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent / "results" / "latest.json"


def _met(flag: object) -> str:
    return "met" if flag is True else "**not met**" if flag is False else "-"


def _s(value: object) -> str:
    return f"{value:.3f} s" if isinstance(value, float) else str(value)


def issuance(r: dict) -> list[str]:
    i = r["issuance"]
    ratios, met = i["ratios"], i["targets"]["met"]
    rows = [
        f"| creation to served (median of {i['runs']}) | seconds | min - max |",
        "| --- | --- | --- |",
    ]
    for key, label in (
        ("ours_served", "ours: API call -> handshake sees the certificate"),
        ("ours_api_active", "ours: API call -> API says active"),
        ("certbot_served", "`certbot certonly --webroot` + site + reload -> handshake"),
        ("floor_served", "floor: `acme` in-process + site + reload -> handshake"),
        ("floor_protocol_only", "floor: the ACME protocol alone"),
    ):
        if key in i:
            v = i[key]
            rows.append(f"| {label} | {v['median_s']:.3f} | {v['min_s']:.3f} - {v['max_s']:.3f} |")
    rows += [
        "",
        "| ratio | measured | target | |",
        "| --- | --- | --- | --- |",
        f"| ours / floor | {ratios['ours_over_floor']} | <= 4 | "
        f"{_met(met.get('ours_over_floor'))} |",
    ]
    if "ours_over_certbot" in ratios:
        rows.append(
            f"| ours / Certbot | {ratios['ours_over_certbot']} | <= 0.1 | "
            f"{_met(met.get('ours_over_certbot'))} |"
        )
        rows.append(f"| Certbot / floor | {ratios['certbot_over_floor']} | | |")
    return rows


def burst(r: dict) -> list[str]:
    b = r["burst"]
    c, n, met = b["create"], b["renew"], b["targets"]["met"]
    t = b["targets"]
    return [
        f"| {b['hosts']} hosts | ours | floor | ratio (target) | reloads (target) | CA orders |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| created at once | {c['all_served_s']} s ({c['error_answers']} error answers) | "
        f"{b['floor_create']['all_served_s']} s, 1 reload | {b['ratios']['create_over_floor']} "
        f"(<= {t['create_over_floor_at_most']}: {_met(met['create_over_floor'])}) | "
        f"{c['nginx_reloads']} (<= {t['create_reloads_at_most']}: {_met(met['create_reloads'])}) |"
        f" {c['ca_orders']}, {c['duplicate_orders']} duplicates |",
        f"| renewed by one scan | {n['all_served_s']} s (scan job {n['scan_job_s']} s) | "
        f"{b['floor_renew']['all_served_s']} s, 1 reload | {b['ratios']['renew_over_floor']} "
        f"(<= {t['renew_over_floor_at_most']}: {_met(met['renew_over_floor'])}) | "
        f"{n['nginx_reloads']} (<= {t['renew_reloads_at_most']}: {_met(met['renew_reloads'])}) |"
        f" {n['ca_orders']}, {n['hosts_not_at_two_orders']} hosts not at 2 |",
        "",
        "Worker RSS (KiB, main processes): before "
        + json.dumps(c["worker_rss_kib_before"])
        + ", after the creations "
        + json.dumps(c["worker_rss_kib_after"])
        + ", after the renewals "
        + json.dumps(n["worker_rss_kib_after"])
        + ".",
    ]


def scan(r: dict) -> list[str]:
    s = r["scan"]
    rows = [
        "| hosts | scan, nothing due | scan, 1 % due | bare loop | scan / bare | "
        "SQL queries (nothing / 1 %) | peak RSS growth (scan / bare) | `certbot renew` |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, f in s["sizes"].items():
        nd, od, bare = f["nothing_due"], f["one_percent_due"], f["bare_loop"]
        cb = f.get("certbot_renew")
        certbot = f"{cb['median_s']:.2f} s ({cb['ms_per_lineage']} ms/lineage)" if cb else "not run"
        rows.append(
            f"| {n} | {nd['median_s']:.3f} s ({f['ms_per_host_nothing_due']} ms/host) | "
            f"{od['median_s']:.3f} s | {bare['median_s']:.4f} s ({f['ms_per_host_bare']} ms/host)"
            f" | {f['scan_over_bare']} | {nd['sql_queries']} / {od['sql_queries']} | "
            f"{nd['peak_growth_kib']} / {bare['peak_growth_kib']} KiB | {certbot} |"
        )
    if "targets" in s:
        t = s["targets"]
        rows += [
            "",
            "| scan target | measured | target | |",
            "| --- | --- | --- | --- |",
            f"| scan / bare loop at the largest N | {t['scan_over_bare_at_largest']['measured']} | "
            f"<= 1.5 | {_met(t['scan_over_bare_at_largest']['met'])} |",
            f"| growth time(large) / time(small) | {t['growth']['measured']} "
            f"(sizes x{s['growth']['size_ratio']:.0f}) | <= 11 | {_met(t['growth']['met'])} |",
            f"| SQL queries constant in N | {t['sql_constant']['measured']} | equal | "
            f"{_met(t['sql_constant']['met'])} |",
            f"| peak memory flat in N | {s['growth']['peak_growth_kib']} KiB | within 25 % | "
            f"{_met(t['peak_memory_flat']['met'])} |",
        ]
    return rows


def mail(r: dict) -> list[str]:
    m = r["mail"]
    n, ratios = m["hosts"], m["ratios"]

    def reloads(row: dict) -> str:
        logs, counted = row["reloads_in_logs"], row["reloads_in_metrics"]
        agree = "" if logs == counted else f" (metrics: {counted})"
        return f"{logs['nginx']} / {logs['postfix']} / {logs['dovecot']}{agree}"

    def seconds(row: dict, key: str) -> str:
        return f"{row[key]} s" if key in row else "-"

    rows = [
        f"| {n} hosts | nginx serves all | mail ports present all | all active again | "
        "reloads nginx / Postfix / Dovecot | CA orders |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in (
        ("create_mail", "mail hosts created at once"),
        ("create_web", "web hosts created at once"),
        ("renew_web", "web hosts renewed by one scan (baseline)"),
        ("renew_mail", "mail hosts renewed by one scan"),
    ):
        row = m[key]
        scan = f" (scan job {row['scan_job_s']} s)" if "scan_job_s" in row else ""
        orders = f"{row['ca_orders']}" if "ca_orders" in row else "-"
        rows.append(
            f"| {label}{scan} | {seconds(row, 'web_served_s')} | "
            f"{seconds(row, 'mail_presented_s')} | {seconds(row, 'all_active_s')} | "
            f"{reloads(row)} | {orders} |"
        )
    if "floor_renew" in m:
        rows.append(
            f"| floor: {n} names reissued, sites, 1 reload, handshakes | "
            f"{m['floor_renew']['all_served_s']} s | - | - | 1 / - / - | {n} |"
        )
    rows += [
        "",
        f"Mail renewals / web renewals, until all active: {ratios['active_over_web']}; mail "
        f"ports presenting all / nginx serving all the web hosts: "
        f"{ratios['presented_over_web_served']}"
        + (
            f"; mail renewals / floor: {ratios['active_over_floor']} (web renewals / floor: "
            f"{ratios['web_active_over_floor']})."
            if "active_over_floor" in ratios
            else "."
        ),
        f"Postfix: {m['postfix']}; Dovecot {m['dovecot']}; ports checked: "
        + ", ".join(m["mail_ports"])
        + ".",
    ]
    return rows


def profile_rows(title: str, entries: list[dict], limit: int = 10) -> list[str]:
    rows = [f"| {title} | seconds | share |", "| --- | --- | --- |"]
    rows += [f"| `{e['where']}` | {e['seconds']} | {e['share']:.0%} |" for e in entries[:limit]]
    return rows


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    r = json.loads(path.read_text())
    m = r["machine"]
    out = [
        f"Taken {r['taken_at']} with `{r['command']}` in {r['wall_seconds']} s on {m['cpu']}, "
        f"{m['cores']} cores, load average {m['load_average_at_start']} at the start and "
        f"{m['load_average_at_end']} at the end; Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f", {r['certbot']}.",
        "",
    ]
    if "issuance" in r:
        out += ["### 1. Creation to served", "", *issuance(r), ""]
    if "burst" in r:
        out += ["### 2 and 3. Bursts", "", *burst(r), ""]
    if "scan" in r:
        out += ["### 4. The renewal scan", "", *scan(r), ""]
    if "mail" in r:
        out += ["### 5. Mail hosts renewed (Postfix, Dovecot)", "", *mail(r), ""]
    if "worker_rss" in r:
        out += ["### Worker memory", "", "```", json.dumps(r["worker_rss"], indent=1), "```", ""]
    if "profile_creation" in r:
        p = r["profile_creation"]
        out += [
            f"### Profile of {p['runs']} creations (served in {p['served_s']} s)",
            "",
            *profile_rows(
                "modoboa workers: where the chain stands",
                p["modoboa_workers"]["by_own_frame_and_leaf"],
            ),  # noqa: E501
            "",
            *profile_rows("privileged worker", p["privileged_worker"]["by_own_frame_and_leaf"], 6),
            "",
        ]
    print("\n".join(out))


if __name__ == "__main__":
    main()
