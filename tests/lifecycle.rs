//! The node as a process: command line, configuration errors, limits on connections and
//! bodies, timeouts, the data directory lock and graceful shutdown.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{bearer, binary, Node, JSON};

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn help_is_everywhere() {
    for args in [&["--help"][..], &["run", "--help"], &["check-config", "--help"]] {
        let (code, out, _) = run(args, &[]);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("Usage"), "{args:?}: {out}");
    }
    let (code, _, err) = run(&["frobnicate"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("frobnicate"));
}

#[test]
fn check_config_accepts_the_example_and_explains_errors() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/signalgate.example.toml");
    let (code, out, err) = run(&["check-config", example], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[http]\naddr = \"nowhere\"\n[topology]\nhot = [64]\n[risk]\nprice_collar_bps = 10\n")
        .unwrap();
    let (code, _, err) = run(&["check-config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("http.addr") && err.contains("nowhere"), "{err}");
    assert!(err.contains("topology.hot") && err.contains("core 64 does not exist"), "{err}");

    std::fs::write(&bad, "[http]\nadres = \"x\"\n").unwrap();
    let (code, _, err) = run(&["check-config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown field") && err.contains("adres"), "{err}");

    std::fs::write(&bad, "[http\n").unwrap();
    let (code, _, err) = run(&["check-config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("line 1"), "{err}");

    let (code, _, err) = run(&["check-config", example], &[("SIGNALGATE_HTTP_MAX_BODY_BYTES", "lots")]);
    assert_eq!(code, 1);
    assert!(err.contains("SIGNALGATE_HTTP_MAX_BODY_BYTES"), "{err}");
    let (code, _, _) = run(&["check-config", "/does/not/exist.toml"], &[]);
    assert_eq!(code, 1);

    // PostgreSQL's TLS settings, checked before any connection.
    let env = [
        ("SIGNALGATE_POSTGRES_URL", "host=db sslmode=verify-full sslrootcert=/no/such/ca.pem"),
        ("SIGNALGATE_POSTGRES_READ_URL", "postgresql://replica/db?sslmode=sometimes"),
    ];
    let (code, _, err) = run(&["check-config", example], &env);
    assert_eq!(code, 1);
    assert!(err.contains("postgres.url") && err.contains("/no/such/ca.pem"), "{err}");
    assert!(err.contains("postgres.read_url") && err.contains("\"sometimes\" is not one of"), "{err}");
}

#[test]
fn bad_settings_stop_the_start_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = run(&["run"], &[("SIGNALGATE_JOURNAL_DIR", d), ("SIGNALGATE_TOPOLOGY_HOT", "[99]")]);
    assert_eq!(code, 1);
    assert!(err.contains("core 99 does not exist"), "{err}");
    // A busy port is a clear error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(
        &["run"],
        &[
            ("SIGNALGATE_JOURNAL_DIR", d),
            ("SIGNALGATE_HTTP_ADDR", &addr),
            ("SIGNALGATE_ADMIN_ADDR", "127.0.0.1:0"),
            ("SIGNALGATE_WS_ADDR", "127.0.0.1:0"),
            ("SIGNALGATE_TOPOLOGY_PIN", "false"),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains(&addr), "{err}");
}

#[test]
fn the_embedded_default_prints_a_ready_to_paste_request() {
    let node = Node::start(&[]);
    let try_line = node.banner.iter().find(|l| l.starts_with("try: curl")).expect("curl line");
    assert!(try_line.contains(&node.demo_key));
    assert!(try_line.contains(&format!("http://{}/v1/signals", node.http)));
    assert!(try_line.contains("Content-Type: application/json"));
}

#[test]
fn a_restart_right_after_kill_9_gets_its_ports_back() {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (http, admin, ws) = (free(), free(), free());
    let env = [
        ("SIGNALGATE_HTTP_ADDR", http.as_str()),
        ("SIGNALGATE_ADMIN_ADDR", admin.as_str()),
        ("SIGNALGATE_WS_ADDR", ws.as_str()),
    ];
    let mut node = Node::start(&env);
    for round in 0..10 {
        assert_eq!(node.req("GET", "/health", &[], "").status, 200);
        let dir = node.crash();
        node = Node::try_start_in(dir, &[], &env).unwrap_or_else(|(e, _)| panic!("restart {round}: {e}"));
        assert_eq!(node.http.to_string(), http);
    }
}

#[test]
fn a_low_open_file_limit_lowers_the_caps_and_connections_are_refused_not_left_hanging() {
    let node = Node::start_wrapped(&["prlimit", "--nofile=256:256", "--"], &[]);
    let log = node.log_until(Duration::from_secs(5), |l| l.contains("open-file limit"));
    assert!(log.iter().any(|l| l.contains("lowered http.max_connections to")), "{log:?}");
    // Far more connections than descriptors: each is answered or closed, none hangs.
    let mut conns: Vec<std::net::TcpStream> = (0..400)
        .filter_map(|_| std::net::TcpStream::connect(node.http).ok())
        .inspect(|mut s| {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        })
        .collect();
    let started = Instant::now();
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut first = [0u8; 12];
        match s.read(&mut first) {
            Ok(0) => {}
            Ok(_) => assert!(first.starts_with(b"HTTP/1.1 200") || first.starts_with(b"HTTP/1.1 503"), "{first:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "a connection was left hanging: {e}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    drop(conns);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(node.req("GET", "/health", &[], "").status, 200);
    let warnings = node.log().iter().filter(|l| l.contains("accept failed")).count();
    assert!(warnings <= 10, "accept failures are reported at most once a second: {warnings} lines");
}

#[test]
fn an_admin_listener_off_loopback_needs_an_explicit_opt_in_and_is_warned_about() {
    let err = match Node::try_start(&[("SIGNALGATE_ADMIN_ADDR", "0.0.0.0:0")]) {
        Err(e) => e,
        Ok(_) => panic!("the admin API started on 0.0.0.0 over plain HTTP without a word"),
    };
    assert!(err.contains("admin.addr") && err.contains("allow_non_loopback"), "{err}");
    let node = Node::start(&[("SIGNALGATE_ADMIN_ADDR", "0.0.0.0:0"), ("SIGNALGATE_ADMIN_ALLOW_NON_LOOPBACK", "true")]);
    let log = node.log_until(Duration::from_secs(5), |l| l.contains("admin API listens off loopback"));
    assert!(log.iter().any(|l| l.contains("WARN") && l.contains("admin API listens off loopback")), "{log:?}");
}

#[test]
fn two_nodes_cannot_share_a_data_directory() {
    let lock_dir = tempfile::tempdir().unwrap();
    let d = lock_dir.path().to_str().unwrap().to_string();
    let first = Node::start(&[("SIGNALGATE_JOURNAL_DIR", &d)]);
    let second = Node::try_start(&[("SIGNALGATE_JOURNAL_DIR", &d)]);
    let err = second.err().expect("the second node must not start");
    assert!(err.contains("another node is running with this data directory"), "{err}");
    drop(first);
}

#[test]
fn bodies_over_the_limit_get_413() {
    let node = Node::start(&[("SIGNALGATE_HTTP_MAX_BODY_BYTES", "1024")]);
    let auth = bearer(&node.demo_key);
    let big = format!(r#"{{"symbol":"BTC-USD","action":"buy","qty":"1","strategy":"{}"}}"#, "x".repeat(2000));
    let r = node.req("POST", "/v1/signals", &[("Authorization", &auth), JSON], &big);
    assert_eq!((r.status, r.code().as_str()), (413, "request.too_large"));
    // Without Content-Length (chunked) the limit still holds while reading.
    let mut c = node.conn();
    let chunk = "x".repeat(900);
    let raw = format!(
        "POST /v1/signals HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    c.write_raw(raw.as_bytes()).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.code().as_str()), (413, "request.too_large"));
    // A body of exactly the limit is taken however it is cut: three chunks of 1024 bytes in all.
    let signal = r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#;
    let padded = format!("{}{}{}", &signal[..20], " ".repeat(1024 - signal.len()), &signal[20..]);
    let chunked = |body: &str| {
        let (a, rest) = body.split_at(400);
        let (b, c) = rest.split_at(400);
        let mut raw = format!(
            "POST /v1/signals HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        for part in [a, b, c] {
            raw.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
        }
        raw.push_str("0\r\n\r\n");
        raw
    };
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let mut c = node.conn();
    c.write_raw(chunked(&padded).as_bytes()).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 201, "a body of exactly http.max_body_bytes: {}", r.body);
    let mut c = node.conn();
    c.write_raw(chunked(&format!("{padded} ")).as_bytes()).unwrap();
    assert_eq!(c.read_response().unwrap().status, 413, "one byte over");
    // The node keeps serving.
    assert_eq!(node.req("GET", "/health", &[], "").status, 200);
}

#[test]
fn at_the_connection_cap_an_anonymous_connection_makes_room_and_traders_keep_theirs() {
    let node = Node::start(&[("SIGNALGATE_HTTP_MAX_CONNECTIONS", "2")]);
    let auth = bearer(&node.demo_key);
    let mut trader = node.conn();
    assert_eq!(trader.send("GET", "/v1/account", &[("Authorization", &auth)], b"").status, 200);
    let mut anonymous = node.conn();
    assert_eq!(anonymous.send("GET", "/health", &[], b"").status, 200);
    // A third connection: the one that never showed a key goes, the trader's stays.
    let mut newcomer = node.conn();
    assert_eq!(newcomer.send("GET", "/v1/account", &[("Authorization", &auth)], b"").status, 200);
    assert!(anonymous.closed_within(Duration::from_secs(2)), "the anonymous connection was evicted");
    assert_eq!(trader.send("GET", "/v1/account", &[("Authorization", &auth)], b"").status, 200);
    // Every connection is a trader's now: a fourth is refused.
    let mut fourth = node.conn();
    let r = fourth.read_response().unwrap();
    assert_eq!((r.status, r.code().as_str(), r.header("retry-after")), (503, "node.too_many_connections", Some("1")));
    drop(newcomer);
    std::thread::sleep(Duration::from_millis(100));
    let mut fifth = node.conn();
    let m = fifth.send("GET", "/metrics", &[], b"").body;
    assert!(m.contains("signalgate_connections_refused_total 1"), "{m}");
    assert!(m.contains("signalgate_connections_evicted_total 1"), "{m}");
}

#[test]
fn slow_headers_are_cut_off() {
    let node = Node::start(&[("SIGNALGATE_HTTP_HEADER_READ_TIMEOUT_MS", "300")]);
    let mut c = node.conn();
    c.write_raw(b"GET /health HTTP/1.1\r\nHost: t\r\n").unwrap();
    let started = Instant::now();
    assert!(c.closed_within(Duration::from_secs(5)), "the node closes a connection that stalls in its headers");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(node.req("GET", "/health", &[], "").status, 200);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let node = Node::start(&[]);
    let mut c = node.conn();
    for _ in 0..50 {
        assert_eq!(c.send("GET", "/health", &[], b"").status, 200);
    }
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut node = Node::start(&[]);
    node.wait_for_quote(&node.demo_key.clone(), "BTC-USD");
    let auth = bearer(&node.demo_key);
    // A request in flight: headers and half the body sent.
    let body = br#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#;
    let mut inflight = node.conn();
    let head = format!("POST /v1/signals HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    inflight.write_raw(head.as_bytes()).unwrap();
    inflight.write_raw(&body[..10]).unwrap();
    // An idle keep-alive connection.
    let mut idle = node.conn();
    assert_eq!(idle.send("GET", "/health", &[], b"").status, 200);
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    node.terminate();
    std::thread::sleep(Duration::from_millis(200));
    // New connections are refused once the listener closed.
    assert!(std::net::TcpStream::connect(node.http).is_err(), "still accepting after SIGTERM");
    // The in-flight request completes.
    inflight.write_raw(&body[10..]).unwrap();
    let r = inflight.read_response().unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let status = node.wait(Duration::from_secs(10)).expect("exited within 10 s");
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(idle.closed_within(Duration::from_secs(1)));
}

#[test]
fn sigint_also_stops_the_node() {
    let mut node = Node::start(&[]);
    node.signal("INT");
    let status = node.wait(Duration::from_secs(10)).expect("exited");
    assert!(status.success());
}

#[test]
fn an_overloaded_hot_core_answers_503_with_retry_after() {
    // One request in progress at a time, and each waits for an fdatasync.
    let node = Node::start(&[("SIGNALGATE_HTTP_MAX_INFLIGHT", "1"), ("SIGNALGATE_JOURNAL_FSYNC", "always")]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let (_, key) = node.account("enterprise", "10000000", serde_json::json!({"max_orders_per_second": 100000}));
    let (addr, auth) = (node.http, bearer(&key));
    let statuses: Vec<(u16, String, Option<String>)> = std::thread::scope(|s| {
        let racers: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    let mut c = support::Conn::open(addr);
                    let body = r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#;
                    (0..5)
                        .map(|_| {
                            let r = c.send("POST", "/v1/signals", &[JSON, ("Authorization", &auth)], body.as_bytes());
                            (r.status, r.code(), r.header("retry-after").map(str::to_string))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        racers.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });
    assert!(statuses.iter().any(|s| s.0 == 201), "{statuses:?}");
    let refused: Vec<_> = statuses.iter().filter(|s| s.0 == 503).collect();
    assert!(!refused.is_empty(), "80 signals at once over a budget of 1: {statuses:?}");
    assert!(refused.iter().all(|s| s.1 == "node.overloaded" && s.2.as_deref() == Some("1")), "{refused:?}");
    assert!(statuses.iter().all(|s| s.0 == 201 || s.0 == 503), "{statuses:?}");
    // Health and metrics stay available to operators.
    assert_eq!(node.req("GET", "/health", &[], "").status, 200);
    let m = node.req("GET", "/metrics", &[], "").body;
    assert!(m.contains(&format!("signalgate_overloaded_total {}", refused.len())), "{m}");
}

#[test]
fn a_body_that_never_finishes_holds_no_request_slot_and_is_cut_off() {
    let node = Node::start(&[("SIGNALGATE_HTTP_MAX_INFLIGHT", "1"), ("SIGNALGATE_HTTP_BODY_READ_TIMEOUT_MS", "700")]);
    let auth = bearer(&node.demo_key);
    // Far more stalled bodies than the budget of requests in progress, and with no key at all.
    let mut stalled: Vec<_> = (0..20)
        .map(|_| {
            let mut c = node.conn();
            c.write_raw(b"POST /v1/signals HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let r = node.req("GET", "/v1/account", &[("Authorization", &auth)], "");
    assert_eq!(r.status, 200, "stalled bodies must not use up the budget: {}", r.body);
    // Each gets 408 once its deadline passes, and is closed.
    let started = Instant::now();
    for c in &mut stalled {
        let r = c.read_response().unwrap();
        assert_eq!((r.status, r.code().as_str()), (408, "request.timeout"), "{}", r.body);
        assert!(c.closed_within(Duration::from_secs(1)));
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[test]
fn environment_that_is_not_utf8_does_not_crash() {
    use std::os::unix::ffi::OsStrExt;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/signalgate.example.toml");
    let bad = std::ffi::OsStr::from_bytes(b"\xff\xfe");
    let out = Command::new(binary()).args(["check-config", example]).env("SOME_OTHER_VAR", bad).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(binary()).args(["check-config", example]).env("SIGNALGATE_HTTP_ADDR", bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.addr"));
}
