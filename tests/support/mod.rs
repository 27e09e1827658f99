//! Test support: starts the real `signalgate` binary on free ports with its own data directory,
//! and talks to it over plain HTTP/1.1 so tests control every byte on the wire.
#![allow(dead_code)]

pub mod cluster;
pub mod fix;
pub mod nginx;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The admin token every test node uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A running node.
pub struct Node {
    child: Child,
    /// Public API address.
    pub http: SocketAddr,
    /// Admin API address.
    pub admin: SocketAddr,
    /// WebSocket address.
    pub ws: SocketAddr,
    /// The demo account's key.
    pub demo_key: String,
    /// The admin token: the tests' own, or the one the node generated and printed.
    pub admin_token: String,
    /// Everything the node printed on stdout.
    pub banner: Vec<String>,
    stderr: mpsc::Receiver<String>,
    /// The directory the test made for the node (its data directory, or the working directory
    /// of a newcomer's node); taken by [`Node::crash`] and [`Node::stop`] for a restart.
    dir: Option<tempfile::TempDir>,
    /// The node's data directory.
    data: std::path::PathBuf,
}

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_signalgate")
}

/// Called with a node's pid and each line it logs (see [`Node::start_in_hooked`]).
pub type LineHook = Box<dyn FnMut(u32, &str) + Send>;

impl Node {
    /// `GET /ready`: its status and body.
    pub fn ready(&self) -> (u16, Value) {
        let r = self.req("GET", "/ready", &[], "");
        (r.status, r.json())
    }

    /// Waits until PostgreSQL has every event journaled so far.
    pub fn wait_offloaded(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Every event so far, once stable (synced), then offloaded.
        let last = self.ready().1["last_seq"].as_u64().unwrap();
        loop {
            let (_, r) = self.ready();
            if r["postgres"] == "ok" && r["offload_lag_events"] == 0 && r["stable_seq"].as_u64().unwrap() >= last {
                return;
            }
            assert!(Instant::now() < deadline, "offload did not catch up: {r}; log: {:?}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Quotes for BTC-USD and ETH-USD, from the demo key (which has the feed role).
    pub fn post_ticks(&self) {
        let ticks = r#"{"ticks":[{"symbol":"BTC-USD","bid":"65000.00","ask":"65001.00"},{"symbol":"ETH-USD","bid":"3000.00","ask":"3000.50"}]}"#;
        let r = self.req("POST", "/v1/market/ticks", &[("Authorization", &bearer(&self.demo_key)), JSON], ticks);
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// Quotes, then `n` market signals of `key` alternating symbols (two buys, one sell), each
    /// filled.
    pub fn trade(&self, key: &str, n: usize) {
        self.post_ticks();
        for i in 0..n {
            let (symbol, side) = (["BTC-USD", "ETH-USD"][i % 2], ["buy", "sell"][i % 3 / 2]);
            let body = format!(r#"{{"symbol":"{symbol}","action":"{side}","qty":"0.01"}}"#);
            assert_eq!(self.req("POST", "/v1/signals", &[("Authorization", &bearer(key)), JSON], &body).status, 201);
        }
    }

    /// Starts a node on the embedded default with free ports and the given extra environment.
    pub fn start(env: &[(&str, &str)]) -> Node {
        Self::try_start(env).unwrap_or_else(|e| panic!("node did not start: {e}"))
    }

    /// Like [`Node::start`], returning what went wrong instead of panicking.
    pub fn try_start(env: &[(&str, &str)]) -> Result<Node, String> {
        Self::try_start_wrapped(&[], env)
    }

    /// Starts the node as the last arguments of `wrapper` (e.g. `strace -f -c -o FILE`).
    pub fn start_wrapped(wrapper: &[&str], env: &[(&str, &str)]) -> Node {
        Self::try_start_wrapped(wrapper, env).unwrap_or_else(|e| panic!("node did not start: {e}"))
    }

    fn try_start_wrapped(wrapper: &[&str], env: &[(&str, &str)]) -> Result<Node, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        Self::launch(wrapper, &[], env, dir, None).map_err(|(e, _)| e)
    }

    /// Starts a node on an existing data directory (from [`Node::crash`] or [`Node::stop`]),
    /// with extra `run` arguments. On failure the directory comes back with the error.
    pub fn try_start_in(
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Node, (String, tempfile::TempDir)> {
        Self::launch(&[], args, env, dir, None)
    }

    /// Like [`Node::try_start_in`], panicking on failure.
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Node {
        Self::try_start_in(dir, &[], env).unwrap_or_else(|(e, _)| panic!("node did not restart: {e}"))
    }

    /// Like [`Node::start_in`], calling `hook` with the node's pid and each line it logs, as it
    /// logs it (before the start is over: e.g. to stop it at a given step).
    pub fn start_in_hooked(dir: tempfile::TempDir, env: &[(&str, &str)], hook: LineHook) -> Node {
        Self::launch(&[], &[], env, dir, Some(hook)).unwrap_or_else(|(e, _)| panic!("node did not restart: {e}"))
    }

    fn launch(
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        dir: tempfile::TempDir,
        hook: Option<LineHook>,
    ) -> Result<Node, (String, tempfile::TempDir)> {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("run")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SIGNALGATE_HTTP_ADDR", "127.0.0.1:0")
            .env("SIGNALGATE_ADMIN_ADDR", "127.0.0.1:0")
            .env("SIGNALGATE_WS_ADDR", "127.0.0.1:0")
            .env("SIGNALGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SIGNALGATE_JOURNAL_DIR", dir.path())
            .env("SIGNALGATE_TOPOLOGY_PIN", "false")
            .env("SIGNALGATE_TOPOLOGY_FANOUT", "[0]")
            .env("SIGNALGATE_MARKET_INTERVAL_MS", "20")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let demo = !env.iter().any(|(k, v)| *k == "SIGNALGATE_DEMO_ENABLED" && *v == "false");
        let data = dir.path().to_path_buf();
        Self::attach(cmd, dir, data, demo, hook)
    }

    /// Starts the node as a newcomer does: `signalgate run` in `cwd`, with no configuration file
    /// and not one environment variable, so on the default ports, the default (relative) data
    /// directory and the default topology. Start it again in the same directory for a restart.
    pub fn start_as_newcomer(cwd: tempfile::TempDir) -> Node {
        let mut cmd = Command::new(binary());
        cmd.arg("run").current_dir(cwd.path()).env_clear();
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let data = cwd.path().join("signalgate-data");
        Self::attach(cmd, cwd, data, true, None).unwrap_or_else(|(e, _)| panic!("node did not start: {e}"))
    }

    /// Spawns `cmd` (stdout and stderr piped) and reads its banner.
    fn attach(
        mut cmd: Command,
        dir: tempfile::TempDir,
        data: std::path::PathBuf,
        demo: bool,
        mut hook: Option<LineHook>,
    ) -> Result<Node, (String, tempfile::TempDir)> {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Err((e.to_string(), dir)),
        };
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (etx, erx) = mpsc::channel();
        let pid = child.id();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("SIGNALGATE_TEST_LOG").is_some() {
                    eprintln!("node {pid}: {line}");
                }
                if let Some(hook) = hook.as_mut() {
                    hook(pid, &line);
                }
                let _ = etx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut banner = Vec::new();
        let (mut http, mut admin, mut ws, mut key) = (None, None, None, None);
        let mut admin_token = ADMIN_TOKEN.to_string();
        let mut saw_try = false;
        while http.is_none() || admin.is_none() || ws.is_none() || (demo && !saw_try) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // Let the reader thread drain what the process wrote before it ended.
                    std::thread::sleep(Duration::from_millis(100));
                    let errs: Vec<String> = erx.try_iter().collect();
                    return Err((format!("no banner; stdout: {banner:?}; stderr: {errs:?}"), dir));
                }
            };
            if let Some(a) = line.strip_prefix("http:  http://") {
                http = a.parse().ok();
            } else if let Some(a) = line.strip_prefix("admin: http://") {
                admin = a.parse().ok();
            } else if let Some(a) = line.strip_prefix("ws:    ws://") {
                ws = a.trim_end_matches("/v1/ws").parse().ok();
            } else if let Some(k) = line.split("(shown once): ").nth(1) {
                key = Some(k.to_string());
            } else if let Some(t) = line.strip_prefix("admin token (generated").and_then(|l| l.split("): ").nth(1)) {
                admin_token = t.to_string();
            }
            saw_try |= line.starts_with("try:");
            banner.push(line);
        }
        Ok(Node {
            child,
            http: http.unwrap(),
            admin: admin.unwrap(),
            ws: ws.unwrap(),
            demo_key: key.unwrap_or_default(),
            admin_token,
            banner,
            stderr: erx,
            dir: Some(dir),
            data,
        })
    }

    /// A keep-alive connection to the public API.
    pub fn conn(&self) -> Conn {
        Conn::open(self.http)
    }

    /// One request on a fresh connection to the public API.
    pub fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        self.conn().send(method, path, headers, body.as_bytes())
    }

    /// The value of an unlabelled metric from `GET /metrics`; panics when it is missing.
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.req("GET", "/metrics", &[], "").body;
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }

    /// One request on a fresh connection to the admin API, with the admin token.
    pub fn admin(&self, method: &str, path: &str, body: &str) -> Resp {
        let auth = format!("Bearer {}", self.admin_token);
        Conn::open(self.admin).send(
            method,
            path,
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// Creates an account and a key through the admin API; returns (account id, key).
    pub fn account(&self, tier: &str, cash: &str, limits: Value) -> (u64, String) {
        let body = serde_json::json!({"name": "t", "tier": tier, "cash": cash, "limits": limits}).to_string();
        let r = self.admin("POST", "/admin/accounts", &body);
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.json()["id"].as_u64().unwrap();
        let r = self.admin("POST", &format!("/admin/accounts/{id}/keys"), "{}");
        assert_eq!(r.status, 201, "{}", r.body);
        (id, r.json()["key"].as_str().unwrap().to_string())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let sig = match name {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "KILL" => libc::SIGKILL,
            "STOP" => libc::SIGSTOP,
            "CONT" => libc::SIGCONT,
            other => panic!("unknown signal {other}"),
        };
        // SAFETY: kill(2) with the pid of a child this struct owns and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill -{name}");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The node's process id, from its data directory's lock file (differs from the child's pid
    /// when the node runs under a wrapper).
    pub fn node_pid(&self) -> u32 {
        std::fs::read_to_string(self.data_dir().join("LOCK")).unwrap().trim().parse().unwrap()
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    /// Kills the node with SIGKILL, as a crash would, and hands back its data directory.
    pub fn crash(mut self) -> tempfile::TempDir {
        self.signal("KILL");
        // Reaped at once, so that a restart follows the death as closely as a supervisor's would.
        self.child.wait().expect("killed node exits");
        self.dir.take().expect("data directory")
    }

    /// Stops the node with SIGTERM, checks it exits 0, and hands back its data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.terminate();
        let Some(status) = self.wait(Duration::from_secs(10)) else {
            panic!("node did not exit within 10 s of SIGTERM; log: {:?}", self.log());
        };
        assert!(status.success(), "exit status {status}; log: {:?}", self.log());
        self.dir.take().expect("data directory")
    }

    /// Lines the node logged so far.
    pub fn log(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// Lines logged until one satisfies `found` (included) or `timeout` passes: a line the node
    /// has written may still be on its way through the pipe.
    pub fn log_until(&self, timeout: Duration, found: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut lines = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            let done = found(&line);
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    }

    /// Polls until the engine has a quote for `symbol` (the simulator runs every 20 ms).
    pub fn wait_for_quote(&self, key: &str, symbol: &str) {
        let auth = bearer(key);
        for _ in 0..200 {
            if self.req("GET", &format!("/v1/market/{symbol}/quote"), &[("Authorization", &auth)], "").status == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no quote for {symbol}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `Bearer <key>`
pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// An answer.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body text.
    pub body: String,
}

impl Resp {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The error code of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// One HTTP/1.1 connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects.
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { reader: BufReader::new(stream) }
    }

    /// Writes raw bytes.
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Sends a request (with Content-Length) and reads the answer.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.try_send(method, path, headers, body).expect("request answered")
    }

    /// Like [`Conn::send`], returning a failed write or read instead of panicking.
    pub fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.write_raw(&bytes)?;
        self.read_response()
    }

    /// Reads one answer.
    pub fn read_response(&mut self) -> std::io::Result<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize =
            headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(Resp { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
    }

    /// Whether the server closed the connection (reads EOF within `timeout`).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let s = self.reader.get_mut();
        s.set_read_timeout(Some(timeout)).unwrap();
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(0))
            || matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// JSON content type header.
pub const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A throwaway PostgreSQL server on a free port, run as the `postgres` user (it refuses root),
/// stopped and deleted on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// Which PostgreSQL a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Debian's PostgreSQL as it comes.
    Plain,
    /// With TimescaleDB loaded (`scripts/test` builds it with `../shared/third_party/build-timescaledb`).
    Timescale,
}

impl Flavor {
    /// Both, for tests that must hold on either.
    pub const ALL: [Flavor; 2] = [Flavor::Plain, Flavor::Timescale];
}

impl Postgres {
    /// Starts one; panics with what is missing when it cannot (scripts/test installs it).
    pub fn start() -> Postgres {
        Self::start_flavor(Flavor::Plain)
    }

    /// Starts one with TimescaleDB loaded.
    pub fn start_timescale() -> Postgres {
        Self::start_flavor(Flavor::Timescale)
    }

    /// Starts one of `flavor`.
    pub fn start_flavor(flavor: Flavor) -> Postgres {
        let bin = Self::bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
        assert!(chown.success(), "chown to the postgres user (scripts/test runs as root and installs PostgreSQL)");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Postgres { dir, bin, port };
        let data = pg.data();
        pg.as_postgres("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
        if flavor == Flavor::Timescale {
            let lib = pg.bin.parent().unwrap().join("lib").join("timescaledb.so");
            assert!(
                lib.exists(),
                "TimescaleDB is not installed for this PostgreSQL ({}): scripts/test builds it with \
                 ../shared/third_party/build-timescaledb",
                lib.display()
            );
            // Policies run in background workers: room for all of them at once.
            pg.append_conf(
                "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n\
                 max_worker_processes = 32\ntimescaledb.max_background_workers = 24\n",
            );
        }
        pg.start_again();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_string()
    }

    fn as_postgres(&self, program: &str, args: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("runuser {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again, after [`Postgres::kill`]) on the same port and data.
    pub fn start_again(&self) {
        let opts =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let log = self.dir.path().join("log").to_str().unwrap().to_string();
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &opts, "-w", "-t", "60", "start"]);
    }

    /// A streaming replica of this server (`pg_basebackup -R`), started on a port of its own.
    pub fn start_replica(&self) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
        assert!(chown.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let replica = Postgres { dir, bin: self.bin.clone(), port };
        let (data, primary) = (replica.data(), self.port.to_string());
        let args = ["-h", "127.0.0.1", "-p", &primary, "-U", "postgres", "-D", &data, "-R", "-c", "fast", "--no-sync"];
        replica.as_postgres("pg_basebackup", &args);
        replica.start_again();
        replica
    }

    fn append_conf(&self, settings: &str) {
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push('\n');
        text.push_str(settings);
        std::fs::write(&conf, text).unwrap();
    }

    /// Adds settings to `postgresql.conf` (and replaces `pg_hba.conf`, given one) and restarts
    /// the server.
    pub fn reconfigure(&self, settings: &str, hba: Option<&str>) {
        self.append_conf(settings);
        if let Some(hba) = hba {
            std::fs::write(self.data_dir().join("pg_hba.conf"), hba).unwrap();
        }
        let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(self.data_dir()).status().unwrap();
        assert!(chown.success());
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
        self.start_again();
    }

    /// Where its data directory is (files put there are readable by the server).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server the hard way (`pg_ctl stop -m immediate`), as a crash would.
    pub fn kill(&self) {
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    fn bin_dir() -> std::path::PathBuf {
        let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).collect())
            .unwrap_or_default();
        dirs.sort();
        dirs.into_iter()
            .rev()
            .find(|d| d.join("initdb").exists())
            .or_else(|| {
                let out = Command::new("sh").args(["-c", "command -v initdb"]).output().ok()?;
                let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
                std::path::Path::new(&path).parent().map(std::path::Path::to_path_buf)
            })
            .filter(|d| d.join("initdb").exists())
            .expect("PostgreSQL server binaries (initdb, pg_ctl): scripts/test installs the postgresql package")
    }

    /// A connection string for the `postgres` database.
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    /// Runs SQL with psql; the rows as `|`-separated text.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(self.url())
            .output()
            .expect("psql (scripts/test installs postgresql-client)");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A throwaway certificate authority in `dir`: `name.crt` and `name.key`.
pub fn certificate_authority(dir: &std::path::Path, name: &str) {
    openssl(
        dir,
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", &format!("/CN={name}")],
        name,
    );
}

/// A server certificate for `san` (`IP:127.0.0.1`, `DNS:db.example`) signed by the authority
/// `ca` in `dir`: `name.crt` and `name.key`.
pub fn server_certificate(dir: &std::path::Path, ca: &str, name: &str, san: &str) {
    openssl(dir, &["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=server"], name);
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(["x509", "-req", "-in", &format!("{name}.csr"), "-CA", &format!("{ca}.crt"), "-CAkey"])
        .args([&format!("{ca}.key"), "-CAcreateserial", "-days", "1", "-out", &format!("{name}.crt")])
        .args(["-extfile", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(format!("subjectAltName={san}\n").as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl is required; scripts/test installs it");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn openssl(dir: &std::path::Path, args: &[&str], name: &str) {
    let out_file = if args.contains(&"-x509") { format!("{name}.crt") } else { format!("{name}.csr") };
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .args(["-keyout", &format!("{name}.key"), "-out", &out_file])
        .output()
        .expect("openssl is required; scripts/test installs it");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A port on 127.0.0.1 that is free now and outside the kernel's range of ephemeral ports, so
/// that no outgoing connection takes it before a server that must listen on it again (a node
/// restarted after a kill) binds it.
pub fn fixed_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(32768);
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut x =
        (u64::from(std::process::id()) << 32) ^ now.as_nanos() as u64 ^ call.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 10_000 + (x % u64::from(low.saturating_sub(10_000).max(1))) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A throwaway Redis server on a free port, stopped on drop: without persistence, or with every
/// write in its append-only file before it answers ([`Redis::start_persistent`]).
pub struct Redis {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where it keeps its append-only file, when it keeps one.
    data: Option<tempfile::TempDir>,
}

impl Redis {
    /// Starts one and waits until it answers; panics with what is missing when it cannot
    /// (scripts/test installs redis-server).
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port)
    }

    /// Starts one on `port` (again, after [`Redis::kill`]: empty, as it keeps nothing on disk).
    pub fn start_on(port: u16) -> Redis {
        Self::spawn(port, None)
    }

    /// Starts one that writes every change to its append-only file before it answers
    /// (`appendfsync always`), as a cluster that acknowledges on replication needs.
    pub fn start_persistent() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::spawn(port, Some(tempfile::tempdir().unwrap()))
    }

    /// Kills it (SIGKILL) and starts it again on the same port and, when it keeps one, the same
    /// append-only file.
    pub fn restart(&mut self) {
        self.kill();
        let data = self.data.take();
        *self = Self::spawn(self.port, data);
    }

    fn spawn(port: u16, data: Option<tempfile::TempDir>) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
        match &data {
            Some(dir) => cmd.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"]).arg(dir.path()),
            None => cmd.args(["--appendonly", "no"]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server: scripts/test installs the redis-server package");
        let r = Redis { child, port, data };
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = r.query(&["PING"]) {
            assert!(Instant::now() < deadline, "redis-server on port {port} did not answer within 10 s: {e}");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Runs one command; its answer as text (arrays joined with newlines).
    pub fn query(&self, args: &[&str]) -> Result<String, String> {
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(2)).map_err(|e| e.to_string())?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let v: redis::Value = cmd.query(&mut con).map_err(|e| e.to_string())?;
        fn text(v: &redis::Value) -> String {
            match v {
                redis::Value::Nil => String::new(),
                redis::Value::Int(i) => i.to_string(),
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                redis::Value::Okay => "OK".into(),
                redis::Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join("\n"),
                other => format!("{other:?}"),
            }
        }
        Ok(text(&v))
    }

    /// A connection, for what [`Redis::query`] cannot show (binary fields).
    pub fn connection(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).unwrap();
        client.get_connection_with_timeout(Duration::from_secs(2)).unwrap()
    }

    /// Stops it with SIGSTOP (a hung Redis: connections open, nothing answered).
    pub fn pause(&self) {
        // SAFETY: kill(2) with the pid of a child this struct owns and has not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGSTOP) }, 0);
    }

    /// Lets it go on after [`Redis::pause`].
    pub fn resume(&self) {
        // SAFETY: as in `pause`.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) }, 0);
    }

    /// Kills it, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
