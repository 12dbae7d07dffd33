#!/usr/bin/env python3
"""Writes BENCHMARKS.md and the latency chart from bench/run.sh's results.

    python3 bench/report.py RESULTS_DIR BENCHMARKS.md CHART.svg

Standard library only. Every number comes from RESULTS_DIR.
"""

import json
import re
import sys
from pathlib import Path


def load(results: Path, name: str):
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def text(results: Path, name: str) -> str:
    path = results / name
    return path.read_text() if path.exists() else ""


def pgbench(results: Path, name: str):
    out = text(results, f"pgbench-{name}.txt")
    tps = re.search(r"tps = ([0-9.]+)", out)
    lat = re.search(r"latency average = ([0-9.]+) ms", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    return {
        "tps": float(tps.group(1)) if tps else None,
        "latency_ms": float(lat.group(1)) if lat else None,
        "failed": int(failed.group(1)) if failed else None,
    }


def n(x, digits=0):
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def verdict(ok):
    return "**met**" if ok else "**missed**"


def server_errors(run):
    if not run:
        return None
    return sum(c for k, c in run["outcomes"].items() if k.startswith("5") or k.startswith("transport"))


def books_ok(run):
    if not run:
        return False
    rec = run.get("reconcile")
    return (
        run["books"]["mismatch_count"] == 0
        and run.get("never_definite_writes", 0) == 0
        and (rec is None or rec["discrepancies"] == 0)
    )


def books_text(run):
    if not run:
        return "not run"
    b = run["books"]
    rec = run.get("reconcile")
    s = f"{b['users_checked']:,} users checked, {b['mismatch_count']} mismatches"
    if run.get("never_definite_writes"):
        s += f" ({run['never_definite_writes']:,} writes never answered definitely)"
    if rec:
        s += (
            f"; reconciliation: {rec['wallets']:,} wallets, {rec['entries']:,} journal entries, "
            f"{rec['discrepancies']} discrepancies"
        )
    return s


def latency_row(name, l):
    return f"| {name} | {l['count']:,} | {l['p50']:.1f} | {l['p95']:.1f} | {l['p99']:.1f} | {l['max']:.1f} |"


def mixed_section(md, run, title):
    md.append(f"## {run['vus']:,} users, {title}")
    md.append("")
    md.append(
        f"Each user holds its own keep-alive connection and loops: read wallets, read orders, deposit, read "
        f"wallets, read the price, open an order, read it, read wallets, close it, read closed orders, read "
        f"transactions, withdraw, read wallets — 13 requests, 4 of them writes (31 %), with a think time of "
        f"{run['think_ms'][0] / 1000:g}–{run['think_ms'][1] / 1000:g} s between requests. "
        f"Ramp-up {run['ramp_s']:.0f} s, then {run['duration_s']:.0f} s at full strength. A request that is "
        f"not answered definitely (refused connection, 503 `overloaded` or `unavailable`, 409 in flight) is sent "
        f"again, a write with the same Idempotency-Key, after its `Retry-After`."
    )
    md.append("")
    md.append(
        f"- Requests: {run['requests']:,} in {run['elapsed_s']:.0f} s; steady {run['steady_rps']:,.0f} /s "
        f"after the ramp; failed: **{run['failed']}**"
    )
    if "served" in run:
        md.append(
            f"- Served (definite answers): {run['served']:,}, steady **{run['steady_served_rps']:,.0f} /s**, "
            f"p99 {run['latency_served']['p99']:.1f} ms; shed (503 `overloaded`): **{run['shed']:,}**, "
            f"answered in p99 {run['latency_shed']['p99']:.1f} ms; unavailable: {run['unavailable']:,}; "
            f"outage {run['outage_s']:.1f} s; never definite: {run['never_definite_writes']} writes, "
            f"{run['never_definite_reads']} reads"
        )
    l = run["latency"]
    md.append(f"- Latency ms, every attempt: p50 {l['p50']:.1f}, p95 {l['p95']:.1f}, p99 **{l['p99']:.1f}**, max {l['max']:.1f}")
    md.append(f"- Outcomes: {run['outcomes']}")
    bw = run["begin_wait"]
    md.append(
        f"- Pool wait (connection + `BEGIN`, {bw['instances']} instances): mean {bw['mean_ms']:.2f} ms, "
        f"{bw['over_10ms'] * 100:.1f} % over 10 ms"
    )
    md.append(f"- Books: {books_text(run)}")
    md.append("")
    md.append("| operation (served) | requests | p50 ms | p95 ms | p99 ms | max ms |")
    md.append("|---|---|---|---|---|---|")
    for op, lat in run["per_op"].items():
        md.append(latency_row(op, lat))
    md.append("")


def sql_script(name):
    path = Path(__file__).resolve().parent / "pgbench" / name
    return path.read_text().rstrip() if path.exists() else f"-- {name} not found"


def chart(run, path: Path):
    """p50/p99 latency and throughput per second of the mixed run, as SVG."""
    points = run["timeline"] if run else []
    w, h, left, right, top, bottom = 960, 420, 70, 70, 40, 50
    pw, ph = w - left - right, h - top - bottom
    if not points:
        path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="60"><text x="10" y="30">no data</text></svg>\n')
        return
    secs = max(p["second"] for p in points) or 1
    lat_max = max(max(p["p99"] for p in points), 1.0)
    rps_max = max(max(p["requests"] for p in points), 1)

    def x(s):
        return left + pw * s / secs

    def y_lat(v):
        return top + ph - ph * v / lat_max

    def y_rps(v):
        return top + ph - ph * v / rps_max

    def line(key, fy, color, width=1.5):
        pts = " ".join(f"{x(p['second']):.1f},{fy(p[key]):.1f}" for p in points if p["requests"])
        return f'<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{pts}"/>'

    ticks = []
    for i in range(6):
        v = lat_max * i / 5
        ty = y_lat(v)
        ticks.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{left + pw}" y2="{ty:.1f}" stroke="#ddd"/>')
        ticks.append(f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end" font-size="11">{v:.0f}</text>')
        r = rps_max * i / 5
        ticks.append(f'<text x="{left + pw + 6}" y="{y_rps(r) + 4:.1f}" font-size="11" fill="#888">{r:.0f}</text>')
    for i in range(11):
        s = secs * i / 10
        ticks.append(f'<text x="{x(s):.1f}" y="{top + ph + 18}" text-anchor="middle" font-size="11">{s:.0f}</text>')
    failed = [p for p in points if p["failed"]]
    marks = "".join(
        f'<line x1="{x(p["second"]):.1f}" y1="{top}" x2="{x(p["second"]):.1f}" y2="{top + ph}" stroke="#d00" stroke-opacity="0.4"/>'
        for p in failed
    )
    title = (
        f"Mixed run: {run['vus']:,} users, latency per second (ms, left) and requests per second (right)"
    )
    svg = f"""<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">
<rect width="{w}" height="{h}" fill="white"/>
<text x="{left}" y="22" font-size="14">{title}</text>
{''.join(ticks)}
<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>
{line('requests', y_rps, '#bbb', 1)}
{line('p50', y_lat, '#1f77b4')}
{line('p99', y_lat, '#ff7f0e')}
{marks}
<text x="{left + pw / 2}" y="{h - 10}" text-anchor="middle" font-size="12">seconds since start (ramp-up {run['ramp_s']:.0f} s)</text>
<text x="{left + 10}" y="{top + 16}" font-size="12" fill="#1f77b4">p50</text>
<text x="{left + 50}" y="{top + 16}" font-size="12" fill="#ff7f0e">p99</text>
<text x="{left + 90}" y="{top + 16}" font-size="12" fill="#888">requests/s</text>
<text x="{left + 190}" y="{top + 16}" font-size="12" fill="#d00">{'red: seconds with failed requests' if failed else 'no failed requests'}</text>
</svg>
"""
    path.write_text(svg)


def main():
    results, md_path, svg_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    machine = text(results, "machine.txt").strip()
    seed = re.search(r"seed_ms: (\d+)", text(results, "seed.txt"))
    seed_s = int(seed.group(1)) / 1000 if seed else None
    pg_dep, pg_read, pg_hot = pgbench(results, "deposit"), pgbench(results, "read"), pgbench(results, "hot")
    pg_dep1, pg_hot1 = pgbench(results, "deposit-1rt"), pgbench(results, "hot-1rt")
    dep, read, hot, mixed, fast, sqlite = (
        load(results, k) for k in ("deposit", "read", "hot", "mixed", "mixed-fast", "sqlite")
    )
    chart(mixed, svg_path)

    dep_ratio = dep["steady_rps"] / pg_dep["tps"] if dep and pg_dep["tps"] else None
    dep_ratio_1rt = dep["steady_rps"] / pg_dep1["tps"] if dep and pg_dep1["tps"] else None
    read_ratio = read["steady_rps"] / pg_read["tps"] if read and pg_read["tps"] else None
    quick = "quick: 1" in machine

    rows = []
    rows.append(
        f"| Deposits, 50 concurrent, vs pgbench on the same SQL | ≥ 0.8 × | "
        f"{n(dep and dep['steady_rps'])} /s vs {n(pg_dep['tps'])} TPS = **{n(dep_ratio, 2)} ×** "
        f"(vs the same work in 1 round trip, {n(pg_dep1['tps'])} TPS: {n(dep_ratio_1rt, 2)} ×) | "
        f"{verdict(dep_ratio is not None and dep_ratio >= 0.8)} |"
    )
    rows.append(
        f"| Wallet reads, 50 concurrent | ≥ 20,000 /s, p99 < 20 ms | "
        f"{n(read and read['steady_rps'])} /s, p99 {n(read and read['latency']['p99'], 1)} ms "
        f"(pgbench: {n(pg_read['tps'])} /s) | "
        f"{verdict(bool(read) and read['steady_rps'] >= 20000 and read['latency']['p99'] < 20)} |"
    )
    if mixed:
        mixed_ok = mixed["failed"] == 0 and mixed["latency"]["p99"] < 250 and books_ok(mixed) and mixed["duration_s"] >= 600
        rows.append(
            f"| {mixed['vus']:,} users, mixed, {mixed['duration_s'] / 60:.0f} min | 0 failed, p99 < 250 ms, books exact | "
            f"{mixed['failed']:,} failed of {mixed['requests']:,}; p99 {mixed['latency']['p99']:.1f} ms; "
            f"books {'exact' if books_ok(mixed) else '**differ**'} | {verdict(mixed_ok)} |"
        )
    if fast:
        shed_p99 = fast["latency_shed"]["p99"] if fast.get("shed") else 0.0
        fast_ok = (
            fast["failed"] == 0
            and books_ok(fast)
            and fast["latency_served"]["p99"] < 250
            and shed_p99 < 1000
        )
        rows.append(
            f"| {fast['vus']:,} users, mixed, {fast['think_ms'][0] / 1000:g}–{fast['think_ms'][1] / 1000:g} s think, "
            f"{fast['duration_s'] / 60:.0f} min | 0 failed, served p99 < 250 ms, shed at once (p99 < 1 s), books exact | "
            f"served {n(fast['steady_served_rps'])} /s, p99 {fast['latency_served']['p99']:.1f} ms; "
            f"shed {fast['shed']:,}, p99 {shed_p99:.1f} ms; {fast['failed']:,} failed; "
            f"books {'exact' if books_ok(fast) else '**differ**'} | {verdict(fast_ok)} |"
        )
    if hot:
        hot_ok = hot["steady_rps"] >= 1500 and server_errors(hot) == 0 and books_ok(hot)
        rows.append(
            f"| One hot wallet, 500 depositors | ≥ 1,500 /s, no 5xx, exact balance | "
            f"{n(hot['steady_rps'])} /s (pgbench, same SQL on one row: {n(pg_hot['tps'])} TPS, "
            f"in 1 round trip: {n(pg_hot1['tps'])} TPS); "
            f"{server_errors(hot)} 5xx; balance {'exact' if books_ok(hot) else '**differs**'} | "
            f"{verdict(hot_ok)} |"
        )

    md = []
    md.append("# Benchmarks")
    md.append("")
    md.append(
        "Generated by `bench/run.sh` (then `bench/report.py`); do not edit by hand. "
        "Every number below comes from one run of that script on the machine described at the end."
    )
    if quick:
        md.append("")
        md.append("> **This is a quick rehearsal (`BENCH_QUICK=1`)**: fewer users and shorter runs than the targets ask for.")
    md.append("")
    md.append("## Headline")
    md.append("")
    md.append("| Target | Goal | Measured | |")
    md.append("|---|---|---|---|")
    md.extend(rows)
    md.append("")
    md.append(
        "All of it runs on **one 2-core machine**: PostgreSQL, the server and the load generator "
        "share the two cores, so every API number includes the generator's own CPU and every pgbench "
        "number includes pgbench's. The ratios compare like with like (the same SQL, the same machine, "
        "the same minute)."
    )
    md.append("")
    md.append("![latency over time](bench/latency.svg)")
    md.append("")

    md.append("## Deposits: the API against the database's own limit")
    md.append("")
    md.append(
        "`bench/pgbench/deposit.sql` sends the statements PostgreSQL's log shows for one API deposit: "
        "the Idempotency-Key claim (its own autocommit statement), then `BEGIN`, the wallet `SELECT … FOR UPDATE`, "
        "the version-guarded `UPDATE`, the journal `INSERT`, the key's completion `UPDATE`, `COMMIT` — "
        "7 round trips and 2 commits, prepared, 50 clients. `bench/pgbench/deposit-1rt.sql` does the same work "
        "(lock and update the wallet, insert the journal row, record the key with its response) in one statement, "
        "a data-modifying CTE: 1 round trip and 1 commit, the ceiling for a deposit that is one transaction."
    )
    md.append("")
    md.append("| | per second | mean latency ms | p99 ms | failed |")
    md.append("|---|---|---|---|---|")
    md.append(f"| pgbench, deposit SQL (7 round trips) | {n(pg_dep['tps'])} | {n(pg_dep['latency_ms'], 1)} | | {pg_dep['failed']} |")
    md.append(f"| pgbench, deposit in 1 round trip | {n(pg_dep1['tps'])} | {n(pg_dep1['latency_ms'], 1)} | | {pg_dep1['failed']} |")
    if dep:
        md.append(
            f"| API `POST /api/v1/wallets/deposit` | {n(dep['steady_rps'])} | {dep['latency']['mean']:.1f} | "
            f"{dep['latency']['p99']:.1f} | {dep['failed']} |"
        )
    md.append(f"| pgbench, deposit SQL, all 50 clients on one wallet | {n(pg_hot['tps'])} | {n(pg_hot['latency_ms'], 1)} | | {pg_hot['failed']} |")
    md.append(f"| pgbench, deposit in 1 round trip, all 50 clients on one wallet | {n(pg_hot1['tps'])} | {n(pg_hot1['latency_ms'], 1)} | | {pg_hot1['failed']} |")
    md.append(f"| pgbench, wallet-read SQL | {n(pg_read['tps'])} | {n(pg_read['latency_ms'], 1)} | | {pg_read['failed']} |")
    if read:
        md.append(
            f"| API `GET /api/v1/users/{{id}}/wallets` | {n(read['steady_rps'])} | {read['latency']['mean']:.1f} | "
            f"{read['latency']['p99']:.1f} | {read['failed']} |"
        )
    md.append("")
    if dep:
        md.append(
            f"Deposit ratio **{n(dep_ratio, 2)} ×** (API / 7 round trips), **{n(dep_ratio_1rt, 2)} ×** "
            f"(API / 1 round trip); read ratio **{n(read_ratio, 2)} ×**. "
            f"Pool wait during the deposit run (time to get a connection and `BEGIN`): "
            f"mean {dep['begin_wait']['mean_ms']:.2f} ms, {dep['begin_wait']['over_10ms'] * 100:.1f} % over 10 ms. "
            f"Books after the deposit run: {books_text(dep)}."
        )
        md.append("")

    for name, what in (("deposit.sql", "7 round trips"), ("deposit-1rt.sql", "1 round trip")):
        md.append(f"<details><summary><code>bench/pgbench/{name}</code> ({what})</summary>")
        md.append("")
        md.append("```sql")
        md.append(sql_script(name))
        md.append("```")
        md.append("")
        md.append("</details>")
        md.append("")

    md.append("## What limits it")
    md.append("")
    md.append(
        "- **Deposits are bound by PostgreSQL's commits**: each one waits for its WAL flush, and pgbench on the "
        "same SQL shows the ceiling. What the API adds per deposit is CPU (HTTP parsing, JSON, the JWT check, "
        "SHA-256 of the request and of the journal entry, the audit log line) on the same two cores the "
        "database needs; at 50 connections that CPU is taken from PostgreSQL, which is why the ratio is below 1."
    )
    md.append(
        "- **Reads**: a wallet read is one indexed query; the API's cost per read is HTTP + JSON + JWT + the "
        "request log line, several times the query's. 20,000 reads/s with p99 < 20 ms is not reachable on two "
        "cores shared with the database and the load generator; a profile (`perf record -e cpu-clock -g -p "
        "<server pid>`, taken during development) is flat: kernel TCP send/receive, memcpy, allocation, with no "
        "single hot spot left after switching the allocator to mimalloc (see the git log for before/after)."
    )
    md.append(
        "- **The hot wallet** serialises on one row lock by design (no lost update): the lock is held from the "
        "`SELECT … FOR UPDATE` until the `COMMIT` has flushed the WAL, so its throughput is one commit after "
        f"another, whatever the number of depositors. pgbench running the same SQL on one row reaches "
        f"{n(pg_hot['tps'])} TPS, and the same work in one round trip {n(pg_hot1['tps'])} TPS: that is the "
        "database's own ceiling for this transaction on this disk, and the "
        "1,500/s target is above it. Reaching it needs fewer commits per deposit, not a faster server: batching "
        "the deposits waiting on one wallet into one transaction (one lock, N journal entries, N key "
        "completions, one commit). That is not built; it changes the idempotency phases and deserves its own issue."
    )
    md.append(
        "- **33,000 connections**: a process here may hold at most 20,000 open files (hard limit, no "
        "CAP_SYS_RESOURCE), so the mixed run uses two server instances sharing the port with SO_REUSEPORT "
        "(`LEDGER_LISTEN_REUSE_PORT=true`), each with a pool of 25: 50 PostgreSQL connections in all. The "
        "generator runs as two processes (`--shards 2`) using four loopback source addresses."
    )
    md.append("")

    if hot:
        md.append("## One hot wallet, 500 concurrent depositors")
        md.append("")
        md.append(
            f"{n(hot['steady_rps'])} deposits/s into one wallet; latency p50 {hot['latency']['p50']:.1f} ms, "
            f"p99 {hot['latency']['p99']:.1f} ms, max {hot['latency']['max']:.1f} ms; outcomes {hot['outcomes']}; "
            f"pool wait mean {hot['begin_wait']['mean_ms']:.1f} ms. Books: {books_text(hot)}."
        )
        md.append("")

    if mixed:
        mixed_section(md, mixed, "mixed workload")
    if fast:
        mixed_section(md, fast, "mixed workload, fast think: more than can be served")

    if sqlite:
        md.append("## SQLite (the default), moderate load")
        md.append("")
        l = sqlite["latency"]
        md.append(
            f"{sqlite['vus']} users on the mixed loop with {sqlite['think_ms'][0]}–{sqlite['think_ms'][1]} ms think "
            f"time for {sqlite['duration_s']:.0f} s: {sqlite['requests']:,} requests, {sqlite['steady_rps']:,.0f} /s, "
            f"failed {sqlite['failed']}; latency p50 {l['p50']:.1f} ms, p99 {l['p99']:.1f} ms, max {l['max']:.1f} ms. "
            f"SQLite has one writer at a time; it suits a single node and development, not the 33,000-user target. "
            f"Books: {books_text(sqlite)}."
        )
        md.append("")

    md.append("## Seeding")
    md.append("")
    md.append(f"`ledger seed-load` created the users (live wallet funded, demo wallet opened, both journaled) in {n(seed_s, 1)} s.")
    md.append("")
    md.append("## Machine and commands")
    md.append("")
    md.append("```")
    md.append(machine)
    md.append("```")
    md.append("")
    md.append("Everything above: `bench/run.sh` (about 30 minutes). Its steps, runnable one by one:")
    md.append("")
    md.append("```sh")
    md.append("ledger seed-load --users 33000 --balance 1000 --out bench/results/users.json")
    md.append("pgbench -n -M prepared -c 50 -j 2 -T 30 -D users=33000 -f bench/pgbench/deposit.sql ledger_bench")
    md.append("pgbench -n -M prepared -c 50 -j 2 -T 30 -D users=33000 -f bench/pgbench/read.sql ledger_bench")
    md.append("pgbench -n -M prepared -c 50 -j 2 -T 30 -D users=33000 -f bench/pgbench/deposit-1rt.sql ledger_bench")
    md.append("pgbench -n -M prepared -c 50 -j 2 -T 30 -D users=1 -f bench/pgbench/deposit.sql ledger_bench")
    md.append("pgbench -n -M prepared -c 50 -j 2 -T 30 -D users=1 -f bench/pgbench/deposit-1rt.sql ledger_bench")
    md.append("# (pgbench runs on a copy: CREATE DATABASE ledger_bench_pgbench TEMPLATE ledger_bench)")
    md.append("loadgen --users-file bench/results/users.json --scenario deposit --vus 50 --duration 30")
    md.append("loadgen --users-file bench/results/users.json --scenario read --vus 50 --duration 30")
    md.append("loadgen --users-file bench/results/users.json --scenario hot --vus 500 --ramp 2 --duration 30")
    md.append("LEDGER_LISTEN_REUSE_PORT=true LEDGER_DB_MAX_CONNECTIONS=25 ledger serve   # twice")
    md.append("loadgen --users-file bench/results/users.json --scenario mixed --vus 33000 --shards 2 \\")
    md.append("  --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 --ramp 120 --duration 600 \\")
    md.append("  --think-min-ms 20000 --think-max-ms 40000 --timeout 60 --database-url postgres://…/ledger_bench")
    md.append("# the same again with --duration 300 --think-min-ms 3000 --think-max-ms 6000 (fresh servers)")
    md.append("```")
    md.append("")
    md.append(
        "The server runs with `LEDGER_RATE_LIMIT_PER_SECOND=0` (every deposit comes from one service principal) "
        "and its normal `info` logging to a file. The raw reports (with per-second timelines) are in `bench/results/`."
    )
    md_path.write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
