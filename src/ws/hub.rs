//! The fan-out core's state: every connection, what it subscribed to and what waits to be sent
//! to it, the resume window, and the keys and tiers it authenticates streams with.
//!
//! The hub reads the journal's records behind the hot core and runs no engine: the events carry
//! what it needs (every account event names its account; a fill brings the position it leaves),
//! and it keeps only a [`Directory`] of keys and tiers up to date from them.
//!
//! Each event is encoded once; subscribers get a copy of the same bytes in their queue. Account
//! events are queued in full and never dropped; a quote only marks its symbol as changed for
//! each subscriber, and the newest quote of each changed symbol goes out with the connection's
//! next write — so a client that lags gets conflated quotes, never a growing queue.
//!
//! Writes happen in passes: each time the hub takes in the feed, it writes to every connection
//! that got something, once, straight from the pass (one `send` of everything ready for it, no
//! task woken). A connection with a single new quote and nothing else is sent that quote's frame
//! as built once for all its subscribers. Only what the socket does not take at once (and
//! control frames, closes, answers outside a pass) goes through the connection's writer task.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine::account::{KeyRecord, TierId};
use crate::engine::event::{Event, EventKind};
use crate::engine::types::{AccountId, KeyId};
use crate::engine::Engine;
use crate::journal::follow::{Limit, Reader};
use crate::journal::format::Version;
use crate::journal::Watermarks;
use crate::shutdown::Shutdown;

use super::frame::{self, Kind};
use super::protocol::{close, encode_entry, encode_json, ServerBody, ServerMsg, SymbolInfo, FRAME_HEADER, VERSION};
use super::WsStats;
use crate::error::Code;

/// Settings from `[ws]`, in the units the hub uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Node name (for the welcome).
    pub node: String,
    /// Authenticated connections at once, node-wide.
    pub max_connections: usize,
    /// Unauthenticated connections this executor keeps at once; a newer one closes the oldest.
    pub max_anonymous: usize,
    /// Queue bound per connection.
    pub queue_bytes: usize,
    /// Messages per frame.
    pub frame_messages: usize,
    /// Bytes per frame.
    pub frame_bytes: usize,
    /// Ping interval.
    pub ping: Duration,
    /// Pong timeout.
    pub pong_timeout: Duration,
    /// Auth timeout.
    pub auth_timeout: Duration,
    /// Largest client message.
    pub max_message: usize,
    /// Account events kept for resume.
    pub resume_events: usize,
    /// Events a resume may read from the journal.
    pub resume_journal_events: u64,
    /// The journal's directory.
    pub dir: PathBuf,
    /// WebSocket connections per key, by tier id.
    pub tier_caps: Vec<u32>,
}

impl Settings {
    /// The settings of a validated configuration.
    pub fn new(cfg: &Config) -> Settings {
        let w = &cfg.ws;
        Settings {
            node: cfg.node.name.clone(),
            max_connections: w.max_connections,
            max_anonymous: w.max_unauthenticated.div_ceil(cfg.topology.fanout.len().max(1)).max(1),
            queue_bytes: w.queue_bytes,
            frame_messages: w.frame_messages.min(usize::from(u16::MAX)),
            frame_bytes: w.frame_bytes,
            ping: Duration::from_secs(w.ping_secs),
            pong_timeout: Duration::from_secs(w.pong_timeout_secs),
            auth_timeout: Duration::from_secs(w.auth_timeout_secs),
            max_message: w.max_message_bytes,
            resume_events: w.resume_events,
            resume_journal_events: w.resume_journal_events,
            dir: cfg.journal.dir.clone(),
            // In the order `node::tiers` gives the engine its tiers.
            tier_caps: cfg.tiers.values().map(|t| t.ws_connections).collect(),
        }
    }
}

/// What the hub knows of the engine's state: every key (to authenticate streams) and each
/// account's tier (for its streams' cap). Taken from the hot core's engine at start, then kept up
/// to date from the events.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// Keys by hash.
    keys: HashMap<[u8; 32], KeyRecord>,
    /// Hashes by key id (for revocations).
    hashes: HashMap<KeyId, [u8; 32]>,
    tiers: HashMap<AccountId, TierId>,
    /// The engine's last sequence number when it was taken.
    last_seq: u64,
}

impl Directory {
    /// The keys and tiers of `engine` as it stands: of the accounts it holds (not of those it
    /// let go of, whose owner serves their streams now).
    pub fn of<V: crate::engine::venue::Venue>(engine: &Engine<V>) -> Directory {
        let held = || engine.keys().iter().filter(|k| engine.account(k.account).is_some());
        let keys = held().map(|k| (k.hash, *k)).collect();
        let hashes = held().map(|k| (k.id, k.hash)).collect();
        let tiers = engine.accounts().iter().map(|a| (a.id, a.tier)).collect();
        Directory { keys, hashes, tiers, last_seq: engine.last_seq() }
    }

    fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&KeyRecord> {
        self.keys.get(hash)
    }

    fn apply(&mut self, e: &Event) {
        match e.kind {
            EventKind::AccountCreated { account, tier, .. } => {
                self.tiers.insert(account, tier);
            }
            EventKind::KeyAdded { key, account, hash, roles } => {
                self.hashes.insert(key, hash);
                self.keys.insert(hash, KeyRecord { id: key, account, hash, roles, revoked: false, created_at: e.ts });
            }
            EventKind::KeyRevoked { key } => {
                if let Some(k) = self.hashes.get(&key).and_then(|h| self.keys.get_mut(h)) {
                    k.revoked = true;
                }
            }
            EventKind::AccountReleased { account, .. } => {
                // Its owner serves its streams now.
                self.keys.retain(|_, k| k.account != account);
                self.tiers.remove(&account);
            }
            _ => {}
        }
    }
}

/// Why a key may not open a stream: the error code (whose status answers an upgrade), and the
/// close code for an `auth` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthError {
    /// Close code.
    pub close: u16,
    /// Stable error code.
    pub code: Code,
}

const INVALID_KEY: AuthError = AuthError { close: close::AUTH, code: Code::AuthInvalidKey };
const REVOKED_KEY: AuthError = AuthError { close: close::AUTH, code: Code::AuthKeyRevoked };
const NODE_FULL: AuthError = AuthError { close: close::TOO_MANY, code: Code::WsNodeFull };
const KEY_FULL: AuthError = AuthError { close: close::TOO_MANY, code: Code::WsTooManyConnections };
const OWNER_MOVING: AuthError = AuthError { close: close::TRY_AGAIN, code: Code::ClusterOwnerUnavailable };

/// Control frames (pongs) a connection may have waiting.
const MAX_CONTROL_BYTES: usize = 64 * 1024;
/// Capacity a connection's queue or control buffer keeps once it is empty.
const IDLE_BUFFER: usize = 256;
/// Events taken in between looks at the connections.
const PUMP_BATCH: usize = 4096;

/// What a connection is, as the hub and its tasks share it.
pub struct Conn {
    /// Unique for the life of the node.
    pub id: u64,
    /// Its entry on the executor's list of unauthenticated connections ([`Hub::admit_anonymous`]).
    anonymous: u64,
    /// JSON text frames instead of binary ones.
    pub json: bool,
    /// The socket, for a forced shutdown.
    pub fd: std::os::fd::RawFd,
    /// Everything that changes.
    pub st: RefCell<ConnState>,
    waker: Cell<Option<Waker>>,
}

/// The mutable part of a connection.
pub struct ConnState {
    /// The key, once authenticated.
    pub key: Option<KeyRecord>,
    /// The raw key (forwarded with `signal` messages).
    pub key_text: String,
    /// `resume_from` of the upgrade request, used by the first `account` subscription.
    pub resume_from: Option<u64>,
    /// Subscribed to its account's events.
    pub account: bool,
    /// Subscribed symbols (bit per symbol id).
    quotes: Vec<u64>,
    /// Symbols with a newer quote to send.
    dirty: Vec<u64>,
    any_dirty: bool,
    /// Entries (`u32 length ‖ message`) waiting to be sent, in order.
    pending: Vec<u8>,
    pending_msgs: usize,
    /// The rest of a frame a pass's `send` did not finish: written before anything else.
    unsent: Vec<u8>,
    /// Control frames to send first (pongs, pings).
    control: Vec<u8>,
    /// Bytes handed to the socket and not yet written.
    pub in_flight: usize,
    /// On the hub's list of connections to write to at the end of the pass.
    ready: bool,
    /// Set when the connection must close: code and reason.
    pub closing: Option<(u16, String)>,
    closing_since: Option<Instant>,
    /// When the connection was accepted.
    pub opened: Instant,
    /// When the last ping was sent, and whether its pong came back.
    ping_sent: Option<Instant>,
    /// Last pong (or any frame) received.
    pub last_heard: Instant,
}

impl Conn {
    fn new(id: u64, anonymous: u64, json: bool, fd: std::os::fd::RawFd, symbols: usize) -> Conn {
        let words = symbols.div_ceil(64);
        let now = Instant::now();
        Conn {
            id,
            anonymous,
            json,
            fd,
            st: RefCell::new(ConnState {
                key: None,
                key_text: String::new(),
                resume_from: None,
                account: false,
                quotes: vec![0; words],
                dirty: vec![0; words],
                any_dirty: false,
                pending: Vec::new(),
                pending_msgs: 0,
                unsent: Vec::new(),
                control: Vec::new(),
                in_flight: 0,
                ready: false,
                closing: None,
                closing_since: None,
                opened: now,
                ping_sent: None,
                last_heard: now,
            }),
            waker: Cell::new(None),
        }
    }

    /// Wakes the writer.
    pub fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Registers the writer's waker.
    pub fn park(&self, waker: &Waker) {
        self.waker.set(Some(waker.clone()));
    }

    /// Asks the writer to close with `code` (the first reason wins) and drops what was queued.
    pub fn close(&self, code: u16, reason: &str) {
        {
            let mut st = self.st.borrow_mut();
            if st.closing.is_some() {
                return;
            }
            st.closing = Some((code, reason.to_string()));
            st.closing_since = Some(Instant::now());
            st.pending = Vec::new();
            st.pending_msgs = 0;
            st.any_dirty = false;
        }
        self.wake();
    }

    /// Whether the writer has something to do.
    pub fn has_work(&self) -> bool {
        let st = self.st.borrow();
        st.closing.is_some() || !st.unsent.is_empty() || !st.control.is_empty() || st.pending_msgs > 0 || st.any_dirty
    }

    /// Queues a control frame; a client that sends pings without reading the pongs is a slow
    /// consumer too.
    pub fn control(&self, kind: Kind, payload: &[u8]) {
        let over = {
            let mut st = self.st.borrow_mut();
            frame::write_frame(&mut st.control, kind, payload);
            st.control.len() > MAX_CONTROL_BYTES
        };
        if over {
            self.st.borrow_mut().control.clear();
            self.close(close::SLOW_CONSUMER, "slow consumer");
        }
        self.wake();
    }
}

/// A symbol's newest quote in one mode: a data frame of its own (the very bytes every subscriber
/// with nothing else to send gets) and where in it the message is (what a frame of several
/// messages takes).
#[derive(Debug, Clone, Default)]
struct LatestQuote {
    frame: Vec<u8>,
    msg: std::ops::Range<usize>,
}

impl LatestQuote {
    /// The frame, once there is a quote.
    fn frame(&self) -> Option<&[u8]> {
        (!self.frame.is_empty()).then_some(&self.frame[..])
    }

    /// The message, once there is a quote.
    fn msg(&self) -> Option<&[u8]> {
        (!self.frame.is_empty()).then(|| &self.frame[self.msg.clone()])
    }
}

/// An account message kept for resume: its sequence number, account and the message.
struct Kept {
    seq: u64,
    account: AccountId,
    msg: ServerMsg,
}

/// The fan-out core's state.
pub struct Hub {
    /// Settings.
    pub settings: Settings,
    /// Shared counters for `/metrics`.
    pub stats: Arc<WsStats>,
    directory: Directory,
    symbols: Vec<SymbolInfo>,
    conns: HashMap<u64, Rc<Conn>>,
    /// Unauthenticated connections, oldest first, each with what closes it.
    anonymous: BTreeMap<u64, Shutdown>,
    next_anonymous: u64,
    /// Each symbol's subscribers.
    by_symbol: Vec<Vec<Rc<Conn>>>,
    by_account: HashMap<AccountId, Vec<u64>>,
    /// The newest quote of each symbol, binary and JSON.
    latest: Vec<[LatestQuote; 2]>,
    /// Connections that got something during the pass under way.
    ready: RefCell<Vec<Rc<Conn>>>,
    /// What a pass writes to one connection.
    out: Vec<u8>,
    /// The next sequence number to take from the journal.
    next_seq: u64,
    /// Account events after `window_from - 1`, oldest first.
    window: VecDeque<Kept>,
    window_from: u64,
    /// Where the hub reads the journal's mapping, up to what is durable (`None` while a read
    /// is in progress).
    reader: Option<Reader>,
    marks: Arc<Watermarks>,
    /// A frame being built.
    frame: Vec<u8>,
    entry: Vec<u8>,
    /// The cluster (a cluster node only): streams of keys it does not hold are relayed.
    pub cluster: Option<crate::cluster::forward::Handle>,
    /// What turns a journal sequence number into the stream's `seq`: 0 on a standalone node; on
    /// a cluster node its range (`ClusterConfig::order_id_base`), so that a `seq` names one
    /// event in the whole cluster and a client resumes with it on whichever node owns its
    /// account next.
    base: u64,
}

impl Hub {
    /// A hub that continues from the hot core's engine as `directory` took it at start, reading
    /// the journal as far as `marks` says is durable.
    pub fn new(cfg: &Config, directory: Directory, marks: Arc<Watermarks>, stats: Arc<WsStats>) -> Hub {
        let last = directory.last_seq;
        let symbols: Vec<SymbolInfo> = crate::node::symbol_table(cfg)
            .all()
            .iter()
            .map(|s| SymbolInfo {
                id: s.id.0,
                name: s.name.clone(),
                price_decimals: s.price_decimals,
                qty_decimals: s.qty_decimals,
            })
            .collect();
        let n = symbols.len();
        Hub {
            settings: Settings::new(cfg),
            stats,
            directory,
            symbols,
            conns: HashMap::new(),
            anonymous: BTreeMap::new(),
            next_anonymous: 0,
            by_symbol: vec![Vec::new(); n],
            by_account: HashMap::new(),
            latest: vec![Default::default(); n],
            ready: RefCell::new(Vec::new()),
            out: Vec::with_capacity(64 * 1024),
            next_seq: last + 1,
            window: VecDeque::new(),
            window_from: last + 1,
            reader: Some(Reader::new(&cfg.journal.dir, last + 1, Limit::Durable(marks.clone()))),
            marks,
            frame: Vec::with_capacity(64 * 1024),
            entry: Vec::with_capacity(1024),
            cluster: None,
            base: cfg.cluster.order_id_base(),
        }
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The connection with id `id`, while it is open.
    pub fn conn(&self, id: u64) -> Option<Rc<Conn>> {
        self.conns.get(&id).cloned()
    }

    /// Every connection.
    pub fn conns(&self) -> impl Iterator<Item = &Rc<Conn>> {
        self.conns.values()
    }

    /// The last sequence number the hub has taken in.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    fn now_ns(&self) -> u64 {
        crate::clock::now()
    }

    /// A message of the hub's, as of the last event it took in.
    pub fn msg(&self, body: ServerBody) -> ServerMsg {
        ServerMsg { seq: self.base + self.last_seq(), ts: self.now_ns(), body }
    }

    /// The message of an event.
    fn event_msg(&self, e: &Event, body: ServerBody) -> ServerMsg {
        ServerMsg { seq: self.base + e.seq, ts: e.ts, body }
    }

    /// The journal's sequence number of `from`, a stream `seq` a client of `account` saw: one
    /// this node gave, or (on a cluster node, then with `true`) one another node gave an event
    /// it brought here when the account moved.
    fn local_seq(&self, account: AccountId, from: u64) -> Result<(u64, bool), String> {
        if self.base == 0 || from == 0 {
            return Ok((from, false));
        }
        if (self.base..self.base + crate::engine::ORDER_ID_SPAN).contains(&from) {
            return Ok((from - self.base, false));
        }
        let brought = self.cluster.as_ref().and_then(|c| c.status.brought_seq(account, from));
        brought.map(|seq| (seq, true)).ok_or_else(|| {
            format!(
                "sequence number {from} was given by another node, to an event this node did not bring when the account moved here"
            )
        })
    }

    /// Registers a new connection (not yet authenticated).
    pub fn open(&mut self, json: bool, fd: std::os::fd::RawFd, anonymous: u64) -> Rc<Conn> {
        let id = self.stats.conn_id();
        let conn = Rc::new(Conn::new(id, anonymous, json, fd, self.symbols.len()));
        self.conns.insert(id, conn.clone());
        conn
    }

    /// Puts a new connection on the list of unauthenticated ones; when the list is full, its
    /// oldest is told to close (with 1013) to make room. Returns its entry and what closes it.
    pub fn admit_anonymous(&mut self) -> (u64, Shutdown) {
        if self.anonymous.len() >= self.settings.max_anonymous {
            if let Some((_, oldest)) = self.anonymous.pop_first() {
                oldest.trigger();
                self.stats.evicted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.next_anonymous += 1;
        let evict = Shutdown::new();
        self.anonymous.insert(self.next_anonymous, evict.clone());
        (self.next_anonymous, evict)
    }

    /// Takes a connection off the list of unauthenticated ones.
    pub fn leave_anonymous(&mut self, id: u64) {
        self.anonymous.remove(&id);
    }

    /// Forgets a connection and its subscriptions.
    pub fn remove(&mut self, conn: &Conn) {
        self.anonymous.remove(&conn.anonymous);
        if self.conns.remove(&conn.id).is_none() {
            return;
        }
        let st = conn.st.borrow();
        for (sym, subs) in self.by_symbol.iter_mut().enumerate() {
            if bit(&st.quotes, sym) {
                subs.retain(|c| c.id != conn.id);
            }
        }
        if let Some(k) = st.key {
            if st.account {
                if let Some(subs) = self.by_account.get_mut(&k.account) {
                    subs.retain(|&c| c != conn.id);
                }
            }
            self.stats.give_key_place(k.id);
            self.stats.give_stream();
        }
    }

    /// Checks `key` for a new stream (without taking a place for it).
    pub fn check_key(&mut self, key: &str) -> Result<KeyRecord, AuthError> {
        let hash = crate::auth::hash_key(key.as_bytes());
        if self.directory.key_by_hash(&hash).is_none() {
            // A key created an instant ago may still be on its way from the hot core.
            self.pump();
        }
        let Some(&record) = self.directory.key_by_hash(&hash) else {
            // Maybe the key of an account this node is taking from a dead one, not here yet.
            let adopting = self.cluster.as_ref().is_some_and(|c| c.status.adopting());
            return Err(if adopting { OWNER_MOVING } else { INVALID_KEY });
        };
        if record.revoked {
            return Err(REVOKED_KEY);
        }
        if self.stats.key_connections(record.id) >= self.key_cap(&record) {
            return Err(KEY_FULL);
        }
        if self.stats.authenticated.load(std::sync::atomic::Ordering::Acquire) >= self.settings.max_connections as u64 {
            return Err(NODE_FULL);
        }
        Ok(record)
    }

    /// How many streams the key's tier allows it.
    fn key_cap(&self, record: &KeyRecord) -> u32 {
        let tier = self.directory.tiers.get(&record.account).map(|&t| usize::from(t));
        tier.and_then(|t| self.settings.tier_caps.get(t).copied()).unwrap_or(0)
    }

    /// On a cluster node, a key this node does not hold (another node's, or none's: that node
    /// answers as this one would): the cluster and the key's hash, to relay its stream.
    pub fn elsewhere(&mut self, key: &str) -> Option<(crate::cluster::forward::Handle, [u8; 32])> {
        let cluster = self.cluster.clone()?;
        let hash = crate::auth::hash_key(key.as_bytes());
        if self.directory.key_by_hash(&hash).is_none() {
            // A key created an instant ago may still be on its way from the hot core.
            self.pump();
        }
        self.directory.key_by_hash(&hash).is_none().then_some((cluster, hash))
    }

    /// Authenticates `conn` with `key` (an `auth` message) and sends the welcome.
    pub fn authenticate(&mut self, conn: &Conn, key: &str) -> Result<(), AuthError> {
        let record = self.claim(key)?;
        self.admit(conn, record, key);
        Ok(())
    }

    /// Checks `key` for a new stream and takes its places in the node-wide and per-key counts
    /// (given back when the connection it is [`Hub::admit`]ted to is removed, or by
    /// [`Hub::release`]). Taken before an upgrade is answered, so that a refusal is an HTTP
    /// answer whenever it can be.
    pub fn claim(&mut self, key: &str) -> Result<KeyRecord, AuthError> {
        self.check_key(key)
            .and_then(|r| {
                // Checked again as the places are taken: another executor may have taken the last.
                if !self.stats.take_stream(self.settings.max_connections) {
                    return Err(NODE_FULL);
                }
                if !self.stats.take_key_place(r.id, self.key_cap(&r)) {
                    self.stats.give_stream();
                    return Err(KEY_FULL);
                }
                Ok(r)
            })
            .inspect_err(|_| {
                self.stats.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
    }

    /// Gives back the places of a claim that no connection took.
    pub fn release(&self, record: &KeyRecord) {
        self.stats.give_key_place(record.id);
        self.stats.give_stream();
    }

    /// Makes `conn` the stream of a claimed key and sends the welcome.
    pub fn admit(&mut self, conn: &Conn, record: KeyRecord, key: &str) {
        {
            let mut st = conn.st.borrow_mut();
            st.key = Some(record);
            st.key_text = key.to_string();
        }
        self.leave_anonymous(conn.anonymous);
        let welcome = self.msg(ServerBody::Welcome {
            version: VERSION,
            node: self.settings.node.clone(),
            account: record.account.0,
            key: record.id.0,
            symbols: self.symbols.clone(),
        });
        self.send(conn, &welcome);
    }

    /// Queues a message for one connection; past the queue bound (a client that sends requests
    /// without reading the answers) it is closed as a slow consumer.
    pub fn send(&mut self, conn: &Conn, msg: &ServerMsg) {
        self.entry.clear();
        encode_queued(&mut self.entry, msg, conn.json);
        if self.enqueue(conn, &self.entry) {
            conn.wake();
        }
    }

    /// Queues one encoded entry; past the queue bound the connection is closed as a slow
    /// consumer instead. Whether it was queued.
    fn enqueue(&self, conn: &Conn, entry: &[u8]) -> bool {
        let over = {
            let mut st = conn.st.borrow_mut();
            if st.closing.is_some() {
                return false;
            }
            st.pending.extend_from_slice(entry);
            st.pending_msgs += 1;
            st.pending.len() + st.in_flight > self.settings.queue_bytes
        };
        if over {
            self.stats.slow_consumers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            conn.close(close::SLOW_CONSUMER, "slow consumer");
        }
        !over
    }

    /// `conn` got something in the pass under way: written to once the pass has taken in the feed.
    fn mark_ready(&self, conn: &Rc<Conn>) {
        if !std::mem::replace(&mut conn.st.borrow_mut().ready, true) {
            self.ready.borrow_mut().push(conn.clone());
        }
    }

    /// Writes to every connection that got something in the pass: everything ready for it in
    /// one `send`, or its quote's shared frame when that is all it has. What the socket does
    /// not take at once, and anything its writer task must do (control frames, a close, a write
    /// still under way), is left to that task.
    fn write_ready(&mut self) {
        // Nothing is marked ready while the pass writes; the list's room is kept for the next.
        let mut ready = std::mem::take(&mut *self.ready.borrow_mut());
        for conn in &ready {
            conn.st.borrow_mut().ready = false;
            self.write_now(conn);
        }
        ready.clear();
        *self.ready.borrow_mut() = ready;
    }

    fn write_now(&mut self, conn: &Conn) {
        let single = {
            let st = conn.st.borrow();
            if st.in_flight > 0 || st.closing.is_some() || !st.unsent.is_empty() || !st.control.is_empty() {
                drop(st);
                return conn.wake();
            }
            if st.pending_msgs == 0 && st.any_dirty {
                single_bit(&st.dirty)
            } else {
                None
            }
        };
        let mut out = std::mem::take(&mut self.out);
        let shared = single.and_then(|sym| Some((sym, self.latest.get(sym)?[usize::from(conn.json)].frame()?)));
        let (bytes, more) = match shared {
            Some((sym, frame)) => {
                let mut st = conn.st.borrow_mut();
                set_bit(&mut st.dirty, sym, false);
                st.any_dirty = false;
                self.stats.messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.stats.frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (frame, false)
            }
            None => {
                out.clear();
                self.next_frames(conn, &mut out);
                (&out[..], conn.has_work())
            }
        };
        if !bytes.is_empty() {
            // SAFETY: `fd` is the connection's open socket (closed only after its tasks end and
            // it is removed from the hub); `bytes` is valid for its length.
            let sent = unsafe {
                libc::send(conn.fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            let sent = usize::try_from(sent).unwrap_or(0);
            if sent < bytes.len() {
                // The writer sends the rest first (the socket is full, or failed: the writer's
                // own write then ends the connection).
                conn.st.borrow_mut().unsent.extend_from_slice(&bytes[sent..]);
                conn.wake();
            } else if more {
                conn.wake();
            }
        }
        self.out = out;
    }

    /// Queues an error message.
    pub fn send_error(&mut self, conn: &Conn, code: Code, message: String) {
        let msg = self.msg(ServerBody::Error { code: code.as_str().into(), message });
        self.send(conn, &msg);
    }

    /// Applies a `subscribe`: every channel is checked before any is taken.
    pub fn subscribe(&mut self, conn: &Conn, channels: &[String], resume_from: Option<u64>) {
        let mut symbols = Vec::new();
        let mut account = false;
        for c in channels {
            match self.channel(c) {
                Ok(Some(sym)) => symbols.push(sym),
                Ok(None) => account = true,
                Err(e) => return self.send_error(conn, Code::WsUnknownChannel, e),
            }
        }
        let Some(key) = conn.st.borrow().key else { return };
        let Some(this) = self.conns.get(&conn.id).cloned() else { return };
        for sym in symbols {
            let mut st = conn.st.borrow_mut();
            if !bit(&st.quotes, sym) {
                set_bit(&mut st.quotes, sym, true);
                self.by_symbol[sym].push(this.clone());
            }
        }
        let msg = self.msg(ServerBody::Subscribed { channels: channels.to_vec() });
        self.send(conn, &msg);
        if account {
            let (was, resume) = {
                let mut st = conn.st.borrow_mut();
                let resume = resume_from.or(st.resume_from.take());
                (std::mem::replace(&mut st.account, true), resume)
            };
            if resume.is_some() {
                // Everything durable first (an account just taken brings its events in one go),
                // before the connection is a subscriber: what it resumes, it does not also get
                // live.
                self.pump();
            }
            if !was {
                self.by_account.entry(key.account).or_default().push(conn.id);
            }
            if let Some(from) = resume {
                self.resume(conn, key.account, from);
            }
        }
    }

    /// Applies an `unsubscribe`.
    pub fn unsubscribe(&mut self, conn: &Conn, channels: &[String]) {
        let mut parsed = Vec::new();
        for c in channels {
            match self.channel(c) {
                Ok(ch) => parsed.push(ch),
                Err(e) => return self.send_error(conn, Code::WsUnknownChannel, e),
            }
        }
        let Some(key) = conn.st.borrow().key else { return };
        for ch in parsed {
            let mut st = conn.st.borrow_mut();
            match ch {
                Some(sym) if bit(&st.quotes, sym) => {
                    set_bit(&mut st.quotes, sym, false);
                    set_bit(&mut st.dirty, sym, false);
                    self.by_symbol[sym].retain(|c| c.id != conn.id);
                }
                Some(_) => {}
                None if st.account => {
                    st.account = false;
                    if let Some(subs) = self.by_account.get_mut(&key.account) {
                        subs.retain(|&c| c != conn.id);
                    }
                }
                None => {}
            }
        }
        let msg = self.msg(ServerBody::Unsubscribed { channels: channels.to_vec() });
        self.send(conn, &msg);
    }

    /// `Some(symbol)` for `quotes:<SYMBOL>`, `None` for `account`.
    fn channel(&self, name: &str) -> Result<Option<usize>, String> {
        if name == "account" {
            return Ok(None);
        }
        let sym = name
            .strip_prefix("quotes:")
            .ok_or_else(|| format!("unknown channel {:?}: use \"account\" or \"quotes:<SYMBOL>\"", trim(name)))?;
        self.symbols
            .iter()
            .position(|s| s.name == sym)
            .map(Some)
            .ok_or_else(|| format!("unknown symbol {:?} in channel {:?}", trim(sym), trim(name)))
    }

    /// Sends `conn` its account's events after `from`: from the window, and from the journal
    /// for what the window no longer holds.
    fn resume(&mut self, conn: &Conn, account: AccountId, given: u64) {
        let (last, base) = (self.last_seq(), self.base);
        let failed = |hub: &mut Hub, reason: String| {
            hub.stats.resume_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let oldest = base + hub.window_from.saturating_sub(1);
            let msg = hub.msg(ServerBody::ResumeFailed { from: given, oldest, reason });
            hub.send(conn, &msg);
        };
        let from = match self.local_seq(account, given) {
            Ok((from, true)) if from > last => {
                // The account is moving here: its events are not all durable yet.
                return conn.close(close::TRY_AGAIN, "the account is moving to this node; resume again");
            }
            Ok((from, _)) => from,
            Err(reason) => return failed(self, reason),
        };
        if from > last {
            return failed(self, format!("sequence number {given} is beyond the node's last ({})", base + last));
        }
        let mut out = Vec::new();
        let mut count = 0u64;
        // Half the bound, so that live messages still fit after a long resume.
        let limit = self.settings.queue_bytes / 2;
        if from + 1 < self.window_from {
            let gap = self.window_from - from - 1;
            if gap > self.settings.resume_journal_events {
                return failed(
                    self,
                    format!("{gap} events are older than the resume window and beyond ws.resume_journal_events"),
                );
            }
            let mut journal = Reader::new(&self.settings.dir, from + 1, Limit::Files);
            let upto = self.window_from - 1;
            let json = conn.json;
            let read = journal.read(upto, usize::MAX, |e, version| {
                if version == Version::V1 {
                    // Its order updates do not name their account.
                    return Err("the events to resume were journaled before the current format".into());
                }
                if account_of(e) == Some(account) {
                    let msg = ServerMsg { seq: base + e.seq, ts: e.ts, body: ServerBody::Event { event: e.kind } };
                    encode_queued(&mut out, &msg, json);
                    count += 1;
                    if out.len() > limit {
                        return Err("more than half of ws.queue_bytes to resume".into());
                    }
                }
                Ok(())
            });
            match read {
                Ok(n) if n as u64 == gap => {}
                Ok(n) => return failed(self, format!("the journal holds only {n} of the {gap} events to resume")),
                Err(e) => return failed(self, format!("cannot resume from the journal: {e}")),
            }
        }
        for k in self.window.iter().filter(|k| k.seq > from && k.account == account) {
            encode_queued(&mut out, &k.msg, conn.json);
            count += 1;
            if out.len() > limit {
                return failed(self, "more than half of ws.queue_bytes to resume; refetch over REST".into());
            }
        }
        self.stats.resumes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut st = conn.st.borrow_mut();
            if st.closing.is_some() {
                return;
            }
            st.pending.extend_from_slice(&out);
            st.pending_msgs += count as usize;
        }
        let msg = self.msg(ServerBody::Resumed { from: given, upto: base + last, count });
        self.send(conn, &msg);
    }

    /// Takes in every event the journal has made durable since the last call, in order.
    pub fn pump(&mut self) {
        let Some(mut reader) = self.reader.take() else { return };
        loop {
            match reader.read(u64::MAX, PUMP_BATCH, |e, _| {
                self.on_event(e);
                Ok(())
            }) {
                Ok(n) if n == PUMP_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    // Account streams would have a hole: close them so their clients resume (and
                    // learn that the window starts after the hole).
                    let upto = reader.limit();
                    log::error!("ws: cannot read events {}..={upto} from the journal: {e}", self.next_seq);
                    self.next_seq = upto + 1;
                    self.window.clear();
                    self.window_from = upto + 1;
                    for c in self.conns.values() {
                        if c.st.borrow().account {
                            c.close(close::INTERNAL, "events lost on the way to the stream; resume");
                        }
                    }
                    reader = Reader::new(&self.settings.dir, upto + 1, Limit::Durable(self.marks.clone()));
                    break;
                }
            }
        }
        self.reader = Some(reader);
        self.write_ready();
    }

    /// Takes in one event.
    fn on_event(&mut self, e: &Event) {
        let account = account_of(e);
        self.directory.apply(e);
        self.next_seq = e.seq + 1;
        match e.kind {
            EventKind::Quote(q) => self.on_quote(e, usize::from(q.symbol.0)),
            EventKind::KeyRevoked { key } => {
                for c in self.conns.values() {
                    if c.st.borrow().key.is_some_and(|k| k.id == key) {
                        c.close(close::REVOKED, &Code::AuthKeyRevoked.reason());
                    }
                }
            }
            _ => {
                let Some(account) = account else { return };
                let msg = self.event_msg(e, ServerBody::Event { event: e.kind });
                self.publish(account, e.seq, msg);
                if let EventKind::Fill { account, symbol, position: p, .. } = e.kind {
                    let body = ServerBody::Position {
                        account: account.0,
                        symbol: symbol.0,
                        qty: p.qty,
                        cost: p.cost,
                        realized: p.realized,
                        fees: p.fees,
                    };
                    let msg = self.event_msg(e, body);
                    self.publish(account, e.seq, msg);
                }
            }
        }
    }

    fn on_quote(&mut self, e: &Event, sym: usize) {
        let Some(subs) = self.by_symbol.get(sym).filter(|s| !s.is_empty()) else { return };
        // Encoded once in each mode (an encoding costs less than a single delivery): a dirty bit
        // is only set for the subscribers below.
        let msg = self.event_msg(e, ServerBody::Event { event: e.kind });
        for json in [false, true] {
            self.entry.clear();
            encode_queued(&mut self.entry, &msg, json);
            let latest = &mut self.latest[sym][usize::from(json)];
            latest.frame.clear();
            single_frame(&mut latest.frame, &mut self.frame, json, &self.entry[4..]);
            // The message ends the payload, but for the `]` of a JSON array.
            let end = latest.frame.len() - usize::from(json);
            latest.msg = end - (self.entry.len() - 4)..end;
        }
        for c in subs {
            {
                let mut st = c.st.borrow_mut();
                set_bit(&mut st.dirty, sym, true);
                st.any_dirty = true;
            }
            self.mark_ready(c);
        }
    }

    /// Keeps an account message (of the event journaled under `seq`) for resume and queues it
    /// for the account's subscribers.
    fn publish(&mut self, account: AccountId, seq: u64, msg: ServerMsg) {
        // Encoded at most once per mode, for the first subscriber that reads it.
        let (mut bin, mut json) = (Vec::new(), Vec::new());
        if let Some(subs) = self.by_account.get(&account) {
            for id in subs {
                let Some(c) = self.conns.get(id) else { continue };
                let entry = if c.json { &mut json } else { &mut bin };
                if entry.is_empty() {
                    encode_queued(entry, &msg, c.json);
                }
                if self.enqueue(c, entry) {
                    self.mark_ready(c);
                }
            }
        }
        self.window.push_back(Kept { seq, account, msg });
        while self.window.len() > self.settings.resume_events {
            if let Some(k) = self.window.pop_front() {
                // Messages of one event share its seq: the window is whole from the next one.
                self.window_from = k.seq + 1;
            }
        }
        while self.window.front().is_some_and(|k| k.seq < self.window_from) {
            self.window.pop_front();
        }
    }

    /// Builds the next frames for `conn` into `out` (WebSocket frames, ready to write): the rest
    /// of a frame a pass began, control frames, then queued messages and changed quotes in at
    /// most one data frame. Returns `false` when the connection must close after `out` is
    /// written.
    pub fn next_frames(&mut self, conn: &Conn, out: &mut Vec<u8>) -> bool {
        let mut st = conn.st.borrow_mut();
        drain_into(out, &mut st.unsent);
        drain_into(out, &mut st.control);
        if let Some((code, reason)) = st.closing.clone() {
            frame::write_close(out, code, &reason);
            return false;
        }
        if st.pending_msgs == 0 && !st.any_dirty {
            return true;
        }
        let (max_msgs, max_bytes) = (self.settings.frame_messages, self.settings.frame_bytes);
        let json = conn.json;
        start_frame(&mut self.frame, json);
        let mut count = 0usize;
        let add = |frame: &mut Vec<u8>, count: &mut usize, bytes: &[u8]| {
            add_message(frame, json, *count, bytes);
            *count += 1;
        };
        let mut used = 0;
        while st.pending_msgs > 0 && count < max_msgs {
            let len = u32::from_le_bytes(st.pending[used..used + 4].try_into().unwrap_or_default()) as usize;
            if count > 0 && self.frame.len() + len > max_bytes {
                break;
            }
            add(&mut self.frame, &mut count, &st.pending[used + 4..used + 4 + len]);
            used += 4 + len;
            st.pending_msgs -= 1;
        }
        st.pending.drain(..used);
        if st.pending.is_empty() && st.pending.capacity() > IDLE_BUFFER {
            // An idle connection holds no buffer worth the name (a welcome lists every symbol).
            st.pending = Vec::new();
        } else if st.pending.capacity() > 64 * 1024 && st.pending.len() < 16 * 1024 {
            st.pending.shrink_to(16 * 1024);
        }
        if st.pending_msgs == 0 && st.any_dirty {
            let mut left = false;
            for w in 0..st.dirty.len() {
                while st.dirty[w] != 0 {
                    let b = st.dirty[w].trailing_zeros() as usize;
                    let sym = w * 64 + b;
                    let Some(bytes) = self.latest[sym][usize::from(conn.json)].msg() else {
                        st.dirty[w] &= !(1 << b);
                        continue;
                    };
                    if count >= max_msgs || (count > 0 && self.frame.len() + bytes.len() > max_bytes) {
                        left = true;
                        break;
                    }
                    add(&mut self.frame, &mut count, bytes);
                    st.dirty[w] &= !(1 << b);
                }
                if left {
                    break;
                }
            }
            st.any_dirty = left;
        }
        finish_frame(out, &mut self.frame, json, count);
        self.stats.messages.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
        self.stats.frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Periodic checks: pings, pong and auth deadlines, closes that do not finish.
    pub fn tick(&mut self, now: Instant) {
        for c in self.conns.values() {
            let mut st = c.st.borrow_mut();
            if let Some(since) = st.closing_since {
                if now.duration_since(since) > self.settings.pong_timeout {
                    // The client does not read even the close frame: drop the socket.
                    // SAFETY: `fd` is the connection's open socket, owned by its tasks, which
                    // see the shutdown as an error and end.
                    unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
                }
                continue;
            }
            if st.key.is_none() {
                if now.duration_since(st.opened) > self.settings.auth_timeout {
                    drop(st);
                    c.close(close::AUTH, &Code::AuthTimeout.reason());
                }
                continue;
            }
            match st.ping_sent {
                Some(sent) if st.last_heard < sent => {
                    if now.duration_since(sent) > self.settings.pong_timeout {
                        drop(st);
                        c.close(close::PONG_TIMEOUT, "pong timeout");
                    }
                }
                _ => {
                    let since = st.ping_sent.map_or(st.opened, |p| p.max(st.last_heard));
                    if now.duration_since(since) >= self.settings.ping {
                        st.ping_sent = Some(now);
                        frame::write_frame(&mut st.control, Kind::Ping, b"sg");
                        drop(st);
                        c.wake();
                    }
                }
            }
        }
    }
}

/// The account stream an event goes to: its account's, but for keys, the cluster's markers and
/// checkpoints, which go to none.
fn account_of(e: &Event) -> Option<AccountId> {
    match e.kind {
        EventKind::KeyAdded { .. }
        | EventKind::AccountAdopted { .. }
        | EventKind::AccountReleased { .. }
        | EventKind::AccountRestored { .. }
        | EventKind::PositionRestored { .. }
        | EventKind::OrderRestored { .. } => None,
        kind => kind.account(),
    }
}

/// Starts a data frame's payload in `frame`: `[` of a JSON array, or the binary header.
fn start_frame(frame: &mut Vec<u8>, json: bool) {
    frame.clear();
    if json {
        frame.push(b'[');
    } else {
        frame.extend_from_slice(&VERSION.to_le_bytes());
        frame.extend_from_slice(&[0, 0]);
    }
}

/// Adds message number `index` (its encoded bytes) to a payload begun with [`start_frame`].
fn add_message(frame: &mut Vec<u8>, json: bool, index: usize, msg: &[u8]) {
    if json {
        if index > 0 {
            frame.push(b',');
        }
    } else {
        frame.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    }
    frame.extend_from_slice(msg);
}

/// Closes a payload of `count` messages and appends it to `out` as a WebSocket frame.
fn finish_frame(out: &mut Vec<u8>, frame: &mut Vec<u8>, json: bool, count: usize) {
    if json {
        frame.push(b']');
        frame::write_frame(out, Kind::Text, frame);
    } else {
        frame[2..FRAME_HEADER].copy_from_slice(&(count as u16).to_le_bytes());
        frame::write_frame(out, Kind::Binary, frame);
    }
}

/// Appends a data frame of the one message `msg` to `out`, its payload built in `scratch`.
fn single_frame(out: &mut Vec<u8>, scratch: &mut Vec<u8>, json: bool, msg: &[u8]) {
    start_frame(scratch, json);
    add_message(scratch, json, 0, msg);
    finish_frame(out, scratch, json, 1);
}

/// Appends `msg` as a queue entry: `u32 length ‖ message`, the message in rkyv or JSON.
fn encode_queued(out: &mut Vec<u8>, msg: &ServerMsg, json: bool) {
    if json {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_json(out, msg);
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    } else {
        encode_entry(out, msg);
    }
}

/// Moves the bytes of `buf` to the end of `out`; `buf` keeps no more than [`IDLE_BUFFER`].
fn drain_into(out: &mut Vec<u8>, buf: &mut Vec<u8>) {
    out.extend_from_slice(buf);
    if buf.capacity() > IDLE_BUFFER {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

/// The one bit set in `words`, if exactly one is.
fn single_bit(words: &[u64]) -> Option<usize> {
    let mut found = None;
    for (w, &word) in words.iter().enumerate() {
        match (word.count_ones(), found) {
            (0, _) => {}
            (1, None) => found = Some(w * 64 + word.trailing_zeros() as usize),
            _ => return None,
        }
    }
    found
}

fn bit(words: &[u64], i: usize) -> bool {
    words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bit(words: &mut [u64], i: usize, on: bool) {
    if let Some(w) = words.get_mut(i / 64) {
        if on {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }
}

fn trim(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
