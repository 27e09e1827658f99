#!/usr/bin/env python3
"""The WebSocket fan-out tables of BENCHMARKS.md from the runs of `scripts/bench` (ONLY=ws).

    bench/ws_table.py DIR SERVER...

DIR holds SERVER.ROUND.SCENARIO.json, as `signalgate-bench ws-fanout --json` writes them, for the
scenarios 5000 and 10000 (that many subscribers at 100 quotes/s; the 5000 run also measures
memory per idle connection from 1,000 to 5,000) and 1000-RATE (1,000 subscribers at RATE quotes/s).
Prints each server's medians over the rounds, then each against the first server (the `ws` peer).
"""

import collections
import json
import os
import statistics
import sys


def load(directory):
    runs = collections.defaultdict(dict)  # (server, round) → scenario → result
    for name in os.listdir(directory):
        server, rnd, scenario, _ = name.rsplit(".", 3) if name.count(".") >= 3 else (None,) * 4
        if server is None:
            continue
        with open(os.path.join(directory, name)) as f:
            runs[(server, rnd)][scenario] = json.load(f)
    return runs


def figures(scenarios):
    """One round's figures: highest 1,000-subscriber rate with p99 ≤ 5 ms, 5k and 10k latency, memory."""
    best = 0
    for scenario, r in scenarios.items():
        if scenario.startswith("1000-") and r["latency_us"]["p99"] <= 5000 and r["messages_delivered"] > 0:
            best = max(best, r["parameters"]["rate"])
    out = {"rate_1k": best}
    for n in ("5000", "10000"):
        r = scenarios.get(n)
        if r:
            lat = r["latency_us"]
            out[f"p50_{n}"], out[f"p99_{n}"] = lat["p50"] / 1000, lat["p99"] / 1000
            expected = r["messages_expected"] or 1
            out[f"delivered_{n}"] = 100 * r["messages_delivered"] / expected
    per = (scenarios.get("5000") or {}).get("rss_anon_per_connection_bytes")
    if per is not None:
        out["kib"] = per / 1024
    return out


def median(rounds, key):
    values = [r[key] for r in rounds if key in r]
    return statistics.median(values) if values else None


def main():
    directory, servers = sys.argv[1], sys.argv[2:]
    runs = load(directory)
    med = {}
    for s in servers:
        rounds = [figures(sc) for (server, _), sc in sorted(runs.items()) if server == s]
        med[s] = {k: median(rounds, k) for k in ("rate_1k", "p50_5000", "p99_5000", "delivered_5000",
                                                  "p50_10000", "p99_10000", "delivered_10000", "kib")}
        med[s]["rounds"] = len(rounds)

    def f(v, fmt):
        return "–" if v is None else fmt.format(v)

    print("| server | rounds | 1,000 subscribers: highest quotes/s with p99 ≤ 5 ms | 5,000 at 100/s: p50 / p99 (ms) "
          "| 10,000 at 100/s: p50 / p99 (ms), delivered | memory per idle connection (KiB) |")
    print("|---|---|---|---|---|---|")
    for s in servers:
        m = med[s]
        print(f"| {s} | {m['rounds']} | {f(m['rate_1k'], '{:.0f}')} | {f(m['p50_5000'], '{:.1f}')} / "
              f"{f(m['p99_5000'], '{:.1f}')} | {f(m['p50_10000'], '{:.1f}')} / {f(m['p99_10000'], '{:.1f}')}, "
              f"{f(m['delivered_10000'], '{:.1f}')}% | {f(m['kib'], '{:.1f}')} |")
    base = servers[0]
    b = med[base]
    print()
    print(f"Against `{base}` (from the medians above): highest rate ×, 5,000-subscriber p99 ×, 10,000-subscriber p99 ×, memory ×")
    print()
    print("| server | rate | p99 at 5,000 | p99 at 10,000 | memory |")
    print("|---|---|---|---|---|")

    def ratio(a, c):
        return "–" if a is None or c is None or c == 0 else f"{a / c:.2f}"

    for s in servers[1:]:
        m = med[s]
        print(f"| {s} | {ratio(m['rate_1k'], b['rate_1k'])} | {ratio(m['p99_5000'], b['p99_5000'])} | "
              f"{ratio(m['p99_10000'], b['p99_10000'])} | {ratio(m['kib'], b['kib'])} |")


if __name__ == "__main__":
    main()
