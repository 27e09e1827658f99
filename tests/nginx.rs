//! The shipped nginx configuration: it passes `nginx -t`, and a real nginx (TLS with a throwaway
//! certificate) in front of a real node carries the API and a WebSocket session.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::nginx::{free_port, render, Nginx};
use support::Node;

#[test]
fn the_shipped_config_passes_nginx_t() {
    let dir = tempfile::tempdir().unwrap();
    let conf = render(
        dir.path(),
        free_port(),
        &["127.0.0.1:8080".parse().unwrap()],
        &["127.0.0.1:8082".parse().unwrap()],
        &[],
    );
    let out = Command::new("nginx")
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("nginx is required; scripts/test installs it");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("test is successful"), "{text}");
}

#[test]
fn a_real_nginx_in_front_of_a_real_node() {
    let node = Node::start(&[]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let nginx = Nginx::start(&[node.http], &[node.ws], &[]);
    let (port, dir) = (nginx.port, &nginx.dir);
    let curl = |args: &[&str]| nginx.curl(args);
    let auth = format!("Authorization: Bearer {}", node.demo_key);
    let (code, body) = curl(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        &auth,
        "-d",
        r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#,
        "/v1/signals",
    ]);
    assert_eq!(code, 201, "{body}");
    assert!(body.contains(r#""status":"filled""#), "{body}");
    let (code, body) = curl(&["-H", &format!("X-API-Key: {}", node.demo_key), "/v1/positions"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""qty":"0.0100""#));
    let (code, body) = curl(&["/v1/account"]);
    assert_eq!(code, 401, "errors pass through unchanged: {body}");
    assert!(body.contains("auth.missing_key"));
    assert_eq!(curl(&["/health"]).0, 200);
    assert_eq!(curl(&["/metrics"]).0, 404, "metrics are not exposed through the public entry point");
    let big = format!(r#"{{"strategy":"{}"}}"#, "x".repeat(70 * 1024));
    assert_eq!(curl(&["-H", &auth, "-d", &big, "/v1/signals"]).0, 413);
    // Keep-alive to the node: many requests, few upstream connections.
    for _ in 0..20 {
        assert_eq!(curl(&["/health"]).0, 200);
    }
    let connections = node.metric("signalgate_http_connections");
    assert!(connections <= 4, "nginx reuses upstream connections ({connections} open)");
    // A WebSocket session through TLS, with the example client (which verifies the certificate):
    // subscribe to the account, send a signal on the socket, and see its answer, fill and position.
    let example_client = || {
        let mut cmd = Command::new("timeout");
        cmd.args(["20", "python3", concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ws_client.py")]).args([
            "--url",
            &format!("wss://localhost:{port}/v1/ws"),
            "--key",
            &node.demo_key,
        ]);
        cmd
    };
    let mut client = example_client()
        .arg("--cafile")
        .arg(dir.path().join("fullchain.pem"))
        .args(["--channels", "account", "--signal", r#"{"symbol":"BTC-USD","action":"sell","qty":"0.004"}"#])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = client.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut msgs = Vec::new();
    let seen = |msgs: &[serde_json::Value], kind: &str| msgs.iter().any(|m| m["type"] == kind);
    while !(seen(&msgs, "position") && seen(&msgs, "signal_result")) {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else { break };
        msgs.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    // SIGTERM to `timeout`, which passes it on to the client (SIGKILL would orphan the client).
    // SAFETY: the pid of our own child, not yet waited for.
    unsafe { libc::kill(client.id() as libc::pid_t, libc::SIGTERM) };
    let _ = client.wait();
    assert!(msgs.iter().any(|m| m["type"] == "welcome"), "{msgs:?}");
    let answer = msgs.iter().find(|m| m["type"] == "signal_result").expect("the signal's answer came back");
    assert_eq!((answer["request_id"].as_u64(), answer["status"].as_u64()), (Some(1), Some(201)), "{answer}");
    assert!(msgs.iter().any(|m| m["type"] == "event" && m["event"]["type"] == "fill"), "{msgs:?}");
    let position = msgs.iter().find(|m| m["type"] == "position").expect("a position after the fill");
    assert_eq!(position["qty"], 60, "0.01 bought over HTTP, 0.004 sold over the socket: {position}");
    // Without the certificate's CA the client refuses the server instead of retrying forever
    // (which `timeout` would end with 124).
    let out = example_client().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");
}
