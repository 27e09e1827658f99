//! The shipped nginx configuration: it passes `nginx -t`, and a real nginx (TLS with a throwaway
//! certificate) in front of a real node carries the API.

mod support;

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
        let _ = self.0.kill();
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
    let metrics = node.req("GET", "/metrics", &[], "").body;
    let connections: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("signalgate_http_connections "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(connections <= 4, "nginx reuses upstream connections ({connections} open)");
    // The WebSocket upgrade goes through TLS to the node's stream listener, and its first frame
    // (the welcome, naming the node's symbols) comes back.
    let out = Command::new("curl")
        .args(["-sk", "-i", "-N", "--max-time", "3", "--http1.1"])
        .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13"])
        .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "-H", &format!("X-API-Key: {}", node.demo_key)])
        .arg(format!("https://localhost:{port}/v1/ws"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains("BTC-USD") && text.contains("ETH-USD"), "{text}");
}
