//! `cargo bench --bench signal_path`: the cost of one signal on the hot path, in process.
//!
//! Measures `Node::handle` for `POST /v1/signals` — JSON parse, auth (SHA-256 of the key), rate
//! limit, risk checks, order, paper fill and answer encoding — with no sockets, and reports the
//! node's own signal-to-order histogram (request parsed → order handed to the venue) next to it.
//! The bench's thread pins itself as the node's hot core (core 0 by default) and the journal's
//! threads run on the fan-out core (core 1), as in the node: `cargo bench --bench signal_path`.
//!
//! A second part measures the same path while the remembered order history grows: many
//! accounts each keep `engine.orders_per_account` finished orders, so the engine's order map
//! grows to millions of entries, and any pause while it grows shows as the slowest signals.

use std::time::Instant;

use hdrhistogram::Histogram;

#[path = "fixture.rs"]
mod fixture;

#[global_allocator]
static GLOBAL: signalgate::alloc::Allocator = signalgate::alloc::Allocator;

fn main() {
    // This thread plays the hot core, on its core: its large tables are mapped when they are made,
    // as in the node.
    fixture::pin_as_the_hot_core();
    signalgate::alloc::map_large_blocks_on_this_thread();
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and wants a quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (warmup, measured) = if quick { (1_000, 5_000) } else { (200_000, 1_000_000) };
    let mut f = fixture::Fixture::new(64 * 1024);
    for i in 0..warmup {
        f.signal(i);
        if i % 1000 == 0 {
            f.quote();
        }
    }
    f.node.borrow_mut().metrics.signal_to_order_ns.reset();
    let mut per_call = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
    let (mut created, mut errors) = (0u64, 0u64);
    let started = Instant::now();
    for i in warmup..warmup + measured {
        if i % 1000 == 0 {
            f.quote();
        }
        let t = Instant::now();
        let status = f.signal(i);
        per_call.saturating_record(t.elapsed().as_nanos() as u64);
        created += u64::from(status == 201);
        if status >= 400 {
            errors += 1;
        }
    }
    let total = started.elapsed();
    let node = f.node.borrow();
    let s2o = &node.metrics.signal_to_order_ns;
    println!(
        "signal_path: {measured} signals, {created} orders, {errors} errors, {:.0} ns/signal wall (timing included)",
        total.as_nanos() as f64 / measured as f64
    );
    println!("{:<32} {:>8} {:>8} {:>8} {:>8} {:>8}", "ns", "p50", "p90", "p99", "p99.9", "max");
    for (name, h) in [("request bytes → answer bytes", &per_call), ("signal-to-order (node metric)", s2o)] {
        println!(
            "{:<32} {:>8} {:>8} {:>8} {:>8} {:>8}",
            name,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
    history_growth(quick);
}

/// Signals spread over many accounts until every account's history is full (and a fifth more):
/// the per-call distribution, the slowest call and how many orders were remembered then.
fn history_growth(quick: bool) {
    // An odd number of accounts: each account's signals cycle through all four shapes, so every
    // signal places an order (a repeated `target` would not).
    let (accounts, history) = if quick { (11, 1_000) } else { (101, 10_000) };
    let mut f = fixture::Fixture::with_accounts(1024, accounts, history);
    let signals = accounts * history * 6 / 5;
    let mut per_call = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
    let (mut slowest, mut remembered_then, mut over_1ms) = (0u64, 0usize, 0u64);
    let started = Instant::now();
    for i in 0..signals {
        if i % 1000 == 0 {
            f.quote();
        }
        let t = Instant::now();
        f.signal(i);
        let ns = t.elapsed().as_nanos() as u64;
        per_call.saturating_record(ns);
        over_1ms += u64::from(ns > 1_000_000);
        if ns > slowest {
            (slowest, remembered_then) = (ns, f.node.borrow().engine.orders_len());
        }
    }
    println!(
        "history growth: {accounts} accounts × {history} remembered orders, {signals} signals in {:.1} s, {} orders remembered at the end",
        started.elapsed().as_secs_f64(),
        f.node.borrow().engine.orders_len()
    );
    println!(
        "{:<32} {:>8} {:>8} {:>8} {:>8} {:>10}  calls over 1 ms: {over_1ms}; the slowest with {remembered_then} orders remembered",
        "request bytes → answer bytes",
        per_call.value_at_quantile(0.5),
        per_call.value_at_quantile(0.9),
        per_call.value_at_quantile(0.99),
        per_call.value_at_quantile(0.999),
        slowest
    );
}
