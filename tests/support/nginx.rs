//! The shipped nginx configuration run by the tests: rendered for a temporary directory and the
//! nodes under test, started in the foreground, spoken to over TLS with curl.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn shipped(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tuning/nginx/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The shipped upstream lines of `port` (one node and two commented out) with the given nodes.
fn upstreams(site: &str, port: u16, nodes: &[SocketAddr]) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("    server {n} max_fails=3 fail_timeout=5s;")).collect();
    let shipped = format!(
        "    server 127.0.0.1:{port} max_fails=3 fail_timeout=5s;\n    # server 10.0.0.12:{port} max_fails=3 fail_timeout=5s;\n    # server 10.0.0.13:{port} max_fails=3 fail_timeout=5s;"
    );
    assert!(site.contains(&shipped), "the shipped upstream of port {port} changed");
    site.replace(&shipped, &servers.join("\n"))
}

/// The shipped per-node routing (commented out) made real for cluster nodes `ids`: each node id
/// in the map, and its pair of upstreams (`nodes[i]` and `ws[i]` first, the others as backups).
fn per_node(site: &str, ids: &[&str], nodes: &[SocketAddr], ws: &[SocketAddr]) -> String {
    if ids.is_empty() {
        return site.to_string();
    }
    let map: String = ids.iter().map(|id| format!("    {id} _{id};\n")).collect();
    let site = site.replace("    # a _a;\n    # b _b;\n    # c _c;\n", &map);
    let start = site.find("# upstream signalgate_a {").expect("the shipped per-node upstreams");
    let end = site[start..].find("\n\n").map_or(site.len(), |e| start + e);
    let pair = |name: String, addrs: &[SocketAddr], i: usize, extra: &str| {
        let mut u = format!("upstream {name} {{\n    server {} max_fails=3 fail_timeout=5s;\n", addrs[i]);
        for (_, a) in addrs.iter().enumerate().filter(|(j, _)| *j != i) {
            u.push_str(&format!("    server {a} backup max_fails=3 fail_timeout=1s;\n"));
        }
        u.push_str(extra);
        u.push_str("}\n");
        u
    };
    let blocks: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            pair(format!("signalgate_{id}"), nodes, i, "    keepalive 16;\n")
                + &pair(format!("signalgate_ws_{id}"), ws, i, "")
        })
        .collect();
    format!("{}{}{}", &site[..start], blocks, &site[end..])
}

/// The shipped files with only host-specific things changed: paths into `dir`, the listen port,
/// the nodes' addresses (public API and WebSocket, in the same order; with their cluster node ids
/// in `ids`, if any) and no privilege drop (tests may not have www-data). A throwaway certificate
/// goes into `dir`.
pub fn render(dir: &Path, listen_port: u16, nodes: &[SocketAddr], ws: &[SocketAddr], ids: &[&str]) -> PathBuf {
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
        .replace("/etc/ssl/signalgate/", &format!("{d}/"));
    let site = per_node(&upstreams(&upstreams(&site, 8080, nodes), 8082, ws), ids, nodes, ws);
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

/// A running nginx, stopped on drop.
pub struct Nginx {
    child: Child,
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
    /// The same server without TLS, on 127.0.0.1, for clients of the tests' own (load).
    pub plain: SocketAddr,
    /// Where its files, certificate and logs are.
    pub dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts the shipped configuration in front of `nodes` (public API addresses) and `ws` (their
    /// WebSocket listeners, in the same order; `ids`: their cluster node ids, if any), and waits
    /// until it listens.
    pub fn start(nodes: &[SocketAddr], ws: &[SocketAddr], ids: &[&str]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = render(dir.path(), port, nodes, ws, ids);
        let plain = free_port();
        let site = dir.path().join("signalgate.conf");
        let tls = format!("listen 127.0.0.1:{port} ssl;");
        let text =
            std::fs::read_to_string(&site).unwrap().replace(&tls, &format!("{tls}\n    listen 127.0.0.1:{plain};"));
        std::fs::write(&site, text).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx is required; scripts/test installs it");
        let nginx = Nginx { child, port, plain: SocketAddr::from(([127, 0, 0, 1], plain)), dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// One request through it with curl (`args` end with the path); the status and the body.
    pub fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .arg(format!("https://localhost:{}{}", self.port, args.last().unwrap()))
            .output()
            .expect("curl is required; scripts/test installs it");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.parse().unwrap_or(0), body.to_string())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master takes its workers down with it (killed outright, it
        // would leave them running, holding the port).
        // SAFETY: the pid of our own child, not yet waited for.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
