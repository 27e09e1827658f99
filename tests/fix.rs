//! The FIX venue against a real FIX engine: QuickFIX's acceptor with an order-matching
//! simulator (tests/support/fix_acceptor.cpp), the node as the initiator. Logon, orders filled
//! and resting, a cancel, refusals, a dropped connection in the middle of an order (resend and
//! reconciliation), duplicate reports, restarts with the sequence numbers kept, kill -9 between
//! an order sent and its report, TLS.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalgate::ws::client::{Client, Incoming};
use support::fix::Acceptor;
use support::{bearer, Node, JSON};
use tungstenite::Message;

/// Reconnects at once after a drop.
const FAST: &str = "reconnect_min_ms = 50\nreconnect_max_ms = 400";

/// A node whose venue is `acceptor`, on a fresh data directory (or `dir`).
fn node(acceptor: &Acceptor, dir: Option<tempfile::TempDir>, extra_venue: &str) -> Node {
    let config = acceptor.dir.path().join("node.toml");
    std::fs::write(&config, acceptor.node_config(extra_venue)).unwrap();
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let node = Node::try_start_in(dir, &["--config", config.to_str().unwrap()], &[])
        .unwrap_or_else(|(e, _)| panic!("node did not start: {e}"));
    wait_ready(&node);
    node
}

/// Waits until the node is logged on (ready) and nothing is being reconciled.
fn wait_ready(node: &Node) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, r) = node.ready();
        if status == 200 && r["venue_session"] == "active" && r["venue_reconciling"] == 0 {
            return r;
        }
        assert!(Instant::now() < deadline, "the node never logged on: {r}; log: {:?}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An account that may trade a few BTC.
fn trader(node: &Node) -> String {
    let limits =
        json!({"max_order_notional": "1000000", "max_position_notional": "1000000", "max_gross_exposure": "1000000"});
    node.account("pro", "1000000", limits).1
}

fn post(node: &Node, key: &str, path: &str, body: &str) -> support::Resp {
    node.req("POST", path, &[("Authorization", &bearer(key)), JSON], body)
}

fn order(node: &Node, key: &str, id: u64) -> Value {
    let r = node.req("GET", &format!("/v1/orders/{id}"), &[("Authorization", &bearer(key))], "");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Polls the order until `done` holds for it.
fn order_until(node: &Node, key: &str, id: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = order(node, key, id);
        if done(&o) {
            return o;
        }
        assert!(Instant::now() < deadline, "order {id} stays {o}; log: {:?}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The account's BTC-USD position quantity.
fn btc_position(node: &Node, key: &str) -> String {
    let r = node.req("GET", "/v1/positions", &[("Authorization", &bearer(key))], "");
    let positions = r.json()["positions"].as_array().cloned().unwrap_or_default();
    positions.iter().find(|p| p["symbol"] == "BTC-USD").map_or("0".into(), |p| p["qty"].as_str().unwrap().into())
}

/// The BTC-USD quote the node trades against, in dollars.
fn btc_bid(node: &Node, key: &str) -> f64 {
    node.wait_for_quote(key, "BTC-USD");
    let q = node.req("GET", "/v1/market/BTC-USD/quote", &[("Authorization", &bearer(key))], "").json();
    q["bid"].as_str().unwrap().parse().unwrap()
}

fn market_buy(node: &Node, key: &str, qty: &str) -> support::Resp {
    post(
        node,
        key,
        "/v1/orders",
        &format!(r#"{{"symbol":"BTC-USD","side":"buy","qty":"{qty}","order_type":"market"}}"#),
    )
}

#[test]
fn orders_fill_rest_cancel_and_are_refused_at_a_real_fix_engine() {
    let mut venue = Acceptor::start();
    let node = node(&venue, None, FAST);
    venue.wait_for("logon");
    let key = trader(&node);
    venue.command("price XBT/USD 65000.5");
    let bid = btc_bid(&node, &key);

    // A market order fills at the venue's price; its answer shows the fill (the venue's first
    // word came within the answer's wait), and the venue got the symbol under its own name.
    let r = market_buy(&node, &key, "0.01");
    assert_eq!(r.status, 201, "{}", r.body);
    let o = r.json();
    assert_eq!((o["status"].as_str(), o["filled_qty"].as_str()), (Some("filled"), Some("0.0100")), "{o}");
    assert_eq!(o["avg_price"], "65000.50");
    assert!(venue.said(&format!("order {} XBT/USD", o["id"])), "{:?}", venue.seen);
    assert!(r.header("server-timing").is_some_and(|t| t.starts_with("s2o;dur=")), "signal to wire timed");

    // Over 0.1 the venue fills in two trades: a partial fill, then the rest.
    let o = market_buy(&node, &key, "0.2").json();
    let o = order_until(&node, &key, o["id"].as_u64().unwrap(), |o| o["status"] == "filled");
    assert_eq!(o["filled_qty"], "0.2000");

    // A limit order below the market rests; a cancel cancels it at the venue.
    let limit = format!("{:.2}", bid * 0.99);
    let body = format!(r#"{{"symbol":"BTC-USD","side":"buy","qty":"0.05","limit_price":"{limit}","tif":"gtc"}}"#);
    let resting = post(&node, &key, "/v1/orders", &body).json();
    assert_eq!(resting["status"], "new", "{resting}");
    let id = resting["id"].as_u64().unwrap();
    let r = node.req("DELETE", &format!("/v1/orders/{id}"), &[("Authorization", &bearer(&key))], "");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("canceled")), "{}", r.body);
    venue.wait_for(&format!("cancel {id}"));

    // Another rests, then fills at the venue later: the report changes the order and position,
    // and reaches the account's WebSocket stream like a paper fill.
    let mut stream = Client::connect(node.ws, &format!("format=json&key={key}"), None).unwrap();
    stream.set_timeout(Duration::from_secs(10));
    stream.send_raw(Message::text(r#"{"type":"subscribe","channels":["account"]}"#)).unwrap();
    let resting = post(&node, &key, "/v1/orders", &body).json();
    let id = resting["id"].as_u64().unwrap();
    venue.command(&format!("fill {id}"));
    let o = order_until(&node, &key, id, |o| o["status"] == "filled");
    let filled = loop {
        let Ok(Incoming::Json(msgs)) = stream.recv() else { panic!("the stream ended before the fill") };
        if let Some(m) = msgs.into_iter().find(|m| m["event"]["type"] == "fill" && m["event"]["data"]["order"] == id) {
            break m;
        }
    };
    assert_eq!(filled["event"]["data"]["qty"], 500, "{filled}");
    assert_eq!(o["avg_price"].as_str().unwrap(), limit);
    assert_eq!(btc_position(&node, &key), "0.2600");

    // The venue refuses ETH-USD (an unknown symbol there): the answer is the refusal, and the
    // order says why.
    let r = post(&node, &key, "/v1/orders", r#"{"symbol":"ETH-USD","side":"buy","qty":"1","order_type":"market"}"#);
    assert_eq!((r.status, r.code().as_str()), (422, "venue.rejected"), "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().unwrap().ends_with(": unknown symbol"), "{}", r.body);
    let all = node.req("GET", "/v1/orders?status=all", &[("Authorization", &bearer(&key))], "").json();
    let refused = all["orders"].as_array().unwrap().iter().find(|o| o["symbol"] == "ETH-USD").cloned().unwrap();
    assert_eq!(refused["status"], "rejected");
    assert_eq!(refused["reject_reason"], json!({"kind": "order_reject", "code": 1, "text": "unknown symbol"}));

    // The venue's application refuses one (BusinessMessageReject), its session another (a
    // Reject: a field it requires is not there): each answer says why.
    let btc = r#"{"symbol":"BTC-USD","side":"buy","qty":"0.01","order_type":"market"}"#;
    venue.command("refuse");
    let r = post(&node, &key, "/v1/orders", btc);
    assert_eq!((r.status, r.code().as_str()), (422, "venue.rejected"), "{}", r.body);
    assert!(r.body.contains(": application not available"), "{}", r.body);
    venue.command("require 1");
    let r = post(&node, &key, "/v1/orders", btc);
    assert_eq!((r.status, r.code().as_str()), (422, "venue.rejected"), "{}", r.body);
    assert!(r.body.contains(": a value is out of range"), "{}", r.body);
    venue.command("require 0");
    let all = node.req("GET", "/v1/orders?status=all", &[("Authorization", &bearer(&key))], "").json();
    let kinds: Vec<&str> =
        all["orders"].as_array().unwrap().iter().filter_map(|o| o["reject_reason"]["kind"].as_str()).collect();
    assert_eq!(kinds, ["session_reject", "business_reject", "order_reject"], "newest first");
    assert_eq!(btc_position(&node, &key), "0.2600");

    // The venue sends its last report again, flagged as a possible duplicate: nothing changes.
    venue.command("dup");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(btc_position(&node, &key), "0.2600");
    assert_eq!(order(&node, &key, id)["filled_qty"], "0.0500");

    // What the session did shows in the metrics, and the alerts' FIX metrics are exported.
    let text = node.req("GET", "/metrics", &[], "").body;
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/prometheus/signalgate-alerts.yml"));
    for name in rules.unwrap().split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if name.starts_with("signalgate_fix_") {
            assert!(text.lines().any(|l| l.starts_with(name) && !l.starts_with('#')), "{name} is not exported");
        }
    }
    assert!(node.metric("signalgate_fix_messages_sent_total") >= 6);
    assert!(node.metric("signalgate_fix_order_round_trip_seconds_count") >= 5);
    assert_eq!(node.metric("signalgate_fix_logons_total"), 1);
    assert_eq!(node.metric("signalgate_fix_messages_unreadable_total"), 0);
}

#[test]
fn a_dropped_connection_in_the_middle_of_orders_is_resent_and_reconciled() {
    let mut venue = Acceptor::start();
    // Slow to reconnect: the venue acts while the connection is down.
    let node = node(&venue, None, "reconnect_min_ms = 1500\nreconnect_max_ms = 1500");
    venue.wait_for("logon");
    let key = trader(&node);
    btc_bid(&node, &key);

    // Two orders reach the venue, which holds them unanswered: their answers come after the
    // answer's wait, pending.
    venue.command("hold");
    let a = market_buy(&node, &key, "0.01").json();
    let b = market_buy(&node, &key, "0.02").json();
    assert_eq!((a["status"].as_str(), b["status"].as_str()), (Some("pending_new"), Some("pending_new")));
    let (a, b) = (a["id"].as_u64().unwrap(), b["id"].as_u64().unwrap());
    venue.wait_for(&format!("held {b}"));

    // The connection drops; while it is down the venue fills A (its report waits in QuickFIX's
    // store), and B stays unanswered.
    venue.command("drop");
    venue.wait_for("logout");
    venue.command(&format!("release {a}"));

    // The node logs on again, finds the gap, gets A's reports again (PossDup) and asks what
    // became of B, which is still pending there: B stays open, shown as being reconciled
    // until the answer.
    venue.wait_for("logon");
    venue.wait_for("resend");
    venue.wait_for(&format!("status {b} known"));
    order_until(&node, &key, a, |o| o["status"] == "filled");
    wait_ready(&node);
    assert_eq!(order(&node, &key, b)["status"], "pending_new");
    assert!(node.metric("signalgate_fix_resend_requests_sent_total") >= 1);

    // Once the venue answers B, it fills; A filled once.
    venue.command(&format!("release {b}"));
    order_until(&node, &key, b, |o| o["status"] == "filled");
    assert_eq!(btc_position(&node, &key), "0.0300");

    // An order lost on its way (the venue never got it) is found out by reconciliation after
    // the next drop: rejected, and why.
    venue.command("hold");
    venue.command("lose");
    let lost = market_buy(&node, &key, "0.01").json()["id"].as_u64().unwrap();
    venue.wait_for(&format!("lost {lost}"));
    venue.command("drop");
    venue.wait_for(&format!("status {lost} unknown"));
    let o = order_until(&node, &key, lost, |o| o["status"] == "rejected");
    assert_eq!(o["reject_reason"]["kind"], "unknown_at_venue", "{o}");
    assert_eq!(btc_position(&node, &key), "0.0300");

    // While the session is down, new orders are refused at once.
    venue.command("drop");
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let r = market_buy(&node, &key, "0.01");
        if r.status == 503 || Instant::now() > deadline {
            break r;
        }
        assert_eq!(r.status, 201, "{}", r.body);
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!((refused.status, refused.code().as_str()), (503, "venue.unavailable"), "{}", refused.body);
    wait_ready(&node);
}

#[test]
fn restarts_keep_the_sequence_numbers_and_kill_9_between_send_and_report_is_reconciled() {
    let mut venue = Acceptor::start();
    let first = node(&venue, None, FAST);
    venue.wait_for("logon");
    let key = trader(&first);
    btc_bid(&first, &key);
    let r = market_buy(&first, &key, "0.01");
    assert_eq!(r.json()["status"], "filled");

    // A clean stop logs out; a restart logs on again where the numbers left off (the venue
    // would refuse numbers it has seen, and no reset is asked for).
    let dir = first.stop();
    venue.wait_for("logout");
    let second = node(&venue, Some(dir), FAST);
    venue.wait_for("logon");
    // It starts past the block of numbers it had reserved in its journal: the venue asks for
    // the skipped ones and gets a gap fill.
    venue.wait_for("asks");

    // An order goes out, the venue holds it, and the node dies before its report.
    venue.command("hold");
    let id = market_buy(&second, &key, "0.05").json()["id"].as_u64().unwrap();
    venue.wait_for(&format!("held {id}"));
    let dir = second.crash();
    venue.wait_for("logout");
    // The venue fills it while the node is down.
    venue.command(&format!("release {id}"));

    // After the restart the journal's numbers continue, the report comes again, and the order
    // is known and applied once.
    let third = node(&venue, Some(dir), FAST);
    venue.wait_for("logon");
    venue.wait_for("asks");
    let o = order_until(&third, &key, id, |o| o["status"] == "filled");
    assert_eq!(o["filled_qty"], "0.0500");
    assert_eq!(btc_position(&third, &key), "0.0600");

    // Killed again with an order the venue holds unanswered: after the restart nothing about
    // it comes again, so the node asks (OrderStatusRequest), shows it as being reconciled, and
    // holds the account's new orders until the answer.
    let id = market_buy(&third, &key, "0.01").json()["id"].as_u64().unwrap();
    venue.wait_for(&format!("held {id}"));
    let dir = third.crash();
    venue.wait_for("logout");
    let config = venue.dir.path().join("node.toml");
    let fourth = Node::try_start_in(dir, &["--config", config.to_str().unwrap()], &[])
        .unwrap_or_else(|(e, _)| panic!("node did not restart: {e}"));
    venue.wait_for("logon");
    venue.wait_for(&format!("status {id} known"));
    assert_eq!(order(&fourth, &key, id)["status"], "pending_new");
    venue.command(&format!("release {id}"));
    order_until(&fourth, &key, id, |o| o["status"] == "filled");
    assert_eq!(btc_position(&fourth, &key), "0.0700");

    // The venue never saw a number twice or a reset: its session log has no sequence problem.
    let log = venue.session_log();
    assert!(!log.contains("MsgSeqNum too low"), "{log}");
    assert!(!log.contains("ResetSeqNumFlag"), "{log}");
    assert_eq!(venue.seen.iter().filter(|l| *l == "logon").count(), 4);
}

#[test]
fn kill_9_racing_orders_loses_no_confirmed_fill_and_applies_none_twice() {
    let mut venue = Acceptor::start();
    let first = node(&venue, None, FAST);
    venue.wait_for("logon");
    let key = trader(&first);
    btc_bid(&first, &key);

    // Clients send orders as fast as answers come; the node is killed in the middle.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = first.http;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (key, stop) = (key.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut confirmed = Vec::new();
                let mut conn = support::Conn::open(http);
                let auth = bearer(&key);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = r#"{"symbol":"BTC-USD","side":"buy","qty":"0.001","order_type":"market"}"#;
                    let Ok(r) = conn.try_send("POST", "/v1/orders", &[("Authorization", &auth), JSON], body.as_bytes())
                    else {
                        break;
                    };
                    if r.status == 201 {
                        let o: Value = serde_json::from_str(&r.body).unwrap();
                        confirmed.push((o["id"].as_u64().unwrap(), o["filled_qty"].as_str().unwrap().to_string()));
                    }
                }
                confirmed
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let dir = first.crash();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let confirmed: Vec<(u64, String)> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(confirmed.len() > 10, "only {} orders answered", confirmed.len());

    // After the restart every answered order is there, filled as answered or more, never more
    // than its quantity; the position is the sum of what the orders filled.
    let node = node(&venue, Some(dir), FAST);
    let all = node.req("GET", "/v1/orders?status=all&limit=1000", &[("Authorization", &bearer(&key))], "").json();
    let orders = all["orders"].as_array().unwrap();
    for (id, filled) in &confirmed {
        let o = orders.iter().find(|o| o["id"] == *id).unwrap_or_else(|| panic!("answered order {id} lost"));
        let now: f64 = o["filled_qty"].as_str().unwrap().parse().unwrap();
        assert!(now >= filled.parse::<f64>().unwrap() && now <= 0.001, "order {id}: {o}");
    }
    let sum: f64 = orders.iter().map(|o| o["filled_qty"].as_str().unwrap().parse::<f64>().unwrap()).sum();
    let position: f64 = btc_position(&node, &key).parse().unwrap();
    assert!((sum - position).abs() < 1e-9, "position {position}, fills {sum}");
    // Every order the venue filled is filled here, once: the venue's count matches.
    let filled_at_venue = orders.iter().filter(|o| o["status"] == "filled").count();
    assert!(filled_at_venue >= confirmed.len());
}

#[test]
fn the_session_runs_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    support::certificate_authority(certs.path(), "ca");
    support::server_certificate(certs.path(), "ca", "venue", "DNS:venue.test");
    let mut venue = Acceptor::start_tls(&certs.path().join("venue.crt"), &certs.path().join("venue.key"));
    let ca = certs.path().join("ca.crt");
    let tls = format!("{FAST}\ntls = true\ntls_ca_file = {:?}\ntls_server_name = \"venue.test\"", ca.to_str().unwrap());
    let node = node(&venue, None, &tls);
    venue.wait_for("logon");
    let key = trader(&node);
    btc_bid(&node, &key);
    assert_eq!(market_buy(&node, &key, "0.01").json()["status"], "filled");

    // A certificate for another name is refused: the node never logs on.
    let other = format!("tls = true\ntls_ca_file = {:?}\ntls_server_name = \"elsewhere.test\"", ca.to_str().unwrap());
    let config = venue.dir.path().join("other.toml");
    std::fs::write(&config, venue.node_config(&other)).unwrap();
    let wrong = Node::try_start_in(tempfile::tempdir().unwrap(), &["--config", config.to_str().unwrap()], &[])
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    let lines = wrong.log_until(Duration::from_secs(10), |l| l.contains("TLS"));
    assert!(lines.iter().any(|l| l.contains("cannot connect") && l.contains("TLS")), "{lines:?}");
    assert_eq!(wrong.ready().0, 503);
}
