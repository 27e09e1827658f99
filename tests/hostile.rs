//! Hostile clients against the real binary, each with a bound on how long a good client waits:
//! floods of connections that never send a whole request (slow headers, slow bodies, idle) on the
//! public and admin listeners and on the WebSocket, stalled bodies, and clients that never read
//! their answers. A trader with a key still gets a filled order within 5 s while 10,000 hostile
//! connections are open.
//!
//! The floods run one at a time (they hold thousands of descriptors in this process).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{bearer, Conn, Node, JSON};

/// Hostile connections per flood.
const FLOOD: usize = 10_000;
/// How long a good client may wait for its answer while a flood is on.
const GOOD_CLIENT_BOUND: Duration = Duration::from_secs(5);

static ONE_FLOOD_AT_A_TIME: Mutex<()> = Mutex::new(());

const SIGNAL: &str = r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#;

/// Raises this process's open-file limit (which the node inherits) to allow `need`: the soft
/// limit to the hard one, and the hard one too where allowed (root).
fn allow_descriptors(need: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let raised = libc::rlimit { rlim_cur: lim.rlim_max.max(need), rlim_max: lim.rlim_max.max(need) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            lim = raised;
        } else {
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= need,
        "this test needs {need} open files; the hard limit is {} (scripts/test raises it with ulimit -n)",
        lim.rlim_cur
    );
}

/// What each hostile connection sends, in turn: a request line cut short, headers with a body
/// that never finishes, nothing at all.
fn open_flood(addr: SocketAddr, first_bytes: &[&[u8]]) -> Vec<TcpStream> {
    (0..FLOOD)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("hostile connection {i}: {e}"));
            let bytes = first_bytes[i % first_bytes.len()];
            if !bytes.is_empty() {
                s.write_all(bytes).unwrap();
            }
            s
        })
        .collect()
}

const HTTP_STALLS: &[&[u8]] =
    &[b"POST /v1/signals HTT", b"POST /v1/signals HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{", b""];

/// A signal on a new connection; the status and how long it took.
fn timed_signal(addr: SocketAddr, key: &str) -> (u16, Duration, String) {
    let started = Instant::now();
    let r = Conn::open(addr).send("POST", "/v1/signals", &[JSON, ("Authorization", &bearer(key))], SIGNAL.as_bytes());
    (r.status, started.elapsed(), r.body)
}

#[test]
fn a_trader_gets_a_filled_order_while_ten_thousand_anonymous_connections_hold_every_slot() {
    let _one = ONE_FLOOD_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    allow_descriptors(FLOOD as u64 + 2000);
    // The default caps (10,000 connections, 4,096 requests in progress), and deadlines long
    // enough that no hostile connection leaves by itself during the test.
    let node = Node::start(&[
        ("SIGNALGATE_HTTP_HEADER_READ_TIMEOUT_MS", "60000"),
        ("SIGNALGATE_HTTP_BODY_READ_TIMEOUT_MS", "60000"),
    ]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let auth = bearer(&node.demo_key);
    // A trader connected before the flood keeps its connection.
    let mut before = node.conn();
    assert_eq!(before.send("GET", "/v1/account", &[("Authorization", &auth)], b"").status, 200);
    let flood = open_flood(node.http, HTTP_STALLS);
    for _ in 0..3 {
        let (status, took, body) = timed_signal(node.http, &node.demo_key);
        assert_eq!(status, 201, "{body}");
        assert!(took < GOOD_CLIENT_BOUND, "a new trader waited {took:?} behind {FLOOD} hostile connections");
    }
    let started = Instant::now();
    let r = before.send("POST", "/v1/signals", &[JSON, ("Authorization", &auth)], SIGNAL.as_bytes());
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(started.elapsed() < GOOD_CLIENT_BOUND);
    // The admin listener has its own budget.
    let started = Instant::now();
    assert_eq!(node.admin("GET", "/admin/accounts", "").status, 200);
    assert!(started.elapsed() < GOOD_CLIENT_BOUND);
    let m = node.req("GET", "/metrics", &[], "").body;
    let evicted = m.lines().find_map(|l| l.strip_prefix("signalgate_connections_evicted_total ")).unwrap();
    assert!(evicted.parse::<u64>().unwrap() >= 3, "each new trader connection took an anonymous one's place: {m}");
    drop(flood);
}

#[test]
fn floods_and_stalls_on_the_admin_listener_leave_traders_and_the_operator_alone() {
    let _one = ONE_FLOOD_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    allow_descriptors(FLOOD as u64 + 2000);
    let node = Node::start(&[]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let flood = open_flood(
        node.admin,
        &[b"POST /admin/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{", b"GET /admin/acc", b""],
    );
    let (status, took, body) = timed_signal(node.http, &node.demo_key);
    assert_eq!(status, 201, "{body}");
    assert!(took < GOOD_CLIENT_BOUND, "{took:?}");
    let started = Instant::now();
    let r = node.admin("POST", "/admin/accounts", r#"{"name":"ops","tier":"pro","cash":"1"}"#);
    assert_eq!(r.status, 201, "the operator, with the token, gets in: {}", r.body);
    assert!(started.elapsed() < GOOD_CLIENT_BOUND);
    drop(flood);
}

#[test]
fn websocket_floods_of_unauthenticated_connections_do_not_keep_a_trader_out() {
    let _one = ONE_FLOOD_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    allow_descriptors(FLOOD as u64 + 2000);
    // Fewer authenticated places than the flood, so that only eviction lets the trader in.
    let node = Node::start(&[("SIGNALGATE_WS_MAX_CONNECTIONS", "100")]);
    let upgrade_without_key = b"GET /v1/ws?format=json HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    // One anonymous connection is upgraded before the flood, so it is the oldest and must be
    // closed with 1013 (a flood connection may be evicted before its upgrade is even read).
    let mut upgraded = TcpStream::connect(node.ws).unwrap();
    upgraded.write_all(upgrade_without_key).unwrap();
    upgraded.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 512];
        match upgraded.read(&mut chunk) {
            Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!("the upgrade before the flood: {other:?} after {:?}", String::from_utf8_lossy(&got)),
        }
    }
    assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
    let flood = open_flood(node.ws, &[b"GET /v1/ws HTTP/1.1\r\nHost", upgrade_without_key, b""]);
    let started = Instant::now();
    let mut c = signalgate::ws::client::Client::connect(node.ws, "format=json", Some(&node.demo_key))
        .unwrap_or_else(|e| panic!("a trader's upgrade behind {FLOOD} hostile connections: {e:?}"));
    c.set_timeout(GOOD_CLIENT_BOUND);
    let welcome = match c.recv().expect("a frame") {
        signalgate::ws::client::Incoming::Json(msgs) => msgs.into_iter().find(|m| m["type"] == "welcome"),
        other => panic!("{other:?}"),
    }
    .expect("a welcome first");
    assert_eq!(welcome["account"], 1);
    assert!(started.elapsed() < GOOD_CLIENT_BOUND, "{:?}", started.elapsed());
    // The oldest hostile connections were closed to make room: upgraded ones with 1013.
    let m = node.req("GET", "/metrics", &[], "").body;
    let evicted: u64 = m.lines().find_map(|l| l.strip_prefix("signalgate_ws_evicted_total ")).unwrap().parse().unwrap();
    assert!(evicted >= (FLOOD - 1024) as u64, "{evicted} evicted");
    let _ = upgraded.read_to_end(&mut got);
    assert!(got.windows(2).any(|w| w == [0x03, 0xf5]), "closed with 1013: {got:?}");
    drop(flood);
}

#[test]
fn a_client_that_never_reads_its_answers_is_cut_off_and_others_are_served_meanwhile() {
    let node = Node::start(&[("SIGNALGATE_HTTP_WRITE_TIMEOUT_MS", "500")]);
    let auth = bearer(&node.demo_key);
    // Pipelines thousands of requests whose answers (the metrics page) it never reads.
    let mut greedy = TcpStream::connect(node.http).unwrap();
    let request = format!(
        "GET /v1/account HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    greedy.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut sent = 0;
    while sent < 20_000 && greedy.write_all(request.as_bytes()).is_ok() {
        sent += 1;
    }
    let started = Instant::now();
    assert_eq!(node.req("GET", "/v1/account", &[("Authorization", &auth)], "").status, 200);
    assert!(started.elapsed() < GOOD_CLIENT_BOUND);
    // Within the write timeout (plus the time its buffers take to fill) the node lets go.
    greedy.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut sink = vec![0u8; 1 << 20];
    let ended = loop {
        match greedy.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(ended, "the connection is still open after {:?} ({sent} requests written)", started.elapsed());
    let m = node.req("GET", "/metrics", &[], "").body;
    assert!(m.contains("signalgate_http_connections 1"), "only the scrape's own connection is left: {m}");
}
