//! `signalgate-bench`: drives a running signalgate node and reports latency percentiles,
//! achieved rate and errors by kind — next to the node's own signal-to-order histogram.
//!
//! Scenarios: `signals` (open-loop with coordinated-omission correction, or closed-loop),
//! `ceiling` (the same load against nginx `return 200` on the node's core, then the node),
//! `ws-fanout` (WebSocket subscribers receiving quotes), `mixed` (traders and watchers at once)
//! and `soak` (a long `mixed` run that samples the node's memory and descriptors).

mod cpu;
mod load;
mod mixed;
mod node;
mod stats;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use load::{pin_current, Load, Measured};
use node::NodeLatency;
use watch::{now_ns, subscription, Feeder, Proto, Watcher, Watchers};

/// Load-testing harness for signalgate nodes.
#[derive(Parser)]
#[command(name = "signalgate-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST /v1/signals: a mix of buy, sell and target signals across symbols and accounts.
    Signals(SignalsArgs),
    /// The same load against nginx `return 200` pinned to the node's core, then against the node,
    /// alternating; prints each round's ratio and their median.
    Ceiling {
        #[command(flatten)]
        signals: SignalsArgs,
        /// Core the node runs on: nginx's one worker is pinned there too.
        #[arg(long, default_value_t = 0)]
        node_core: usize,
        /// Rounds (each runs nginx, then the node).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The node's process id: with it, each round also reads how much of the core nginx and
        /// the node spend per request (user, system, interrupts, and by thread) from `/proc`.
        #[arg(long)]
        node_pid: Option<u32>,
    },
    /// WebSocket subscribers receiving quotes sent through POST /v1/market/ticks; latency from
    /// each quote's intended send time to its arrival.
    WsFanout(FanoutArgs),
    /// Traders sending signals over HTTP while WebSocket watchers receive their accounts'
    /// messages and quotes; reports both sides.
    Mixed(mixed::MixedArgs),
    /// A long `mixed` run that samples the node's RSS and open descriptors and reports their drift.
    Soak(mixed::SoakArgs),
}

/// The server `ws-fanout` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Peer {
    /// The node.
    Signalgate,
    /// `bench/peers/ws-server.js` (Node.js, `ws` 8).
    Ws,
    /// `bench/peers/socketio-server.js` (Node.js, Socket.IO 4.8).
    Socketio,
}

/// The node's stream format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Binary,
    Json,
}

#[derive(Args, Clone)]
struct FanoutArgs {
    /// The server to measure: the node, or one of the Node.js broadcast servers of
    /// `bench/peers` (which take the same `POST /v1/market/ticks` and need no key).
    #[arg(long, value_enum, default_value = "signalgate")]
    peer: Peer,
    /// The node's stream format.
    #[arg(long, value_enum, default_value = "binary")]
    format: Format,
    /// A peer's symbols: S00-USD, S01-USD, … (the node's come from its welcome).
    #[arg(long, default_value_t = 100)]
    symbols: usize,
    /// The server's anonymous resident memory (RssAnon: its heap, not the file pages it maps) is
    /// sampled once this many subscribers are connected and again with all of them: memory per
    /// connection is the growth between the two over the connections added.
    #[arg(long, default_value_t = 1000)]
    memory_base: usize,
    /// The node's (or peer's) public API (quotes are sent there).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The node's WebSocket listener.
    #[arg(long, default_value = "127.0.0.1:8082")]
    ws: SocketAddr,
    /// The node's admin API (the harness creates an account with a feed key there).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    admin: String,
    /// Admin token (or SIGNALGATE_ADMIN_TOKEN).
    #[arg(long, env = "SIGNALGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Use this key (with the feed role) instead of creating an account.
    #[arg(long)]
    key: Option<String>,
    /// WebSocket subscribers.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Symbols each subscriber takes (spread evenly over the node's symbols).
    #[arg(long, default_value_t = 10)]
    per_client: usize,
    /// Quotes per second in all (open loop).
    #[arg(long, short, default_value_t = 100.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, short, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of quotes before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Core to pin the harness to.
    #[arg(long)]
    cpu: Option<usize>,
    /// The server's pid: its memory is sampled as the subscribers connect (see --memory-base).
    #[arg(long)]
    node_pid: Option<u32>,
    /// Write the results and the run's parameters as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit 1 when the share of undelivered messages exceeds this.
    #[arg(long, default_value_t = 0.0)]
    max_loss: f64,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
}

fn ws_fanout(a: &FanoutArgs) -> Result<ExitCode, String> {
    if let Some(cpu) = a.cpu {
        pin_current(cpu)?;
    }
    let (http, _) = node::parse_url(&a.target)?;
    let (key, symbols, proto) = match a.peer {
        Peer::Signalgate => {
            let (key, symbols) = node_feed(a)?;
            (key, symbols, if a.format == Format::Json { Proto::Json } else { Proto::Binary })
        }
        peer => {
            let symbols = (0..a.symbols).map(|i| format!("S{i:02}-USD")).collect();
            (String::new(), symbols, if peer == Peer::Ws { Proto::Ws } else { Proto::SocketIo })
        }
    };
    println!(
        "ws-fanout: {} subscribers × {} of {} symbols, {} quotes/s for {} s (after {} s warm-up) at {} ({:?})",
        a.clients,
        a.per_client,
        symbols.len(),
        a.rate,
        a.duration,
        a.warmup,
        a.ws,
        proto
    );
    let subscriber = |c| Watcher {
        key: key.clone(),
        quotes: subscription(c, a.per_client, symbols.len()),
        account: false,
        group: 0,
    };
    let base = a.memory_base.min(a.clients);
    let mut watchers = Watchers::connect(a.ws, proto, &symbols, (0..base).map(subscriber).collect())?;
    let rss_base = a.node_pid.and_then(settled_memory);
    watchers.add((base..a.clients).map(subscriber).collect())?;
    let rss = rss_base.zip(a.node_pid.and_then(settled_memory)).filter(|_| a.clients > base);
    let start = now_ns() + 100_000_000;
    // Half a quote's interval past the warm-up: no quote is stamped on a bound of the window, so
    // the feeder and the subscribers count the same quotes in it even when a server carries the
    // stamp as a JavaScript number (a double holds a Unix time in ns only to 256 ns).
    let from = start + (a.warmup * 1e9) as u64 + (0.5e9 / a.rate) as u64;
    let until = from + (a.duration * 1e9) as u64;
    watchers.measure(from, until);
    let feed = Feeder { http, key, symbols, rate: a.rate }.spawn(start, (from, until));
    let drained = Instant::now() + Duration::from_nanos(until.saturating_sub(now_ns())) + Duration::from_secs(2);
    watchers.run_until(drained, !a.quiet);
    let fed = feed.join().map_err(|_| "the feeder panicked")??;
    let w = watchers.result();
    let expected: u64 = fed.per_symbol.iter().zip(watchers.per_symbol()).map(|(t, n)| t * n).sum();
    let ticks: u64 = fed.per_symbol.iter().sum();
    let [p50, p90, p99, p999, max] = stats::percentiles(&w.quotes);
    let loss = if expected > 0 { 1.0 - w.quotes_delivered as f64 / expected as f64 } else { 0.0 };
    println!("| quotes sent | messages expected | delivered | delivered/s | p50 | p90 | p99 | p99.9 | max (µs) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {ticks} | {expected} | {} | {:.0} | {p50} | {p90} | {p99} | {p999} | {max} |",
        w.quotes_delivered,
        w.quotes_delivered as f64 / a.duration
    );
    println!("feeder errors: {}, subscriber disconnects: {}", fed.errors, w.disconnects);
    let per_conn = rss.map(|(before, idle)| (idle.saturating_sub(before)) as f64 / (a.clients - base) as f64);
    if let (Some((before, idle)), Some(per)) = (rss, per_conn) {
        println!(
            "server RssAnon: {:.1} MiB with {base} idle subscribers, {:.1} MiB with {}: {:.1} KiB per connection",
            before as f64 / 1048576.0,
            idle as f64 / 1048576.0,
            a.clients,
            per / 1024.0
        );
    }
    if let Some(path) = &a.json {
        let v = json!({
            "scenario": "ws-fanout",
            "parameters": {"peer": format!("{:?}", a.peer).to_lowercase(), "format": format!("{:?}", a.format).to_lowercase(),
                           "ws": a.ws.to_string(), "clients": a.clients, "memory_base": base, "per_client": a.per_client, "rate": a.rate,
                           "duration_s": a.duration, "warmup_s": a.warmup, "cpu": a.cpu},
            "latency_us": latency_json(&w.quotes),
            "quotes_sent": ticks, "messages_expected": expected, "messages_delivered": w.quotes_delivered,
            "feeder_errors": fed.errors, "disconnects": w.disconnects,
            "server_rss_anon_bytes": rss.map(|(b, i)| json!({"base": b, "idle": i})),
            "rss_anon_per_connection_bytes": per_conn,
        });
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(if loss > a.max_loss || fed.errors > 0 || w.disconnects > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The node's feed key (made with an account, unless given) and its symbols, from a welcome.
fn node_feed(a: &FanoutArgs) -> Result<(String, Vec<String>), String> {
    let key = match &a.key {
        Some(k) => k.clone(),
        None => {
            let (admin, _) = node::parse_url(&a.admin)?;
            let token =
                a.admin_token.as_deref().ok_or("--admin-token (or SIGNALGATE_ADMIN_TOKEN) or --key is needed")?;
            node::create_accounts(admin, token, 1, true)?.remove(0)
        }
    };
    let mut probe = signalgate::ws::client::Client::connect(a.ws, "", Some(&key)).map_err(|e| e.to_string())?;
    probe.set_timeout(Duration::from_secs(5));
    let symbols = match probe.recv()? {
        signalgate::ws::client::Incoming::Messages(m) => match m.into_iter().next().map(|m| m.body) {
            Some(signalgate::ws::protocol::ServerBody::Welcome { symbols, .. }) => {
                symbols.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => return Err(format!("expected a welcome, got {other:?}")),
        },
        other => return Err(format!("expected a welcome, got {other:?}")),
    };
    probe.close();
    Ok((key, symbols))
}

/// A server's anonymous resident memory once connections have stopped changing it: sampled
/// until two samples 200 ms apart agree within 1%, for at most 3 s.
fn settled_memory(pid: u32) -> Option<u64> {
    let mut last = watch::rss_anon(pid)?;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(200));
        let now = watch::rss_anon(pid)?;
        if now.abs_diff(last) * 100 <= last {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

#[derive(Args, Clone)]
struct SignalsArgs {
    /// The node's public API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The node's admin API (the harness creates its own accounts and keys there).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    admin: String,
    /// Admin token (or SIGNALGATE_ADMIN_TOKEN).
    #[arg(long, env = "SIGNALGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Use these API keys instead of creating accounts (repeat the option).
    #[arg(long = "key")]
    keys: Vec<String>,
    /// Accounts to create.
    #[arg(long, default_value_t = 4)]
    accounts: usize,
    /// Symbols to trade, comma-separated.
    #[arg(long, default_value = "BTC-USD,ETH-USD", value_delimiter = ',')]
    symbols: Vec<String>,
    /// Quantity of each buy, sell and target step.
    #[arg(long, default_value = "0.01")]
    qty: String,
    /// Send market data instead of signals: POST /v1/market/ticks with this many quotes per
    /// request, spread over the symbols (the created keys get the feed role).
    #[arg(long, default_value_t = 0)]
    ticks: usize,
    /// Keep-alive connections.
    #[arg(long, short, default_value_t = 50)]
    connections: usize,
    /// Requests per second in all (open loop). Without it: closed loop, as fast as answers come.
    #[arg(long, short)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, short, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds after which an unanswered request counts as a timeout.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Core to pin the harness to.
    #[arg(long)]
    cpu: Option<usize>,
    /// How the load thread waits: spin (it owns its core; the most precise) or sleep (in epoll
    /// until a request is due or an answer arrives; for a core shared with, e.g., PostgreSQL).
    #[arg(long, value_enum, default_value = "spin")]
    wait: load::Wait,
    /// Write the results and the run's parameters as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit 1 when the share of failed requests exceeds this.
    #[arg(long, default_value_t = 0.01)]
    max_error_rate: f64,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
}

/// What a run needs that is prepared once.
struct Prepared {
    addr: SocketAddr,
    requests: Vec<Vec<u8>>,
    accounts: usize,
    /// The accounts' keys.
    keys: Vec<String>,
}

/// The run's keys (created with the feed role when `feed`) and its prepared requests.
fn prepare(a: &SignalsArgs, feed: bool) -> Result<Prepared, String> {
    let (addr, host) = node::parse_url(&a.target)?;
    let keys = if a.keys.is_empty() {
        let (admin, _) = node::parse_url(&a.admin)?;
        let token = a
            .admin_token
            .as_deref()
            .ok_or("--admin-token (or SIGNALGATE_ADMIN_TOKEN) is needed to create accounts; or give --key")?;
        node::create_accounts(admin, token, a.accounts.max(1), feed || a.ticks > 0)?
    } else {
        a.keys.clone()
    };
    let q = &a.qty;
    let mut requests = Vec::new();
    if a.ticks > 0 {
        // A few bodies with prices walking up and down, so consecutive quotes differ.
        for (k, key) in keys.iter().enumerate() {
            let auth = format!("Bearer {key}");
            for variant in 0..8 {
                let ticks: Vec<String> = (0..a.ticks)
                    .map(|i| {
                        let symbol = &a.symbols[i % a.symbols.len()];
                        let bid = 1000 + (i + variant + k) % 17;
                        format!(r#"{{"symbol":"{symbol}","bid":"{bid}.00","ask":"{}.00"}}"#, bid + 1)
                    })
                    .collect();
                let body = format!(r#"{{"ticks":[{}]}}"#, ticks.join(","));
                let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                requests.push(load::request("POST", &host, "/v1/market/ticks", &headers, body.as_bytes()));
            }
        }
        return Ok(Prepared { addr, requests, accounts: keys.len(), keys });
    }
    for key in &keys {
        let auth = format!("Bearer {key}");
        for symbol in &a.symbols {
            // Positions move between 0 and ±qty: the mix never walks into position limits.
            for body in [
                format!(r#"{{"symbol":"{symbol}","action":"buy","qty":"{q}"}}"#),
                format!(r#"{{"symbol":"{symbol}","action":"sell","qty":"{q}"}}"#),
                format!(r#"{{"symbol":"{symbol}","action":"target","target":"-{q}"}}"#),
                format!(r#"{{"symbol":"{symbol}","action":"target","target":"0"}}"#),
            ] {
                let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                requests.push(load::request("POST", &host, "/v1/signals", &headers, body.as_bytes()));
            }
        }
    }
    Ok(Prepared { addr, requests, accounts: keys.len(), keys })
}

fn load_for(a: &SignalsArgs, addr: SocketAddr, requests: Vec<Vec<u8>>) -> Load {
    Load {
        addr,
        connections: a.connections.max(1),
        rate: a.rate.filter(|r| *r > 0.0),
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(a.warmup),
        timeout: Duration::from_secs_f64(a.timeout),
        requests,
        cpu: a.cpu,
        progress: !a.quiet,
        wait: a.wait,
    }
}

fn achieved(m: &Measured) -> f64 {
    m.stats.total() as f64 / m.elapsed.as_secs_f64()
}

/// p50 … max of a latency histogram (µs) as JSON.
fn latency_json(h: &hdrhistogram::Histogram<u64>) -> Value {
    let [p50, p90, p99, p999, max] = stats::percentiles(h);
    json!({"p50": p50, "p90": p90, "p99": p99, "p99_9": p999, "max": max})
}

fn node_json(n: &NodeLatency) -> Value {
    let mut v = serde_json::Map::new();
    for (q, us) in &n.quantiles {
        v.insert(q.clone(), json!(us));
    }
    v.insert("max".into(), json!(n.max_us));
    v.insert("count".into(), json!(n.count));
    Value::Object(v)
}

fn print_node(n: &NodeLatency) {
    let qs: Vec<String> = n.quantiles.iter().map(|(q, us)| format!("q{q} {us:.2}")).collect();
    println!(
        "node signal-to-order (GET /metrics, since the node started, µs): {}  max {:.2}  ({} signals)",
        qs.join("  "),
        n.max_us,
        n.count
    );
}

/// Requests, rate and errors of a run, its latency table and its errors by kind.
fn print_requests(m: &Measured, open_loop: bool) {
    let s = &m.stats;
    println!(
        "requests {} ({:.1}/s achieved), 2xx {}, errors {} ({:.2}%)",
        s.total(),
        achieved(m),
        s.ok,
        s.error_count(),
        s.error_rate() * 100.0
    );
    let [p50, p90, p99, p999, max] = s.percentiles();
    let basis = if open_loop { "each request's intended send time" } else { "each request's send" };
    println!("latency (µs, from {basis}):");
    println!("{:>10} {:>10} {:>10} {:>10} {:>10}", "p50", "p90", "p99", "p99.9", "max");
    println!("{p50:>10} {p90:>10} {p99:>10} {p999:>10} {max:>10}");
    if !s.errors.is_empty() {
        println!("errors by kind:");
        for (kind, n) in &s.errors {
            println!("{n:>10}  {kind}");
        }
    }
}

/// The same as JSON.
fn requests_json(m: &Measured) -> Value {
    let s = &m.stats;
    json!({
        "requests": s.total(),
        "ok": s.ok,
        "achieved_rps": achieved(m),
        "latency_us": latency_json(&m.stats.latency_us),
        "errors": {"total": s.error_count(), "rate": s.error_rate(), "by_kind": s.errors},
    })
}

fn signals(a: &SignalsArgs) -> Result<ExitCode, String> {
    let p = prepare(a, false)?;
    let load = load_for(a, p.addr, p.requests);
    let mode = match load.rate {
        Some(r) => format!("open loop at {r} req/s"),
        None => "closed loop".to_string(),
    };
    let m = load::run(load)?;
    let node = node::node_latency(p.addr).unwrap_or_default();
    let what = if a.ticks > 0 { format!("ticks ({} quotes per request)", a.ticks) } else { "signals".into() };
    println!(
        "{what}: {mode}, {} connections, {} s measured after {} s warm-up, {} accounts × {} symbols, against {}",
        a.connections,
        a.duration,
        a.warmup,
        p.accounts,
        a.symbols.len(),
        a.target
    );
    print_requests(&m, a.rate.is_some());
    print_node(&node);
    if let Some(path) = &a.json {
        let mut v = json!({
            "scenario": if a.ticks > 0 { "ticks" } else { "signals" },
            "parameters": {
                "target": a.target, "mode": if a.rate.is_some() { "open" } else { "closed" }, "rate": a.rate,
                "connections": a.connections, "duration_s": a.duration, "warmup_s": a.warmup,
                "accounts": p.accounts, "symbols": a.symbols, "qty": a.qty, "ticks_per_request": a.ticks, "cpu": a.cpu, "wait": a.wait.to_possible_value().map(|v| v.get_name().to_owned()),
                "max_error_rate": a.max_error_rate,
            },
            "node_signal_to_order_us": node_json(&node),
        });
        if let (Some(v), Value::Object(r)) = (v.as_object_mut(), requests_json(&m)) {
            v.extend(r);
        }
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let s = &m.stats;
    Ok(if s.error_rate() > a.max_error_rate {
        eprintln!(
            "error rate {:.2}% is above --max-error-rate {:.2}%",
            s.error_rate() * 100.0,
            a.max_error_rate * 100.0
        );
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// nginx with one `return 200` worker pinned to `core`, in a scratch directory.
struct Nginx {
    child: std::process::Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Nginx {
    fn start(core: usize) -> Result<Nginx, String> {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("signalgate-bench-nginx-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
        let d = dir.display();
        let mask = format!("{:b}", 1u64 << core);
        let conf = format!(
            "worker_processes 1;\nworker_cpu_affinity {mask};\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 10000000;\n  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    location / {{ return 200 \"ok\"; }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start nginx (Debian package nginx-light): {e}"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let nginx = Nginx { child, dir, addr };
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(nginx);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("nginx did not start listening".into())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master takes its worker down with it. Killed outright, it
        // would leave the worker running, pinned to the node's core and holding the port.
        // SAFETY: the pid of our own child, not yet waited for.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ceiling(a: &SignalsArgs, node_core: usize, rounds: usize, node_pid: Option<u32>) -> Result<ExitCode, String> {
    let p = prepare(a, false)?;
    let nginx = Nginx::start(node_core)?;
    let mut rows = Vec::new();
    let (mut ratios, mut worst) = (Vec::new(), 0.0f64);
    let mut cpu_rounds: (Vec<cpu::PerRequest>, Vec<cpu::PerRequest>) = (Vec::new(), Vec::new());
    println!(
        "ceiling: nginx `return 200` (one worker on core {node_core}) vs signalgate POST /v1/signals at {}",
        a.target
    );
    println!("| round | nginx (req/s) | signalgate (req/s) | ratio | signalgate p50 / p99 (µs) | signalgate errors |");
    println!("|---|---|---|---|---|---|");
    for round in 1..=rounds.max(1) {
        // The CPU windows leave half a second at each end of the measured time; the requests in
        // a window are the round's rate times its length (the load is steady by then).
        let skip = Duration::from_secs_f64(a.warmup + 0.5);
        let span = Duration::from_secs_f64((a.duration - 1.0).max(0.5));
        let watch = |pid: u32| cpu::window(node_core, vec![pid], a.cpu, skip, span);
        let sampler = node_pid.map(|_| watch(nginx.child.id()));
        let base = load::run(load_for(a, nginx.addr, p.requests.clone()))?;
        let nginx_cpu = sampler.and_then(|s| s.join().ok());
        let sampler = node_pid.map(watch);
        let ours = load::run(load_for(a, p.addr, p.requests.clone()))?;
        let node_cpu = sampler.and_then(|s| s.join().ok());
        let (rb, ro) = (achieved(&base), achieved(&ours));
        let mut cpu_json = Value::Null;
        if let (Some((n0, n1)), Some((s0, s1))) = (nginx_cpu, node_cpu) {
            let (n, s) = (
                cpu::PerRequest::between(&n0, &n1, rb * span.as_secs_f64()),
                cpu::PerRequest::between(&s0, &s1, ro * span.as_secs_f64()),
            );
            cpu_json = json!({"nginx": n.json(), "signalgate": s.json()});
            cpu_rounds.0.push(n);
            cpu_rounds.1.push(s);
        }
        let ratio = if rb > 0.0 { ro / rb } else { 0.0 };
        let [p50, _, p99, _, _] = ours.stats.percentiles();
        println!("| {round} | {rb:.0} | {ro:.0} | {ratio:.2} | {p50} / {p99} | {} |", ours.stats.error_count());
        worst = worst.max(ours.stats.error_rate());
        ratios.push(ratio);
        rows.push(json!({"round": round, "nginx_rps": rb, "signalgate_rps": ro, "ratio": ratio,
            "signalgate_latency_us": latency_json(&ours.stats.latency_us), "signalgate_errors": ours.stats.errors,
            "cpu_per_request_us": cpu_json}));
    }
    let med = median(&mut ratios.clone());
    println!("| **median** | | | **{med:.2}** | | |");
    if !cpu_rounds.0.is_empty() {
        println!();
        println!("CPU of core {node_core} per request (µs; medians of the rounds; by thread: user + system, the system time with the interrupts taken on the thread)");
        println!("| server | core busy | user | system | interrupts | by thread |");
        println!("|---|---|---|---|---|---|");
        println!("{}", cpu::row("nginx", &cpu_rounds.0));
        println!("{}", cpu::row("signalgate", &cpu_rounds.1));
    }
    // Nothing when the target is not a node (examples/return200).
    let node = node::node_latency(p.addr).unwrap_or_default();
    if node.count > 0 {
        print_node(&node);
    }
    if let Some(path) = &a.json {
        let v = json!({
            "scenario": "ceiling",
            "parameters": {"target": a.target, "connections": a.connections, "rate": a.rate, "duration_s": a.duration,
                           "warmup_s": a.warmup, "node_core": node_core, "cpu": a.cpu, "rounds": rounds,
                           "nginx": nginx.addr.to_string()},
            "rounds": rows,
            "median_ratio": med,
            "node_signal_to_order_us": node_json(&node),
        });
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(if worst > a.max_error_rate { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Signals(a) => signals(a),
        Command::Ceiling { signals: a, node_core, rounds, node_pid } => ceiling(a, *node_core, *rounds, *node_pid),
        Command::WsFanout(a) => ws_fanout(a),
        Command::Mixed(a) => mixed::run(a, None),
        Command::Soak(a) => mixed::run(&a.mixed, Some(a)),
    };
    result.unwrap_or_else(|e| {
        eprintln!("signalgate-bench: {e}");
        ExitCode::from(2)
    })
}
