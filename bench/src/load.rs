//! The HTTP load generator: C keep-alive connections on one glommio executor (pinned with
//! `--cpu`), each sending prepared requests open-loop on its own schedule or closed-loop as fast
//! as answers come back.

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};

use crate::stats::{classify, Outcome, Schedule, Stats};

/// One load run.
#[derive(Debug, Clone)]
pub struct Load {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Connections.
    pub connections: usize,
    /// Total requests per second (open loop), or `None` for closed loop.
    pub rate: Option<f64>,
    /// Measured time.
    pub duration: Duration,
    /// Time before measuring starts (requests are sent, not recorded).
    pub warmup: Duration,
    /// An answer slower than this counts as a timeout and the connection is reopened.
    pub timeout: Duration,
    /// Complete HTTP/1.1 requests, sent in turn.
    pub requests: Vec<Vec<u8>>,
    /// Core to pin the generator to.
    pub cpu: Option<usize>,
    /// Print a progress line on stderr every second.
    pub progress: bool,
}

/// What a run measured.
pub struct Measured {
    /// Counts of the measured window.
    pub stats: Stats,
    /// Length of the measured window.
    pub elapsed: Duration,
}

/// Runs the load on its own executor thread and waits for it.
pub fn run(load: Load) -> Result<Measured, String> {
    let placement = match load.cpu {
        Some(c) => Placement::Fixed(c),
        None => Placement::Unbound,
    };
    LocalExecutorBuilder::new(placement)
        .name("bench-load")
        .io_memory(512 * 1024)
        // A load generator owns its core: spin instead of sleeping between completions, so an
        // answer is read as soon as it lands rather than after a wake-up.
        .spin_before_park(Duration::from_millis(50))
        .spawn(move || async move { drive(load).await })
        .map_err(|e| format!("cannot start the load executor: {e}"))?
        .join()
        .map_err(|e| format!("the load executor failed: {e}"))
}

struct Shared {
    stats: RefCell<Stats>,
    stop: Cell<bool>,
    sent: Cell<u64>,
}

async fn drive(load: Load) -> Measured {
    let load = Rc::new(load);
    let shared = Rc::new(Shared { stats: RefCell::new(Stats::new()), stop: Cell::new(false), sent: Cell::new(0) });
    let origin = Instant::now();
    let measure_from = load.warmup.as_nanos() as u64;
    let mut tasks = Vec::new();
    for c in 0..load.connections {
        let (load, shared) = (load.clone(), shared.clone());
        tasks.push(glommio::spawn_local(async move { connection(c, &load, &shared, origin, measure_from).await }));
    }
    let total = load.warmup + load.duration;
    let mut last_print = 0;
    while origin.elapsed() < total {
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let secs = origin.elapsed().as_secs();
        if load.progress && secs > last_print {
            last_print = secs;
            let s = shared.stats.borrow();
            let phase = if origin.elapsed() < load.warmup { "warm-up" } else { "measuring" };
            eprint!(
                "\r{phase:>9} {:>5.1} s  {:>9} sent  {:>9} recorded  {:>6} errors   ",
                origin.elapsed().as_secs_f64(),
                shared.sent.get(),
                s.total(),
                s.error_count()
            );
            let _ = std::io::stderr().flush();
        }
    }
    shared.stop.set(true);
    for t in tasks {
        t.await;
    }
    if load.progress {
        eprintln!();
    }
    let stats = std::mem::take(&mut *shared.stats.borrow_mut());
    Measured { stats, elapsed: load.duration }
}

fn ns_since(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

async fn connection(c: usize, load: &Load, shared: &Shared, origin: Instant, measure_from: u64) {
    let schedule = load.rate.map(|rate| {
        let interval_ns = (load.connections as f64 * 1e9 / rate).max(1.0) as u64;
        // Stagger the connections over one interval so requests do not leave in bursts.
        Schedule { start_ns: interval_ns * c as u64 / load.connections as u64, interval_ns }
    });
    let mut stream: Option<TcpStream> = None;
    let mut buf = vec![0u8; 16 * 1024];
    let mut k: u64 = 0;
    let mut free = 0;
    while !shared.stop.get() {
        let due = match schedule {
            Some(s) => s.send_at(k, free),
            None => ns_since(origin),
        };
        let now = ns_since(origin);
        if due > now {
            glommio::timer::sleep(Duration::from_nanos(due - now)).await;
            if shared.stop.get() {
                break;
            }
        }
        if stream.is_none() {
            match TcpStream::connect(load.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    // Socket timeouts (io_uring linked timeouts) rather than a timer per request.
                    let _ = s.set_read_timeout(Some(load.timeout));
                    let _ = s.set_write_timeout(Some(load.timeout));
                    stream = Some(s);
                }
                Err(_) => {
                    if ns_since(origin) >= measure_from {
                        shared.stats.borrow_mut().fail("connect");
                    }
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    free = ns_since(origin);
                    k += 1;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let sent = ns_since(origin);
        let request = &load.requests[(k as usize * load.connections + c) % load.requests.len()];
        shared.sent.set(shared.sent.get() + 1);
        let answer = exchange(s, request, &mut buf).await;
        let done = ns_since(origin);
        let measured = schedule.map_or(sent, |s| s.intended(k)) >= measure_from;
        match answer {
            Ok((status, body_at, body_len, close)) => {
                if measured {
                    let latency = schedule.map_or(done - sent, |s| s.latency(k, done));
                    let outcome = if (200..300).contains(&status) {
                        Outcome::Ok
                    } else {
                        classify(status, &buf[body_at..body_at + body_len])
                    };
                    shared.stats.borrow_mut().record(latency, outcome);
                }
                if close {
                    stream = None;
                }
            }
            Err(kind) => {
                if measured {
                    shared.stats.borrow_mut().fail(kind);
                }
                stream = None;
            }
        }
        free = done;
        k += 1;
    }
}

/// Sends one request and reads one answer into `buf`: (status, body offset, body length,
/// whether the server closes the connection).
async fn exchange(
    s: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(u16, usize, usize, bool), &'static str> {
    s.write_all(request).await.map_err(io_kind)?;
    let mut filled = 0;
    let (head_end, status, length, close) = loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = s.read(&mut buf[filled..]).await.map_err(io_kind)?;
        if n == 0 {
            return Err("disconnect");
        }
        filled += n;
        if let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| "bad answer")?;
            let status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or("bad answer")?;
            let mut length = 0;
            let mut close = false;
            for line in head.split("\r\n").skip(1) {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().map_err(|_| "bad answer")?;
                } else if name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
            break (end + 4, status, length, close);
        }
    };
    if buf.len() < head_end + length {
        buf.resize(head_end + length, 0);
    }
    while filled < head_end + length {
        let n = s.read(&mut buf[filled..head_end + length]).await.map_err(io_kind)?;
        if n == 0 {
            return Err("disconnect");
        }
        filled += n;
    }
    Ok((status, head_end, length, close))
}

fn io_kind(e: std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::TimedOut {
        "timeout"
    } else {
        "disconnect"
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A complete HTTP/1.1 request.
pub fn request(method: &str, host: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}
