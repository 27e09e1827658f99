//! The cluster as the node uses it ([`crate::node::Cluster`]): requests for what another node
//! holds are sent to that node over persistent HTTP/1.1 connections from the hot core, and its
//! answer comes back as this node's, byte for byte in status and body and with the headers the
//! node sets (rate limits, `Retry-After`, `Server-Timing`, `Idempotent-Replay`, cache headers).
//!
//! Where a key's or an account's owner is comes from the registry thread (and is remembered on
//! the hot core for a while); where that node listens, and whether it is alive, from the
//! members the cluster thread last read. An owner that is not alive, refuses the connection or
//! does not answer in time gets `503 cluster.owner_unavailable`; a question Redis cannot answer
//! gets `503 cluster.unavailable`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::registry::{self, Question};
use super::Status;
use crate::engine::market::Quote;
use crate::engine::types::{AccountId, KeyId};
use crate::error::{ApiError, CLUSTER_UNAVAILABLE, MISDIRECTED, OWNER_UNAVAILABLE};
use crate::node::request::{Method, Request, Response, FORWARDED_HEADER, JSON};
use crate::node::{Cluster, Elsewhere, Simulator};
use crate::rate_limit::Admission;

/// How long a forwarded request may take, connection included.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a forwarded request looks whether its owner is still alive.
const OWNER_CHECK: Duration = Duration::from_millis(50);
/// How long the hot core remembers which node a key belongs to.
const REMEMBER: Duration = Duration::from_secs(10);
/// How long a pooled connection may sit idle and still be used (the other node closes idle ones
/// after `http.header_read_timeout_ms`, 10 s by default).
const IDLE: Duration = Duration::from_secs(4);
/// Idle connections kept per node.
const POOLED: usize = 64;
/// How long an admin answer waits for the registry before it goes out anyway.
const REGISTERED_WAIT: Duration = Duration::from_secs(2);
/// Largest answer taken from another node.
const MAX_ANSWER: usize = 16 << 20;

/// What any executor needs to reach the owner of a key or an account: the members as the
/// cluster thread last read them, and the registry.
#[derive(Clone)]
pub struct Handle {
    /// The members.
    pub status: Arc<Status>,
    /// The registry.
    pub registry: Arc<registry::Shared>,
}

/// Which of a member's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The public API.
    Http,
    /// The admin API.
    Admin,
    /// The WebSocket stream.
    Ws,
}

impl Handle {
    /// The address of `which` listener of the node that holds what `to` names, if it is alive.
    /// A remembered owner that is no longer alive is asked again: its accounts may have moved.
    pub async fn owner_listener(&self, to: Elsewhere, which: Listener) -> Result<String, ApiError<'static>> {
        self.owner_and_listener(to, which).await.map(|(_, addr)| addr)
    }

    /// The owner's id, and the address of its `which` listener.
    async fn owner_and_listener(&self, to: Elsewhere, which: Listener) -> Result<(Rc<str>, String), ApiError<'static>> {
        for _ in 0..2 {
            let owner = owner(to, &self.registry).await?;
            if *owner == *self.status.node_id() && to != Elsewhere::NewAccount {
                // The account is moving here: its history is on its way to this core.
                return Err(OWNER_UNAVAILABLE);
            }
            let member = self.status.members().into_iter().find(|m| *m.node_id == *owner);
            match member {
                Some(m) if m.alive => {
                    let l = m.listeners;
                    let addr = match which {
                        Listener::Http => l.http,
                        Listener::Admin => l.admin,
                        Listener::Ws => l.ws,
                    };
                    return Ok((owner, addr));
                }
                _ => self.forget(to),
            }
        }
        Err(OWNER_UNAVAILABLE)
    }

    /// Forgets where a key's owner is (it did not answer): the next request asks the registry.
    pub fn forget(&self, to: Elsewhere) {
        if let Elsewhere::Key(hash) = to {
            LOCAL.with(|l| l.borrow_mut().owners.remove(&hash));
        }
    }
}

/// The node's handle on its cluster.
pub struct Gateway {
    node_id: String,
    handle: Handle,
    quotes: Arc<super::market::Publisher>,
    replication: Arc<super::replicate::Shared>,
}

impl Gateway {
    /// A gateway over the cluster thread's view, the registry, the quote stream and the
    /// replication of the journal.
    pub fn new(
        handle: Handle,
        quotes: Arc<super::market::Publisher>,
        replication: Arc<super::replicate::Shared>,
    ) -> Gateway {
        Gateway { node_id: handle.status.node_id().to_string(), handle, quotes, replication }
    }
}

/// What the hot core keeps of the cluster: owners it was told of, and open connections.
#[derive(Default)]
struct Local {
    owners: HashMap<[u8; 32], (Rc<str>, Instant)>,
    idle: HashMap<String, Vec<(TcpStream, Instant)>>,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

impl Cluster for Gateway {
    fn forward(
        &self,
        to: Elsewhere,
        req: &Request<'_>,
    ) -> Pin<Box<dyn Future<Output = Result<Response, ApiError<'static>>>>> {
        let wire = encode(req, &self.node_id);
        let handle = self.handle.clone();
        Box::pin(async move { forward(to, wire, &handle).await })
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn account_id(&self) -> Option<AccountId> {
        self.handle.registry.account_id()
    }

    fn key_id(&self) -> Option<KeyId> {
        self.handle.registry.key_id()
    }

    fn simulator(&self) -> Simulator {
        let status = &self.handle.status;
        if !status.redis_up() {
            Simulator::Local
        } else if status.simulating() {
            Simulator::Cluster
        } else {
            Simulator::Idle
        }
    }

    fn publish_quotes(&self, quotes: Vec<Quote>) -> Pin<Box<dyn Future<Output = Result<(), ApiError<'static>>>>> {
        let published = self.quotes.publish(quotes);
        Box::pin(async move {
            let taken = match published {
                Some(rx) => rx.await == Ok(true),
                None => false,
            };
            if taken {
                Ok(())
            } else {
                Err(CLUSTER_UNAVAILABLE)
            }
        })
    }

    fn replicated_after(&self, after: u64) -> Pin<Box<dyn Future<Output = Option<u64>>>> {
        Box::pin(self.replication.replicated_after(after))
    }

    fn stale(&self) -> bool {
        self.handle.status.stale()
    }

    fn acting(&self) -> bool {
        self.handle.status.acting()
    }

    fn adopting(&self) -> bool {
        self.handle.status.adopting()
    }

    fn registered(&self, seq: u64) -> Pin<Box<dyn Future<Output = bool>>> {
        let (registry, status) = (self.handle.registry.clone(), self.handle.status.clone());
        Box::pin(async move {
            let deadline = Instant::now() + REGISTERED_WAIT;
            // The keys in the registry, and the account's owner in the replication.
            while registry.registered() < seq || status.replicated() < seq {
                if Instant::now() >= deadline {
                    return false;
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            true
        })
    }
}

/// The request as the other node will read it, marked as forwarded by this node.
fn encode(req: &Request<'_>, node_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + req.body.len());
    let method = match req.method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Other => "OPTIONS",
    };
    let _ = write!(out, "{method} {}", req.path);
    if !req.query.is_empty() {
        let _ = write!(out, "?{}", req.query);
    }
    let _ = write!(out, " HTTP/1.1\r\nHost: signalgate\r\n{FORWARDED_HEADER}: {node_id}\r\n");
    for (name, value) in [
        ("Authorization", req.authorization),
        ("X-API-Key", req.x_api_key),
        ("Content-Type", req.content_type),
        ("If-None-Match", req.if_none_match),
    ] {
        if let Some(v) = value {
            let _ = write!(out, "{name}: ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", req.body.len());
    out.extend_from_slice(req.body);
    out
}

/// Finds the node that holds what `to` names and has it answer `wire`. A node that answers that
/// it does not hold the key (421: the account moved since this node learned its owner) is
/// forgotten, and the owner asked again, once.
async fn forward(to: Elsewhere, wire: Vec<u8>, handle: &Handle) -> Result<Response, ApiError<'static>> {
    let which = match to {
        Elsewhere::Key(_) => Listener::Http,
        Elsewhere::Account(_) | Elsewhere::KeyId(_) | Elsewhere::NewAccount => Listener::Admin,
        Elsewhere::Everyone => return gather(&wire, handle).await,
    };
    for _ in 0..2 {
        let answer = forward_once(to, which, &wire, handle).await;
        match answer {
            Ok(a) if a.status == MISDIRECTED.status => handle.forget(to),
            Err(e) => {
                // The account may have moved.
                handle.forget(to);
                return Err(e);
            }
            answered => return answered,
        }
    }
    Err(OWNER_UNAVAILABLE)
}

async fn forward_once(
    to: Elsewhere,
    which: Listener,
    wire: &[u8],
    handle: &Handle,
) -> Result<Response, ApiError<'static>> {
    let (owner, addr) = handle.owner_and_listener(to, which).await?;
    let head = matches!(wire, [b'H', b'E', b'A', b'D', b' ', ..]);
    // An owner whose lease runs out while it holds the request (paused, cut off) is given up on
    // then: its accounts move, and it will act for none of them.
    let gone = async {
        loop {
            glommio::timer::sleep(OWNER_CHECK).await;
            if !handle.status.members().iter().any(|m| *m.node_id == *owner && m.alive) {
                return Err(OWNER_UNAVAILABLE);
            }
        }
    };
    futures_lite::future::or(exchange(&addr, wire, head), gone).await
}

/// Asks every member for the accounts it owns (`wire`: an admin list request) and answers with
/// all of them, by id. A member that is down holds accounts no one can list: 503.
async fn gather(wire: &[u8], handle: &Handle) -> Result<Response, ApiError<'static>> {
    let members = handle.status.members();
    if members.iter().any(|m| !m.alive) {
        return Err(OWNER_UNAVAILABLE);
    }
    let mut accounts = Vec::new();
    for m in members {
        let answer = exchange(&m.listeners.admin, wire, false).await?;
        if answer.status != 200 {
            return Ok(answer);
        }
        let mut listed: serde_json::Value = serde_json::from_slice(&answer.body).map_err(|_| OWNER_UNAVAILABLE)?;
        if let Some(a) = listed.get_mut("accounts").and_then(|a| a.as_array_mut()) {
            accounts.append(a);
        }
    }
    accounts.sort_by_key(|a| a["id"].as_u64());
    let mut resp = Response::with_capacity(0);
    resp.no_store = true;
    resp.authenticated = true;
    let _ = serde_json::to_writer(&mut resp.body, &serde_json::json!({ "accounts": accounts }));
    Ok(resp)
}

/// The node id that holds what `to` names: remembered on this core for a key, else asked of the
/// registry thread. An unknown key is answered here (401), as on a single node.
async fn owner(to: Elsewhere, registry: &registry::Shared) -> Result<Rc<str>, ApiError<'static>> {
    if let Elsewhere::Key(hash) = to {
        let known = LOCAL.with(|l| l.borrow().owners.get(&hash).filter(|(_, at)| at.elapsed() < REMEMBER).cloned());
        if let Some((owner, _)) = known {
            return Ok(owner);
        }
    }
    let question = match to {
        Elsewhere::Key(hash) => Question::Key(hash),
        Elsewhere::Account(a) => Question::Account(a),
        Elsewhere::KeyId(k) => Question::KeyId(k),
        Elsewhere::NewAccount => Question::NewAccount,
        Elsewhere::Everyone => return Err(OWNER_UNAVAILABLE),
    };
    let asked = registry.ask(question).ok_or(CLUSTER_UNAVAILABLE)?;
    let answer = asked.await.map_err(|_| CLUSTER_UNAVAILABLE)?.map_err(|()| CLUSTER_UNAVAILABLE)?;
    let Some(owner) = answer else {
        return Err(match to {
            Elsewhere::Key(_) => crate::error::INVALID_KEY,
            Elsewhere::Account(_) => {
                ApiError::reject(crate::engine::risk::Reject::plain(crate::engine::risk::RejectCode::AccountNotFound))
            }
            Elsewhere::KeyId(_) => ApiError::new(crate::error::Code::KeyNotFound, "no such key"),
            Elsewhere::NewAccount | Elsewhere::Everyone => CLUSTER_UNAVAILABLE,
        });
    };
    let owner: Rc<str> = owner.into();
    if let Elsewhere::Key(hash) = to {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if l.owners.len() >= 100_000 {
                l.owners.clear();
            }
            l.owners.insert(hash, (owner.clone(), Instant::now()));
        });
    }
    Ok(owner)
}

/// Sends `wire` to `addr` and reads the answer, within [`FORWARD_TIMEOUT`].
async fn exchange(addr: &str, wire: &[u8], head: bool) -> Result<Response, ApiError<'static>> {
    let timed_out = async {
        glommio::timer::sleep(FORWARD_TIMEOUT).await;
        Err(OWNER_UNAVAILABLE)
    };
    futures_lite::future::or(exchange_now(addr, wire, head), timed_out).await
}

/// Sends `wire` to `addr` on a pooled connection (a fresh one when none is idle, or when a
/// pooled one turns out closed before anything was answered) and reads the answer.
async fn exchange_now(addr: &str, wire: &[u8], head: bool) -> Result<Response, ApiError<'static>> {
    let pooled = LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let idle = l.idle.get_mut(addr)?;
        while let Some((s, at)) = idle.pop() {
            if at.elapsed() < IDLE {
                return Some(s);
            }
        }
        None
    });
    if let Some(mut s) = pooled {
        match round_trip(&mut s, wire, head).await {
            Ok((resp, keep)) => {
                if keep {
                    give_back(addr, s);
                }
                return Ok(resp);
            }
            // Closed by the other node while idle: nothing of the request was taken.
            Err(Trip::Closed) => {}
            Err(Trip::Broken) => return Err(OWNER_UNAVAILABLE),
        }
    }
    let mut s = TcpStream::connect(addr).await.map_err(|_| OWNER_UNAVAILABLE)?;
    let _ = s.set_nodelay(true);
    match round_trip(&mut s, wire, head).await {
        Ok((resp, keep)) => {
            if keep {
                give_back(addr, s);
            }
            Ok(resp)
        }
        Err(_) => Err(OWNER_UNAVAILABLE),
    }
}

fn give_back(addr: &str, s: TcpStream) {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let idle = l.idle.entry(addr.to_string()).or_default();
        if idle.len() < POOLED {
            idle.push((s, Instant::now()));
        }
    });
}

/// How a round trip failed.
enum Trip {
    /// The connection was closed before a byte of the answer came (a pooled connection the
    /// other node had let go).
    Closed,
    /// Anything else.
    Broken,
}

/// Writes the request and reads one answer; the answer, and whether the connection may be used
/// again.
async fn round_trip(s: &mut TcpStream, wire: &[u8], head: bool) -> Result<(Response, bool), Trip> {
    if s.write_all(wire).await.is_err() {
        return Err(Trip::Closed);
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.map_err(|_| if buf.is_empty() { Trip::Closed } else { Trip::Broken })?;
        if n == 0 {
            return Err(if buf.is_empty() { Trip::Closed } else { Trip::Broken });
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = parsed.parse(&buf) else {
            if buf.len() > 64 * 1024 {
                return Err(Trip::Broken);
            }
            continue;
        };
        let (resp, body_len, keep) = relay(&parsed);
        let body_len = if head { 0 } else { body_len };
        if body_len > MAX_ANSWER {
            return Err(Trip::Broken);
        }
        while buf.len() < head_len + body_len {
            let n = s.read(&mut chunk).await.map_err(|_| Trip::Broken)?;
            if n == 0 {
                return Err(Trip::Broken);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let mut resp = resp;
        resp.body.extend_from_slice(&buf[head_len..head_len + body_len]);
        return Ok((resp, keep && buf.len() == head_len + body_len));
    }
}

/// The other node's answer as this node's `Response`, its body length, and whether its
/// connection stays open.
fn relay(r: &httparse::Response<'_, '_>) -> (Response, usize, bool) {
    let mut resp = Response::with_capacity(0);
    resp.status = r.code.unwrap_or(502);
    resp.content_type = JSON;
    let (mut len, mut keep, mut limit, mut remaining, mut reset) = (0, true, None, None, None);
    for h in r.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        let num = || v.parse::<u32>().ok();
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" => len = v.parse().unwrap_or(0),
            "content-type" if v.starts_with("text/plain") => resp.content_type = "text/plain; version=0.0.4",
            "retry-after" => resp.retry_after = num(),
            "x-ratelimit-limit" => limit = num(),
            "x-ratelimit-remaining" => remaining = num(),
            "x-ratelimit-reset" => reset = num(),
            "server-timing" => resp.signal_to_order_ns = server_timing_ns(v),
            "idempotent-replay" => resp.idempotent_replay = v == "true",
            "cache-control" => match v {
                "no-store" => resp.no_store = true,
                "public, max-age=86400" => resp.cache_control = Some("public, max-age=86400"),
                "public, max-age=5" => resp.cache_control = Some("public, max-age=5"),
                _ => resp.no_store = true,
            },
            "etag" => resp.etag = Some(v.to_string()),
            "connection" if v.eq_ignore_ascii_case("close") => keep = false,
            _ => {}
        }
    }
    if let (Some(limit), Some(remaining), Some(reset)) = (limit, remaining, reset) {
        let allowed = resp.status != 429;
        let retry_after_secs = if allowed { 0 } else { resp.retry_after.unwrap_or(0) };
        resp.rate = Some(Admission { allowed, limit, remaining, reset_secs: reset, retry_after_secs });
    }
    // A key the owner took is a trader's: the connection here counts as one.
    resp.authenticated = !matches!(resp.status, 401 | 403);
    (resp, len, keep)
}

/// `s2o;dur=0.004` (milliseconds) as nanoseconds.
fn server_timing_ns(v: &str) -> Option<u64> {
    let ms = v.strip_prefix("s2o;dur=")?;
    let (whole, frac) = ms.split_once('.').unwrap_or((ms, "0"));
    let micros = whole.parse::<u64>().ok()? * 1_000 + format!("{frac:0<3}")[..3].parse::<u64>().ok()?;
    Some(micros * 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_reads_back_what_the_node_writes() {
        assert_eq!(server_timing_ns("s2o;dur=0.004"), Some(4_000));
        assert_eq!(server_timing_ns("s2o;dur=12.345"), Some(12_345_000));
        assert_eq!(server_timing_ns("s2o;dur=1"), Some(1_000_000));
        assert_eq!(server_timing_ns("other"), None);
    }

    #[test]
    fn a_forwarded_request_carries_what_the_api_reads_and_the_mark() {
        let mut r = Request::new(Method::Post, "/v1/signals?x=1");
        r.authorization = Some(b"Bearer k");
        r.content_type = Some(b"application/json");
        r.body = b"{}";
        let text = String::from_utf8(encode(&r, "a")).unwrap();
        assert_eq!(
            text,
            "POST /v1/signals?x=1 HTTP/1.1\r\nHost: signalgate\r\nx-signalgate-forwarded: a\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }
}
