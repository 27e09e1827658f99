//! The shipped nginx configuration: it passes `nginx -t`, and a real nginx (TLS with a throwaway
//! certificate) in front of a real node carries the API and a WebSocket session.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::Node;

fn shipped(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tuning/nginx/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The shipped files with only host-specific things changed: paths into `dir`, the listen port,
/// the node's address and no privilege drop (tests may not have www-data).
fn render(dir: &Path, listen_port: u16, node: std::net::SocketAddr, ws: std::net::SocketAddr) -> std::path::PathBuf {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("privkey.pem"))
        .arg("-out")
        .arg(dir.join("fullchain.pem"))
        .output()
        .expect("openssl is required; scripts/test installs it");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let d = dir.display().to_string();
    let site = shipped("signalgate.conf")
        .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{listen_port} ssl;"))
        .replace("    listen [::]:443 ssl;\n", "")
        .replace("/etc/ssl/signalgate/", &format!("{d}/"))
        .replace("server 127.0.0.1:8080 ", &format!("server {node} "))
        .replace("server 127.0.0.1:8082 ", &format!("server {ws} "));
    std::fs::write(dir.join("signalgate.conf"), site).unwrap();
    let main = shipped("nginx.conf")
        .replace("user www-data;\n", "")
        .replace("/run/nginx.pid", &format!("{d}/nginx.pid"))
        .replace("/var/log/nginx/", &format!("{d}/logs/"))
        .replace("/etc/nginx/conf.d/signalgate.conf", &format!("{d}/signalgate.conf"))
        .replace("worker_processes auto;", "worker_processes 1;");
    let path = dir.join("nginx.conf");
    std::fs::write(&path, main).unwrap();
    path
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master takes its workers down with it (killed outright, it
        // would leave them running, holding the port).
        // SAFETY: the pid of our own child, not yet waited for.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn curl(port: u16, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("https://localhost:{port}{}", args.last().unwrap()))
        .output()
        .expect("curl is required; scripts/test installs it");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_shipped_config_passes_nginx_t() {
    let dir = tempfile::tempdir().unwrap();
    let conf = render(dir.path(), free_port(), "127.0.0.1:8080".parse().unwrap(), "127.0.0.1:8082".parse().unwrap());
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
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = render(dir.path(), port, node.http, node.ws);
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _nginx = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let auth = format!("Authorization: Bearer {}", node.demo_key);
    let (code, body) = curl(
        port,
        &[
            "-H",
            "Content-Type: application/json",
            "-H",
            &auth,
            "-d",
            r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#,
            "/v1/signals",
        ],
    );
    assert_eq!(code, 201, "{body}");
    assert!(body.contains(r#""status":"filled""#), "{body}");
    let (code, body) = curl(port, &["-H", &format!("X-API-Key: {}", node.demo_key), "/v1/positions"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""qty":"0.0100""#));
    let (code, body) = curl(port, &["/v1/account"]);
    assert_eq!(code, 401, "errors pass through unchanged: {body}");
    assert!(body.contains("auth.missing_key"));
    assert_eq!(curl(port, &["/health"]).0, 200);
    assert_eq!(curl(port, &["/metrics"]).0, 404, "metrics are not exposed through the public entry point");
    let big = format!(r#"{{"strategy":"{}"}}"#, "x".repeat(70 * 1024));
    assert_eq!(curl(port, &["-H", &auth, "-d", &big, "/v1/signals"]).0, 413);
    // Keep-alive to the node: many requests, few upstream connections.
    for _ in 0..20 {
        assert_eq!(curl(port, &["/health"]).0, 200);
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
