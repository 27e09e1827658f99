//! Nothing an answer showed is ever lost or renumbered, checked the way Jepsen checks a register:
//! clients race each other on the real binary while a nemesis kills it with SIGKILL, and every
//! answer they got before the kill is then checked against the node that restarts on the same
//! data directory.
//!
//! In each round, workers send the *same* `signal_id`s at the same moment (one places the order,
//! the others get `200 Idempotent-Replay`) and read back the orders they and the others placed,
//! including ids not yet answered to anyone. The nemesis waits a random moment, then kills the node
//! the instant a replay answer or a read of an unanswered order arrives: the answers most likely to
//! show state still on its way to disk. After the restart:
//! - every order any answer showed exists, with the same symbol, side and quantity, and at least
//!   the fill that answer showed;
//! - every `signal_id` that was answered is answered again with the same order (re-sent: a lost
//!   idempotency record would place a second order with another id).
//!
//! `SIGNALGATE_CRASH_ROUNDS` sets the number of kills (default 50).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{bearer, Conn, Node, JSON};

const WORKERS: usize = 4;

/// What an answer showed of an order.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    symbol: String,
    side: String,
    qty: String,
    filled_qty: String,
}

impl Seen {
    fn of(order: &Value) -> Option<Seen> {
        let s = |k: &str| order[k].as_str().map(str::to_string);
        Some(Seen { symbol: s("symbol")?, side: s("side")?, qty: s("qty")?, filled_qty: s("filled_qty")? })
    }
}

/// Everything the workers were told before the kill.
#[derive(Default)]
struct Observed {
    /// Order id → the most filled view an answer gave of it.
    orders: BTreeMap<u64, Seen>,
    /// signal_id → the order id its answers named, and the signal's side.
    signals: BTreeMap<String, (u64, &'static str)>,
    answers: u64,
}

impl Observed {
    fn order(&mut self, id: u64, seen: Seen) {
        self.answers += 1;
        let e = self.orders.entry(id).or_insert_with(|| seen.clone());
        assert_eq!((&e.symbol, &e.side, &e.qty), (&seen.symbol, &seen.side, &seen.qty), "order {id} changed");
        if seen.filled_qty > e.filled_qty {
            e.filled_qty = seen.filled_qty;
        }
    }
}

fn signal_body(id: &str, side: &str) -> String {
    json!({"symbol": "BTC-USD", "action": side, "qty": "0.001", "signal_id": id}).to_string()
}

/// One worker: the same signal ids as every other worker, in the same order, then reads.
fn work(
    node_http: std::net::SocketAddr,
    key: String,
    round: u32,
    stop: Arc<AtomicBool>,
    risky: Arc<AtomicBool>,
    highest: Arc<AtomicU64>,
    seen: Arc<Mutex<Observed>>,
) {
    let auth = bearer(&key);
    let mut conn = Conn::open(node_http);
    let mut k = 0u32;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let id = format!("r{round}-s{k}");
        let side = if k.is_multiple_of(2) { "sell" } else { "buy" };
        let Ok(r) =
            conn.try_send("POST", "/v1/signals", &[JSON, ("Authorization", &auth)], signal_body(&id, side).as_bytes())
        else {
            return;
        };
        if r.status == 200 || r.status == 201 {
            let v = r.json();
            if let (Some(oid), Some(s)) = (v["order"]["id"].as_u64(), Seen::of(&v["order"])) {
                let mut o = seen.lock().unwrap();
                o.order(oid, s);
                o.signals.insert(id.clone(), (oid, side));
                highest.fetch_max(oid, Ordering::Relaxed);
            }
            if r.header("idempotent-replay").is_some() {
                risky.store(true, Ordering::Relaxed);
            }
        } else {
            assert!(r.status == 503 || r.status == 429, "{}: {}", r.status, r.body);
        }
        // Read orders, including the next ids, which other workers may be placing right now.
        let top = highest.load(Ordering::Relaxed);
        for oid in [top, top + 1, top + 2] {
            let Ok(r) = conn.try_send("GET", &format!("/v1/orders/{oid}"), &[("Authorization", &auth)], b"") else {
                return;
            };
            if r.status == 200 {
                if let Some(s) = Seen::of(&r.json()) {
                    seen.lock().unwrap().order(oid, s);
                    if oid > top {
                        risky.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// Checks a restarted node against what was observed before its kill.
fn check(node: &Node, key: &str, observed: &Observed, round: u32) {
    let auth = bearer(key);
    let mut conn = node.conn();
    for (id, before) in &observed.orders {
        let r = conn.send("GET", &format!("/v1/orders/{id}"), &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 200, "round {round}: order {id} was shown ({before:?}) and is gone: {}", r.body);
        let after = Seen::of(&r.json()).unwrap();
        assert_eq!(
            (&after.symbol, &after.side, &after.qty),
            (&before.symbol, &before.side, &before.qty),
            "round {round}: order {id} is another order after the restart"
        );
        assert!(after.filled_qty >= before.filled_qty, "round {round}: order {id} lost fills: {before:?} → {after:?}");
    }
    for (signal, (order, side)) in &observed.signals {
        let r =
            conn.send("POST", "/v1/signals", &[JSON, ("Authorization", &auth)], signal_body(signal, side).as_bytes());
        assert_eq!(
            (r.status, r.json()["order"]["id"].as_u64()),
            (200, Some(*order)),
            "round {round}: signal {signal} was answered with order {order}; after the restart: {}",
            r.body
        );
    }
}

#[test]
fn answers_given_before_a_kill_9_survive_it_while_clients_race_on_duplicates_and_reads() {
    let rounds: u32 = std::env::var("SIGNALGATE_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    // A snapshot now and then, so that restarts also go through the snapshot path.
    let env = [("SIGNALGATE_JOURNAL_SNAPSHOT_EVERY_EVENTS", "5000")];
    let mut node = Node::start(&env);
    let limits =
        json!({"requests_per_minute": 10_000_000, "max_orders_per_second": 1_000_000, "max_open_orders": 10_000});
    let (_, key) = node.account("enterprise", "100000000", limits);
    node.wait_for_quote(&key, "BTC-USD");
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut total_answers = 0;
    for round in 1..=rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let risky = Arc::new(AtomicBool::new(false));
        let highest = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Observed::default()));
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (k, stop, risky, highest, seen) =
                    (key.clone(), stop.clone(), risky.clone(), highest.clone(), seen.clone());
                let addr = node.http;
                std::thread::spawn(move || work(addr, k, round, stop, risky, highest, seen))
            })
            .collect();
        // The nemesis: a random moment, then the next risky answer (or a deadline).
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(20 + rng % 180));
        let deadline = Instant::now() + Duration::from_secs(1);
        risky.store(false, Ordering::Relaxed);
        while !risky.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        let dir = node.crash();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        node = Node::start_in(dir, &env);
        let observed = std::mem::take(&mut *seen.lock().unwrap());
        assert!(observed.answers > 0 || round > 1, "round {round}: the workers got no answer before the kill");
        total_answers += observed.answers;
        check(&node, &key, &observed, round);
    }
    assert!(total_answers > u64::from(rounds) * 10, "too few answers were checked: {total_answers}");
    eprintln!("{rounds} kills; {total_answers} answers checked against the restarted node");
}
