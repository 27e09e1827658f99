//! The hot core's state: the engine with its (gated) venue, the journal, per-key rate limiters,
//! metrics and the admin token. Owned by one executor; requests borrow it for the length of one
//! synchronous call, never across an `.await`.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::config::Config;
use crate::engine::account::{AccountName, LimitOverrides, Roles, Tier};
use crate::engine::market::Quote;
use crate::engine::symbol::{SymbolSpec, SymbolTable};
use crate::engine::types::{AccountId, KeyId, Nanos, SymbolId, SECOND};
use crate::engine::{Engine, EngineConfig};
use crate::fixed::MONEY_DECIMALS;
use crate::journal::{self, Journal, Replayed};
use crate::metrics::{Gauges, Metrics};
use crate::rate_limit::SlidingWindow;
use crate::venue::{Gated, NoVenue, PaperConfig, PaperVenue, Venue};

/// The engine type the node runs.
pub type NodeEngine = Engine<Gated<PaperVenue>>;

/// The hot core's state.
pub struct Node {
    /// The engine.
    pub engine: NodeEngine,
    /// Encoded events on their way to disk.
    pub journal: Journal,
    /// Metrics.
    pub metrics: Metrics,
    /// Request limiters, indexed by key id − 1.
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
    /// Where the offload to PostgreSQL stands (when `postgres.url` is set).
    pub offload: Option<std::sync::Arc<crate::postgres::offload::Shared>>,
    /// The history thread (when `postgres.url` is set).
    pub history: Option<crate::history::History>,
    /// The WebSocket stream's counters.
    pub ws: Option<std::sync::Arc<crate::ws::WsStats>>,
    /// How the snapshot thread is doing.
    pub snapshots: std::sync::Arc<crate::journal::snapshot::Health>,
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
    }
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
    }
}

impl Node {
    /// The node of a validated configuration, its state rebuilt from its data directory (a
    /// torn tail cut; damage refused unless `repair`) and its journal open for appending.
    pub fn open(cfg: &Config, admin_token: String, now: Nanos, repair: bool) -> Result<(Node, Replayed), String> {
        let symbols = symbol_table(cfg);
        let venue = PaperVenue::new(
            PaperConfig {
                slippage_bps: cfg.venue.slippage_bps,
                fee_bps: cfg.venue.fee_bps,
                latency: cfg.venue.latency_us * 1_000,
            },
            symbols.all(),
        );
        let gated = Gated::new(venue, symbols.clone());
        let mut engine = Engine::new(engine_config(cfg), symbols, tiers(cfg), gated);
        let replayed = journal::replay(&mut engine, &cfg.journal.dir, repair)?;
        let journal = Journal::open(journal_options(cfg), &replayed.resume, replayed.last_seq)
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
            offload: None,
            history: None,
            ws: None,
            snapshots: std::sync::Arc::default(),
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
        self.journal.append(events);
        self.release_to_venue();
    }

    /// The journal made everything up to `seq` durable (a sync completed under `always`):
    /// requests waiting for it are woken, and the orders and cancels it covers go to the venue.
    pub fn on_durable(&mut self, seq: u64) {
        self.journal.mark_durable(seq);
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

    /// Sizes what depends on the number of keys (after a replay).
    pub fn keys_changed(&mut self) {
        let need = self.engine.keys_len();
        if self.limiters.len() < need {
            self.limiters.resize(need, SlidingWindow::per_minute());
        }
    }

    /// Opens an account and gives it a key (by hash). Used for the demo account and the admin API.
    pub fn open_account(
        &mut self,
        name: AccountName,
        tier: &str,
        cash: i64,
        overrides: LimitOverrides,
        now: Nanos,
    ) -> Option<AccountId> {
        let tier = self.engine.tier_by_name(tier)?;
        let id = self.engine.create_account(name, tier, cash, overrides, now).ok();
        self.after_command();
        id
    }

    /// Adds a key (by its hash) to an account.
    pub fn add_key(&mut self, account: AccountId, hash: [u8; 32], roles: Roles, now: Nanos) -> Option<KeyId> {
        let id = self.engine.add_key(account, hash, roles, now).ok();
        self.after_command();
        self.keys_changed();
        id
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
                let earlier: Vec<KeyId> = (1..=self.engine.keys_len() as u32)
                    .filter_map(|k| self.engine.key(KeyId(k)))
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
                self.open_account(name, &cfg.demo.tier, cash, LimitOverrides::default(), now)?
            }
        };
        self.add_key(id, key_hash, Roles { feed: true }, now)?;
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
}

impl Node {
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
            Some(seq) => node.borrow_mut().on_durable(seq),
            None => break,
        }
    }
}
