//! The `ws-fanout` scenario: many WebSocket subscribers on one thread (tokio, non-blocking), each
//! subscribed to some symbols, and an open-loop feeder that sends quotes through
//! `POST /v1/market/ticks` stamped with their intended send time. A subscriber's latency for a
//! quote is its arrival time minus that stamp, so a feeder or a node that falls behind shows up as
//! latency, not as a quietly lower rate. Frames are decoded with the crate's protocol module.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use signalgate::engine::event::EventKind;
use signalgate::ws::frame::client_frame;
use signalgate::ws::protocol::{decode_frame, encode_client, ClientMsg, ServerBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the scenario needs.
#[derive(Clone)]
pub struct FanoutRun {
    /// The node's WebSocket address.
    pub ws: SocketAddr,
    /// The node's public API (for ticks).
    pub http: SocketAddr,
    /// A key with the feed role (used by every subscriber and the feeder).
    pub key: String,
    /// Symbols to spread subscriptions and quotes over.
    pub symbols: Vec<String>,
    /// Subscribers.
    pub clients: usize,
    /// Symbols per subscriber.
    pub per_client: usize,
    /// Quotes per second in all.
    pub rate: f64,
    /// Measured seconds.
    pub duration: f64,
    /// Seconds of quotes before measuring.
    pub warmup: f64,
    /// The node's pid, to sample its memory.
    pub node_pid: Option<u32>,
}

/// What it measured.
pub struct FanoutResult {
    /// Latency of measured quotes (ns).
    pub hist: Histogram<u64>,
    /// Messages expected in the measured window.
    pub expected: u64,
    /// Messages received in the measured window.
    pub delivered: u64,
    /// Quotes sent in the measured window.
    pub ticks: u64,
    /// Feeder requests that failed.
    pub feed_errors: u64,
    /// Subscribers that were disconnected.
    pub disconnects: u64,
    /// Node RSS before the subscribers connected and with all of them idle (bytes).
    pub rss: Option<(u64, u64)>,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

const MASK: [u8; 4] = [0x5a, 0x17, 0x3c, 0x81];

/// The symbols subscriber `c` takes: spread so that each symbol has the same number of them.
fn subscription(c: usize, per_client: usize, n: usize) -> Vec<usize> {
    (0..per_client.min(n)).map(|j| (c + j * n.div_ceil(per_client.max(1))) % n).collect()
}

struct Shared {
    hist: Histogram<u64>,
    /// Quotes stamped at or after this (ns) are measured.
    from_ns: u64,
    until_ns: u64,
    delivered: u64,
    disconnects: u64,
}

async fn subscriber(
    ws: SocketAddr,
    key: String,
    symbols: Vec<String>,
    shared: Rc<RefCell<Shared>>,
) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(ws).await.map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let req = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {ws}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-API-Key: {key}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(4096);
    let head = loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        return Err(String::from_utf8_lossy(&buf).into_owned());
    }
    buf.drain(..head);
    let sub = encode_client(&ClientMsg::Subscribe { channels: symbols, resume_from: None });
    s.write_all(&client_frame(2, &sub, MASK)).await.map_err(|e| e.to_string())?;
    loop {
        // Whole frames at the start of `buf`.
        loop {
            if buf.len() < 2 {
                break;
            }
            let (len, hdr) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap_or_default()) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < hdr + len {
                break;
            }
            let op = buf[0] & 0x0f;
            let arrived = now_ns();
            if op == 2 {
                let msgs = decode_frame(&buf[hdr..hdr + len])?;
                let mut sh = shared.borrow_mut();
                for m in msgs {
                    if let ServerBody::Event { event: EventKind::Quote(q) } = m.body {
                        if q.ts >= sh.from_ns && q.ts < sh.until_ns {
                            sh.delivered += 1;
                            let _ = sh.hist.record(arrived.saturating_sub(q.ts).max(1));
                        }
                    }
                }
            } else if op == 9 {
                let pong = client_frame(0xa, &buf[hdr..hdr + len], MASK);
                s.write_all(&pong).await.map_err(|e| e.to_string())?;
            } else if op == 8 {
                return Err("closed by the node".into());
            }
            buf.drain(..hdr + len);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The feeder: quote `k` is due at `start + k / rate`, stamped with that time, one request each
/// on a keep-alive connection. Returns (quotes per symbol sent in the window, errors).
fn feeder(r: &FanoutRun, start_ns: u64, window: (u64, u64), end_ns: u64) -> Result<(Vec<u64>, u64), String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(r.http).map_err(|e| e.to_string())?;
    let _ = conn.set_nodelay(true);
    let mut per_symbol = vec![0u64; r.symbols.len()];
    let mut errors = 0;
    let mut buf = vec![0u8; 4096];
    for k in 0u64.. {
        let due = start_ns + (k as f64 * 1e9 / r.rate) as u64;
        if due >= end_ns {
            break;
        }
        let now = now_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        let sym = (k as usize) % r.symbols.len();
        let mid = 1000 + (k % 50) as i64;
        let body = format!(
            r#"{{"ticks":[{{"symbol":"{}","bid":"{}.00","ask":"{}.10","ts":{due}}}]}}"#,
            r.symbols[sym], mid, mid
        );
        let req = format!(
            "POST /v1/market/ticks HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            r.key,
            body.len()
        );
        conn.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let n = conn.read(&mut buf).map_err(|e| e.to_string())?;
        let ok = buf[..n].starts_with(b"HTTP/1.1 2");
        if !ok {
            errors += 1;
        }
        if ok && due >= window.0 && due < window.1 {
            per_symbol[sym] += 1;
        }
    }
    Ok((per_symbol, errors))
}

/// Runs the scenario.
pub fn run(r: FanoutRun) -> Result<FanoutResult, String> {
    let n = r.symbols.len();
    let rss_before = r.node_pid.and_then(rss);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let shared = Rc::new(RefCell::new(Shared {
        hist: Histogram::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| e.to_string())?,
        from_ns: u64::MAX,
        until_ns: u64::MAX,
        delivered: 0,
        disconnects: 0,
    }));
    let mut subscribers = vec![0u64; n];
    local.block_on(&rt, async {
        let connected = Rc::new(RefCell::new(0usize));
        for c in 0..r.clients {
            let syms = subscription(c, r.per_client, n);
            for &s in &syms {
                subscribers[s] += 1;
            }
            let names = syms.iter().map(|&s| format!("quotes:{}", r.symbols[s])).collect();
            let (shared, key, connected) = (shared.clone(), r.key.clone(), connected.clone());
            let ws = r.ws;
            tokio::task::spawn_local(async move {
                let sub = subscriber(ws, key, names, shared.clone());
                *connected.borrow_mut() += 1;
                if let Err(e) = sub.await {
                    let mut sh = shared.borrow_mut();
                    if sh.disconnects < 3 {
                        eprintln!("subscriber: {e}");
                    }
                    sh.disconnects += 1;
                }
            });
            if c % 200 == 199 {
                tokio::task::yield_now().await;
            }
        }
        // Let every handshake and subscription finish.
        tokio::time::sleep(Duration::from_secs(2 + r.clients as u64 / 5000)).await;
    });
    let rss_idle = r.node_pid.and_then(rss);
    let start = now_ns() + 100_000_000;
    let from = start + (r.warmup * 1e9) as u64;
    let until = from + (r.duration * 1e9) as u64;
    {
        let mut sh = shared.borrow_mut();
        sh.from_ns = from;
        sh.until_ns = until;
    }
    let feed = {
        let r2 = r.clone();
        std::thread::spawn(move || feeder(&r2, start, (from, until), until))
    };
    let drain_until = Instant::now() + Duration::from_nanos(until.saturating_sub(now_ns())) + Duration::from_secs(2);
    local.block_on(&rt, async {
        while Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (per_symbol, feed_errors) = feed.join().map_err(|_| "the feeder panicked")??;
    let expected = per_symbol.iter().zip(&subscribers).map(|(t, s)| t * s).sum();
    let sh = shared.borrow();
    Ok(FanoutResult {
        hist: sh.hist.clone(),
        expected,
        delivered: sh.delivered,
        ticks: per_symbol.iter().sum(),
        feed_errors,
        disconnects: sh.disconnects,
        rss: rss_before.zip(rss_idle),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_spread_evenly() {
        let mut count = vec![0; 100];
        for c in 0..10_000 {
            let s = subscription(c, 10, 100);
            let mut d = s.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 10, "{s:?}");
            for x in s {
                count[x] += 1;
            }
        }
        assert!(count.iter().all(|&c| c == 1000), "{count:?}");
    }
}
