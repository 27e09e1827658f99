#!/usr/bin/env python3
"""Latency of the history API's reads, one request at a time over one keep-alive connection.

    bench/history_reads.py HOST:PORT KEY REQUESTS

For each query (the default window of candles of every width for S1-USD, and performance over 90
days for the key's account): 10 requests to warm up, then REQUESTS timed ones. Prints p50, p99
and the slowest, with what the last answer held, so a run that answered nothing shows it.
"""

import http.client
import json
import sys
import time

QUERIES = [
    ("candles 1m, default window (500 minutes)", "/v1/market/S1-USD/candles?interval=1m"),
    ("candles 1h, default window (500 hours)", "/v1/market/S1-USD/candles?interval=1h"),
    ("candles 1d, default window (500 days)", "/v1/market/S1-USD/candles?interval=1d"),
    ("candles 1w, default window (500 weeks)", "/v1/market/S1-USD/candles?interval=1w"),
    ("performance, 90 days", "/v1/performance?period=90d"),
]


def main():
    target, key, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    conn = http.client.HTTPConnection(target, timeout=30)
    headers = {"Authorization": f"Bearer {key}"}

    def get(path):
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            sys.exit(f"{path}: {r.status} {body.decode()}")
        return json.loads(body)

    for name, path in QUERIES:
        for _ in range(10):
            get(path)
        took = []
        for _ in range(requests):
            started = time.perf_counter()
            answer = get(path)
            took.append((time.perf_counter() - started) * 1e3)
        took.sort()
        q = lambda p: took[min(len(took) - 1, int(p * len(took)))]
        if "candles" in answer:
            held = f"{len(answer['candles'])} candles, {sum(c['quotes'] for c in answer['candles'])} quotes"
        else:
            held = f"{answer['trades']} fills over {len(answer['daily'])} days"
        print(f"{name:44} p50 {q(0.5):7.2f} ms  p99 {q(0.99):7.2f} ms  max {took[-1]:7.2f} ms  ({held})")


if __name__ == "__main__":
    main()
