//! `cargo bench --bench journal_path`: what the journal costs a signal, and how long a restart
//! takes.
//!
//! 1. Signal-to-order with the journal on, per fsync policy: the real `Node::handle` and journal
//!    on a glommio executor, one signal at a time, each answered only once its events are
//!    durable (as over HTTP, without the sockets). The signal-to-order clock runs from the parsed
//!    request to the order handed to the venue, so it includes the append (and, under `always`,
//!    the wait for the sync thread's fdatasync).
//! 2. Restart: a node is opened on a journal of 1,000,000 events (replay, and the journal opened
//!    for appending), without and with a snapshot at its end.
//!
//! The executor pins itself as the node's hot core (core 0 by default) and the journal's threads
//! run on the fan-out core (core 1), as in the node: `cargo bench --bench journal_path`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use signalgate::api::{Method, Request};
use signalgate::config::Config;
use signalgate::engine::market::Quote;
use signalgate::engine::types::SymbolId;
use signalgate::journal::{self, FsyncPolicy};
use signalgate::node::{follow_syncs, Node};

#[path = "fixture.rs"]
#[allow(dead_code)]
mod fixture;

#[global_allocator]
static GLOBAL: signalgate::alloc::Allocator = signalgate::alloc::Allocator;

/// Signals from the fixture through the real journal into `dir`, until `count` signals or
/// `events` events; returns the signal-to-order histogram (ns) and the mean append (ns).
fn drive(dir: &std::path::Path, policy: FsyncPolicy, count: usize, events: u64) -> (Histogram<u64>, u64) {
    let dir = dir.to_path_buf();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            fixture::pin_as_the_hot_core();
            let f = fixture::Fixture::in_dir(64 * 1024, 1, 256, &dir, policy);
            let fixture::Fixture { node, routes, auth, bodies, mut resp, mut now, .. } = f;
            let node = Rc::new(node);
            let syncs = (policy == FsyncPolicy::Always).then(|| glommio::spawn_local(follow_syncs(node.clone())));
            let mut s2o = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
            let mut i = 0;
            while i < count && node.borrow().engine.last_seq() < events {
                now += 1_000_000;
                if i % 1000 == 0 {
                    for (sym, mid) in [(0u16, 6_500_000i64), (1, 320_000)] {
                        let q = Quote {
                            symbol: SymbolId(sym),
                            bid: mid - 1,
                            ask: mid + 1,
                            bid_size: 1 << 30,
                            ask_size: 1 << 30,
                            ts: now,
                        };
                        node.borrow_mut().apply_quote(q, now);
                    }
                }
                let mut req = Request::new(Method::Post, "/v1/signals");
                req.authorization = Some(auth[0].as_bytes());
                req.content_type = Some(b"application/json");
                req.body = &bodies[i % bodies.len()];
                signalgate::node::serve(&node, &routes, Ok(&req), &mut resp, now).await;
                assert!(resp.status < 300, "{}", String::from_utf8_lossy(&resp.body));
                if let Some(ns) = resp.signal_to_order_ns {
                    s2o.saturating_record(ns);
                }
                i += 1;
            }
            let append_ns = {
                let n = node.borrow();
                let c = n.journal.counters();
                let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                get(&c.append_ns) / get(&c.appends).max(1)
            };
            node.borrow_mut().journal.close();
            if let Some(syncs) = syncs {
                syncs.await;
            }
            (s2o, append_ns)
        })
        .unwrap()
        .join()
        .unwrap()
}

fn main() {
    // This thread plays the hot core: its large tables are mapped when they are made, as in the node.
    signalgate::alloc::map_large_blocks_on_this_thread();
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n, n_always, replay_events) = if quick { (300, 100, 20_000) } else { (20_000, 3_000, 1_000_000) };
    println!("journal_path: signal-to-order with the journal on (ns), one signal at a time");
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "fsync", "signals", "p50", "p90", "p99", "p99.9", "max", "append"
    );
    for policy in [FsyncPolicy::Never, FsyncPolicy::Interval, FsyncPolicy::Always] {
        let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
        let count = if policy == FsyncPolicy::Always { n_always } else { n };
        let (h, append_ns) = drive(dir.path(), policy, count, u64::MAX);
        println!(
            "{:<10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            policy.as_str(),
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            append_ns
        );
    }

    // Restart: replay a journal of `replay_events` events.
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    drive(dir.path(), FsyncPolicy::Never, usize::MAX, replay_events);
    let mut cfg = Config::default();
    cfg.engine.orders_per_account = 256;
    cfg.engine.idempotency_capacity = 1024;
    cfg.journal.dir = dir.path().to_path_buf();
    let replay = |what: &str| -> Duration {
        let mut times = Vec::new();
        let mut last = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let (node, r) = Node::open(&cfg, String::new(), 0, false, None).unwrap();
            times.push(t.elapsed());
            last = r.last_seq;
            drop(std::hint::black_box(node));
        }
        times.sort();
        println!("restart: replay {what} up to seq {last}: median of 3 {:.3} s", times[1].as_secs_f64());
        times[1]
    };
    replay("of every event (after the fixture's set-up snapshot)");
    let (node, _) = Node::open(&cfg, String::new(), 0, false, None).unwrap();
    let t = Instant::now();
    journal::snapshot::write(dir.path(), &node.engine.state()).unwrap();
    println!("snapshot: written in {:.3} s", t.elapsed().as_secs_f64());
    drop(node);
    replay("from a snapshot at the end");
}
