//! A real FIX 4.4 acceptor for the FIX venue's tests: QuickFIX (Debian's `libquickfix-dev`, which
//! scripts/test installs) with the order-matching simulator of `fix_acceptor.cpp`, compiled once
//! per test run and driven over its stdin and stdout.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// The acceptor's program, compiled from `fix_acceptor.cpp` on first use.
fn program() -> &'static PathBuf {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fix_acceptor.cpp");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fix_acceptor");
        let built = Command::new("g++")
            .args(["-std=gnu++14", "-O1", "-DHAVE_SSL=1", "-Wno-deprecated", "-Wno-deprecated-declarations", "-o"])
            .arg(&out)
            .arg(source)
            .args(["-lquickfix", "-lpthread", "-lssl", "-lcrypto"])
            .output()
            .expect("g++ is required; scripts/test installs it");
        assert!(
            built.status.success(),
            "the FIX acceptor does not build (scripts/test installs libquickfix-dev): {}",
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
}

/// A running acceptor (SenderCompID `VENUE`, TargetCompID `SG`), stopped on drop.
pub struct Acceptor {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<String>,
    /// Everything it printed so far.
    pub seen: Vec<String>,
    /// What it printed that no [`Acceptor::wait_for`] took yet.
    unmatched: Vec<String>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its session store and log.
    pub dir: tempfile::TempDir,
}

impl Acceptor {
    /// Starts one on a free port (plain TCP).
    pub fn start() -> Acceptor {
        Self::spawn(None)
    }

    /// Starts one that speaks TLS with this certificate and key.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Acceptor {
        Self::spawn(Some((cert, key)))
    }

    fn spawn(tls: Option<(&std::path::Path, &std::path::Path)>) -> Acceptor {
        let dir = tempfile::tempdir().unwrap();
        let port = super::fixed_port();
        let mut cmd = Command::new(program());
        cmd.arg(port.to_string()).arg(dir.path());
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the FIX acceptor starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if std::env::var_os("SIGNALGATE_TEST_LOG").is_some() {
                    eprintln!("acceptor: {line}");
                }
                let _ = tx.send(line);
            }
        });
        let mut a = Acceptor { child, stdin, events, seen: Vec::new(), unmatched: Vec::new(), port, dir };
        a.wait_for("listening");
        a
    }

    /// Waits (up to 20 s) for an event line equal to `line`, or starting with it and a space,
    /// that no earlier wait took, and takes it.
    pub fn wait_for(&mut self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let prefix = format!("{line} ");
        let matches = |l: &String| l == line || l.starts_with(&prefix);
        loop {
            if let Some(i) = self.unmatched.iter().position(matches) {
                return self.unmatched.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    self.unmatched.push(l);
                }
                Err(_) => panic!("the FIX acceptor never said {line:?}; it said {:?}", self.seen),
            }
        }
    }

    /// Runs a command (see fix_acceptor.cpp) and waits until it is done.
    pub fn command(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.wait_for("ok");
    }

    /// Whether it printed `line` (or a line starting with it and a space) so far, reading
    /// what is waiting first.
    pub fn said(&mut self, line: &str) -> bool {
        for l in self.events.try_iter() {
            self.seen.push(l.clone());
            self.unmatched.push(l);
        }
        let prefix = format!("{line} ");
        self.seen.iter().any(|l| l == line || l.starts_with(&prefix))
    }

    /// What its session log holds (QuickFIX's event log: logons, rejects, sequence problems).
    pub fn session_log(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.dir.path().join("log")).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".event.log") {
                all += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
        all
    }

    /// A node configuration for this acceptor: `[venue]` (with `extra_venue`) and the demo symbols, BTC-USD named
    /// `XBT/USD` at the venue and ETH-USD named `UNKNOWN` (which the acceptor refuses).
    pub fn node_config(&self, extra_venue: &str) -> String {
        format!(
            r#"[venue]
kind = "fix"
host = "127.0.0.1"
port = {port}
sender_comp_id = "SG"
target_comp_id = "VENUE"
heartbeat_secs = 1
answer_timeout_ms = 500
{extra_venue}

[[symbols]]
name = "BTC-USD"
price_decimals = 2
qty_decimals = 4
tick = "0.01"
lot = "0.0001"
max_order_qty = "50"
initial_price = "65000"
venue_symbol = "XBT/USD"

[[symbols]]
name = "ETH-USD"
price_decimals = 2
qty_decimals = 3
tick = "0.01"
lot = "0.001"
max_order_qty = "500"
initial_price = "3200"
venue_symbol = "UNKNOWN"
"#,
            port = self.port
        )
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
