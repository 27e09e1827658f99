//! WebSocket watchers and the quote feeder, shared by `ws-fanout`, `mixed` and `soak`.
//!
//! Watchers are many subscribers on one thread (tokio, non-blocking), each on some `quotes:`
//! channels and optionally its account's `account` channel. They speak the node's binary or JSON
//! stream, or (for `ws-fanout --peer`) the protocol of one of the Node.js broadcast servers in
//! `bench/peers`: the same subscriptions, the same feed and the same clock for all. The feeder
//! sends quotes open-loop through `POST /v1/market/ticks`, each stamped with its intended send
//! time, so a quote's latency is its arrival minus that stamp: a feeder or a server that falls
//! behind shows up as latency, not as a quietly lower rate. An account message's latency is its
//! arrival minus the node's time on the event (the moment the hot core made it), which covers the
//! journal write and the fan-out. The node's frames are decoded with the crate's protocol module.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use signalgate::engine::event::EventKind;
use signalgate::ws::frame::client_frame;
use signalgate::ws::protocol::{decode_frame, encode_client, ClientMsg, ServerBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stats::latency_histogram;

/// Nanoseconds since the Unix epoch: the clock of quote stamps and of the node's events.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

const MASK: [u8; 4] = [0x5a, 0x17, 0x3c, 0x81];

/// The symbols subscriber `c` takes: spread so that each symbol has the same number of them.
pub fn subscription(c: usize, per_client: usize, n: usize) -> Vec<usize> {
    (0..per_client.min(n)).map(|j| (c + j * n.div_ceil(per_client.max(1))) % n).collect()
}

/// One watcher.
pub struct Watcher {
    /// The key it connects with (its account is the one `account` streams).
    pub key: String,
    /// Indexes into the symbol list of the quotes it takes.
    pub quotes: Vec<usize>,
    /// Whether it takes its account's messages.
    pub account: bool,
    /// Watchers of one account share a group: they should all get the same account messages.
    pub group: usize,
}

/// What a watcher speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// The node's binary stream (`/v1/ws`).
    Binary,
    /// The node's JSON stream (`/v1/ws?format=json`).
    Json,
    /// `bench/peers/ws-server.js`: JSON text frames, one quote per message.
    Ws,
    /// `bench/peers/socketio-server.js`: Socket.IO 4 (Engine.IO 4) over a WebSocket.
    SocketIo,
}

impl Proto {
    fn path(self) -> &'static str {
        match self {
            Proto::Binary | Proto::Ws => "/v1/ws",
            Proto::Json => "/v1/ws?format=json",
            Proto::SocketIo => "/socket.io/?EIO=4&transport=websocket",
        }
    }
}

/// Handshakes in progress at once: a flood of connections beyond this would only make the
/// server's handshake queue (and the node's bound on unauthenticated connections) the subject.
const CONNECTING: usize = 256;

struct Shared {
    /// Quote latency (µs) from the intended send time.
    quotes: Histogram<u64>,
    /// Account message latency (µs) from the node's event time.
    account: Histogram<u64>,
    /// Messages stamped at or after this (ns) and before `until_ns` are measured.
    from_ns: u64,
    until_ns: u64,
    quotes_delivered: u64,
    /// Measured account messages, per watcher.
    account_msgs: Vec<u64>,
    subscribed: usize,
    connecting: usize,
    disconnects: u64,
    first_error: Option<String>,
}

/// Watchers connected to a node, driven by [`Watchers::run_until`].
pub struct Watchers {
    rt: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
    shared: Rc<RefCell<Shared>>,
    ws: SocketAddr,
    proto: Proto,
    symbols: Vec<String>,
    groups: Vec<usize>,
    /// Subscribers per symbol.
    per_symbol: Vec<u64>,
}

/// What the watchers received in the measured window.
pub struct WatchResult {
    /// Quote latency (µs).
    pub quotes: Histogram<u64>,
    /// Quotes received.
    pub quotes_delivered: u64,
    /// Account message latency (µs).
    pub account: Histogram<u64>,
    /// Account messages received.
    pub account_delivered: u64,
    /// Account messages that should have arrived: for each watcher, the most any watcher of its
    /// account received.
    pub account_expected: u64,
    /// Watchers whose connection ended.
    pub disconnects: u64,
}

impl Watchers {
    /// Connects every watcher and waits until each has its subscriptions confirmed.
    pub fn connect(
        ws: SocketAddr,
        proto: Proto,
        symbols: &[String],
        watchers: Vec<Watcher>,
    ) -> Result<Watchers, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let shared = Rc::new(RefCell::new(Shared {
            quotes: latency_histogram(),
            account: latency_histogram(),
            from_ns: u64::MAX,
            until_ns: u64::MAX,
            quotes_delivered: 0,
            account_msgs: Vec::new(),
            subscribed: 0,
            connecting: 0,
            disconnects: 0,
            first_error: None,
        }));
        let mut w = Watchers {
            rt,
            local: tokio::task::LocalSet::new(),
            shared,
            ws,
            proto,
            symbols: symbols.to_vec(),
            groups: Vec::new(),
            per_symbol: vec![0; symbols.len()],
        };
        w.add(watchers)?;
        Ok(w)
    }

    /// Connects more watchers and waits until each has its subscriptions confirmed.
    pub fn add(&mut self, watchers: Vec<Watcher>) -> Result<(), String> {
        let (first, n) = (self.groups.len(), watchers.len());
        let total = first + n;
        self.shared.borrow_mut().account_msgs.resize(total, 0);
        self.groups.extend(watchers.iter().map(|w| w.group));
        let deadline = Instant::now() + Duration::from_secs(10 + n as u64 / 500);
        let (ws, proto, shared) = (self.ws, self.proto, &self.shared);
        let (symbols, per_symbol) = (&self.symbols, &mut self.per_symbol);
        self.local.block_on(&self.rt, async {
            for (i, w) in watchers.into_iter().enumerate() {
                let mut channels: Vec<String> = w.quotes.iter().map(|&s| format!("quotes:{}", symbols[s])).collect();
                for &s in &w.quotes {
                    per_symbol[s] += 1;
                }
                if w.account {
                    channels.push("account".into());
                }
                while shared.borrow().connecting >= CONNECTING && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                shared.borrow_mut().connecting += 1;
                let shared = shared.clone();
                tokio::task::spawn_local(async move {
                    if let Err(e) = watch(ws, proto, &w.key, channels, first + i, &shared).await {
                        let mut sh = shared.borrow_mut();
                        sh.first_error.get_or_insert(e);
                        sh.disconnects += 1;
                    }
                });
            }
            let settled = || {
                let sh = shared.borrow();
                sh.subscribed + sh.disconnects as usize >= total
            };
            while !settled() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let sh = self.shared.borrow();
        if sh.subscribed < total {
            let why = sh.first_error.clone().unwrap_or_else(|| "no subscription confirmed in time".into());
            return Err(format!("{} of {total} watchers did not subscribe: {why}", total - sh.subscribed));
        }
        Ok(())
    }

    /// Subscribers of each symbol.
    pub fn per_symbol(&self) -> &[u64] {
        &self.per_symbol
    }

    /// Measures messages stamped in `[from_ns, until_ns)`.
    pub fn measure(&self, from_ns: u64, until_ns: u64) {
        let mut sh = self.shared.borrow_mut();
        sh.from_ns = from_ns;
        sh.until_ns = until_ns;
    }

    /// Receives until `deadline`; with `progress`, a line on stderr every second with what the
    /// measured window has received so far.
    pub fn run_until(&self, deadline: Instant, progress: bool) {
        use std::io::Write;
        let origin = Instant::now();
        let mut shown = 0;
        self.local.block_on(&self.rt, async {
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let secs = origin.elapsed().as_secs();
                if progress && secs > shown {
                    shown = secs;
                    let sh = self.shared.borrow();
                    let account: u64 = sh.account_msgs.iter().sum();
                    eprint!(
                        "\r{secs:>5} s  {:>10} quotes  {:>10} account messages  {:>6} disconnects   ",
                        sh.quotes_delivered, account, sh.disconnects
                    );
                    let _ = std::io::stderr().flush();
                }
            }
        });
        if progress {
            eprintln!();
        }
    }

    /// What was measured.
    pub fn result(&self) -> WatchResult {
        let sh = self.shared.borrow();
        let mut most = std::collections::HashMap::<usize, u64>::new();
        for (g, n) in self.groups.iter().zip(&sh.account_msgs) {
            let m = most.entry(*g).or_default();
            *m = (*m).max(*n);
        }
        WatchResult {
            quotes: sh.quotes.clone(),
            quotes_delivered: sh.quotes_delivered,
            account: sh.account.clone(),
            account_delivered: sh.account_msgs.iter().sum(),
            account_expected: self.groups.iter().map(|g| most[g]).sum(),
            disconnects: sh.disconnects,
        }
    }
}

/// Takes a watcher off the count of handshakes in progress when its handshake ends, however.
struct Handshake<'a>(&'a Rc<RefCell<Shared>>, bool);

impl Handshake<'_> {
    fn done(&mut self) {
        if !std::mem::replace(&mut self.1, true) {
            self.0.borrow_mut().connecting -= 1;
        }
    }
}

impl Drop for Handshake<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// A text message of the JSON stream, of the `ws` peer, or inside a Socket.IO event: only what
/// the watcher looks at.
#[derive(serde::Deserialize)]
struct TextMsg<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: &'a str,
    #[serde(default)]
    ts: u64,
    #[serde(default, borrow)]
    event: Option<TextEvent<'a>>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(serde::Deserialize)]
struct TextEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    data: Option<QuoteData>,
}

#[derive(serde::Deserialize)]
struct QuoteData {
    #[serde(default)]
    ts: u64,
}

/// What one server message is to a watcher.
enum Seen {
    /// A quote stamped with its intended send time.
    Quote(u64),
    /// An account message and the node's time on its event.
    Account(u64),
    Subscribed,
    Other,
}

impl Seen {
    fn of_binary(m: signalgate::ws::protocol::ServerMsg) -> Result<Seen, String> {
        Ok(match m.body {
            ServerBody::Event { event: EventKind::Quote(q) } => Seen::Quote(q.ts),
            ServerBody::Event { .. } | ServerBody::Position { .. } => Seen::Account(m.ts),
            ServerBody::Subscribed { .. } => Seen::Subscribed,
            ServerBody::Error { code, message } => return Err(format!("{code}: {message}")),
            _ => Seen::Other,
        })
    }

    fn of_text(m: TextMsg<'_>) -> Result<Seen, String> {
        Ok(match (m.kind, m.event) {
            // The `ws` peer's quote.
            ("quote", _) => Seen::Quote(m.ts),
            ("event", Some(TextEvent { kind: "quote", data })) => Seen::Quote(data.map_or(0, |d| d.ts)),
            ("event" | "position", _) => Seen::Account(m.ts),
            ("subscribed", _) => Seen::Subscribed,
            ("error", _) => {
                return Err(format!("{}: {}", m.code.unwrap_or_default(), m.message.unwrap_or_default()));
            }
            _ => Seen::Other,
        })
    }
}

/// One watcher's connection: upgrade, subscribe, then read until the connection ends.
async fn watch(
    ws: SocketAddr,
    proto: Proto,
    key: &str,
    channels: Vec<String>,
    id: usize,
    shared: &Rc<RefCell<Shared>>,
) -> Result<(), String> {
    let mut handshake = Handshake(shared, false);
    let mut s = tokio::net::TcpStream::connect(ws).await.map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {ws}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-API-Key: {key}\r\n\r\n",
        proto.path()
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
    handshake.done();
    if !buf.starts_with(b"HTTP/1.1 101") {
        return Err(String::from_utf8_lossy(&buf[..head]).trim().to_string());
    }
    buf.drain(..head);
    let text_subscribe = || serde_json::json!({"type": "subscribe", "channels": &channels}).to_string();
    match proto {
        Proto::Binary => {
            let sub = encode_client(&ClientMsg::Subscribe { channels: channels.clone(), resume_from: None });
            s.write_all(&client_frame(2, &sub, MASK)).await.map_err(|e| e.to_string())?;
        }
        Proto::Json | Proto::Ws => {
            s.write_all(&client_frame(1, text_subscribe().as_bytes(), MASK)).await.map_err(|e| e.to_string())?;
        }
        // After the server's open packet: connect to the main namespace, then subscribe once
        // it is connected.
        Proto::SocketIo => {}
    }
    let mut out = Vec::new();
    let mut seen = Vec::new();
    loop {
        // Whole frames at the start of `buf`.
        let mut used = 0;
        loop {
            let f = &buf[used..];
            if f.len() < 2 {
                break;
            }
            let (len, hdr) = match f[1] & 0x7f {
                126 if f.len() >= 4 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
                127 if f.len() >= 10 => (u64::from_be_bytes(f[2..10].try_into().unwrap_or_default()) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if f.len() < hdr + len {
                break;
            }
            let (op, payload) = (f[0] & 0x0f, &f[hdr..hdr + len]);
            let arrived = now_ns();
            match (op, proto) {
                (2, Proto::Binary) => {
                    for m in decode_frame(payload)? {
                        seen.push(Seen::of_binary(m)?);
                    }
                }
                (1, Proto::Json) => {
                    let msgs: Vec<TextMsg<'_>> = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
                    for m in msgs {
                        seen.push(Seen::of_text(m)?);
                    }
                }
                (1, Proto::Ws) => {
                    seen.push(Seen::of_text(serde_json::from_slice(payload).map_err(|e| e.to_string())?)?);
                }
                (1, Proto::SocketIo) => match payload {
                    // Engine.IO ping: pong.
                    b"2" => out.extend_from_slice(&client_frame(1, b"3", MASK)),
                    [b'0', ..] => out.extend_from_slice(&client_frame(1, b"40", MASK)),
                    [b'4', b'0', ..] => {
                        let sub = format!("42[\"subscribe\",{}]", serde_json::to_string(&channels).unwrap_or_default());
                        out.extend_from_slice(&client_frame(1, sub.as_bytes(), MASK));
                    }
                    [b'4', b'2', event @ ..] if event.starts_with(b"[\"quote\",") => {
                        let (_, m): (&str, TextMsg<'_>) = serde_json::from_slice(event).map_err(|e| e.to_string())?;
                        seen.push(Seen::Quote(m.ts));
                    }
                    [b'4', b'2', event @ ..] if event.starts_with(b"[\"subscribed\"") => seen.push(Seen::Subscribed),
                    _ => {}
                },
                (9, _) => out.extend_from_slice(&client_frame(0xa, payload, MASK)),
                (8, _) => {
                    let code = payload.get(..2).map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                    return Err(format!("closed by the server: {code} {reason}"));
                }
                (1 | 2, _) => return Err(format!("unexpected frame (opcode {op}) for {proto:?}")),
                _ => {}
            }
            if !seen.is_empty() {
                let mut sh = shared.borrow_mut();
                let window = sh.from_ns..sh.until_ns;
                let us = |ts: u64| arrived.saturating_sub(ts).div_ceil(1000).max(1);
                for m in seen.drain(..) {
                    match m {
                        Seen::Quote(ts) if window.contains(&ts) => {
                            sh.quotes_delivered += 1;
                            let _ = sh.quotes.record(us(ts));
                        }
                        Seen::Account(ts) if window.contains(&ts) => {
                            sh.account_msgs[id] += 1;
                            let _ = sh.account.record(us(ts));
                        }
                        Seen::Subscribed => sh.subscribed += 1,
                        _ => {}
                    }
                }
            }
            used += hdr + len;
        }
        buf.drain(..used);
        if !out.is_empty() {
            s.write_all(&out).await.map_err(|e| e.to_string())?;
            out.clear();
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The open-loop quote feeder.
#[derive(Clone)]
pub struct Feeder {
    /// The node's public API.
    pub http: SocketAddr,
    /// A key with the feed role.
    pub key: String,
    /// Symbols, quoted in turn.
    pub symbols: Vec<String>,
    /// Quotes per second in all.
    pub rate: f64,
}

/// What the feeder did: quotes sent per symbol within the measured window, and failed requests.
pub struct Fed {
    /// Per symbol, quotes accepted whose stamp is in the window.
    pub per_symbol: Vec<u64>,
    /// Requests that failed or were refused.
    pub errors: u64,
}

impl Feeder {
    /// Quote `k` is due at `start_ns + k / rate`, stamped with that time, one request each on a
    /// keep-alive connection, until `end_ns`. Runs on its own thread.
    pub fn spawn(self, start_ns: u64, window: (u64, u64)) -> std::thread::JoinHandle<Result<Fed, String>> {
        std::thread::spawn(move || self.feed(start_ns, window))
    }

    fn feed(&self, start_ns: u64, (from, until): (u64, u64)) -> Result<Fed, String> {
        let mut conn = None;
        let mut fed = Fed { per_symbol: vec![0; self.symbols.len()], errors: 0 };
        for k in 0u64.. {
            let due = start_ns + (k as f64 * 1e9 / self.rate) as u64;
            if due >= until {
                break;
            }
            let now = now_ns();
            if due > now {
                std::thread::sleep(Duration::from_nanos(due - now));
            }
            let sym = (k as usize) % self.symbols.len();
            let mid = 1000 + (k % 50) as i64;
            let body = format!(
                r#"{{"ticks":[{{"symbol":"{}","bid":"{}.00","ask":"{}.10","ts":{due}}}]}}"#,
                self.symbols[sym], mid, mid
            );
            let req = format!(
                "POST /v1/market/ticks HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                self.key,
                body.len()
            );
            match self.send(&mut conn, req.as_bytes()) {
                Ok(status) if (200..300).contains(&status) => {
                    if due >= from {
                        fed.per_symbol[sym] += 1;
                    }
                }
                Ok(_) => fed.errors += 1,
                Err(_) => {
                    // Counted, and the next quote opens a new connection.
                    fed.errors += 1;
                    conn = None;
                }
            }
        }
        Ok(fed)
    }

    /// One request on the keep-alive connection (opened if needed); the answer's status.
    fn send(&self, conn: &mut Option<std::net::TcpStream>, req: &[u8]) -> std::io::Result<u16> {
        use std::io::{Error, Read, Write};
        let c = match conn {
            Some(c) => c,
            None => {
                let c = std::net::TcpStream::connect_timeout(&self.http, Duration::from_secs(1))?;
                c.set_nodelay(true)?;
                c.set_read_timeout(Some(Duration::from_secs(5)))?;
                conn.insert(c)
            }
        };
        c.write_all(req)?;
        let mut answer = Vec::with_capacity(512);
        let mut chunk = [0u8; 4096];
        loop {
            let n = c.read(&mut chunk)?;
            if n == 0 {
                return Err(Error::other("closed by the node"));
            }
            answer.extend_from_slice(&chunk[..n]);
            let Some(head) = answer.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let text = String::from_utf8_lossy(&answer[..head]);
            let length = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if answer.len() >= head + 4 + length {
                return text.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| Error::other("no status"));
            }
        }
    }
}

/// Resident memory of a process (bytes), from `/proc/PID/status`.
pub fn rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// Resident anonymous memory of a process (bytes): its heap, without the file pages it maps
/// (the node's journal segments are resident as they are written and read).
pub fn rss_anon(pid: u32) -> Option<u64> {
    status_bytes(pid, "RssAnon:")
}

fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Open file descriptors of a process, from `/proc/PID/fd`.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quotes as each server sends them: the intended send time is what the watcher measures from.
    #[test]
    fn quotes_are_read_in_every_protocol() {
        use signalgate::engine::market::Quote;
        use signalgate::engine::types::SymbolId;
        use signalgate::ws::protocol::ServerMsg;
        let q =
            Quote { symbol: SymbolId(3), bid: 100_000, ask: 100_010, bid_size: 0, ask_size: 0, ts: 1_700_000_000_123 };
        let msg = ServerMsg { seq: 9, ts: 1_700_000_000_999, body: ServerBody::Event { event: EventKind::Quote(q) } };
        let quote = |s: Seen| match s {
            Seen::Quote(ts) => ts,
            _ => panic!("not a quote"),
        };
        // The node's binary and JSON modes.
        assert_eq!(quote(Seen::of_binary(msg.clone()).unwrap()), 1_700_000_000_123);
        let mut json = b"[".to_vec();
        signalgate::ws::protocol::encode_json(&mut json, &msg);
        json.push(b']');
        let msgs: Vec<TextMsg<'_>> = serde_json::from_slice(&json).unwrap();
        assert_eq!(msgs.into_iter().map(|m| quote(Seen::of_text(m).unwrap())).collect::<Vec<_>>(), [1_700_000_000_123]);
        // The `ws` peer's quote, and the same inside a Socket.IO event.
        let peer = br#"{"type":"quote","symbol":"S03-USD","bid":"1000.00","ask":"1000.10","ts":1700000000123}"#;
        assert_eq!(quote(Seen::of_text(serde_json::from_slice(peer).unwrap()).unwrap()), 1_700_000_000_123);
        let event = [&b"[\"quote\","[..], peer, b"]"].concat();
        let (_, m): (&str, TextMsg<'_>) = serde_json::from_slice(&event).unwrap();
        assert_eq!(quote(Seen::of_text(m).unwrap()), 1_700_000_000_123);
        // Not quotes.
        let subscribed: TextMsg<'_> =
            serde_json::from_slice(br#"{"type":"subscribed","channels":["quotes:S03-USD"]}"#).unwrap();
        assert!(matches!(Seen::of_text(subscribed), Ok(Seen::Subscribed)));
        let error: TextMsg<'_> =
            serde_json::from_slice(br#"{"type":"error","code":"ws.unknown_channel","message":"no"}"#).unwrap();
        assert!(Seen::of_text(error).is_err());
    }

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

    #[test]
    fn memory_and_descriptors_of_a_process() {
        use std::process::{Child, Command, Stdio};
        // `sleep`, after the shell opened `redirects`; both children inherit the same descriptors.
        let sleeper = |redirects: &str| -> Child {
            let c = Command::new("sh")
                .args(["-c", &format!("{redirects} exec sleep 30")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let comm = format!("/proc/{}/comm", c.id());
            while std::fs::read_to_string(&comm).unwrap() != "sleep\n" {
                std::thread::sleep(Duration::from_millis(5));
            }
            c
        };
        let (mut plain, mut more) = (sleeper(""), sleeper("exec 7</dev/null 8</dev/null 9</dev/null;"));
        let (fds, fds_more, mem) = (open_fds(plain.id()), open_fds(more.id()), rss(plain.id()));
        for c in [&mut plain, &mut more] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert!(fds.unwrap() >= 3, "stdin, stdout and stderr at least");
        assert_eq!(fds_more, fds.map(|n| n + 3));
        assert!(mem.unwrap() > 0);
        assert_eq!(rss(plain.id()), None, "gone");
    }
}
