//! The journal offloaded to a real PostgreSQL started on a free port, plain and with TimescaleDB:
//! every journaled event in the tables exactly once (compared with `signalgate journal
//! inspect`), through a PostgreSQL crash mid-load and a node killed with SIGKILL mid-offload; the
//! node trading on while PostgreSQL is unreachable or refuses it; the history API's answers,
//! candles and performance equal to a computation from the rows.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{bearer, binary, Flavor, Node, Postgres, JSON};

fn unlimited() -> Value {
    json!({"requests_per_minute": 1_000_000, "max_orders_per_second": 100_000, "max_open_orders": 1000})
}

/// What the journal holds, from `signalgate journal inspect --json`.
#[derive(Debug, Default)]
struct Journal {
    last_seq: u64,
    /// Sequence numbers of the events of each kind.
    seqs: BTreeMap<String, Vec<u64>>,
    /// Sum of fill notionals (money units).
    notional: i64,
    orders: usize,
}

fn journal(dir: &Path) -> Journal {
    let out = Command::new(binary()).args(["journal", "inspect"]).arg(dir).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut j = Journal::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let seq = e["seq"].as_u64().unwrap();
        let kind = e["type"].as_str().unwrap().to_string();
        if kind == "fill" {
            j.notional += e["data"]["notional"].as_i64().unwrap();
        }
        if kind == "order_accepted" {
            j.orders += 1;
        }
        j.seqs.entry(kind).or_default().push(seq);
        j.last_seq = seq;
    }
    j
}

fn seqs(j: &Journal, kinds: &[&str]) -> Vec<u64> {
    let mut all: Vec<u64> = kinds.iter().flat_map(|k| j.seqs.get(*k).cloned().unwrap_or_default()).collect();
    all.sort_unstable();
    all
}

/// The sequence numbers of `table`'s rows are `expected`, each once.
fn assert_rows(pg: &Postgres, table: &str, expected: &[u64]) {
    let got = pg.query(&format!("SELECT coalesce(string_agg(seq::text, ',' ORDER BY seq), '') FROM {table}"));
    let got: Vec<u64> = got.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    if got != expected {
        let missing: Vec<&u64> = expected.iter().filter(|s| got.binary_search(s).is_err()).take(10).collect();
        let extra: Vec<&u64> = got.iter().filter(|s| expected.binary_search(s).is_err()).take(10).collect();
        panic!(
            "{table}: {} rows for {} journaled events; missing (first 10) {missing:?}, not journaled or twice {extra:?}",
            got.len(),
            expected.len()
        );
    }
}

/// Every journaled event is in the tables once: the same sequence numbers, the same sums, the
/// cursor at the journal's end, and positions that are the sum of their fills.
fn assert_offloaded_exactly_once(pg: &Postgres, dir: &Path) {
    let j = journal(dir);
    assert!(j.seqs.get("fill").is_some_and(|f| f.len() > 20), "the load made fills: {:?}", j.seqs.keys());
    assert_rows(pg, "fills", &seqs(&j, &["fill"]));
    // Positions: the state at the end of each batch of every position it changed, so the newest
    // row of each is from its last fill.
    let stale = pg.query(
        "SELECT count(*) FROM (SELECT account_id, symbol, max(seq) AS s FROM position_snapshots GROUP BY 1, 2) p \
         FULL JOIN (SELECT account_id, symbol, max(seq) AS s FROM fills GROUP BY 1, 2) f USING (account_id, symbol) \
         WHERE p.s IS DISTINCT FROM f.s",
    );
    assert_eq!(stale, "0", "the newest position row of each account and symbol is from its last fill");
    assert_rows(pg, "market_data", &seqs(&j, &["quote"]));
    assert_rows(pg, "signals", &seqs(&j, &["signal_answered", "rejected"]));
    assert_eq!(pg.query("SELECT (sum(notional) * 100000000)::bigint FROM fills"), j.notional.to_string());
    assert_eq!(pg.query("SELECT count(*) FROM orders"), j.orders.to_string());
    assert_eq!(pg.query("SELECT count(*) FROM accounts").parse::<usize>().unwrap(), j.seqs["account_created"].len());
    assert_eq!(pg.query("SELECT count(*) FROM api_keys").parse::<usize>().unwrap(), j.seqs["key_added"].len());
    assert_eq!(pg.query("SELECT last_seq FROM offload_cursor WHERE node = 'signalgate'"), j.last_seq.to_string());
    let unbalanced = pg.query(
        "SELECT count(*) FROM (SELECT DISTINCT ON (account_id, symbol) account_id, symbol, qty FROM position_snapshots \
         ORDER BY account_id, symbol, ts DESC, seq DESC) p \
         JOIN (SELECT account_id, symbol, sum(CASE side WHEN 'buy' THEN qty ELSE -qty END) AS q FROM fills GROUP BY 1, 2) f \
         USING (account_id, symbol) WHERE p.qty <> f.q",
    );
    assert_eq!(unbalanced, "0", "every last position is the sum of its fills");
}

/// The node's own view of an account's orders and positions matches the tables.
fn assert_matches_node(pg: &Postgres, node: &Node, account: u64, key: &str) {
    let auth = bearer(key);
    let orders = pg.query(&format!("SELECT order_id, status, filled_qty FROM orders WHERE account_id = {account}"));
    assert!(!orders.is_empty());
    for row in orders.lines() {
        let f: Vec<&str> = row.split('|').collect();
        let r = node.req("GET", &format!("/v1/orders/{}", f[0]), &[("Authorization", &auth)], "");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["status"], f[1], "order {}", f[0]);
        assert_eq!(trim(r.json()["filled_qty"].as_str().unwrap()), trim(f[2]), "order {}", f[0]);
    }
    let positions = node.req("GET", "/v1/positions", &[("Authorization", &auth)], "").json();
    for p in positions["positions"].as_array().unwrap() {
        let symbol = p["symbol"].as_str().unwrap();
        let in_db = pg.query(&format!(
            "SELECT qty FROM position_snapshots WHERE account_id = {account} AND symbol = '{symbol}' ORDER BY seq DESC LIMIT 1"
        ));
        assert_eq!(trim(&in_db), trim(p["qty"].as_str().unwrap()), "{symbol}");
    }
}

fn trim(decimal: &str) -> String {
    let t = if decimal.contains('.') { decimal.trim_end_matches('0').trim_end_matches('.') } else { decimal };
    if t == "-0" {
        "0".into()
    } else {
        t.to_string()
    }
}

/// Two traders and a quote feed, until `stop`; returns the count of 201 answers.
fn load(node: &Node, keys: &[String], stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<usize>> {
    node.post_ticks();
    let mut threads = Vec::new();
    for (t, key) in keys.iter().enumerate() {
        let (addr, auth, stop) = (node.http, bearer(key), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut conn = support::Conn::open(addr);
            let mut acked = 0;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (symbol, side) = (["BTC-USD", "ETH-USD"][i % 2], ["buy", "buy", "sell"][i % 3]);
                let body = format!(r#"{{"symbol":"{symbol}","action":"{side}","qty":"0.01","signal_id":"t{t}-{i}"}}"#);
                let r = conn.send("POST", "/v1/signals", &[("Authorization", &auth), JSON], body.as_bytes());
                assert_eq!(r.status, 201, "{}", r.body);
                acked += 1;
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            acked
        }));
    }
    let (addr, auth) = (node.http, bearer(&node.demo_key));
    threads.push(std::thread::spawn(move || {
        let mut conn = support::Conn::open(addr);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let bid = 65_000 + i % 50;
            let body = format!(
                r#"{{"ticks":[{{"symbol":"BTC-USD","bid":"{bid}.00","ask":"{}.00"}},{{"symbol":"ETH-USD","bid":"3000.00","ask":"3000.50"}}]}}"#,
                bid + 1
            );
            let r = conn.send("POST", "/v1/market/ticks", &[("Authorization", &auth), JSON], body.as_bytes());
            assert_eq!(r.status, 200, "{}", r.body);
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        0
    }));
    threads
}

fn node_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SIGNALGATE_POSTGRES_URL", url.to_string()),
        ("SIGNALGATE_POSTGRES_MIGRATE", "true".into()),
        ("SIGNALGATE_MARKET_SIMULATOR", "false".into()),
    ]
}

fn start(dir: Option<tempfile::TempDir>, env: &[(&'static str, String)]) -> Node {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match dir {
        Some(dir) => Node::start_in(dir, &env),
        None => Node::start(&env),
    }
}

#[test]
fn every_event_reaches_plain_postgresql_once_through_a_postgres_crash_and_a_node_kill() {
    every_event_reaches_postgres_once_through_a_postgres_crash_and_a_node_kill(Flavor::Plain);
}

#[test]
fn every_event_reaches_timescaledb_once_through_a_postgres_crash_and_a_node_kill() {
    every_event_reaches_postgres_once_through_a_postgres_crash_and_a_node_kill(Flavor::Timescale);
}

fn every_event_reaches_postgres_once_through_a_postgres_crash_and_a_node_kill(flavor: Flavor) {
    let pg = Postgres::start_flavor(flavor);
    let env = node_env(&pg.url());
    let node = start(None, &env);
    let (account, key) = node.account("enterprise", "10000000", unlimited());
    let (_, key2) = node.account("pro", "1000000", unlimited());
    let keys = vec![key.clone(), key2];

    // PostgreSQL crashes mid-load: trading goes on, /ready stays ready and reports the lag.
    let stop = Arc::new(AtomicBool::new(false));
    let traders = load(&node, &keys, stop.clone());
    std::thread::sleep(Duration::from_millis(700));
    pg.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    let degraded = loop {
        let (status, r) = node.ready();
        assert_eq!(status, 200, "PostgreSQL is not needed to trade: {r}");
        if r["postgres"] == "degraded" && r["offload_lag_events"].as_u64().unwrap() > 0 {
            break r;
        }
        assert!(Instant::now() < deadline, "no degraded report: {r}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(degraded["postgres_reason"], "postgres.unreachable", "{degraded}");
    std::thread::sleep(Duration::from_millis(700));
    let (_, r) = node.ready();
    assert!(r["offload_lag_ms"].as_u64().unwrap() >= 500, "the lag in time grows while PostgreSQL is away: {r}");
    pg.start_again();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let acked: usize = traders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(acked > 100, "{acked}");
    node.wait_offloaded();
    assert!(
        node.log().iter().any(|l| l.contains("postgres: offload stopped") && l.contains("node keeps trading")),
        "the outage is logged: {:?}",
        node.log()
    );
    assert_offloaded_exactly_once(&pg, node.data_dir());
    assert_matches_node(&pg, &node, account, &key);
    let metrics = node.req("GET", "/metrics", &[], "").body;
    for name in ["offload_lag_events 0", "offload_connected 1", "offload_batches_total", "offload_copy_seconds_total"] {
        assert!(metrics.contains(&format!("signalgate_{name}")), "{name} in /metrics");
    }

    // The node killed mid-offload (batches every 300 ms, so one is usually open): the restart
    // continues from the cursor, inserting nothing twice.
    let mut env = env;
    env.push(("SIGNALGATE_POSTGRES_BATCH_MS", "300".into()));
    let node = start(Some(node.stop()), &env);
    let stop = Arc::new(AtomicBool::new(false));
    let traders = load(&node, &keys, stop.clone());
    std::thread::sleep(Duration::from_millis(800));
    let dir = node.crash();
    stop.store(true, Ordering::Relaxed);
    for t in traders {
        // Threads see the node die under them.
        let _ = t.join();
    }
    let node = start(Some(dir), &env);
    node.wait_offloaded();
    assert_offloaded_exactly_once(&pg, node.data_dir());
    assert_matches_node(&pg, &node, account, &key);
}

#[test]
fn an_unreachable_or_refusing_postgres_degrades_the_report_not_the_trading() {
    let pg = Postgres::start();
    // Nothing listens on this port.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cases = [
        (format!("host=127.0.0.1 port={free} user=postgres connect_timeout=2"), "postgres.unreachable", "connect"),
        (format!("host=127.0.0.1 port={} user=nobody dbname=postgres", pg.port), "postgres.refused", "nobody"),
        // Reachable, but the schema was never applied.
        (pg.url(), "postgres.refused", "signalgate migrate"),
    ];
    for (url, reason, logged) in cases {
        let node = Node::start(&[("SIGNALGATE_POSTGRES_URL", &url)]);
        node.wait_for_quote(&node.demo_key, "BTC-USD");
        let r = node.req(
            "POST",
            "/v1/signals",
            &[("Authorization", &bearer(&node.demo_key)), JSON],
            r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#,
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, r) = node.ready();
            assert_eq!(status, 200, "{r}");
            // The lag counts synced events (fsync = interval): it shows once the first sync is done.
            if r["postgres"] == "degraded"
                && r["postgres_reason"] == reason
                && r["offload_lag_events"].as_u64() > Some(0)
            {
                break;
            }
            assert!(Instant::now() < deadline, "{url}: expected {reason}, got {r}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let stopped = |l: &str| l.contains("postgres: offload stopped") && l.contains(logged);
        let log = node.log_until(Duration::from_secs(5), stopped);
        assert!(log.iter().any(|l| stopped(l)), "{url}: a clear log line naming {logged:?}: {log:?}");
    }
    // A database that has more of this node's events than its journal (a new data directory
    // against an old database): nothing is offloaded over the old rows.
    let out = Command::new(binary()).args(["migrate", "--postgres", &pg.url()]).output().unwrap();
    assert!(out.status.success());
    pg.query("INSERT INTO offload_cursor VALUES ('signalgate', 1000000, now())");
    let node = Node::start(&[("SIGNALGATE_POSTGRES_URL", &pg.url())]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.ready().1["postgres_reason"] != "postgres.journal_mismatch" {
        assert!(Instant::now() < deadline, "{} {:?}", node.ready().1, node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        node.log().iter().any(|l| l.contains("is at seq 1000000, past the end of this journal")),
        "{:?}",
        node.log()
    );
    assert_eq!(pg.query("SELECT last_seq FROM offload_cursor"), "1000000", "the cursor is left alone");

    // Without PostgreSQL configured, /ready says so.
    let node = Node::start(&[]);
    assert_eq!(node.ready().1["postgres"], "off");
}

#[test]
fn a_graceful_stop_offloads_what_the_journal_holds() {
    for flavor in Flavor::ALL {
        a_graceful_stop_offloads_what_the_journal_holds_on(flavor);
    }
}

fn a_graceful_stop_offloads_what_the_journal_holds_on(flavor: Flavor) {
    let pg = Postgres::start_flavor(flavor);
    let mut env = node_env(&pg.url());
    // Batches close only on size or at the stop.
    env.push(("SIGNALGATE_POSTGRES_BATCH_MS", "60000".into()));
    let node = start(None, &env);
    let (_, key) = node.account("pro", "1000000", unlimited());
    let stop = Arc::new(AtomicBool::new(false));
    let traders = load(&node, &[key], stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in traders {
        t.join().unwrap();
    }
    let (_, r) = node.ready();
    assert!(r["offload_lag_events"].as_u64().unwrap() > 0, "nothing offloaded before the stop: {r}");
    let dir = node.stop();
    let j = journal(dir.path());
    assert_eq!(pg.query("SELECT last_seq FROM offload_cursor"), j.last_seq.to_string());
    assert_rows(&pg, "fills", &seqs(&j, &["fill"]));
}

#[test]
fn history_routes_answer_from_plain_postgresql_with_pages_fields_cache_headers_and_etags() {
    history_routes_answer_from_postgres_with_pages_fields_cache_headers_and_etags(Flavor::Plain);
}

#[test]
fn history_routes_answer_from_timescaledb_with_pages_fields_cache_headers_and_etags() {
    history_routes_answer_from_postgres_with_pages_fields_cache_headers_and_etags(Flavor::Timescale);
}

fn history_routes_answer_from_postgres_with_pages_fields_cache_headers_and_etags(flavor: Flavor) {
    let pg = Postgres::start_flavor(flavor);
    let node = start(None, &node_env(&pg.url()));
    let (account, key) = node.account("pro", "1000000", unlimited());
    let auth = bearer(&key);
    node.trade(&key, 25);
    node.wait_offloaded();
    let get = |query: &str, headers: &[(&str, &str)]| {
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(headers);
        node.req("GET", &format!("/v1/trades{query}"), &h, "")
    };

    // Pages of 10, newest first, without gaps or repeats.
    let mut seqs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = format!("?limit=10{}", cursor.as_deref().map(|c| format!("&cursor={c}")).unwrap_or_default());
        let r = get(&query, &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        let rows = page["trades"].as_array().unwrap();
        assert!(rows.len() <= 10);
        seqs.extend(rows.iter().map(|t| t["seq"].as_u64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let in_db = pg.query(&format!(
        "SELECT string_agg(seq::text, ',' ORDER BY ts DESC, seq DESC) FROM fills WHERE account_id = {account}"
    ));
    assert_eq!(seqs.iter().map(u64::to_string).collect::<Vec<_>>().join(","), in_db);
    assert_eq!(seqs.len(), 25);

    // Field selection and a symbol filter.
    let r = get("?fields=seq,qty&symbol=ETH-USD", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let rows = r.json()["trades"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 12);
    for t in &rows {
        let keys: Vec<&String> = t.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["seq", "qty"], "in the order of the field list");
        assert_eq!(t["qty"], "0.01");
    }
    let full = get("?limit=1", &[]).json();
    let t = &full["trades"][0];
    for f in ["ts", "seq", "order_id", "symbol", "side", "qty", "price", "notional", "fee", "realized_pnl"] {
        assert!(!t[f].is_null(), "{f} in {t}");
    }
    assert!(t["ts"].as_str().unwrap().ends_with('Z'));

    // Cache headers: a window still open, and one long closed.
    let r = get("", &[]);
    assert_eq!(r.header("cache-control"), Some("public, max-age=5"));
    assert_eq!(r.header("vary"), Some("Authorization, X-API-Key"));
    let old = get("?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z", &[]);
    assert_eq!(old.status, 200, "{}", old.body);
    assert_eq!(old.header("cache-control"), Some("public, max-age=86400"));
    assert_eq!(old.json()["trades"].as_array().unwrap().len(), 0);

    // ETag and 304.
    let etag = r.header("etag").unwrap().to_string();
    let again = get("", &[("If-None-Match", &etag)]);
    assert_eq!((again.status, again.body.as_str()), (304, ""));
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(get("", &[("If-None-Match", "\"other\"")]).status, 200);

    // Bad input: a clear 400 each.
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?cursor=nope", "cursor"),
        ("?fields=seq,password", "fields"),
        ("?symbol=DOGE-USD", "symbol"),
    ] {
        let r = get(query, &[]);
        assert_eq!((r.status, r.code()), (400, "request.invalid_field".to_string()), "{query}: {}", r.body);
        assert!(r.body.contains(field), "{query}: {}", r.body);
    }
    let r = get("?from=2026-13-45T00:00:00Z", &[]);
    assert_eq!((r.status, r.code()), (400, "request.invalid_field".to_string()), "{}", r.body);
    assert_eq!(node.req("GET", "/v1/trades", &[], "").status, 401);

    // Performance over the last 7 days: today's fills, six quiet days.
    let perf = |query: &str| node.req("GET", &format!("/v1/performance{query}"), &[("Authorization", &auth)], "");
    let r = perf("?period=7d");
    assert_eq!(r.status, 200, "{}", r.body);
    let p = r.json();
    let sums = pg.query(&format!(
        "SELECT trim_scale(sum(realized))::text || '|' || trim_scale(sum(fee))::text || '|' || \
         trim_scale(sum(realized) - sum(fee))::text || '|' || count(*) FROM fills WHERE account_id = {account}"
    ));
    let shown = format!(
        "{}|{}|{}|{}",
        p["realized_pnl"].as_str().unwrap(),
        p["fees"].as_str().unwrap(),
        p["net_pnl"].as_str().unwrap(),
        p["trades"]
    );
    assert_eq!(shown, sums);
    assert_eq!(p["daily"].as_array().unwrap().len(), 7);
    assert_eq!(p["daily"][6]["net_pnl"], p["net_pnl"], "all of it today");
    assert!(p["win_rate"].as_f64().is_some_and(|w| (0.0..=1.0).contains(&w)), "{p}");
    assert!(p["sharpe"].is_number(), "{p}");
    assert_eq!(r.header("cache-control"), Some("public, max-age=5"), "the window includes today");
    let r = perf("?period=2d");
    assert_eq!((r.status, r.code()), (400, "request.invalid_field".to_string()));

    // Candles of the mid price, from the quotes.
    let candles = |path: &str| node.req("GET", path, &[("Authorization", &auth)], "");
    let r = candles("/v1/market/BTC-USD/candles?interval=1m");
    assert_eq!(r.status, 200, "{}", r.body);
    let c = r.json();
    let quotes: i64 = c["candles"].as_array().unwrap().iter().map(|k| k["quotes"].as_i64().unwrap()).sum();
    assert_eq!(quotes.to_string(), pg.query("SELECT count(*) FROM market_data WHERE symbol = 'BTC-USD'"));
    assert_eq!(c["candles"][0]["open"], "65000.5", "{c}");
    let r = candles("/v1/market/BTC-USD/candles?interval=1d&from=2020-01-01T00:00:00Z&to=2020-02-01T00:00:00Z");
    assert_eq!((r.status, r.header("cache-control")), (200, Some("public, max-age=86400")));
    assert_eq!(r.json()["candles"].as_array().unwrap().len(), 0);
    let r = candles("/v1/market/BTC-USD/candles?interval=1w");
    assert_eq!(r.json()["candles"][0]["quotes"].as_i64().unwrap(), quotes, "{}", r.body);
    let r = candles("/v1/market/BTC-USD/candles?interval=5m");
    assert_eq!((r.status, r.code()), (400, "request.invalid_field".to_string()));
    assert_eq!(candles("/v1/market/DOGE-USD/candles").status, 404);
}

#[test]
fn without_postgres_history_comes_from_the_journal_in_the_same_shapes() {
    let node = Node::start(&[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    let (_, key) = node.account("pro", "1000000", unlimited());
    let auth = bearer(&key);
    node.trade(&key, 12);
    let j = journal(node.data_dir());
    let fills = seqs(&j, &["fill"]);
    let get = |path: &str| {
        let r = node.req("GET", path, &[("Authorization", &auth)], "");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r
    };
    // Two pages of 7 and 5, newest first: every fill of the journal, once.
    let first = get("/v1/trades?limit=7").json();
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let second = get(&format!("/v1/trades?limit=7&cursor={cursor}")).json();
    assert!(second["next_cursor"].is_null());
    let mut seen: Vec<u64> = [&first, &second]
        .iter()
        .flat_map(|p| p["trades"].as_array().unwrap().iter().map(|t| t["seq"].as_u64().unwrap()))
        .collect();
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first: {seen:?}");
    seen.sort_unstable();
    assert_eq!(seen, fills);
    let t = &first["trades"][0];
    for f in ["ts", "seq", "order_id", "symbol", "side", "qty", "price", "notional", "fee", "realized_pnl"] {
        assert!(!t[f].is_null(), "{f} in {t}");
    }
    assert_eq!(t["qty"], "0.01");
    let narrow = get("/v1/trades?fields=seq,side&symbol=ETH-USD").json();
    assert_eq!(narrow["trades"].as_array().unwrap().len(), 6);
    assert_eq!(narrow["trades"][0].as_object().unwrap().keys().collect::<Vec<_>>(), ["seq", "side"]);

    let p = get("/v1/performance?period=7d").json();
    assert_eq!(p["trades"], 12);
    assert_eq!(p["daily"].as_array().unwrap().len(), 7);
    assert_eq!(p["daily"][6]["net_pnl"], p["net_pnl"]);

    let r = get("/v1/market/BTC-USD/candles?interval=1h");
    let c = r.json();
    assert_eq!(c["candles"].as_array().unwrap().len(), 1, "{c}");
    assert_eq!((c["candles"][0]["open"].as_str(), c["candles"][0]["quotes"].as_i64()), (Some("65000.5"), Some(1)));
    let week = get("/v1/market/BTC-USD/candles?interval=1w").json();
    assert_eq!(week["candles"][0]["quotes"], 1, "{week}");
    let monday = week["candles"][0]["t"].as_str().unwrap().to_string();
    let weekday = Command::new("date").args(["-u", "-d", &monday, "+%u"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&weekday.stdout).trim(), "1", "weeks start on Monday: {monday}");
    assert_eq!(r.header("cache-control"), Some("public, max-age=5"));
    let etag = r.header("etag").unwrap().to_string();
    let again = node.req(
        "GET",
        "/v1/market/BTC-USD/candles?interval=1h",
        &[("Authorization", &auth), ("If-None-Match", &etag)],
        "",
    );
    assert_eq!(again.status, 304);

    let r = node.req("GET", "/v1/trades?from=2026-13-45T00:00:00Z", &[("Authorization", &auth)], "");
    assert_eq!((r.status, r.code()), (400, "request.invalid_field".to_string()), "{}", r.body);
    let old = get("/v1/trades?to=2020-01-01T00:00:00Z");
    assert_eq!(old.header("cache-control"), Some("public, max-age=86400"));
    assert_eq!(old.json()["trades"].as_array().unwrap().len(), 0);
}

#[test]
fn candles_and_performance_equal_a_computation_from_the_rows_on_plain_postgresql() {
    candles_and_performance_equal_a_computation_from_the_rows(Flavor::Plain);
}

#[test]
fn candles_and_performance_equal_a_computation_from_the_rows_on_timescaledb() {
    candles_and_performance_equal_a_computation_from_the_rows(Flavor::Timescale);
}

/// The history API's candles (every width) and performance against the same computed from the
/// raw quotes and fills: quotes over two weeks (some of the same microsecond, some in chunks
/// TimescaleDB compressed), fills that gain and lose, read while part of the aggregates is
/// materialized and part is not.
fn candles_and_performance_equal_a_computation_from_the_rows(flavor: Flavor) {
    let pg = Postgres::start_flavor(flavor);
    let node = start(None, &node_env(&pg.url()));
    let (account, key) = node.account("pro", "1000000", unlimited());
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let (minute, hour, day) = (60_000_000_000u64, 3_600_000_000_000u64, 86_400_000_000_000u64);
    // Quotes at given times (0: now, as the node stamps it).
    let feed = |ticks: &[(u64, u64)]| {
        let ticks: Vec<Value> = ticks
            .iter()
            .map(|(ts, bid)| {
                let mut t = json!({"symbol": "BTC-USD", "bid": format!("{bid}.25"), "ask": format!("{}.50", bid + 1)});
                if *ts > 0 {
                    t["ts"] = json!(ts);
                }
                t
            })
            .collect();
        let r = node.req(
            "POST",
            "/v1/market/ticks",
            &[("Authorization", &bearer(&node.demo_key)), JSON],
            &json!({ "ticks": ticks }).to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    };
    // Two weeks back to now, every 97 minutes; 10 days ago, a burst every 7 s; pairs of the same
    // microsecond, whose open and close go by sequence number.
    let mut t = now_ns - 14 * day;
    let mut i = 0;
    while t < now_ns {
        feed(&[(t, 60_000 + i % 700)]);
        t += 97 * minute + 1_234_567;
        i += 1;
    }
    for k in 0..40 {
        feed(&[(now_ns - 10 * day + k * 7_000_000_000, 61_000 + (k * 37) % 300)]);
    }
    for k in 0..5u64 {
        let at = now_ns - 3 * hour + k * 11 * minute;
        feed(&[(at, 62_000 + k), (at, 63_000 - k)]);
    }
    // Fills at the node's quotes: buys, then sells higher and lower.
    for (bid, side) in [(64_000, "buy"), (64_000, "buy"), (64_500, "sell"), (63_000, "sell"), (63_500, "buy")] {
        feed(&[(0, bid)]);
        let body = format!(r#"{{"symbol":"BTC-USD","action":"{side}","qty":"0.01"}}"#);
        assert_eq!(node.req("POST", "/v1/signals", &[("Authorization", &bearer(&key)), JSON], &body).status, 201);
    }
    node.wait_offloaded();
    if flavor == Flavor::Timescale {
        // Part materialized (up to 6 hours ago, and old chunks compressed), part not.
        for view in ["candles_1m", "candles_1h", "candles_1d", "pnl_hourly"] {
            pg.query(&format!("CALL refresh_continuous_aggregate('{view}', NULL, now() - interval '6 hours')"));
        }
        pg.query("SELECT compress_chunk(c) FROM show_chunks('market_data', older_than => now() - interval '7 days') c");
    }

    let auth = bearer(&key);
    let get = |path: &str| {
        let r = node.req("GET", path, &[("Authorization", &auth)], "");
        assert_eq!(r.status, 200, "{path}: {} {:?}", r.body, node.log());
        r.json()
    };
    for (interval, unit) in [("1m", "minute"), ("1h", "hour"), ("1d", "day"), ("1w", "week")] {
        let windows: Vec<(String, String)> = vec![
            ("2000-01-01T00:00:00Z".into(), "2100-01-01T00:00:00Z".into()),
            // Bounds inside buckets: only the candles that start in the window.
            (
                pg.query("SELECT to_char((now() - interval '10 days 30 seconds') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"),
                pg.query("SELECT to_char((now() - interval '2 hours') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"),
            ),
        ];
        for (from, to) in windows {
            let api = get(&format!("/v1/market/BTC-USD/candles?interval={interval}&from={from}&to={to}"));
            let raw = pg.query(&format!(
                "SELECT coalesce(json_agg(json_build_object('t', to_char(b AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                        'open', trim_scale(open)::text, 'high', trim_scale(high)::text, 'low', trim_scale(low)::text, \
                        'close', trim_scale(close)::text, 'quotes', quotes) ORDER BY b), '[]') \
                 FROM (SELECT date_trunc('{unit}', ts, 'UTC') AS b, \
                              (array_agg((bid + ask) / 2 ORDER BY ts, seq))[1] AS open, max((bid + ask) / 2) AS high, \
                              min((bid + ask) / 2) AS low, (array_agg((bid + ask) / 2 ORDER BY ts DESC, seq DESC))[1] AS close, \
                              count(*) AS quotes \
                       FROM market_data WHERE symbol = 'BTC-USD' GROUP BY 1) c \
                 WHERE b >= '{from}' AND b < '{to}'"
            ));
            let raw: Value = serde_json::from_str(&raw).unwrap();
            assert_eq!(api["candles"], raw, "{interval} candles from {from} to {to}");
            assert!(!raw.as_array().unwrap().is_empty(), "{interval} from {from} to {to}: some candles");
        }
    }

    let p = get("/v1/performance?period=90d");
    let raw = pg.query(&format!(
        "SELECT trim_scale(sum(realized))::text || '|' || trim_scale(sum(fee))::text || '|' || \
                trim_scale(sum(realized) - sum(fee))::text || '|' || count(*) || '|' || \
                count(*) FILTER (WHERE realized > 0) || '|' || count(*) FILTER (WHERE realized < 0) \
         FROM fills WHERE account_id = {account}"
    ));
    let wins_losses: Vec<u64> = raw.split('|').skip(4).map(|n| n.parse().unwrap()).collect();
    assert!(wins_losses[0] > 0 && wins_losses[1] > 0, "fills that gained and lost: {raw}");
    let shown = format!(
        "{}|{}|{}|{}|{}|{}",
        p["realized_pnl"].as_str().unwrap(),
        p["fees"].as_str().unwrap(),
        p["net_pnl"].as_str().unwrap(),
        p["trades"],
        (p["win_rate"].as_f64().unwrap() * (wins_losses[0] + wins_losses[1]) as f64).round(),
        wins_losses[1],
    );
    assert_eq!(shown, raw, "{p}");
    assert_eq!(p["daily"].as_array().unwrap().len(), 90);
    assert_eq!(p["daily"][89]["net_pnl"], p["net_pnl"], "all of it today: {p}");
}
