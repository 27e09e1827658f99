//! The hot core's state — the engine with its (gated) venue, the journal, per-key rate limiters,
//! metrics and the admin token — and the life cycle of one request ([`serve`]): in flight,
//! routed (authenticated, rate-limited, its command run and journaled), held until what it shows
//! is durable, completed once the venue saw its orders, answered. HTTP and the WebSocket stream
//! both call [`serve`]; the API's routes ([`Routes`]) are the one part it is handed.
//!
//! The node is owned by one executor; requests borrow it for the length of one synchronous call,
//! never across an `.await`.

pub mod request;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Instant;

use crate::auth::{hash_key, key_from_headers};
use crate::config::Config;
use crate::engine::account::{AccountName, KeyRecord, LimitOverrides, Roles, Tier};
use crate::engine::market::Quote;
use crate::engine::order::OrderStatus;
use crate::engine::symbol::{SymbolSpec, SymbolTable};
use crate::engine::types::{AccountId, KeyId, Nanos, OrderId, SymbolId, Tif, SECOND};
use crate::engine::{Engine, EngineConfig};
use crate::error::Code;
use crate::error::{ApiError, Detail, CLUSTER_UNAVAILABLE, INVALID_KEY, JOURNAL_STOPPED, MISSING_KEY, REVOKED_KEY};
use crate::fixed::MONEY_DECIMALS;
use crate::journal::{self, Journal, Replayed};
use crate::json::JsonStr;
use crate::metrics::{Gauges, Metrics, Route};
use crate::rate_limit::SlidingWindow;
use crate::venue::fix::session::SessionConfig;
use crate::venue::{FixSettings, FixVenue, Gated, NoVenue, NodeVenue, PaperConfig, PaperVenue, Venue};
pub use request::{Elsewhere, Request, Response};

/// A cluster, as the node uses it: ids for what it creates, the other nodes for what it does not
/// hold, and the registry its admin answers wait for. Implemented by `cluster`; a standalone node
/// has none. It is made on the main thread and used on the hot core: what it keeps per thread
/// (connections to the other nodes) it keeps in that thread.
pub trait Cluster: Send + Sync {
    /// Serves `req` on the node that holds what `to` names and hands back that node's answer,
    /// or why it could not.
    fn forward(
        &self,
        to: Elsewhere,
        req: &Request<'_>,
    ) -> Pin<Box<dyn Future<Output = Result<Response, ApiError<'static>>>>>;

    /// This node's id, which the keys it makes carry (so that nginx can send them here).
    fn node_id(&self) -> &str;

    /// An id for an account made here; `None` while Redis cannot be reached.
    fn account_id(&self) -> Option<AccountId>;

    /// An id for a key made here; `None` while Redis cannot be reached.
    fn key_id(&self) -> Option<KeyId>;

    /// Waits until the registry in Redis holds what the journal holds up to `seq`; `false` when
    /// it did not within the cluster's bound.
    fn registered(&self, seq: u64) -> Pin<Box<dyn Future<Output = bool>>>;

    /// What this node's quote simulator does now.
    fn simulator(&self) -> Simulator;

    /// Sends quotes to every node of the cluster, in the one order they all apply them in (this
    /// node too: it applies them as they come back); `Err` when Redis cannot take them.
    fn publish_quotes(&self, quotes: Vec<Quote>) -> Pin<Box<dyn Future<Output = Result<(), ApiError<'static>>>>>;

    /// Resolves with how far Redis has this node's journal once that passes `after`; `None` when
    /// it never will (the replication stopped, or this node is stale).
    fn replicated_after(&self, after: u64) -> Pin<Box<dyn Future<Output = Option<u64>>>>;

    /// Another node took some of this node's accounts: it must not act for any, and stops.
    fn stale(&self) -> bool;

    /// Whether this node may act for its accounts now (its lease surely holds, it is not stale).
    fn acting(&self) -> bool;

    /// Whether accounts that moved here are still on their way to the hot core.
    fn adopting(&self) -> bool;
}

/// What a node's quote simulator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simulator {
    /// Feeds this node (a standalone node, or a cluster node while Redis is away).
    Local,
    /// Feeds the whole cluster (this node was elected to).
    Cluster,
    /// Nothing: another node feeds the cluster.
    Idle,
}

/// The engine type the node runs.
pub type NodeEngine = Engine<Gated<NodeVenue>>;

/// The hot core's state.
pub struct Node {
    /// The engine.
    pub engine: NodeEngine,
    /// Encoded events on their way to disk.
    pub journal: Journal,
    /// Metrics.
    pub metrics: Metrics,
    /// Request limiters, one per key, in the engine's order of keys.
    pub(crate) limiters: Vec<SlidingWindow>,
    /// The admin API token.
    pub(crate) admin_token: String,
    /// Node name.
    pub(crate) name: String,
    /// Requests in progress (maintained by the HTTP layer).
    pub inflight: usize,
    /// Requests in progress beyond which the API answers 503.
    pub max_inflight: usize,
    /// Open connections (maintained by the HTTP layer).
    pub connections: usize,
    /// Set when shutdown begins: `/ready` turns 503.
    pub draining: bool,
    pub(crate) started_at: Nanos,
    /// How the snapshot thread is doing.
    pub snapshots: std::sync::Arc<crate::journal::snapshot::Health>,
    /// The cluster this node is a member of (none: standalone).
    pub cluster: Option<std::sync::Arc<dyn Cluster>>,
    /// Answers waiting for the venue's first word on their order, woken by each command.
    venue_waiters: Vec<std::task::Waker>,
    /// The connection of a remote venue, waiting for bytes to write.
    link_waiter: Option<std::task::Waker>,
    /// How long an answer waits for a remote venue's first word on its order.
    pub(crate) answer_timeout: std::time::Duration,
}

/// Builds the symbol table from a validated configuration.
pub fn symbol_table(cfg: &Config) -> SymbolTable {
    SymbolTable::new(
        cfg.symbols
            .iter()
            .enumerate()
            .map(|(i, s)| SymbolSpec {
                id: SymbolId(i as u16),
                name: s.name.clone(),
                price_decimals: s.price_decimals,
                qty_decimals: s.qty_decimals,
                tick: s.tick.parse(s.price_decimals).unwrap_or(1),
                lot: s.lot.parse(s.qty_decimals).unwrap_or(1),
                max_order_qty: s.max_order_qty.parse(s.qty_decimals).unwrap_or(1),
            })
            .collect(),
    )
}

/// The tiers of a validated configuration.
pub fn tiers(cfg: &Config) -> Vec<Tier> {
    cfg.tiers.iter().map(|(name, t)| Tier { name: name.clone(), limits: t.limits() }).collect()
}

/// The engine settings of a validated configuration.
pub fn engine_config(cfg: &Config) -> EngineConfig {
    EngineConfig {
        price_collar_bps: cfg.risk.price_collar_bps,
        max_quote_age: cfg.risk.max_quote_age_ms * 1_000_000,
        idempotency_capacity: cfg.engine.idempotency_capacity,
        idempotency_ttl: cfg.engine.idempotency_ttl_secs * SECOND,
        orders_per_account: cfg.engine.orders_per_account,
        order_id_base: cfg.cluster.order_id_base(),
    }
}

/// The venue of a validated configuration.
fn node_venue(cfg: &Config, symbols: &SymbolTable) -> NodeVenue {
    let v = &cfg.venue;
    if v.kind == "fix" {
        let settings = FixSettings {
            session: SessionConfig {
                sender: v.sender_comp_id.clone(),
                target: v.target_comp_id.clone(),
                heartbeat: v.heartbeat_secs * SECOND,
                logon_timeout: v.logon_timeout_ms * 1_000_000,
            },
            account: (!v.account.is_empty()).then(|| v.account.clone()),
            symbols: cfg.venue_symbols(),
        };
        return NodeVenue::Fix(Box::new(FixVenue::new(settings, symbols.all())));
    }
    let paper = PaperConfig { slippage_bps: v.slippage_bps, fee_bps: v.fee_bps, latency: v.latency_us * 1_000 };
    NodeVenue::Paper(PaperVenue::new(paper, symbols.all()))
}

/// An engine of a follower (snapshots, offload, history, the stream) for a validated
/// configuration: it applies the hot core's events and never calls a venue.
pub fn follower_engine(cfg: &Config) -> Engine<NoVenue> {
    Engine::new(engine_config(cfg), symbol_table(cfg), tiers(cfg), NoVenue)
}

/// The journal's settings in a validated configuration; its threads run on the first fan-out
/// core when the topology pins.
pub fn journal_options(cfg: &Config) -> journal::Options {
    let core = cfg.topology.pin.then(|| cfg.topology.fanout[0]);
    let on_thread_start: Option<std::sync::Arc<dyn Fn() + Send + Sync>> = core.map(|c| {
        std::sync::Arc::new(move || {
            crate::cores::pin_current_thread(c);
        }) as std::sync::Arc<dyn Fn() + Send + Sync>
    });
    journal::Options {
        dir: cfg.journal.dir.clone(),
        fsync: cfg.journal.fsync,
        fsync_interval: std::time::Duration::from_millis(cfg.journal.fsync_interval_ms),
        segment_bytes: cfg.journal.segment_bytes,
        on_thread_start,
        confirmed: None,
    }
}

impl Node {
    /// The node of a validated configuration, its state rebuilt from its data directory (a
    /// torn tail cut; damage refused unless `repair`) and its journal open for appending.
    /// `replicated`: answers wait until the cluster has their events too, which it had up to
    /// this sequence number (see [`journal::Options::confirmed`]).
    pub fn open(
        cfg: &Config,
        admin_token: String,
        now: Nanos,
        repair: bool,
        replicated: Option<u64>,
    ) -> Result<(Node, Replayed), String> {
        let symbols = symbol_table(cfg);
        let venue = node_venue(cfg, &symbols);
        let gated = Gated::new(venue, symbols.clone());
        let mut engine = Engine::new(engine_config(cfg), symbols, tiers(cfg), gated);
        let replayed = journal::replay(&mut engine, &cfg.journal.dir, repair)?;
        let opts = journal::Options { confirmed: replicated, ..journal_options(cfg) };
        let journal = Journal::open(opts, &replayed.resume, replayed.last_seq)
            .map_err(|e| format!("journal: cannot open {} for appending: {e}", cfg.journal.dir.display()))?;
        let mut node = Node {
            engine,
            journal,
            metrics: Metrics::new(),
            limiters: Vec::new(),
            admin_token,
            name: cfg.node.name.clone(),
            inflight: 0,
            max_inflight: cfg.http.max_inflight,
            connections: 0,
            draining: false,
            started_at: now,
            snapshots: std::sync::Arc::default(),
            cluster: None,
            venue_waiters: Vec::with_capacity(1024),
            link_waiter: None,
            answer_timeout: std::time::Duration::from_millis(cfg.venue.answer_timeout_ms),
        };
        node.keys_changed();
        Ok((node, replayed))
    }

    /// Journals the events of the last engine command; venue calls it made wait for them. Under
    /// `interval` and `never` they are durable at once, and the venue has them when this returns.
    pub(crate) fn after_command(&mut self) {
        let last = self.engine.last_seq();
        self.engine.venue_mut().stamp(last);
        let events = self.engine.events();
        self.metrics.events += events.len() as u64;
        let changed = !events.is_empty();
        self.journal.append(events);
        self.release_to_venue();
        if changed {
            for w in self.venue_waiters.drain(..) {
                w.wake();
            }
        }
        if self.link_waiter.is_some() && self.venue_output_waiting() {
            if let Some(w) = self.link_waiter.take() {
                w.wake();
            }
        }
    }

    /// Whether a remote venue has bytes to write, or its connection is to be closed.
    pub fn venue_output_waiting(&mut self) -> bool {
        self.engine.venue_mut().inner_mut().fix_mut().is_some_and(|f| !f.output().is_empty() || f.broken())
    }

    /// The connection of a remote venue waits (with `waker`) for bytes to write.
    pub fn wait_for_venue_output(&mut self, waker: &std::task::Waker) {
        self.link_waiter = Some(waker.clone());
    }

    /// Whether new orders can go to the venue now (a FIX venue's session is logged on).
    pub fn venue_available(&self) -> bool {
        self.engine.venue().inner().fix().is_none_or(|f| f.available())
    }

    /// The journal made everything up to `seq` durable on this machine (a sync completed under
    /// `always`): requests waiting for it are woken, and the orders and cancels it covers go to
    /// the venue, unless the cluster must have them first.
    pub fn on_local(&mut self, seq: u64) {
        self.journal.mark_local(seq);
        self.release_to_venue();
    }

    /// The cluster has every event up to `seq` (under `cluster.ack = "replicated"`): what is
    /// also durable here is acknowledged and goes to the venue.
    pub fn on_replicated(&mut self, seq: u64) {
        self.journal.confirm(seq);
        self.release_to_venue();
    }

    /// Hands the venue the orders and cancels whose events are durable; its answers are new
    /// events, journaled in turn.
    fn release_to_venue(&mut self) {
        if self.engine.venue_mut().release(self.journal.durable()) {
            self.engine.poll_venue(crate::clock::now());
            self.after_command();
        }
    }

    /// Finds the request's key (headers first, then a body `passphrase`) and counts the request
    /// against the key's per-minute limit (its `X-RateLimit-*` values go into `resp`).
    pub fn authenticate<'a>(
        &mut self,
        req: &Request<'a>,
        passphrase: Option<JsonStr<'a>>,
        resp: &mut Response,
        now: Nanos,
    ) -> Result<KeyRecord, ApiError<'a>> {
        let key = key_from_headers(req.authorization, req.x_api_key)
            .or(passphrase.map(|p| p.raw()))
            .filter(|k| !k.is_empty())
            .ok_or(MISSING_KEY)?;
        let hash = hash_key(key);
        let Some(&record) = self.engine.key_by_hash(&hash) else {
            match &self.cluster {
                // A key of another node of the cluster: that node serves the request.
                Some(_) if !req.forwarded => resp.elsewhere = Some(Elsewhere::Key(hash)),
                // Sent here as the owner's while the account's history is still on its way.
                Some(c) if c.adopting() => return Err(crate::error::OWNER_UNAVAILABLE),
                // Sent here as the owner's by a node that knew an owner before the account moved.
                Some(_) => return Err(crate::error::MISDIRECTED),
                None => {}
            }
            return Err(INVALID_KEY);
        };
        if record.revoked {
            return Err(REVOKED_KEY);
        }
        // A cluster node whose lease lapsed (paused, cut off) may have lost the account to
        // another node: it acts for none until it knows.
        if self.cluster.as_ref().is_some_and(|c| !c.acting()) {
            return Err(crate::error::NOT_OWNER);
        }
        resp.authenticated = true;
        let limit = self.engine.account(record.account).map_or(0, |a| a.limits.requests_per_minute);
        let Some(limiter) = self.engine.key_position(record.id).and_then(|i| self.limiters.get_mut(i)) else {
            return Err(INVALID_KEY);
        };
        let admission = limiter.admit(now, limit);
        resp.rate = Some(admission);
        if !admission.allowed {
            return Err(ApiError::with(Code::RateLimited, Detail::RetryAfter(admission.retry_after_secs)));
        }
        Ok(record)
    }

    /// Sizes what depends on the number of keys (after a replay).
    pub fn keys_changed(&mut self) {
        let need = self.engine.keys_len();
        if self.limiters.len() < need {
            self.limiters.resize(need, SlidingWindow::per_minute());
        }
    }

    /// Opens an account, under an id from the cluster on a cluster node. Used for the demo
    /// account and the admin API.
    pub fn open_account(
        &mut self,
        name: AccountName,
        tier: &str,
        cash: i64,
        overrides: LimitOverrides,
        now: Nanos,
    ) -> Result<AccountId, ApiError<'static>> {
        let internal = ApiError::new(Code::Internal, "the account could not be created");
        let tier = self.engine.tier_by_name(tier).ok_or(internal)?;
        let id = match &self.cluster {
            Some(c) => c.account_id().ok_or(CLUSTER_UNAVAILABLE)?,
            None => self.engine.next_account_id(),
        };
        let made = self.engine.create_account_as(id, name, tier, cash, overrides, now);
        self.after_command();
        made.map_err(|_| internal)
    }

    /// Adds a key (by its hash) to an account, under an id from the cluster on a cluster node.
    pub fn add_key(
        &mut self,
        account: AccountId,
        hash: [u8; 32],
        roles: Roles,
        now: Nanos,
    ) -> Result<KeyId, ApiError<'static>> {
        let id = match &self.cluster {
            Some(c) => c.key_id().ok_or(CLUSTER_UNAVAILABLE)?,
            None => self.engine.next_key_id(),
        };
        let added = self.engine.add_key_as(id, account, hash, roles, now);
        self.after_command();
        self.keys_changed();
        added.map_err(ApiError::reject)
    }

    /// Gives the demo account from `[demo]` the key whose hash is given, creating the account
    /// unless the journal already had it. The node keeps only hashes, so it cannot show an
    /// earlier key again: each start revokes the demo account's feed keys (the ones the node gave
    /// it) and adds a new one, so that one demo key works at a time. The flag says whether the
    /// account was created.
    pub fn create_demo(&mut self, cfg: &Config, key_hash: [u8; 32], now: Nanos) -> Option<(AccountId, bool)> {
        let name = AccountName::new(&cfg.demo.name)?;
        let existing = self.engine.accounts().iter().find(|a| a.name == name).map(|a| a.id);
        let id = match existing {
            Some(id) => {
                let earlier: Vec<KeyId> = (self.engine.keys().iter())
                    .filter(|k| k.account == id && k.roles.feed && !k.revoked)
                    .map(|k| k.id)
                    .collect();
                for k in earlier {
                    self.engine.revoke_key(k, now);
                    self.after_command();
                }
                id
            }
            None => {
                let cash = cfg.demo.cash.parse(MONEY_DECIMALS).ok()?;
                self.open_account(name, &cfg.demo.tier, cash, LimitOverrides::default(), now).ok()?
            }
        };
        self.add_key(id, key_hash, Roles { feed: true }, now).ok()?;
        Some((id, existing.is_none()))
    }

    /// Applies a quote from the simulator or a feed.
    pub fn apply_quote(&mut self, q: Quote, now: Nanos) {
        self.engine.on_quote(q, now);
        self.metrics.quotes += 1;
        self.after_command();
    }

    /// Periodic work: the engine's, and records that waited for room in the journal.
    pub fn housekeeping(&mut self, now: Nanos) {
        if self.journal.pending_bytes() > 0 && self.journal.drain_overflow() {
            self.release_to_venue();
        }
        if self.journal.accepting() {
            self.engine.housekeeping(now);
            self.after_command();
        }
    }

    /// Gauges for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let e = &self.engine;
        Gauges {
            connections: self.connections,
            inflight: self.inflight,
            open_orders: e.accounts().iter().map(|a| a.open_orders.len()).sum(),
            venue_orders: e.venue().working_orders(),
            venue_held: e.venue().held(),
            orders_in_memory: e.orders_len(),
            idempotency_records: e.idempotency().len(),
            idempotency_evicted: e.idempotency().evicted,
            last_seq: e.last_seq(),
            durable_seq: self.journal.durable(),
            stable_seq: self.journal.stable(),
            journal_pending_bytes: self.journal.pending_bytes(),
            journal_healthy: self.journal.accepting(),
            journal: self.journal_counters(),
            accounts: e.accounts().len(),
            snapshots_failing: self.snapshots.failing(),
            snapshot_failures: self.snapshots.failures(),
            snapshot_last_seq: self.snapshots.last_seq(),
        }
    }

    /// The journal's counters as they are now.
    fn journal_counters(&self) -> crate::metrics::JournalCounters {
        let c = self.journal.counters();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        crate::metrics::JournalCounters {
            appends: get(&c.appends),
            bytes: get(&c.bytes),
            append_ns: get(&c.append_ns),
            append_max_ns: get(&c.append_max_ns),
            fsyncs: get(&c.fsyncs),
            fsync_ns: get(&c.fsync_ns),
            errors: get(&c.errors),
            segments: get(&c.segments),
        }
    }
}

/// The routes a node serves, handed to [`serve`] by the layer that owns them (the API).
pub trait Routes {
    /// Routes `req` and runs it against `node`: authenticates and rate-limits it, runs its
    /// command (whose events the node journals), and renders the answer into `resp`, or leaves
    /// it for later (`resp.pending`: once the venue saw the request's orders; `resp.later`: from
    /// another thread). Returns the route, for the metrics.
    fn route(&self, node: &mut Node, req: &Request<'_>, resp: &mut Response, now: Nanos) -> Route;

    /// Renders the answer left in `resp.pending`, now that the venue has seen what the request
    /// sent it.
    fn complete(&self, node: &mut Node, resp: &mut Response);

    /// Whether its requests count against `http.max_inflight` (the public API's do; the admin
    /// API has its own listener and budget).
    fn counted(&self) -> bool;

    /// The route a request is counted under when it never reached one (its body was refused).
    fn unrouted(&self) -> Route;
}

/// Serves one request, from its body's last byte to its answer in `resp`: the one life cycle of
/// every request, over HTTP or the WebSocket. `req` is `Err` when its body was already refused
/// (too large, too slow, unreadable).
///
/// Write before answer, and no answer ahead of the journal: an answer shows the engine's state as
/// it was when the answer was rendered, and that state may hold events of other requests still on
/// their way to disk (under `fsync = "always"`), so every answer but health, readiness and
/// metrics waits until the journal has made durable every event up to the moment it was
/// rendered, whether the request changed anything or not: a crash can then take back nothing an
/// answer showed. A request that sent orders or cancels is rendered once the venue has seen them
/// (the journal releases them) and waits again for the venue's answers. While the journal refuses
/// commands, a request that changed nothing is refused at once rather than held; if the journal
/// stops (shutdown with a failing disk), the answer says so: nothing was acknowledged or sent.
pub async fn serve<R: Routes + ?Sized>(
    node: &RefCell<Node>,
    routes: &R,
    req: Result<&Request<'_>, ApiError<'static>>,
    resp: &mut Response,
    now: Nanos,
) {
    let started = Instant::now();
    let _inflight = Inflight::enter(node, routes.counted());
    let req = match req {
        Ok(req) => req,
        Err(e) => {
            resp.reset();
            resp.error(&e);
            // What is left of an unread body would be taken for the next request.
            resp.close = true;
            let route = routes.unrouted();
            let mut node = node.borrow_mut();
            node.metrics.count(route, e.status);
            node.metrics.observe_request(route, started.elapsed().as_nanos() as u64);
            return;
        }
    };
    let (route, before) = {
        let mut n = node.borrow_mut();
        let before = n.engine.last_seq();
        (routes.route(&mut n, req, resp, now), before)
    };
    if let Some(to) = resp.elsewhere.take() {
        // Nothing was done here: the answer is the other node's, durable there.
        answer_elsewhere(node, route, to, req, resp).await;
        node.borrow_mut().metrics.observe_request(route, started.elapsed().as_nanos() as u64);
        return;
    }
    if !route.is_operational() {
        answer_when_durable(node, routes, resp, before).await;
    }
    if resp.registered {
        answer_when_registered(node).await;
    }
    if let Some(later) = resp.later.take() {
        answer_later(node, resp, later, req).await;
    }
    node.borrow_mut().metrics.observe_request(route, started.elapsed().as_nanos() as u64);
}

/// A request in progress, counted against `http.max_inflight` for as long as it lives, however
/// it ends.
struct Inflight<'a>(Option<&'a RefCell<Node>>);

impl<'a> Inflight<'a> {
    fn enter(node: &'a RefCell<Node>, counted: bool) -> Self {
        if !counted {
            return Inflight(None);
        }
        node.borrow_mut().inflight += 1;
        Inflight(Some(node))
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        if let Some(node) = self.0 {
            node.borrow_mut().inflight -= 1;
        }
    }
}

/// Holds the answer of a request that `Routes::route` served when the engine's last event was
/// `before` until what it shows is durable (see [`serve`]).
async fn answer_when_durable<R: Routes + ?Sized>(node: &RefCell<Node>, routes: &R, resp: &mut Response, before: u64) {
    let shown = node.borrow().engine.last_seq();
    {
        let node = node.borrow();
        if let Some(refusal) = node.journal.refusal().filter(|_| shown == before && node.journal.durable() < shown) {
            resp.reset();
            resp.error(&crate::error::journal_refused(refusal));
            return;
        }
    }
    let mut durable = wait_durable(node, shown).await;
    if durable {
        if let Some(order) = resp.pending.as_ref().and_then(request::Pending::order) {
            wait_venue(node, order).await;
        }
    }
    if durable && resp.pending.is_some() {
        let shown = {
            let mut node = node.borrow_mut();
            routes.complete(&mut node, resp);
            node.engine.last_seq()
        };
        durable = wait_durable(node, shown).await;
    }
    if !durable {
        resp.reset();
        resp.error(&JOURNAL_STOPPED);
    }
}

/// Serves the request on the node of the cluster that holds what it names, and answers with
/// that node's answer.
async fn answer_elsewhere(node: &RefCell<Node>, route: Route, to: Elsewhere, req: &Request<'_>, resp: &mut Response) {
    let Some(cluster) = node.borrow().cluster.clone() else { return };
    let started = Instant::now();
    let answered = cluster.forward(to, req).await;
    let took = answered.is_ok().then(|| started.elapsed().as_nanos() as u64);
    match answered {
        Ok(answer) => *resp = answer,
        Err(e) => {
            resp.reset();
            resp.error(&e);
        }
    }
    let mut node = node.borrow_mut();
    node.metrics.observe_forward(took);
    node.metrics.count(route, resp.status);
}

/// Holds an admin answer until the cluster's registry has what it shows, so that every node
/// knows of an account or key once its creation is answered.
async fn answer_when_registered(node: &RefCell<Node>) {
    let (cluster, shown) = {
        let n = node.borrow();
        (n.cluster.clone(), n.engine.last_seq())
    };
    if let Some(cluster) = cluster {
        if !cluster.registered(shown).await {
            log::warn!(
                "cluster: an admin change (seq {shown}) is not in Redis yet; it is registered when Redis is back"
            );
        }
    }
}

/// Waits (without blocking the core) for an answer another thread gives; an `If-None-Match`
/// that matches the answer's `ETag` gets 304 without a body.
async fn answer_later(node: &RefCell<Node>, resp: &mut Response, later: request::Later, req: &Request<'_>) {
    let Some(answer) = later.answer.await else {
        resp.reset();
        resp.error(&crate::error::HISTORY_BUSY);
        node.borrow_mut().metrics.count(later.route, resp.status);
        return;
    };
    let tagged = answer.etag.as_deref().map(str::as_bytes);
    let status =
        if answer.status == 200 && tagged.is_some() && tagged == req.if_none_match { 304 } else { answer.status };
    node.borrow_mut().metrics.count(later.route, status);
    resp.status = status;
    // Into the connection's own buffer, which later requests reuse.
    resp.body.clear();
    if status != 304 && req.method != request::Method::Head {
        resp.body.extend_from_slice(&answer.body);
    }
    resp.cache_control = answer.cache_control;
    resp.etag = answer.etag;
    resp.no_store = answer.cache_control.is_none();
}

/// Waits until a venue that answers later has settled what the answer shows of `order`, for at
/// most `venue.answer_timeout_ms`: an ioc order (market orders are) until it is final, any other
/// until it is neither `pending_new` nor `pending_cancel`. At once for a venue that answers as it
/// is handed orders.
async fn wait_venue(node: &RefCell<Node>, order: OrderId) {
    let timeout = {
        let n = node.borrow();
        if !n.engine.venue().answers_later() {
            return;
        }
        n.answer_timeout
    };
    let answered = std::future::poll_fn(|cx| {
        let mut n = node.borrow_mut();
        let settled = |o: &crate::engine::order::Order| match o.tif {
            Tif::Ioc => o.status.is_terminal(),
            _ => !matches!(o.status, OrderStatus::PendingNew | OrderStatus::PendingCancel),
        };
        if n.engine.order(order).is_none_or(settled) {
            return Poll::Ready(());
        }
        n.venue_waiters.push(cx.waker().clone());
        Poll::Pending
    });
    futures_lite::future::or(answered, glommio::timer::sleep(timeout)).await;
}

/// Waits until the journal has made `seq` durable. `false`: it never will (the journal closed).
pub fn wait_durable(node: &RefCell<Node>, seq: u64) -> impl Future<Output = bool> + '_ {
    DurableWait { node, seq }
}

struct DurableWait<'a> {
    node: &'a RefCell<Node>,
    seq: u64,
}

impl Future for DurableWait<'_> {
    type Output = bool;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        match self.node.borrow().journal.poll_durable(self.seq, cx.waker()) {
            Some(done) => Poll::Ready(done),
            None => Poll::Pending,
        }
    }
}

/// Under `cluster.ack = "replicated"`, a task on the hot core: acknowledges what Redis has of
/// the journal as it gets it (waking the answers that wait for it and releasing their orders to
/// the venue), until the replication stops.
pub async fn follow_replication(node: Rc<RefCell<Node>>, cluster: Arc<dyn Cluster>) {
    let mut after = node.borrow().journal.durable();
    while let Some(seq) = cluster.replicated_after(after).await {
        after = seq;
        node.borrow_mut().on_replicated(seq);
    }
}

/// Under `fsync = "always"`, a task on the hot core: marks durable what each of the journal's
/// syncs covers (waking the answers that wait for it and releasing their orders to the venue),
/// until the journal closes.
pub async fn follow_syncs(node: Rc<RefCell<Node>>) {
    loop {
        let synced = {
            let n = node.borrow();
            n.journal.synced_after(n.journal.durable())
        };
        match synced.await {
            Some(seq) => node.borrow_mut().on_local(seq),
            None => break,
        }
    }
}
