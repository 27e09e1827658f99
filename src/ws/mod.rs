//! The WebSocket stream (`GET /v1/ws`) on the fan-out core: its own listener (`[ws] addr`), the
//! feed that brings it the hot core's events, and the link that carries `signal` messages to
//! the hot core and their answers back. See `docs/ws.md` for the protocol.

pub mod client;
pub mod frame;
pub mod hub;
pub mod protocol;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use glommio::net::{AcceptedTcpStream, TcpStream};

use crate::config::Config;
use crate::engine::types::KeyId;
use crate::error::{ApiError, Code};
use crate::node::request::{Method, Request, Response};
use crate::node::{Node, Routes};
use crate::shutdown::Shutdown;
use frame::{HttpRefusal, Kind};
use hub::{Conn, Hub};
use protocol::{close, ClientMsg, ServerBody};

/// What the fan-out executors share: the stream's counters (read by `/metrics` on the hot core)
/// and the node-wide connection places. The places are taken and given back only when a
/// connection opens, authenticates or closes, never per message.
///
/// Only authenticated connections count against `ws.max_connections`: unauthenticated ones (in
/// their handshake, or waiting for their `auth` message) are bounded by each executor on its
/// own, which closes the oldest of them to make room for a new one (`Hub::admit_anonymous`), so
/// they can never keep out a trader with a key.
#[derive(Debug, Default)]
pub struct WsStats {
    /// Connections open on the whole node (those still in their handshake included).
    pub connections: AtomicU64,
    /// Authenticated connections on the whole node, against `ws.max_connections`.
    pub authenticated: AtomicU64,
    /// Unauthenticated connections closed to make room for new ones.
    pub evicted: AtomicU64,
    /// Connections each fan-out executor serves, in `topology.fanout` order.
    pub per_executor: Vec<AtomicU64>,
    /// Authenticated connections of each key, against its tier's cap.
    per_key: Mutex<HashMap<KeyId, u32>>,
    /// The next connection id (unique on the node).
    next_conn: AtomicU64,
    /// Messages sent.
    pub messages: AtomicU64,
    /// Frames sent.
    pub frames: AtomicU64,
    /// Connections closed as slow consumers.
    pub slow_consumers: AtomicU64,
    /// Failed authentications.
    pub auth_failures: AtomicU64,
    /// Resumes served.
    pub resumes: AtomicU64,
    /// Resumes refused (`resume_failed`).
    pub resume_failed: AtomicU64,
    /// Signals received over WebSocket.
    pub signals: AtomicU64,
}

impl WsStats {
    /// Counters for `executors` fan-out executors.
    pub fn new(executors: usize) -> WsStats {
        WsStats { per_executor: (0..executors).map(|_| AtomicU64::new(0)).collect(), ..WsStats::default() }
    }

    /// Places a new connection with the executor that serves the fewest.
    pub fn place(self: &Arc<Self>) -> Place {
        self.connections.fetch_add(1, Ordering::AcqRel);
        let executor = (0..self.per_executor.len())
            .min_by_key(|&i| self.per_executor[i].load(Ordering::Acquire))
            .unwrap_or_default();
        if let Some(n) = self.per_executor.get(executor) {
            n.fetch_add(1, Ordering::AcqRel);
        }
        Place { stats: self.clone(), executor }
    }

    /// Counts one more authenticated connection unless the node already holds `max`.
    pub fn take_stream(&self, max: usize) -> bool {
        self.authenticated
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max as u64).then_some(n + 1))
            .is_ok()
    }

    /// Gives back a place taken with [`WsStats::take_stream`].
    pub fn give_stream(&self) {
        self.authenticated.fetch_sub(1, Ordering::AcqRel);
    }

    /// A new connection id.
    pub fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Connections `key` holds.
    pub fn key_connections(&self, key: KeyId) -> u32 {
        self.per_key.lock().map_or(0, |m| m.get(&key).copied().unwrap_or(0))
    }

    /// Counts one more connection for `key` unless it already holds `cap`.
    pub fn take_key_place(&self, key: KeyId, cap: u32) -> bool {
        let Ok(mut m) = self.per_key.lock() else { return false };
        let n = m.entry(key).or_insert(0);
        if *n >= cap {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a place taken with [`WsStats::take_key_place`].
    pub fn give_key_place(&self, key: KeyId) {
        if let Ok(mut m) = self.per_key.lock() {
            if let Some(n) = m.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&key);
                }
            }
        }
    }

    /// Appends the stream's series in Prometheus text format.
    pub fn render_metrics(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let lines: [(&str, &str, &str, &AtomicU64); 10] = [
            ("ws_connections", "gauge", "Open WebSocket connections.", &self.connections),
            (
                "ws_authenticated_connections",
                "gauge",
                "Authenticated WebSocket connections (against ws.max_connections).",
                &self.authenticated,
            ),
            ("ws_evicted_total", "counter", "Unauthenticated connections closed to make room (1013).", &self.evicted),
            ("ws_messages_total", "counter", "Messages sent to WebSocket clients.", &self.messages),
            ("ws_frames_total", "counter", "WebSocket frames with messages sent.", &self.frames),
            ("ws_slow_consumers_total", "counter", "Connections closed for not reading (4008).", &self.slow_consumers),
            ("ws_auth_failures_total", "counter", "Refused WebSocket authentications.", &self.auth_failures),
            ("ws_resumes_total", "counter", "Resumes served.", &self.resumes),
            ("ws_resume_failures_total", "counter", "Resumes refused with resume_failed.", &self.resume_failed),
            ("ws_signals_total", "counter", "Signals received over WebSocket.", &self.signals),
        ];
        for (name, kind, help, v) in lines {
            let _ = writeln!(
                out,
                "# HELP signalgate_{name} {help}\n# TYPE signalgate_{name} {kind}\nsignalgate_{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP signalgate_ws_executor_connections WebSocket connections each fan-out executor serves.\n\
             # TYPE signalgate_ws_executor_connections gauge"
        );
        for (i, v) in self.per_executor.iter().enumerate() {
            let _ =
                writeln!(out, "signalgate_ws_executor_connections{{executor=\"{i}\"}} {}", v.load(Ordering::Relaxed));
        }
    }
}

/// A connection's place in the node-wide count and in its executor's, given back when dropped.
pub struct Place {
    stats: Arc<WsStats>,
    /// The fan-out executor that serves the connection.
    pub executor: usize,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.stats.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(n) = self.stats.per_executor.get(self.executor) {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A connection on its way from the accepting executor to the one that serves it.
pub struct Handed {
    stream: AcceptedTcpStream,
    place: Place,
}

/// Connections waiting for a fan-out executor to take them, at most.
const HANDED_IN_FLIGHT: usize = 1024;

/// How a fan-out executor gets its connections.
pub enum Intake {
    /// The first executor accepts every connection and hands each to the executor serving the
    /// fewest (itself included): senders to executors 1, 2, ….
    Accept {
        /// The listener, bound at start.
        listener: RawFd,
        /// Senders to the other executors.
        to: Vec<SharedSender<Handed>>,
    },
    /// The others serve what it hands them.
    Handed(SharedReceiver<Handed>),
}

/// The intakes of `executors` fan-out executors sharing `listener`, in `topology.fanout` order.
pub fn intakes(listener: RawFd, executors: usize) -> Vec<Intake> {
    let (to, from): (Vec<_>, Vec<_>) = (1..executors).map(|_| shared_channel::new_bounded(HANDED_IN_FLIGHT)).unzip();
    std::iter::once(Intake::Accept { listener, to }).chain(from.into_iter().map(Intake::Handed)).collect()
}

/// A `signal` message on its way to the hot core.
#[derive(Debug)]
pub struct WsSignal {
    /// The connection.
    pub conn: u64,
    /// The client's request id.
    pub request_id: u64,
    /// The connection's API key.
    pub key: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// The hot core's answer to a [`WsSignal`].
#[derive(Debug)]
pub struct WsAnswer {
    /// The connection.
    pub conn: u64,
    /// The client's request id.
    pub request_id: u64,
    /// HTTP status.
    pub status: u16,
    /// HTTP body.
    pub body: Vec<u8>,
}

/// The hot core's ends of the links.
pub struct HotLinks {
    wake: SharedSender<()>,
    /// The node's stream counters and the index of the executor at the other end: it is woken
    /// only while it serves a connection.
    stats: Arc<WsStats>,
    executor: usize,
    signals: SharedReceiver<WsSignal>,
    answers: SharedSender<WsAnswer>,
}

/// The fan-out core's ends of the links.
pub struct FanoutLinks {
    wake: SharedReceiver<()>,
    signals: SharedSender<WsSignal>,
    answers: SharedReceiver<WsAnswer>,
}

/// Signals in flight between the cores at most; more are answered 503.
const SIGNALS_IN_FLIGHT: usize = 4096;

/// Creates the links between the hot core and fan-out executor `executor` (once, at start).
pub fn links(stats: Arc<WsStats>, executor: usize) -> (HotLinks, FanoutLinks) {
    let (wake_tx, wake_rx) = shared_channel::new_bounded(64);
    let (sig_tx, sig_rx) = shared_channel::new_bounded(SIGNALS_IN_FLIGHT);
    let (ans_tx, ans_rx) = shared_channel::new_bounded(SIGNALS_IN_FLIGHT);
    (
        HotLinks { wake: wake_tx, stats, executor, signals: sig_rx, answers: ans_tx },
        FanoutLinks { wake: wake_rx, signals: sig_tx, answers: ans_rx },
    )
}

/// The hot core's part: wakes the fan-out executor whenever more events are durable while it
/// serves connections, and serves `signal` messages through `routes` like `POST /v1/signals`.
///
/// An executor without connections is not woken: it takes the feed in on its own every 100 ms
/// (`pump`) and before it serves a new connection. Each wake-up is a system call on the hot core
/// and, when both executors share a core, a switch to the fan-out thread and back.
pub async fn hot_side<R: Routes + 'static>(
    node: Rc<RefCell<Node>>,
    routes: Rc<R>,
    links: HotLinks,
    shutdown: Shutdown,
) {
    let wake = links.wake.connect().await;
    let (stats, executor) = (links.stats, links.executor);
    let waker = glommio::spawn_local({
        let node = node.clone();
        async move {
            loop {
                let next = node.borrow().journal.durable() + 1;
                if !crate::node::wait_durable(&node, next).await {
                    break;
                }
                if stats.per_executor[executor].load(Ordering::Acquire) == 0 {
                    continue;
                }
                // A full channel already holds a wake-up the fan-out core has yet to take.
                let _ = wake.try_send(());
            }
        }
    })
    .detach();
    let signals = links.signals.connect().await;
    let answers = Rc::new(links.answers.connect().await);
    loop {
        let next = futures_lite::future::or(signals.recv(), async {
            shutdown.wait().await;
            None
        });
        let Some(sig) = next.await else { break };
        let (node, routes, answers) = (node.clone(), routes.clone(), answers.clone());
        glommio::spawn_local(async move {
            let (status, body) = answer_signal(&node, &*routes, &sig).await;
            let _ = answers.send(WsAnswer { conn: sig.conn, request_id: sig.request_id, status, body }).await;
        })
        .detach();
    }
    drop(waker);
}

/// Serves a `signal` message as `POST /v1/signals` with the connection's key: the same request
/// life cycle as over HTTP.
async fn answer_signal<R: Routes>(node: &RefCell<Node>, routes: &R, sig: &WsSignal) -> (u16, Vec<u8>) {
    let mut req = Request::new(Method::Post, "/v1/signals");
    req.x_api_key = Some(sig.key.as_bytes());
    req.content_type = Some(b"application/json");
    req.body = &sig.body;
    let mut resp = Response::default();
    crate::node::serve(node, routes, Ok(&req), &mut resp, crate::clock::now()).await;
    (resp.status, resp.body)
}

/// Everything a fan-out executor needs to serve the stream.
pub struct Serve {
    /// Where its connections come from.
    pub intake: Intake,
    /// The keys and tiers the hub continues from.
    pub directory: hub::Directory,
    /// How far the journal is: the hub reads its events up to what is durable.
    pub marks: Arc<crate::journal::Watermarks>,
    /// The links.
    pub links: FanoutLinks,
    /// Counters.
    pub stats: Arc<WsStats>,
    /// The cluster (a cluster node only): a stream whose key another node holds is relayed there.
    pub cluster: Option<crate::cluster::forward::Handle>,
}

/// Serves the stream until `stop` is set, then closes every connection (1001).
pub async fn serve(cfg: Config, s: Serve, stop: Arc<AtomicBool>) {
    let hub = Rc::new(RefCell::new(Hub::new(&cfg, s.directory, s.marks, s.stats)));
    hub.borrow_mut().cluster = s.cluster;
    let shutdown = Shutdown::new();
    glommio::spawn_local({
        let shutdown = shutdown.clone();
        async move { shutdown.follow(stop).await }
    })
    .detach();
    // In the hot core's order: each connect waits for the other end's.
    let wake = s.links.wake.connect().await;
    let signals = Rc::new(s.links.signals.connect().await);
    let answers = s.links.answers.connect().await;
    glommio::spawn_local(pump(hub.clone(), wake, shutdown.clone())).detach();
    glommio::spawn_local({
        let hub = hub.clone();
        async move {
            while let Some(a) = answers.recv().await {
                deliver_answer(&hub, a);
            }
        }
    })
    .detach();
    glommio::spawn_local({
        let (hub, shutdown) = (hub.clone(), shutdown.clone());
        async move {
            while !shutdown.is_triggered() {
                glommio::timer::sleep(Duration::from_millis(500)).await;
                hub.borrow_mut().tick(Instant::now());
            }
        }
    })
    .detach();
    let serve_here = |stream: AcceptedTcpStream, place: Place| {
        // The hot core wakes this executor only while it serves connections: until this one, the
        // hub may be up to 100 ms behind.
        hub.borrow_mut().pump();
        glommio::spawn_local(connection(stream.bind_to_executor(), hub.clone(), signals.clone(), place)).detach();
    };
    match s.intake {
        Intake::Accept { listener, to } => {
            // SAFETY: the descriptor comes from `into_raw_fd` on a listener this process bound;
            // its ownership moves here exactly once.
            let mut listener = unsafe { crate::http::Acceptor::from_raw_fd(listener, "ws listener") };
            let mut others = Vec::with_capacity(to.len());
            for t in to {
                others.push(t.connect().await);
            }
            while let Some(stream) = listener.next(&shutdown).await {
                let place = hub.borrow().stats.place();
                match place {
                    // `others[i]` goes to executor i + 1 (this one is executor 0).
                    place if place.executor > 0 => {
                        let sent = others[place.executor - 1].send(Handed { stream, place }).await;
                        if let Err(glommio::GlommioError::Closed(glommio::ResourceType::Channel(h))) = sent {
                            // That executor has stopped (the node is shutting down): close.
                            drop(h.stream.bind_to_executor());
                        }
                    }
                    place => serve_here(stream, place),
                }
            }
        }
        Intake::Handed(from) => {
            let from = from.connect().await;
            loop {
                let next = futures_lite::future::or(from.recv(), async {
                    shutdown.wait().await;
                    None
                });
                let Some(Handed { stream, place }) = next.await else { break };
                serve_here(stream, place);
            }
        }
    }
    for c in hub.borrow().conns() {
        c.close(close::GOING_AWAY, "node shutting down");
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while !hub.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes in the feed whenever the hot core says there is more (it says so only while this
/// executor serves connections) and every 100 ms regardless.
async fn pump(hub: Rc<RefCell<Hub>>, wake: shared_channel::ConnectedReceiver<()>, shutdown: Shutdown) {
    let mut linked = true;
    while !shutdown.is_triggered() {
        if linked {
            let woke = futures_lite::future::or(async { wake.recv().await.is_some() }, async {
                glommio::timer::sleep(Duration::from_millis(100)).await;
                true
            });
            linked = woke.await;
        } else {
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        hub.borrow_mut().pump();
    }
}

fn deliver_answer(hub: &RefCell<Hub>, a: WsAnswer) {
    let mut hub = hub.borrow_mut();
    let Some(conn) = hub.conn(a.conn) else { return };
    // The hot core answers once the signal's events are durable, and publishes that to the feed
    // before it sends the answer: taking the feed in first queues the order's events (and its
    // fills and position) ahead of the answer that reports them.
    hub.pump();
    let body = String::from_utf8(a.body).unwrap_or_default();
    let msg = hub.msg(ServerBody::SignalResult { request_id: a.request_id, status: a.status, body });
    hub.send(&conn, &msg);
}

/// A connection's entry on its executor's list of unauthenticated connections, left when it is
/// dropped (if `Hub::authenticate` has not taken it off already).
struct Anonymous {
    hub: Rc<RefCell<Hub>>,
    id: u64,
    evict: Shutdown,
}

impl Anonymous {
    fn admit(hub: &Rc<RefCell<Hub>>) -> Anonymous {
        let (id, evict) = hub.borrow_mut().admit_anonymous();
        Anonymous { hub: hub.clone(), id, evict }
    }
}

impl Drop for Anonymous {
    fn drop(&mut self) {
        self.hub.borrow_mut().leave_anonymous(self.id);
    }
}

/// A glommio stream shared by a connection's reader and writer (one polls it at a time).
struct Shared(Rc<RefCell<TcpStream>>);

impl AsyncRead for Shared {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Shared {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Bytes read from a socket at a time (and what an idle connection keeps for it).
const READ_CHUNK: usize = 1024;

async fn with_timeout<T>(d: Duration, f: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        glommio::timer::sleep(d).await;
        None
    })
    .await
}

async fn refuse(mut stream: TcpStream, r: &HttpRefusal) {
    let _ = with_timeout(Duration::from_secs(1), stream.write_all(&r.response())).await;
    let _ = with_timeout(Duration::from_secs(1), stream.close()).await;
}

/// Serves one connection, which holds `_place` (its executor's count) while it lives. Until it
/// authenticates it is one of its executor's anonymous connections, closed at once when a newer
/// one needs the room.
async fn connection(
    mut stream: TcpStream,
    hub: Rc<RefCell<Hub>>,
    signals: Rc<ConnectedSender<WsSignal>>,
    _place: Place,
) {
    let _ = stream.set_nodelay(true);
    let anonymous = Anonymous::admit(&hub);
    let auth_timeout = hub.borrow().settings.auth_timeout;
    let mut buf = Vec::new();
    let upgrade = with_timeout(auth_timeout, async {
        loop {
            let len = buf.len();
            buf.resize(len + READ_CHUNK, 0);
            let n = stream.read(&mut buf[len..]).await.unwrap_or(0);
            buf.truncate(len + n);
            if n == 0 {
                return None;
            }
            match frame::parse_upgrade(&buf) {
                Ok(None) => continue,
                Ok(Some(up)) => return Some(Ok(up)),
                Err(r) => return Some(Err(r)),
            }
        }
    });
    let upgrade = futures_lite::future::or(upgrade, async {
        anonymous.evict.wait().await;
        Some(None)
    })
    .await;
    let (up, used) = match upgrade {
        Some(Some(Ok(up))) => up,
        Some(Some(Err(r))) => return refuse(stream, &r).await,
        Some(None) => return,
        None => {
            let r = HttpRefusal::new(Code::RequestTimeout, "the upgrade request did not arrive in time");
            return refuse(stream, &r).await;
        }
    };
    // A key another node of the cluster holds: the stream is that node's, relayed as it comes.
    if let Some(key) = up.api_key.as_deref().filter(|_| !up.forwarded) {
        let elsewhere = hub.borrow_mut().elsewhere(key);
        if let Some((cluster, hash)) = elsewhere {
            drop(anonymous);
            return relay(stream, cluster, hash, Relay::Upgrade(buf)).await;
        }
    }
    // A key in the upgrade takes its places before the upgrade is answered: at a cap, the answer
    // is an HTTP refusal.
    let claim = up.api_key.as_ref().map(|key| (hub.borrow_mut().claim(key), key));
    let claimed = match claim {
        Some((Ok(record), key)) => Some((record, key)),
        Some((Err(e), _)) => return refuse(stream, &HttpRefusal::new(e.code, e.code.message())).await,
        None => None,
    };
    if stream.write_all(&frame::accept_response(&up)).await.is_err() {
        if let Some((record, _)) = claimed {
            hub.borrow().release(&record);
        }
        return;
    }
    let conn = hub.borrow_mut().open(up.json, stream.as_raw_fd(), anonymous.id);
    conn.st.borrow_mut().resume_from = up.resume_from;
    if let Some((record, key)) = claimed {
        hub.borrow_mut().admit(&conn, record, key);
    }
    buf.drain(..used);
    let stream = Rc::new(RefCell::new(stream));
    let writer = glommio::spawn_local(write_loop(conn.clone(), Shared(stream.clone()), hub.clone())).detach();
    let handoff = futures_lite::future::or(read_loop(&conn, Shared(stream.clone()), &hub, &signals, buf), async {
        // Only while it has not authenticated: `Hub::authenticate` takes it off the list.
        anonymous.evict.wait().await;
        conn.close(close::TRY_AGAIN, &Code::WsEvicted.reason());
        None
    })
    .await;
    if let Some(Handoff { cluster, hash, bytes }) = handoff {
        // Its `auth` message named a key another node holds: this node has sent it nothing since
        // the upgrade, so the stream becomes that node's from here on.
        writer.cancel();
        let _ = writer.await;
        hub.borrow_mut().remove(&conn);
        drop(anonymous);
        if let Ok(stream) = Rc::try_unwrap(stream) {
            relay(stream.into_inner(), cluster, hash, Relay::Auth { query: up.query, bytes }).await;
        }
        return;
    }
    // The reader is done (the client closed or broke the protocol): let the writer send the
    // close frame; `Hub::tick` drops the socket if the client does not take it in time.
    conn.close(1000, "");
    let _ = writer.await;
    hub.borrow_mut().remove(&conn);
}

/// How a stream relayed to another node of the cluster starts.
enum Relay {
    /// The client's upgrade request (it carried the key) and whatever followed, as they came: the
    /// other node answers the upgrade.
    Upgrade(Vec<u8>),
    /// This node answered the upgrade and read an `auth` message: the other node is asked for a
    /// stream with the same query, then given the `auth` frame and what followed.
    Auth { query: String, bytes: Vec<u8> },
}

/// How long reaching the node a relayed stream belongs to may take.
const RELAY_CONNECT: Duration = Duration::from_secs(5);
/// `Sec-WebSocket-Key` of the upgrades this node sends on behalf of a client ("signalgate-relay").
const RELAY_WS_KEY: &str = "c2lnbmFsZ2F0ZS1yZWxheQ==";
/// The mask of the one frame this node sends on behalf of a client (its `auth` message).
const RELAY_MASK: [u8; 4] = [0x5a, 0x17, 0x3c, 0x81];

/// Serves a stream whose key another node of the cluster holds: opens that node's WebSocket
/// listener, starts the stream there as `start` says, and relays the bytes both ways until
/// either side closes, so the client gets exactly what that node sends (its messages, order and
/// resume). When the node cannot be reached the client is refused: with an HTTP answer if it has
/// not had one, with a close frame otherwise.
async fn relay(mut client: TcpStream, cluster: crate::cluster::forward::Handle, hash: [u8; 32], start: Relay) {
    let node_id = cluster.status.node_id().to_string();
    let to = crate::node::Elsewhere::Key(hash);
    let reached = with_timeout(RELAY_CONNECT, async {
        let addr = cluster.owner_listener(to, crate::cluster::forward::Listener::Ws).await?;
        let mut up = TcpStream::connect(addr.as_str()).await.map_err(|_| crate::error::OWNER_UNAVAILABLE)?;
        let _ = up.set_nodelay(true);
        let unavailable = |_| crate::error::OWNER_UNAVAILABLE;
        match &start {
            Relay::Upgrade(bytes) => {
                // Marked as forwarded after its request line, so that the other node never sends
                // it on again.
                let line = bytes.windows(2).position(|w| w == b"\r\n").map_or(bytes.len(), |i| i + 2);
                let mut first = bytes[..line].to_vec();
                first
                    .extend_from_slice(format!("{}: {node_id}\r\n", crate::node::request::FORWARDED_HEADER).as_bytes());
                first.extend_from_slice(&bytes[line..]);
                up.write_all(&first).await.map_err(unavailable)?;
            }
            Relay::Auth { query, bytes } => {
                let query = if query.is_empty() { String::new() } else { format!("?{query}") };
                let upgrade = format!(
                    "GET /v1/ws{query} HTTP/1.1\r\nHost: signalgate\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {RELAY_WS_KEY}\r\n{}: {node_id}\r\n\r\n",
                    crate::node::request::FORWARDED_HEADER
                );
                up.write_all(upgrade.as_bytes()).await.map_err(unavailable)?;
                let mut answer = Vec::new();
                while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 512];
                    let n = up.read(&mut chunk).await.map_err(unavailable)?;
                    if n == 0 || answer.len() > frame::MAX_REQUEST {
                        return Err(crate::error::OWNER_UNAVAILABLE);
                    }
                    answer.extend_from_slice(&chunk[..n]);
                }
                if !answer.starts_with(b"HTTP/1.1 101") {
                    return Err(crate::error::OWNER_UNAVAILABLE);
                }
                up.write_all(bytes).await.map_err(unavailable)?;
            }
        }
        Ok(up)
    })
    .await
    .unwrap_or(Err(crate::error::OWNER_UNAVAILABLE));
    let upstream = match reached {
        Ok(up) => up,
        Err(e) => {
            cluster.forget(to);
            let message = e.code.message();
            match start {
                Relay::Upgrade(_) => refuse(client, &HttpRefusal::new(e.code, message)).await,
                Relay::Auth { .. } => {
                    let code = if e.status == 401 { close::AUTH } else { close::TRY_AGAIN };
                    let mut out = Vec::new();
                    frame::write_close(&mut out, code, &e.code.reason());
                    let _ = with_timeout(Duration::from_secs(1), client.write_all(&out)).await;
                }
            }
            return;
        }
    };
    let (client, upstream) = (Rc::new(RefCell::new(client)), Rc::new(RefCell::new(upstream)));
    let to_owner = futures_lite::io::copy(Shared(client.clone()), Shared(upstream.clone()));
    let to_client = futures_lite::io::copy(Shared(upstream.clone()), Shared(client.clone()));
    // Either side closing ends both (the sockets close as the last references go).
    let _ = futures_lite::future::or(to_owner, to_client).await;
}

async fn write_loop(conn: Rc<Conn>, mut stream: Shared, hub: Rc<RefCell<Hub>>) {
    let mut out = Vec::new();
    loop {
        futures_lite::future::poll_fn(|cx| {
            if conn.has_work() {
                Poll::Ready(())
            } else {
                conn.park(cx.waker());
                Poll::Pending
            }
        })
        .await;
        let keep = hub.borrow_mut().next_frames(&conn, &mut out);
        conn.st.borrow_mut().in_flight = out.len();
        let written = stream.write_all(&out).await;
        conn.st.borrow_mut().in_flight = 0;
        // Writes come from the hub's passes unless a socket is full: an idle connection keeps
        // no buffer here.
        out = Vec::new();
        if written.is_err() || !keep {
            break;
        }
    }
    // SAFETY: the connection's own open socket; its reader sees the shutdown and ends.
    unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
}

/// A stream to hand to another node of the cluster: its first `auth` message named a key that
/// node holds. `bytes`: that message's frame and whatever the client sent after it.
struct Handoff {
    cluster: crate::cluster::forward::Handle,
    hash: [u8; 32],
    bytes: Vec<u8>,
}

/// Reads the client's messages until it closes or breaks the protocol; `Some` when the stream
/// belongs to another node of the cluster.
async fn read_loop(
    conn: &Conn,
    mut stream: Shared,
    hub: &RefCell<Hub>,
    signals: &ConnectedSender<WsSignal>,
    mut buf: Vec<u8>,
) -> Option<Handoff> {
    let max = hub.borrow().settings.max_message;
    // A fragmented message being put together: its kind and bytes.
    let mut message: Option<(Kind, Vec<u8>)> = None;
    loop {
        let mut off = 0;
        loop {
            let (kind, fin, payload, used) = match frame::read_frame(&mut buf[off..], max) {
                Ok(Some((f, n))) => (f.kind, f.fin, f.payload.to_vec(), n),
                Ok(None) => break,
                Err(frame::BadFrame(code, reason)) => {
                    conn.close(code, reason);
                    return None;
                }
            };
            off += used;
            conn.st.borrow_mut().last_heard = Instant::now();
            let whole = match (kind, &mut message) {
                (Kind::Ping, _) => {
                    conn.control(Kind::Pong, &payload);
                    continue;
                }
                (Kind::Pong, _) => continue,
                (Kind::Close, _) => {
                    let code = payload.get(..2).map_or(1000, |c| u16::from_be_bytes([c[0], c[1]]));
                    let code = if (1000..5000).contains(&code) { code } else { close::PROTOCOL };
                    conn.close(code, "");
                    return None;
                }
                (Kind::Continue, None) => {
                    conn.close(close::PROTOCOL, "continuation without a message");
                    return None;
                }
                (Kind::Continue, Some((_, acc))) => {
                    if acc.len() + payload.len() > max {
                        conn.close(close::TOO_BIG, "message too big");
                        return None;
                    }
                    acc.extend_from_slice(&payload);
                    if !fin {
                        continue;
                    }
                    message.take()
                }
                (_, Some(_)) => {
                    conn.close(close::PROTOCOL, "a new message before the last one ended");
                    return None;
                }
                (k, None) if !fin => {
                    message = Some((k, payload));
                    continue;
                }
                (k, None) => Some((k, payload)),
            };
            if let Some((kind, bytes)) = whole {
                match on_message(&mut hub.borrow_mut(), conn, kind, &bytes, signals) {
                    Ok(None) => {}
                    Ok(Some((cluster, hash))) => {
                        // The `auth` message framed again (its frame here is unmasked), and what
                        // followed as it came.
                        let opcode = if kind == Kind::Text { 1 } else { 2 };
                        let mut bytes = frame::client_frame(opcode, &bytes, RELAY_MASK);
                        bytes.extend_from_slice(&buf[off..]);
                        return Some(Handoff { cluster, hash, bytes });
                    }
                    Err((code, reason)) => {
                        conn.close(code, &reason);
                        return None;
                    }
                }
            }
        }
        buf.drain(..off);
        if conn.st.borrow().closing.is_some() {
            return None;
        }
        let len = buf.len();
        buf.resize(len + READ_CHUNK, 0);
        let n = stream.read(&mut buf[len..]).await.unwrap_or(0);
        buf.truncate(len + n);
        if n == 0 {
            return None;
        }
        if buf.capacity() > 4 * READ_CHUNK && buf.len() < READ_CHUNK {
            buf.shrink_to(READ_CHUNK);
        }
    }
}

/// Where a stream goes whose key another node of the cluster holds: the cluster, and the key's hash.
type OtherNode = (crate::cluster::forward::Handle, [u8; 32]);

/// Acts on one client message; `Ok(Some(..))`: its `auth` message named a key another node of the
/// cluster holds.
fn on_message(
    hub: &mut Hub,
    conn: &Conn,
    kind: Kind,
    bytes: &[u8],
    signals: &ConnectedSender<WsSignal>,
) -> Result<Option<OtherNode>, (u16, String)> {
    let msg = match (conn.json, kind) {
        (true, Kind::Text) => protocol::decode_client_json(bytes),
        (false, Kind::Binary) => protocol::decode_client(bytes),
        (true, _) => return Err((close::UNSUPPORTED, "binary frame on a format=json connection".into())),
        (false, _) => return Err((close::UNSUPPORTED, "text frame on a binary connection (use ?format=json)".into())),
    }
    .map_err(|r| (r.code, r.reason))?;
    let authed = conn.st.borrow().key.is_some();
    match msg {
        ClientMsg::Auth { key } if !authed => {
            if let Some(elsewhere) = hub.elsewhere(&key) {
                return Ok(Some(elsewhere));
            }
            hub.authenticate(conn, &key).map_err(|e| (e.close, e.code.reason()))?
        }
        _ if !authed => return Err((close::AUTH, Code::AuthRequired.reason())),
        ClientMsg::Auth { .. } => {
            hub.send_error(conn, Code::WsAlreadyAuthenticated, Code::WsAlreadyAuthenticated.message().into())
        }
        ClientMsg::Subscribe { channels, resume_from } => hub.subscribe(conn, &channels, resume_from),
        ClientMsg::Unsubscribe { channels } => hub.unsubscribe(conn, &channels),
        ClientMsg::Ping { id } => {
            let msg = hub.msg(ServerBody::Pong { id });
            hub.send(conn, &msg);
        }
        ClientMsg::Signal { request_id, body } => {
            hub.stats.signals.fetch_add(1, Ordering::Relaxed);
            let key = conn.st.borrow().key_text.clone();
            let sig = WsSignal { conn: conn.id, request_id, key, body: body.into_bytes() };
            if signals.try_send(sig).is_err() {
                let refused = ApiError::new(Code::NodeOverloaded, "too many signals in flight; retry");
                let mut body = Vec::new();
                refused.write(&mut body);
                let body = String::from_utf8(body).unwrap_or_default();
                let msg = hub.msg(ServerBody::SignalResult { request_id, status: refused.status, body });
                hub.send(conn, &msg);
            }
        }
    }
    Ok(None)
}
