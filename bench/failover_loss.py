#!/usr/bin/env python3
"""What a cluster's kill -9s cost in answered signals (scripts/bench, "failover").

Sends signals with signal ids from 20 threads at RATE per second in all, spread over six
accounts, to the cluster's nodes (a refused connection goes to the next node; 502 and 503, an
account moving, are sent again with the same id until answered, for at most 10 s). Meanwhile the
caller kills owners. When the load ends, every answered signal id is sent again: a replay of the
same order means the answer held; a new order means the answer was lost in a failover (what
cluster.ack = "local" risks), a different replayed order that it was done twice.

    failover_loss.py PORTS ADMIN_PORT TOKEN SECONDS RATE OUT.json
PORTS: the nodes' HTTP ports, comma-separated; ADMIN_PORT: one node's admin port.
"""

import http.client
import json
import sys
import threading
import time

ports = [int(p) for p in sys.argv[1].split(",")]
admin_port, token, seconds, rate, out = int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
WORKERS = 20


def admin(path, body):
    c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    c.request("POST", path, json.dumps(body), {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    assert r.status == 201, data
    return data


limits = {"requests_per_minute": 600000, "max_orders_per_second": 1000, "max_open_orders": 1000}
keys = []
for i in range(6):
    account = admin("/admin/accounts", {"name": f"loss-{i}", "tier": "pro", "cash": "1000000", "limits": limits})
    keys.append(admin(f"/admin/accounts/{account['id']}/keys", {})["key"])


class Sender:
    """Keep-alive connections to the nodes; sends to the next node when one refuses."""

    def __init__(self, first):
        self.at, self.conns = first, {}

    def send(self, key, body):
        """The status and body of the first answer from a node, or None when none answered."""
        for _ in range(len(ports)):
            port = ports[self.at % len(ports)]
            try:
                c = self.conns.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                self.conns[port] = c
                c.request("POST", "/v1/signals", body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
                r = c.getresponse()
                return r.status, r.read(), r.getheader("Idempotent-Replay")
            except (OSError, http.client.HTTPException):
                self.conns.pop(port, None)
                self.at += 1
        return None


answered, gave_up, lock = [], [0], threading.Lock()
stop_at = time.monotonic() + seconds


def worker(w):
    sender, i, started = Sender(w), 0, time.monotonic()
    while time.monotonic() < stop_at:
        key = keys[(w + WORKERS * i) % len(keys)]
        sid = f"w{w}-{i}"
        side = "buy" if i % 2 == 0 else "sell"
        body = json.dumps({"symbol": "BTC-USD", "action": side, "qty": "0.0001", "signal_id": sid})
        deadline = time.monotonic() + 10
        while True:
            r = sender.send(key, body)
            if r and r[0] in (200, 201):
                with lock:
                    answered.append((key, body, json.loads(r[1])["order"]["id"]))
                break
            if r and r[0] not in (502, 503):
                sys.exit(f"signal {sid}: {r[0]} {r[1][:300]!r}")
            if time.monotonic() > deadline:
                with lock:
                    gave_up[0] += 1
                break
            time.sleep(0.02)
        i += 1
        wait = started + i * WORKERS / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)


threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
started = time.monotonic()
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.monotonic() - started

lost = twice = 0
sender = Sender(0)
for key, body, order in answered:
    while True:
        r = sender.send(key, body)
        if r and r[0] in (200, 201):
            break
        time.sleep(0.05)
    now = json.loads(r[1])["order"]["id"]
    if r[2] != "true":
        lost += 1
    elif now != order:
        twice += 1
orders = [o for _, _, o in answered]
twice += len(orders) - len(set(orders))
summary = {"answered": len(answered), "rate": len(answered) / elapsed, "gave_up": gave_up[0], "lost": lost, "twice": twice}
json.dump(summary, open(out, "w"))
