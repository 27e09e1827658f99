//! The HTTP load generator: C keep-alive connections driven by one thread (pinned with `--cpu`)
//! around epoll, each sending prepared requests open-loop on its own schedule or closed-loop as
//! fast as answers come back.
//!
//! Plain non-blocking sockets and `epoll_wait(…, 0)` in a loop, as wrk does: the generator owns its
//! core, so it spins instead of sleeping, and a readiness poll per batch costs far less than an
//! io_uring completion (and its wake-up) per read. A generator that shares its core (with
//! PostgreSQL, say) sleeps in epoll instead ([`Wait::Sleep`]) until its next request is due or an
//! answer arrives, so that it takes only the CPU its requests need.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

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
    /// How the generator waits between sends and answers.
    pub wait: Wait,
}

/// How the generator waits for its next send or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    /// Poll without blocking, in a loop: the generator owns its core (the most precise sends).
    Spin,
    /// Block in epoll until the next send is due, an answer arrives or a request times out
    /// (with 1 ns timer slack): for a core the generator shares.
    Sleep,
}

/// What a run measured.
pub struct Measured {
    /// Counts of the measured window.
    pub stats: Stats,
    /// Length of the measured window.
    pub elapsed: Duration,
}

/// Runs the load on its own thread and waits for it.
pub fn run(load: Load) -> Result<Measured, String> {
    std::thread::Builder::new()
        .name("bench-load".into())
        .spawn(move || {
            if let Some(cpu) = load.cpu {
                pin_current(cpu)?;
            }
            if load.wait == Wait::Sleep {
                // Wake-ups on time rather than up to the default 50 µs late.
                // SAFETY: PR_SET_TIMERSLACK takes a plain integer and touches no memory.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
            }
            drive(&load)
        })
        .map_err(|e| format!("cannot start the load thread: {e}"))?
        .join()
        .map_err(|_| "the load thread panicked".to_string())?
}

/// Pins the calling thread (and the threads it starts after) to core `cpu`.
pub fn pin_current(cpu: usize) -> Result<(), String> {
    let id = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == cpu));
    if id.is_some_and(core_affinity::set_for_current) {
        Ok(())
    } else {
        Err(format!("cannot pin the harness to core {cpu}"))
    }
}

/// Where one connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the next request's time (open loop) or about to send (closed loop).
    Idle,
    /// Request written, answer being read.
    Reading,
}

struct Conn {
    stream: Option<TcpStream>,
    phase: Phase,
    /// Index of the next (or current) request of this connection.
    k: u64,
    /// When the current request left.
    sent: u64,
    /// When the connection was last free.
    free: u64,
    schedule: Option<Schedule>,
    buf: Vec<u8>,
    filled: usize,
}

fn ns_since(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

struct Epoll(i32);

impl Epoll {
    fn new() -> Result<Epoll, String> {
        // SAFETY: epoll_create1 has no memory preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(format!("epoll_create1: {}", std::io::Error::last_os_error()));
        }
        Ok(Epoll(fd))
    }

    fn add(&self, fd: i32, token: usize) {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token as u64 };
        // SAFETY: the event struct lives across the call; fd is an open socket we own.
        unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }

    fn remove(&self, fd: i32) {
        // SAFETY: removing an fd we registered; a null event is allowed for EPOLL_CTL_DEL.
        unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }

    /// Ready tokens, waiting up to `wait_ns` for the first (0: not at all).
    fn poll(&self, events: &mut [libc::epoll_event], wait_ns: u64) -> usize {
        let timeout = libc::timespec {
            tv_sec: (wait_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (wait_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: the kernel writes at most `events.len()` entries into the slice we own and
        // reads `timeout`, which lives across the call; a null signal mask is allowed.
        let n =
            unsafe { libc::epoll_pwait2(self.0, events.as_mut_ptr(), events.len() as i32, &timeout, std::ptr::null()) };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closing the epoll descriptor this struct owns.
        unsafe { libc::close(self.0) };
    }
}

fn drive(load: &Load) -> Result<Measured, String> {
    let epoll = Epoll::new()?;
    let n = load.connections.max(1);
    let mut conns: Vec<Conn> = (0..n)
        .map(|c| Conn {
            stream: None,
            phase: Phase::Idle,
            k: 0,
            sent: 0,
            free: 0,
            schedule: load.rate.map(|rate| {
                let interval_ns = (n as f64 * 1e9 / rate).max(1.0) as u64;
                // Stagger the connections over one interval so requests do not leave in bursts.
                Schedule { start_ns: interval_ns * c as u64 / n as u64, interval_ns }
            }),
            buf: vec![0; 16 * 1024],
            filled: 0,
        })
        .collect();
    let mut stats = Stats::new();
    let mut sent_total: u64 = 0;
    let origin = Instant::now();
    let measure_from = load.warmup.as_nanos() as u64;
    let end = (load.warmup + load.duration).as_nanos() as u64;
    let timeout = load.timeout.as_nanos() as u64;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; n];
    let mut last_print = 0;
    loop {
        let now = ns_since(origin);
        if now >= end {
            break;
        }
        // The earliest moment something is due: a send, a timeout or the end of the run.
        let mut next = end;
        // Send what is due.
        for (c, conn) in conns.iter_mut().enumerate() {
            if conn.phase == Phase::Reading {
                next = next.min(conn.sent + timeout + 1);
                if now.saturating_sub(conn.sent) > timeout {
                    if conn.schedule.map_or(conn.sent, |s| s.intended(conn.k)) >= measure_from {
                        stats.fail("timeout");
                    }
                    close(conn, &epoll);
                    conn.free = now;
                    conn.k += 1;
                }
                continue;
            }
            // Closed loop sends as soon as the connection is free; `free` also carries the
            // back-off after a failed connect, in both modes.
            let due = conn.schedule.map_or(conn.free, |s| s.send_at(conn.k, conn.free));
            if due > now {
                next = next.min(due);
                continue;
            }
            if conn.stream.is_none() && !open(conn, c, load.addr, &epoll) {
                if now >= measure_from {
                    stats.fail("connect");
                }
                conn.free = now + 50_000_000;
                conn.k += 1;
                continue;
            }
            let request = &load.requests[(conn.k as usize * n + c) % load.requests.len()];
            conn.sent = ns_since(origin);
            conn.filled = 0;
            sent_total += 1;
            if send(conn, request).is_err() {
                if conn.schedule.map_or(conn.sent, |s| s.intended(conn.k)) >= measure_from {
                    stats.fail("disconnect");
                }
                close(conn, &epoll);
                conn.free = conn.sent;
                conn.k += 1;
                continue;
            }
            conn.phase = Phase::Reading;
            next = next.min(conn.sent + timeout + 1);
        }
        // Read what arrived (sleeping until then, or until `next`, if asked to).
        let wait_ns = match load.wait {
            Wait::Spin => 0,
            Wait::Sleep => next.saturating_sub(ns_since(origin)),
        };
        let ready = epoll.poll(&mut events, wait_ns);
        for ev in &events[..ready] {
            let c = ev.u64 as usize;
            let conn = &mut conns[c];
            if conn.phase != Phase::Reading {
                continue;
            }
            match receive(conn) {
                Ok(None) => {}
                Ok(Some((status, body_at, body_len, closes))) => {
                    let done = ns_since(origin);
                    if conn.schedule.map_or(conn.sent, |s| s.intended(conn.k)) >= measure_from {
                        let latency = conn.schedule.map_or(done - conn.sent, |s| s.latency(conn.k, done));
                        let outcome = if (200..300).contains(&status) {
                            Outcome::Ok
                        } else {
                            classify(status, &conn.buf[body_at..body_at + body_len])
                        };
                        stats.record(latency, outcome);
                    }
                    if closes {
                        close(conn, &epoll);
                    }
                    conn.phase = Phase::Idle;
                    conn.free = done;
                    conn.k += 1;
                }
                Err(kind) => {
                    if conn.schedule.map_or(conn.sent, |s| s.intended(conn.k)) >= measure_from {
                        stats.fail(kind);
                    }
                    close(conn, &epoll);
                    conn.phase = Phase::Idle;
                    conn.free = ns_since(origin);
                    conn.k += 1;
                }
            }
        }
        if load.progress {
            let secs = now / 1_000_000_000;
            if secs > last_print {
                last_print = secs;
                let phase = if now < measure_from { "warm-up" } else { "measuring" };
                eprint!(
                    "\r{phase:>9} {:>5.1} s  {:>9} sent  {:>9} recorded  {:>6} errors   ",
                    now as f64 / 1e9,
                    sent_total,
                    stats.total(),
                    stats.error_count()
                );
                let _ = std::io::stderr().flush();
            }
        }
    }
    if load.progress {
        eprintln!();
    }
    Ok(Measured { stats, elapsed: load.duration })
}

fn open(conn: &mut Conn, token: usize, addr: SocketAddr, epoll: &Epoll) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    if stream.set_nodelay(true).is_err() || stream.set_nonblocking(true).is_err() {
        return false;
    }
    epoll.add(stream.as_raw_fd(), token);
    conn.stream = Some(stream);
    true
}

fn close(conn: &mut Conn, epoll: &Epoll) {
    if let Some(s) = conn.stream.take() {
        epoll.remove(s.as_raw_fd());
    }
    conn.phase = Phase::Idle;
}

/// Writes the whole request; a request is small, so a full socket buffer means a stuck peer.
fn send(conn: &mut Conn, request: &[u8]) -> Result<(), ()> {
    let Some(s) = conn.stream.as_mut() else { return Err(()) };
    let mut off = 0;
    let started = Instant::now();
    while off < request.len() {
        match s.write(&request[off..]) {
            Ok(0) => return Err(()),
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock && started.elapsed() < Duration::from_secs(1) => {
                std::hint::spin_loop()
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

/// Reads what is available; `Some` once the whole answer is in: (status, body offset, body
/// length, whether the server closes the connection).
fn receive(conn: &mut Conn) -> Result<Option<(u16, usize, usize, bool)>, &'static str> {
    let Some(s) = conn.stream.as_mut() else { return Err("disconnect") };
    loop {
        if conn.filled == conn.buf.len() {
            let len = conn.buf.len();
            conn.buf.resize(len * 2, 0);
        }
        match s.read(&mut conn.buf[conn.filled..]) {
            Ok(0) => return Err("disconnect"),
            Ok(n) => conn.filled += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err("disconnect"),
        }
    }
    parse(&conn.buf[..conn.filled])
}

/// Parses a complete HTTP/1.1 answer at the start of `buf`; `None` while incomplete.
fn parse(buf: &[u8]) -> Result<Option<(u16, usize, usize, bool)>, &'static str> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "bad answer")?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or("bad answer")?;
    let (mut length, mut close) = (0, false);
    for line in head.split("\r\n").skip(1) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().map_err(|_| "bad answer")?;
        } else if name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let body_at = end + 4;
    if buf.len() < body_at + length {
        return Ok(None);
    }
    Ok(Some((status, body_at, length, close)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_only_when_complete() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        assert_eq!(parse(b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\nab"), Ok(None));
        assert_eq!(parse(b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\nabcd"), Ok(Some((201, 43, 4, false))));
        assert_eq!(
            parse(b"HTTP/1.1 503 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
            Ok(Some((503, 56, 0, true)))
        );
        assert_eq!(parse(b"garbage\r\n\r\n"), Err("bad answer"));
    }
}
