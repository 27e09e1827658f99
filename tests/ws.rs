//! The WebSocket stream against the real binary, with real clients (the crate's tungstenite
//! client, and raw sockets where a test controls every byte).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalgate::engine::event::EventKind;
use signalgate::ws::client::{Client, ConnectError, Incoming};
use signalgate::ws::protocol::{ClientMsg, ServerBody, ServerMsg};
use support::Node;
use tungstenite::Message;

const JSON: (&str, &str) = ("Content-Type", "application/json");
const BUY: &str = r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#;

fn connect(node: &Node, query: &str, key: Option<&str>) -> Client {
    let mut c = Client::connect(node.ws, query, key).unwrap_or_else(|e| panic!("connect: {e}"));
    c.set_timeout(Duration::from_secs(5));
    c
}

/// Messages of one mode (`unpack` takes them out of a frame) until `pred` holds for one,
/// returned with everything before it.
fn until_in<T: std::fmt::Debug>(
    c: &mut Client,
    what: &str,
    unpack: impl Fn(Incoming) -> Option<Vec<T>>,
    pred: impl Fn(&T) -> bool,
) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let got = c.recv();
        let Some(msgs) = got.clone().ok().and_then(&unpack) else {
            panic!("waiting for {what}: {got:?} after {seen:?}");
        };
        for m in msgs {
            let hit = pred(&m);
            seen.push(m);
            if hit {
                return seen;
            }
        }
    }
    panic!("no {what} within 5 s; saw {seen:?}");
}

/// Binary messages until `pred` holds for one.
fn until(c: &mut Client, what: &str, pred: impl Fn(&ServerMsg) -> bool) -> Vec<ServerMsg> {
    until_in(c, what, |i| if let Incoming::Messages(m) = i { Some(m) } else { None }, pred)
}

/// JSON messages until `pred` holds for one.
fn until_json(c: &mut Client, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    until_in(c, what, |i| if let Incoming::Json(m) = i { Some(m) } else { None }, pred)
}

fn closed(c: &mut Client) -> (u16, String) {
    for _ in 0..10_000 {
        match c.recv() {
            Ok(Incoming::Closed(code, reason)) => return (code, reason),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
    panic!("no close frame");
}

fn subscribe(c: &mut Client, channels: &[&str], resume_from: Option<u64>) {
    let channels = channels.iter().map(|s| s.to_string()).collect();
    c.send(&ClientMsg::Subscribe { channels, resume_from }).unwrap();
}

fn is_event(m: &ServerMsg, f: impl Fn(&EventKind) -> bool) -> bool {
    matches!(&m.body, ServerBody::Event { event } if f(event))
}

fn account_seqs(msgs: &[ServerMsg]) -> Vec<u64> {
    msgs.iter()
        .filter(|m| matches!(m.body, ServerBody::Event { event } if !matches!(event, EventKind::Quote(_))))
        .map(|m| m.seq)
        .collect()
}

#[test]
fn binary_stream_carries_quotes_and_the_accounts_own_fills() {
    let node = Node::start(&[]);
    let mut c = connect(&node, "", Some(&node.demo_key));
    let welcome = until(&mut c, "welcome", |m| matches!(m.body, ServerBody::Welcome { .. }));
    let ServerBody::Welcome { version, symbols, .. } = &welcome[0].body else { unreachable!() };
    assert_eq!(*version, 1);
    assert!(symbols.iter().any(|s| s.name == "BTC-USD"));
    subscribe(&mut c, &["quotes:BTC-USD", "account"], None);
    until(&mut c, "subscribed", |m| matches!(m.body, ServerBody::Subscribed { .. }));
    let quote = until(&mut c, "a quote", |m| is_event(m, |e| matches!(e, EventKind::Quote(_))));
    let q = quote.last().unwrap();
    assert!(q.seq > 0 && q.ts > 1_600_000_000_000_000_000, "{q:?}");
    let r = node.req("POST", "/v1/signals", &[JSON, ("X-API-Key", &node.demo_key)], BUY);
    assert_eq!(r.status, 201, "{}", r.body);
    let order_id = r.json()["order"]["id"].clone();
    let got = until(&mut c, "the position after the fill", |m| matches!(m.body, ServerBody::Position { .. }));
    assert!(got.iter().any(|m| is_event(m, |e| matches!(e, EventKind::OrderAccepted { .. }))), "{got:?}");
    let fill = got.iter().find(|m| is_event(m, |e| matches!(e, EventKind::Fill { .. }))).expect("fill");
    let EventKind::Fill { order, qty, .. } = (match &fill.body {
        ServerBody::Event { event } => *event,
        _ => unreachable!(),
    }) else {
        unreachable!()
    };
    assert_eq!(json!(order.0), order_id, "the fill is for the order just placed");
    assert_eq!(qty, 100, "0.01 BTC in quantity units (4 decimals)");
    let ServerBody::Position { qty, .. } = got.last().unwrap().body else { unreachable!() };
    assert_eq!(qty, 100);
    // Account events arrive in sequence order.
    let seqs = account_seqs(&got);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Only subscribed symbols: no ETH-USD quote ever.
    let more = until(&mut c, "another quote", |m| is_event(m, |e| matches!(e, EventKind::Quote(_))));
    assert!(!more.iter().chain(&got).any(|m| is_event(m, |e| matches!(e, EventKind::Quote(q) if q.symbol.0 != 0))));
    c.close();
}

#[test]
fn a_new_connection_starts_from_every_durable_event() {
    // With no connection open, the fan-out executor is not woken for each event (it takes the
    // feed in every 100 ms); it catches up before it serves a new connection. No simulator:
    // after the signals nothing happens that could wake it.
    let node = Node::start(&[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    let ticks = r#"{"ticks":[{"symbol":"BTC-USD","bid":"65000.00","ask":"65001.00"}]}"#;
    let r = node.req("POST", "/v1/market/ticks", &[("X-API-Key", &node.demo_key), JSON], ticks);
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, key) = node.account("pro", "1000000", json!({"max_orders_per_second": 100_000}));
    // Once, so that the hub knows the key (an unknown key makes it catch up by itself).
    connect(&node, "", Some(&key)).close();
    for round in 0..5 {
        assert_eq!(per_executor(&node, 0).iter().sum::<u64>(), 0, "no connection open");
        for _ in 0..10 {
            let r = node.req("POST", "/v1/signals", &[JSON, ("X-API-Key", &key)], BUY);
            assert_eq!(r.status, 201, "{}", r.body);
        }
        let durable = node.metric("signalgate_journal_durable_seq");
        let mut c = connect(&node, "", Some(&key));
        let welcome = until(&mut c, "welcome", |m| matches!(m.body, ServerBody::Welcome { .. }));
        assert!(
            welcome[0].seq >= durable,
            "round {round}: welcome at seq {} before durable seq {durable}",
            welcome[0].seq
        );
        c.close();
    }
}

#[test]
fn another_accounts_events_are_not_sent() {
    let node = Node::start(&[]);
    let (_, other) = node.account("pro", "100000", json!(null));
    let mut c = connect(&node, "", Some(&other));
    subscribe(&mut c, &["account"], None);
    until(&mut c, "subscribed", |m| matches!(m.body, ServerBody::Subscribed { .. }));
    let r = node.req("POST", "/v1/signals", &[JSON, ("X-API-Key", &node.demo_key)], BUY);
    assert_eq!(r.status, 201);
    c.send(&ClientMsg::Ping { id: 1 }).unwrap();
    let got = until(&mut c, "pong", |m| matches!(m.body, ServerBody::Pong { id: 1 }));
    // The demo account's fill is durable before its answer, and the pong was asked after it.
    assert!(got.iter().all(|m| !matches!(m.body, ServerBody::Event { .. } | ServerBody::Position { .. })), "{got:?}");
}

#[test]
fn json_mode_and_signals_over_the_socket() {
    let node = Node::start(&[]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let mut c = connect(&node, &format!("format=json&key={}", node.demo_key), None);
    let w = until_json(&mut c, "welcome", |m| m["type"] == "welcome");
    assert_eq!(w[0]["version"], 1);
    assert!(w[0]["seq"].as_u64().is_some() && w[0]["ts"].as_u64().unwrap() > 0);
    c.send_raw(Message::text(r#"{"type":"subscribe","channels":["account","quotes:ETH-USD"]}"#)).unwrap();
    until_json(&mut c, "subscribed", |m| m["type"] == "subscribed");
    let q = until_json(&mut c, "quote", |m| m["type"] == "event" && m["event"]["type"] == "quote");
    assert_eq!(q.last().unwrap()["event"]["data"]["symbol"], 1);
    // A signal with an object body; the answer is HTTP's status and body.
    c.send_raw(Message::text(format!(r#"{{"type":"signal","request_id":42,"body":{BUY}}}"#))).unwrap();
    let seen = until_json(&mut c, "signal result", |m| m["type"] == "signal_result");
    let a = seen.last().unwrap().clone();
    assert_eq!((a["request_id"].as_u64(), a["status"].as_u64()), (Some(42), Some(201)), "{a}");
    let body: Value = serde_json::from_str(a["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["order"]["status"], "filled", "{body}");
    // The answer comes after the account events it reports: the order, its fill, the position.
    let fill = seen.iter().find(|m| m["type"] == "event" && m["event"]["type"] == "fill").expect("fill first");
    assert_eq!(seen.iter().find(|m| m["type"] == "position").expect("position first")["qty"], 100);
    assert!(a["seq"].as_u64() >= fill["seq"].as_u64(), "{a} after {fill}");
    // A bad signal gets exactly what HTTP gives.
    let bad = r#"{"symbol":"NOPE-USD","action":"buy","qty":"1"}"#;
    let http = node.req("POST", "/v1/signals", &[JSON, ("X-API-Key", &node.demo_key)], bad);
    c.send_raw(Message::text(format!(r#"{{"type":"signal","request_id":43,"body":{bad}}}"#))).unwrap();
    let a = until_json(&mut c, "signal result", |m| m["type"] == "signal_result" && m["request_id"] == 43);
    let a = a.last().unwrap();
    assert_eq!(a["status"].as_u64(), Some(u64::from(http.status)));
    let body: Value = serde_json::from_str(a["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], http.json()["error"]["code"], "{body}");
}

#[test]
fn every_signal_answer_comes_after_the_events_it_reports() {
    // The fan-out executor on its own core, as by default: the answer and the events reach it on
    // different links.
    let node = Node::start(&[("SIGNALGATE_TOPOLOGY_FANOUT", "[1]")]);
    let (_, key) = node.account("enterprise", "10000000", serde_json::json!({}));
    node.wait_for_quote(&key, "BTC-USD");
    let mut c = connect(&node, &format!("format=json&key={key}"), None);
    c.send_raw(Message::text(r#"{"type":"subscribe","channels":["account"]}"#)).unwrap();
    until_json(&mut c, "subscribed", |m| m["type"] == "subscribed");
    for id in 1..=40 {
        c.send_raw(Message::text(format!(r#"{{"type":"signal","request_id":{id},"body":{BUY}}}"#))).unwrap();
        let seen = until_json(&mut c, "signal result", |m| m["type"] == "signal_result");
        let a = seen.last().unwrap();
        let body: Value = serde_json::from_str(a["body"].as_str().unwrap()).unwrap();
        let order = body["order"]["id"].as_u64().unwrap_or_else(|| panic!("signal {id}: {body}"));
        assert!(
            seen.iter()
                .any(|m| m["type"] == "event" && m["event"]["type"] == "fill" && m["event"]["data"]["order"] == order),
            "signal {id}: the answer came before its order's fill: {seen:?}"
        );
    }
}

#[test]
fn binary_signals_are_answered_by_request_id() {
    let node = Node::start(&[]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let mut c = connect(&node, "", Some(&node.demo_key));
    for id in [7u64, 8] {
        c.send(&ClientMsg::Signal { request_id: id, body: BUY.into() }).unwrap();
    }
    let got = until(&mut c, "two answers", |m| matches!(m.body, ServerBody::SignalResult { request_id: 8, .. }));
    let answers: Vec<(u64, u16)> = got
        .iter()
        .filter_map(|m| match &m.body {
            ServerBody::SignalResult { request_id, status, .. } => Some((*request_id, *status)),
            _ => None,
        })
        .collect();
    assert_eq!(answers, [(7, 201), (8, 201)]);
    let positions = node.req("GET", "/v1/positions", &[("X-API-Key", &node.demo_key)], "").json();
    assert_eq!(positions["positions"][0]["qty"], "0.0200", "{positions}");
}

#[test]
fn resume_sends_every_missed_account_event_once() {
    let node = Node::start(&[]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let signal =
        || assert_eq!(node.req("POST", "/v1/signals", &[JSON, ("X-API-Key", &node.demo_key)], BUY).status, 201);
    let mut c = connect(&node, "", Some(&node.demo_key));
    subscribe(&mut c, &["account"], None);
    signal();
    let first = until(&mut c, "position", |m| matches!(m.body, ServerBody::Position { .. }));
    let last_seen = first.last().unwrap().seq;
    // Forced disconnect: the socket goes away without a close frame.
    c.socket().shutdown(std::net::Shutdown::Both).unwrap();
    drop(c);
    for _ in 0..3 {
        signal();
    }
    let mut live = connect(&node, "", Some(&node.demo_key));
    subscribe(&mut live, &["account"], None);
    signal();
    let reference = until(&mut live, "4th position", |m| matches!(m.body, ServerBody::Position { qty: 500, .. }));
    let mut r = connect(&node, &format!("resume_from={last_seen}"), Some(&node.demo_key));
    subscribe(&mut r, &["account"], None);
    let got = until(&mut r, "resumed", |m| matches!(m.body, ServerBody::Resumed { .. }));
    let ServerBody::Resumed { from, count, .. } = got.last().unwrap().body else { unreachable!() };
    assert_eq!(from, last_seen);
    let resumed: Vec<&ServerMsg> =
        got.iter().filter(|m| matches!(m.body, ServerBody::Event { .. } | ServerBody::Position { .. })).collect();
    assert_eq!(resumed.len() as u64, count);
    assert!(resumed.iter().all(|m| m.seq > last_seen));
    let seqs = account_seqs(&got);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "no duplicates, in order: {seqs:?}");
    let fills = got.iter().filter(|m| is_event(m, |e| matches!(e, EventKind::Fill { .. }))).count();
    assert_eq!(fills, 4, "three fills while away and one since");
    // The same events the live subscriber got after `last_seen`, in the same order.
    let live_seqs: Vec<u64> = account_seqs(&reference);
    assert_eq!(&seqs[seqs.len() - live_seqs.len()..], &live_seqs[..]);
    // Nothing more arrives twice: the next live event follows the last resumed one.
    signal();
    let next = until(&mut r, "next fill", |m| is_event(m, |e| matches!(e, EventKind::Fill { .. })));
    assert!(account_seqs(&next).iter().all(|s| s > seqs.last().unwrap()));
}

#[test]
fn resume_reads_the_journal_beyond_the_window_and_fails_beyond_that() {
    let node = Node::start(&[("SIGNALGATE_WS_RESUME_EVENTS", "3"), ("SIGNALGATE_WS_RESUME_JOURNAL_EVENTS", "100000")]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let r = node.req("GET", "/v1/account", &[("X-API-Key", &node.demo_key)], "");
    assert_eq!(r.status, 200);
    let mut c = connect(&node, "", Some(&node.demo_key));
    subscribe(&mut c, &["account"], None);
    assert_eq!(node.req("POST", "/v1/signals", &[JSON, ("X-API-Key", &node.demo_key)], BUY).status, 201);
    let first = until(&mut c, "position", |m| matches!(m.body, ServerBody::Position { .. }));
    let from = first.iter().find(|m| is_event(m, |e| matches!(e, EventKind::OrderAccepted { .. }))).unwrap().seq - 1;
    for _ in 0..5 {
        assert_eq!(node.req("POST", "/v1/signals", &[JSON, ("X-API-Key", &node.demo_key)], BUY).status, 201);
    }
    until(&mut c, "6th position", |m| matches!(m.body, ServerBody::Position { qty: 600, .. }));
    // The window holds 3 messages; the rest comes from the journal.
    let mut r = connect(&node, "", Some(&node.demo_key));
    subscribe(&mut r, &["account"], Some(from));
    let got = until(&mut r, "resumed", |m| matches!(m.body, ServerBody::Resumed { .. }));
    let fills = got.iter().filter(|m| is_event(m, |e| matches!(e, EventKind::Fill { .. }))).count();
    assert_eq!(fills, 6, "{got:?}");
    let seqs = account_seqs(&got);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    drop(node);

    let node = Node::start(&[("SIGNALGATE_WS_RESUME_EVENTS", "3"), ("SIGNALGATE_WS_RESUME_JOURNAL_EVENTS", "1")]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    for _ in 0..3 {
        assert_eq!(node.req("POST", "/v1/signals", &[JSON, ("X-API-Key", &node.demo_key)], BUY).status, 201);
    }
    let mut r = connect(&node, "", Some(&node.demo_key));
    subscribe(&mut r, &["account"], Some(1));
    let got = until(&mut r, "resume_failed", |m| matches!(m.body, ServerBody::ResumeFailed { .. }));
    let ServerBody::ResumeFailed { from, oldest, reason } = &got.last().unwrap().body else { unreachable!() };
    assert_eq!(*from, 1);
    assert!(*oldest > 1 && reason.contains("resume"), "{oldest} {reason}");
    // A sequence number the node never reached fails too.
    subscribe(&mut r, &["account"], Some(u64::MAX / 2));
    until(&mut r, "resume_failed", |m| matches!(m.body, ServerBody::ResumeFailed { .. }));
}

#[test]
fn a_stalled_reader_is_closed_as_a_slow_consumer_and_others_stay_on_time() {
    let node = Node::start(&[("SIGNALGATE_WS_QUEUE_BYTES", "65536")]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let (id, _) = node.account("enterprise", "10000000", json!(null));
    let k1 =
        node.admin("POST", &format!("/admin/accounts/{id}/keys"), "{}").json()["key"].as_str().unwrap().to_string();
    let k2 =
        node.admin("POST", &format!("/admin/accounts/{id}/keys"), "{}").json()["key"].as_str().unwrap().to_string();
    // The stalled client: a raw socket that stops reading.
    let mut stalled = TcpStream::connect(node.ws).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        stalled,
        "GET /v1/ws?key={k1} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let sub = signalgate::ws::protocol::encode_client(&ClientMsg::Subscribe {
        channels: vec!["account".into()],
        resume_from: None,
    });
    stalled.write_all(&masked(2, &sub)).unwrap();
    let mut healthy = connect(&node, "", Some(&k2));
    subscribe(&mut healthy, &["account"], None);
    until(&mut healthy, "subscribed", |m| matches!(m.body, ServerBody::Subscribed { .. }));
    let body = r#"{"symbol":"ETH-USD","action":"buy","qty":"0.01"}"#;
    let mut conn = node.conn();
    let slow = || node.req("GET", "/metrics", &[], "").body.contains("signalgate_ws_slow_consumers_total 1");
    // Until the kernel's buffers are full and the node's queue for the stalled client is over
    // its bound.
    // Each signal ends in a fill, or (beyond the tier's order rate) a rejection: both are account
    // events.
    let outcome = |m: &ServerMsg| is_event(m, |e| matches!(e, EventKind::Fill { .. } | EventKind::Rejected { .. }));
    let mut outcomes = 0;
    for i in 1..=20_000 {
        let r = conn.send("POST", "/v1/signals", &[JSON, ("X-API-Key", &k2)], body.as_bytes());
        assert!(r.status == 201 || r.code() == "risk.order_rate", "{i}: {} {}", r.status, r.body);
        if i % 20 == 0 {
            // The healthy client keeps up the whole time: it has every outcome within 2 s.
            let t = Instant::now();
            while outcomes < i {
                match healthy.recv() {
                    Ok(Incoming::Messages(m)) => outcomes += m.iter().filter(|m| outcome(m)).count(),
                    other => panic!("healthy client: {other:?} after {outcomes} outcomes of {i}"),
                }
            }
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            if slow() {
                break;
            }
        }
    }
    assert!(slow(), "the stalled client was never closed");
    // Reading now, the stalled client finds everything sent before the close, then 4008.
    let mut all = Vec::new();
    let read = stalled.read_to_end(&mut all);
    let tail = &all[all.len().saturating_sub(24)..];
    let close =
        find_close(&all).unwrap_or_else(|| panic!("no close frame in {} bytes ({read:?}), ending {tail:?}", all.len()));
    assert_eq!(close.0, 4008);
    assert_eq!(close.1, "slow consumer");
    std::thread::sleep(Duration::from_secs(1));
    let _ = node.req("POST", "/v1/signals", &[JSON, ("X-API-Key", &k2)], body);
    until(&mut healthy, "fill", |m| is_event(m, |e| matches!(e, EventKind::Fill { .. })));
}

/// A masked client frame.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    signalgate::ws::frame::client_frame(opcode, payload, [9, 8, 7, 6])
}

/// The close frame in raw server bytes after the 101 answer: code and reason.
fn find_close(bytes: &[u8]) -> Option<(u16, String)> {
    let start = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut at = start;
    while at + 2 <= bytes.len() {
        let op = bytes[at] & 0x0f;
        let (len, hdr) = match bytes[at + 1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[at + 2..at + 10].try_into().ok()?) as usize, 10),
            n => (n as usize, 2),
        };
        let payload = bytes.get(at + hdr..at + hdr + len)?;
        if op == 8 {
            return Some((u16::from_be_bytes([payload[0], payload[1]]), String::from_utf8_lossy(&payload[2..]).into()));
        }
        at += hdr + len;
    }
    None
}

#[test]
fn every_auth_failure_is_refused_with_its_code() {
    let node = Node::start(&[("SIGNALGATE_WS_AUTH_TIMEOUT_SECS", "1")]);
    let refused = |query: &str, key: Option<&str>| match Client::connect(node.ws, query, key) {
        Err(ConnectError::Refused(status, body)) => {
            (status, serde_json::from_str::<Value>(&body).unwrap()["error"]["code"].as_str().unwrap().to_string())
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected"),
    };
    assert_eq!(refused("", Some("sg_nope")), (401, "auth.invalid_key".into()));
    assert_eq!(refused("key=sg_nope", None), (401, "auth.invalid_key".into()));
    // A revoked key.
    let (id, key) = node.account("free", "1000", json!(null));
    let key_id = node.admin("GET", &format!("/admin/accounts/{id}"), "").json()["keys"][0]["key_id"].as_u64().unwrap();
    let mut live = connect(&node, "", Some(&key));
    until(&mut live, "welcome", |m| matches!(m.body, ServerBody::Welcome { .. }));
    assert_eq!(node.admin("DELETE", &format!("/admin/keys/{key_id}"), "").status, 200);
    assert_eq!(refused("", Some(&key)), (401, "auth.key_revoked".into()));
    // ...and a connection that was open with it is closed.
    assert_eq!(closed(&mut live).0, 4003);
    // The tier's cap on connections per key (free: 5).
    let (_, key) = node.account("free", "1000", json!(null));
    let open: Vec<Client> = (0..5).map(|_| connect(&node, "", Some(&key))).collect();
    assert_eq!(refused("", Some(&key)), (429, "ws.too_many_connections".into()));
    drop(open);
    // No key in the upgrade: an auth message must follow in time.
    let mut c = connect(&node, "", None);
    assert_eq!(closed(&mut c).0, 4001);
    let mut c = connect(&node, "", None);
    c.send(&ClientMsg::Auth { key: "sg_nope".into() }).unwrap();
    let (code, reason) = closed(&mut c);
    assert_eq!(code, 4001);
    assert!(reason.starts_with("auth.invalid_key"), "{reason}");
    let mut c = connect(&node, "", None);
    c.send(&ClientMsg::Ping { id: 1 }).unwrap();
    let (code, reason) = closed(&mut c);
    assert_eq!(code, 4001);
    assert!(reason.starts_with("auth.required"), "{reason}");
    let mut c = connect(&node, "", None);
    c.send(&ClientMsg::Auth { key: node.demo_key.clone() }).unwrap();
    until(&mut c, "welcome", |m| matches!(m.body, ServerBody::Welcome { .. }));
    // Not an upgrade, or the wrong path.
    let r = support::Conn::open(node.ws).send("GET", "/v1/ws", &[], b"");
    assert_eq!((r.status, r.code().as_str()), (426, "ws.upgrade_required"));
    let r = support::Conn::open(node.ws).send("GET", "/v1/other", &[], b"");
    assert_eq!(r.status, 404);
}

#[test]
fn the_node_wide_cap_refuses_with_503() {
    let node = Node::start(&[("SIGNALGATE_WS_MAX_CONNECTIONS", "2")]);
    let _a = connect(&node, "", Some(&node.demo_key));
    let _b = connect(&node, "", Some(&node.demo_key));
    match Client::connect(node.ws, "", Some(&node.demo_key)) {
        Err(ConnectError::Refused(503, body)) => assert!(body.contains("ws.node_full"), "{body}"),
        other => panic!("{:?}", other.err()),
    }
}

/// `signalgate_ws_executor_connections` of each fan-out executor, once they add up to `total`.
fn per_executor(node: &Node, total: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = node.req("GET", "/metrics", &[], "").body;
        let counts: Vec<u64> = metrics
            .lines()
            .filter(|l| l.starts_with("signalgate_ws_executor_connections{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        if counts.iter().sum::<u64>() == total || Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_fanout_executor_serves_the_stream_under_node_wide_caps() {
    let node = Node::start(&[("SIGNALGATE_TOPOLOGY_FANOUT", "[0, 1]"), ("SIGNALGATE_WS_MAX_CONNECTIONS", "12")]);
    let mut clients: Vec<Client> = (0..10).map(|_| connect(&node, "", Some(&node.demo_key))).collect();
    for c in &mut clients {
        subscribe(c, &["account"], None);
        until(c, "subscribed", |m| matches!(m.body, ServerBody::Subscribed { .. }));
    }
    let counts = per_executor(&node, 10);
    assert_eq!((counts.len(), counts.iter().sum::<u64>()), (2, 10), "{counts:?}");
    assert!(counts.iter().all(|&n| n > 0), "the kernel hands connections to both executors: {counts:?}");
    // Each executor follows the feed: every client, wherever it landed, gets the same fill.
    let r = node.req("POST", "/v1/signals", &[JSON, ("X-API-Key", &node.demo_key)], BUY);
    assert_eq!(r.status, 201, "{}", r.body);
    let fills: Vec<Vec<u64>> = clients
        .iter_mut()
        .map(|c| account_seqs(&until(c, "the position", |m| matches!(m.body, ServerBody::Position { .. }))))
        .collect();
    assert!(fills.windows(2).all(|w| w[0] == w[1]), "{fills:?}");
    // The node-wide cap counts both executors' connections.
    clients.extend((0..2).map(|_| connect(&node, "", Some(&node.demo_key))));
    match Client::connect(node.ws, "", Some(&node.demo_key)) {
        Err(ConnectError::Refused(503, body)) => assert!(body.contains("ws.node_full"), "{body}"),
        other => panic!("{:?}", other.err()),
    }
    drop(clients);
    assert_eq!(per_executor(&node, 0), [0, 0]);
    // So does a tier's cap per key (free: 5), wherever its connections landed.
    let (_, key) = node.account("free", "1000", json!(null));
    let open: Vec<Client> = (0..5).map(|_| connect(&node, "", Some(&key))).collect();
    assert!(per_executor(&node, 5).iter().all(|&n| n > 0));
    match Client::connect(node.ws, "", Some(&key)) {
        Err(ConnectError::Refused(429, body)) => assert!(body.contains("ws.too_many_connections"), "{body}"),
        other => panic!("{:?}", other.err()),
    }
    drop(open);
}

#[test]
fn malformed_and_oversized_frames_close_with_their_code() {
    let node = Node::start(&[]);
    let cases: Vec<(&str, Message, u16)> = vec![
        ("", Message::binary(vec![1u8, 0, 0xde, 0xad, 0xbe, 0xef]), 1007),
        ("", Message::binary(vec![9u8, 0, 1, 2, 3, 4, 5, 6, 7, 8]), 1003),
        ("", Message::text("{}"), 1003),
        ("", Message::binary(vec![0u8; 70 * 1024]), 1009),
        ("format=json", Message::text("{\"type\":\"subscribe\""), 1007),
        ("format=json", Message::binary(vec![1u8, 0]), 1003),
    ];
    for (query, msg, code) in cases {
        let mut c = connect(&node, query, Some(&node.demo_key));
        c.send_raw(msg).unwrap();
        let (got, reason) = closed(&mut c);
        assert_eq!(got, code, "{query:?}: {reason}");
        assert!(!reason.is_empty());
    }
    // An unknown channel is an error message; the connection stays usable.
    let mut c = connect(&node, "", Some(&node.demo_key));
    subscribe(&mut c, &["quotes:NOPE", "account"], None);
    let got = until(&mut c, "error", |m| matches!(m.body, ServerBody::Error { .. }));
    let ServerBody::Error { code, message } = &got.last().unwrap().body else { unreachable!() };
    assert_eq!(code, "ws.unknown_channel");
    assert!(message.contains("NOPE"));
    c.send(&ClientMsg::Ping { id: 5 }).unwrap();
    until(&mut c, "pong", |m| matches!(m.body, ServerBody::Pong { id: 5 }));
    // The node is still serving everyone.
    assert_eq!(node.req("GET", "/health", &[], "").status, 200);
}

#[test]
fn a_client_that_does_not_answer_pings_is_closed() {
    let node = Node::start(&[("SIGNALGATE_WS_PING_SECS", "1"), ("SIGNALGATE_WS_PONG_TIMEOUT_SECS", "1")]);
    let mut s = TcpStream::connect(node.ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/ws?key={} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        node.demo_key
    )
    .unwrap();
    let t = Instant::now();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let head = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(all[head..].windows(2).any(|w| w == [0x89, 2]), "a ping was sent");
    assert_eq!(find_close(&all).unwrap().0, 4000);
    // A client that answers (tungstenite does) stays.
    let mut c = connect(&node, "", Some(&node.demo_key));
    c.set_timeout(Duration::from_millis(200));
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        // Reading answers the node's pings; timeouts in between are expected.
        if let Ok(Incoming::Closed(code, reason)) = c.recv() {
            panic!("closed {code} {reason}");
        }
    }
    c.set_timeout(Duration::from_secs(5));
    c.send(&ClientMsg::Ping { id: 2 }).unwrap();
    until(&mut c, "pong", |m| matches!(m.body, ServerBody::Pong { id: 2 }));
}

#[test]
fn shutdown_closes_streams_with_1001() {
    let node = Node::start(&[]);
    let mut c = connect(&node, "", Some(&node.demo_key));
    until(&mut c, "welcome", |m| matches!(m.body, ServerBody::Welcome { .. }));
    node.terminate();
    assert_eq!(closed(&mut c).0, 1001);
    let _ = node.stop();
}
