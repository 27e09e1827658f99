//! The `mixed` and `soak` scenarios: traders sending signals over HTTP while WebSocket watchers
//! receive their accounts' orders, fills and positions and a stream of quotes; both sides are
//! reported. `soak` runs the same for long and samples the node's memory and open descriptors,
//! reporting their drift after the warm-up.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use crate::load::pin_current;
use crate::stats::percentiles;
use crate::watch::{self, now_ns, subscription, Feeder, Watcher, Watchers};
use crate::{node, SignalsArgs};

#[derive(Args, Clone)]
pub struct MixedArgs {
    #[command(flatten)]
    pub signals: SignalsArgs,
    /// The node's WebSocket listener.
    #[arg(long, default_value = "127.0.0.1:8082")]
    pub ws: SocketAddr,
    /// WebSocket watchers, spread over the traders' accounts; each takes its account's messages.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Quote channels each watcher takes, spread over --symbols.
    #[arg(long, default_value_t = 1)]
    pub watch_symbols: usize,
    /// Quotes per second sent through POST /v1/market/ticks, in turn over --symbols (the traders'
    /// keys get the feed role). 0: none (the node's own simulator must then quote).
    #[arg(long, default_value_t = 100.0)]
    pub quote_rate: f64,
    /// Exit 1 when the share of account messages that did not arrive exceeds this (quotes may be
    /// conflated by design; those that did not arrive are reported, not counted here).
    #[arg(long, default_value_t = 0.0)]
    pub max_loss: f64,
}

#[derive(Args, Clone)]
pub struct SoakArgs {
    #[command(flatten)]
    pub mixed: MixedArgs,
    /// The node's pid: the harness must run on the node's machine to read /proc/PID.
    #[arg(long)]
    pub node_pid: u32,
    /// Seconds between samples of the node's RSS and open descriptors.
    #[arg(long, default_value_t = 10.0)]
    pub sample_every: f64,
    /// Exit 1 when the node's RSS grows by more than this many MiB after the warm-up.
    #[arg(long)]
    pub max_rss_growth_mib: Option<f64>,
    /// Exit 1 when the node's open descriptors grow by more than this after the warm-up.
    #[arg(long)]
    pub max_fd_growth: Option<u64>,
}

/// One sample of the node process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// Resident memory (bytes).
    pub rss: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// How a series moved: last − first, and the least-squares slope per hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drift {
    /// Last value minus first.
    pub change: f64,
    /// Fitted change per hour.
    pub per_hour: f64,
    /// Largest value.
    pub max: f64,
}

/// The drift of `points` (seconds, value); `None` with fewer than two points.
pub fn drift(points: &[(f64, f64)]) -> Option<Drift> {
    let (first, last) = (points.first()?, points.last()?);
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let slope = if var > 0.0 { cov / var } else { 0.0 };
    Some(Drift {
        change: last.1 - first.1,
        per_hour: slope * 3600.0,
        max: points.iter().map(|p| p.1).fold(f64::MIN, f64::max),
    })
}

/// Samples the node every `every` until `end`; stops early when the process is gone.
fn sample(pid: u32, origin: Instant, every: Duration, end: Instant, total_s: f64) -> (Vec<Sample>, bool) {
    let mut samples = Vec::new();
    let mut next = origin;
    loop {
        let (Some(rss), Some(fds)) = (watch::rss(pid), watch::open_fds(pid)) else {
            eprintln!("soak: the node (pid {pid}) is gone");
            return (samples, false);
        };
        let s = Sample { t: origin.elapsed().as_secs_f64(), rss, fds };
        eprintln!("soak {:>7.1} s / {total_s:.0} s: node RSS {:.1} MiB, {} open descriptors", s.t, mib(rss), fds);
        samples.push(s);
        // Not at `end` itself: the load's connections close then.
        next += every;
        if next >= end {
            return (samples, true);
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Prints and checks the drift of the node's samples after `warmup` seconds; the same as JSON.
fn soak_report(k: &SoakArgs, warmup: f64, samples: &[Sample], alive: bool, failed: &mut Vec<String>) -> Value {
    let after: Vec<&Sample> = samples.iter().filter(|x| x.t >= warmup).collect();
    let rss = drift(&after.iter().map(|x| (x.t, x.rss as f64)).collect::<Vec<_>>());
    let fds = drift(&after.iter().map(|x| (x.t, x.fds as f64)).collect::<Vec<_>>());
    println!("node after the warm-up ({} samples, every {} s):", after.len(), k.sample_every);
    match (rss, fds) {
        (Some(r), Some(f)) => {
            let (change, per_hour, max) = (r.change / 1048576.0, r.per_hour / 1048576.0, r.max / 1048576.0);
            println!("  RSS {change:+.1} MiB (fitted {per_hour:+.1} MiB/h), max {max:.1} MiB");
            println!("  open descriptors {:+.0} (fitted {:+.0}/h), max {:.0}", f.change, f.per_hour, f.max);
            if k.max_rss_growth_mib.is_some_and(|m| change > m) {
                failed.push(format!("RSS grew {change:.1} MiB (--max-rss-growth-mib)"));
            }
            if k.max_fd_growth.is_some_and(|m| f.change > m as f64) {
                failed.push(format!("open descriptors grew by {:.0} (--max-fd-growth)", f.change));
            }
        }
        _ => failed.push("fewer than two samples after the warm-up: raise --duration or lower --sample-every".into()),
    }
    if !alive {
        failed.push("the node exited during the soak".into());
    }
    let d = |x: Option<Drift>| x.map(|d| json!({"change": d.change, "per_hour": d.per_hour, "max": d.max}));
    json!({
        "samples": samples.iter().map(|x| json!({"t_s": x.t, "rss_bytes": x.rss, "open_fds": x.fds})).collect::<Vec<_>>(),
        "drift_after_warmup": {"rss_bytes": d(rss), "open_fds": d(fds)},
        "alive": alive,
    })
}

fn latency_row(name: &str, expected: u64, delivered: u64, h: &hdrhistogram::Histogram<u64>) -> String {
    let [p50, p90, p99, p999, max] = percentiles(h);
    format!("| {name} | {expected} | {delivered} | {p50} | {p90} | {p99} | {p999} | {max} |")
}

/// Runs `mixed`, or `soak` when `soak` is given.
pub fn run(a: &MixedArgs, soak: Option<&SoakArgs>) -> Result<ExitCode, String> {
    let s = &a.signals;
    if s.ticks > 0 {
        return Err("--ticks belongs to the signals scenario; mixed sends quotes at --quote-rate".into());
    }
    if a.watchers > 0 && a.watch_symbols > s.symbols.len() {
        return Err(format!("--watch-symbols {} is more than the {} --symbols", a.watch_symbols, s.symbols.len()));
    }
    if let Some(k) = soak {
        if k.sample_every <= 0.0 {
            return Err("--sample-every must be above 0".into());
        }
        watch::rss(k.node_pid).ok_or_else(|| format!("no process {} to sample (--node-pid)", k.node_pid))?;
    }
    if let Some(cpu) = s.cpu {
        pin_current(cpu)?;
    }
    let feeding = a.quote_rate > 0.0;
    let p = crate::prepare(s, feeding)?;
    let (http, _) = node::parse_url(&s.target)?;
    if feeding {
        // One quote per symbol first, so the first signals have a price to fill at.
        let ticks: Vec<String> =
            s.symbols.iter().map(|sym| format!(r#"{{"symbol":"{sym}","bid":"1000.00","ask":"1000.10"}}"#)).collect();
        let auth = format!("Bearer {}", p.keys[0]);
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let (status, body) =
            node::call(http, "POST", "/v1/market/ticks", &headers, &format!(r#"{{"ticks":[{}]}}"#, ticks.join(",")))?;
        if status == 403 {
            return Err(format!("first quotes refused: {status} {body} (give keys with the feed role)"));
        } else if status != 200 {
            return Err(format!("first quotes refused: {status} {body}"));
        }
    }
    let scenario = if soak.is_some() { "soak" } else { "mixed" };
    println!(
        "{scenario}: signals {} over {} connections ({} accounts × {} symbols); {} watchers (account + {} quote \
         channel(s) each); {} quotes/s; {} s measured after {} s warm-up, against {}",
        s.rate.map_or("closed loop".into(), |r| format!("open loop at {r} req/s")),
        s.connections,
        p.accounts,
        s.symbols.len(),
        a.watchers,
        a.watch_symbols,
        a.quote_rate,
        s.duration,
        s.warmup,
        s.target
    );
    let watchers = Watchers::connect(
        a.ws,
        watch::Proto::Binary,
        &s.symbols,
        (0..a.watchers)
            .map(|w| Watcher {
                key: p.keys[w % p.keys.len()].clone(),
                quotes: subscription(w, a.watch_symbols, s.symbols.len()),
                account: true,
                group: w % p.keys.len(),
            })
            .collect(),
    )?;
    let origin = Instant::now();
    let start = now_ns();
    let from = start + (s.warmup * 1e9) as u64;
    let until = from + (s.duration * 1e9) as u64;
    watchers.measure(from, until);
    let feed = feeding.then(|| {
        Feeder { http, key: p.keys[0].clone(), symbols: s.symbols.clone(), rate: a.quote_rate }
            .spawn(start, (from, until))
    });
    let mut load = crate::load_for(s, p.addr, p.requests);
    load.progress &= soak.is_none();
    let traders = std::thread::spawn(move || crate::load::run(load));
    let end = origin + Duration::from_nanos(until - start);
    let sampler = soak.map(|k| {
        let (pid, every) = (k.node_pid, Duration::from_secs_f64(k.sample_every));
        let total = s.warmup + s.duration;
        std::thread::spawn(move || sample(pid, origin, every, end, total))
    });
    // The traders' generator prints the progress line of a mixed run; a soak prints its samples.
    watchers.run_until(end + Duration::from_secs(2), false);
    let m = traders.join().map_err(|_| "the load thread panicked")??;
    let fed = match feed {
        Some(f) => Some(f.join().map_err(|_| "the feeder panicked")??),
        None => None,
    };
    let samples = sampler.map(|h| h.join().unwrap_or_default());
    let w = watchers.result();
    let node_latency = node::node_latency(p.addr).unwrap_or_default();

    let stats = &m.stats;
    println!("traders (POST /v1/signals):");
    crate::print_requests(&m, s.rate.is_some());
    let quotes_expected: u64 =
        fed.as_ref().map_or(0, |f| f.per_symbol.iter().zip(watchers.per_symbol()).map(|(t, n)| t * n).sum());
    let feed_errors = fed.as_ref().map_or(0, |f| f.errors);
    if a.watchers > 0 {
        println!("watchers (WebSocket, latency in µs):");
        println!("| stream | expected | delivered | p50 | p90 | p99 | p99.9 | max |");
        println!("|---|---|---|---|---|---|---|---|");
        let quotes = "quotes, from each quote's intended send time";
        println!("{}", latency_row(quotes, quotes_expected, w.quotes_delivered, &w.quotes));
        let account = "account, from the node's event time";
        println!("{}", latency_row(account, w.account_expected, w.account_delivered, &w.account));
    } else {
        println!("no watchers");
    }
    println!("watcher disconnects: {}, feeder errors: {feed_errors}", w.disconnects);
    if w.quotes_delivered > quotes_expected {
        println!(
            "more quotes arrived than the harness sent: the node's own simulator quotes these symbols too \
             (market.simulator = false gives exact counts)"
        );
    }
    crate::print_node(&node_latency);
    let share = |delivered: u64, expected: u64| {
        if expected > 0 {
            1.0 - delivered.min(expected) as f64 / expected as f64
        } else {
            0.0
        }
    };
    let (loss, conflated) =
        (share(w.account_delivered, w.account_expected), share(w.quotes_delivered, quotes_expected));
    if conflated > 0.0 {
        println!("{:.2}% of the quotes were conflated (a newer quote of the symbol replaced them)", conflated * 100.0);
    }

    let mut failed = Vec::new();
    if stats.error_rate() > s.max_error_rate {
        failed.push(format!(
            "signal error rate {:.2}% is above --max-error-rate {:.2}%",
            stats.error_rate() * 100.0,
            s.max_error_rate * 100.0
        ));
    }
    if loss > a.max_loss {
        failed.push(format!("{:.3}% of account messages did not arrive (--max-loss {})", loss * 100.0, a.max_loss));
    }
    if w.disconnects > 0 || feed_errors > 0 {
        failed.push(format!("{} watchers disconnected, {feed_errors} quotes refused", w.disconnects));
    }
    if w.account_expected == 0 && a.watchers > 0 && stats.ok > 0 {
        failed.push("no account message reached any watcher".into());
    }
    let mut report = json!({
        "scenario": scenario,
        "parameters": {
            "target": s.target, "ws": a.ws.to_string(), "mode": if s.rate.is_some() { "open" } else { "closed" },
            "rate": s.rate, "connections": s.connections, "duration_s": s.duration, "warmup_s": s.warmup,
            "accounts": p.accounts, "symbols": s.symbols, "qty": s.qty, "cpu": s.cpu, "max_error_rate": s.max_error_rate,
            "watchers": a.watchers, "watch_symbols": a.watch_symbols, "quote_rate": a.quote_rate, "max_loss": a.max_loss,
        },
        "signals": crate::requests_json(&m),
        "watchers": {
            "quotes": {"sent": fed.as_ref().map_or(0, |f| f.per_symbol.iter().sum::<u64>()), "expected": quotes_expected,
                       "delivered": w.quotes_delivered, "latency_us": crate::latency_json(&w.quotes)},
            "account": {"expected": w.account_expected, "delivered": w.account_delivered, "latency_us": crate::latency_json(&w.account)},
            "account_loss": loss, "quotes_conflated": conflated, "disconnects": w.disconnects, "feeder_errors": feed_errors,
        },
        "node_signal_to_order_us": crate::node_json(&node_latency),
    });
    if let (Some(k), Some((samples, alive))) = (soak, samples) {
        report["parameters"]["node_pid"] = json!(k.node_pid);
        report["parameters"]["sample_every_s"] = json!(k.sample_every);
        report["node_process"] = soak_report(k, s.warmup, &samples, alive, &mut failed);
    }
    report["failed"] = json!(failed);
    if let Some(path) = &s.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    for f in &failed {
        eprintln!("{f}");
    }
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_of_known_series() {
        // 2 units per second plus ±1 alternating: the fit is 2 − 5/82.5 per second (the noise's
        // covariance with time over its variance), 6,981.8 per hour.
        let pts: Vec<(f64, f64)> =
            (0..10).map(|i| (i as f64, 100.0 + 2.0 * i as f64 + if i % 2 == 0 { 1.0 } else { -1.0 })).collect();
        let d = drift(&pts).unwrap();
        assert_eq!(d.change, 117.0 - 101.0);
        assert!((d.per_hour - 6981.8).abs() < 0.1, "{d:?}");
        assert_eq!(d.max, 117.0);
        let flat = drift(&[(0.0, 5.0), (10.0, 5.0), (20.0, 5.0)]).unwrap();
        assert_eq!((flat.change, flat.per_hour, flat.max), (0.0, 0.0, 5.0));
        assert_eq!(drift(&[(0.0, 1.0)]), None);
        assert_eq!(drift(&[]), None);
    }
}
