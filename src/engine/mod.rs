//! The trading engine: accounts, orders, positions, risk — and nothing else.
//!
//! Sans-I/O and single-writer: it never touches a socket, a file, a clock or a random number
//! generator. Each command takes the current time and returns a result; every state change it
//! makes is an [`event::Event`], applied through [`Engine::apply_event`] and left in
//! [`Engine::events`] for the caller to journal and publish. In steady state a command
//! allocates nothing: every map and buffer is sized when accounts are created.

pub mod account;
pub mod event;
pub mod idempotency;
pub mod market;
pub mod order;
pub mod position;
pub mod risk;
pub mod symbol;
pub mod types;
pub mod venue;

use std::collections::{HashMap, VecDeque};

use account::{Account, AccountName, AccountState, KeyRecord, LimitOverrides, Roles, StateReason, Tier, TierId};
use event::{Event, EventKind, OrderView, PositionView, SignalAnswer};
use idempotency::IdempotencyStore;
use market::Quote;
use order::{transition, Order, OrderEvent, OrderStatus};
use position::{Holding, Position};
use risk::{Reject, RejectCode, Unit};
use symbol::SymbolTable;
use types::{
    day_of, saturate, AccountId, IdHash, KeyId, Nanos, OrderId, OrderType, Side, SignalKey, SymbolId, Tag, Tif,
    MAX_BOOK_MONEY, MAX_ORDER_MONEY,
};

use crate::fixed::div_round;
use venue::{Execution, Venue, VenueReason};

/// Engine settings that are not per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Largest distance of a limit price from the mid, in basis points.
    pub price_collar_bps: u32,
    /// Oldest quote a market order may be priced from.
    pub max_quote_age: Nanos,
    /// Idempotency records kept at most.
    pub idempotency_capacity: usize,
    /// How long an idempotency record lives.
    pub idempotency_ttl: Nanos,
    /// Orders remembered per account (open ones are always kept).
    pub orders_per_account: usize,
    /// Order ids this engine gives are `order_id_base + 1 ..= order_id_base + ORDER_ID_SPAN`
    /// (0 on a standalone node; a cluster node's range of its own).
    pub order_id_base: u64,
}

/// How many order ids one engine gives (see [`EngineConfig::order_id_base`]).
pub const ORDER_ID_SPAN: u64 = 1 << 40;

/// How much to trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// A quantity (quantity units).
    Qty(i64),
    /// A notional (money units), converted at the order's reference price, rounded down to a lot.
    Notional(i64),
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Buy this much.
    Buy(Size),
    /// Sell this much.
    Sell(Size),
    /// Cancel working orders in the symbol and flatten the position.
    Close,
    /// Reach this signed position (counting working orders).
    Target(i64),
}

/// A signal or order, validated and in engine units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalSpec {
    /// Symbol.
    pub symbol: SymbolId,
    /// What to do.
    pub intent: Intent,
    /// Market or limit.
    pub order_type: OrderType,
    /// Limit price (price units), 0 for market orders.
    pub limit_price: i64,
    /// Time in force.
    pub tif: Tif,
    /// Strategy tag.
    pub strategy: Tag,
    /// Client signal id, for idempotency.
    pub signal_id: Option<SignalKey>,
}

/// The result of a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalOutcome {
    /// The answer.
    pub answer: SignalAnswer,
    /// Whether it is the recorded answer of an earlier signal with the same id.
    pub replayed: bool,
}

/// Everything the engine knows, as plain data: what a snapshot holds. Restoring it and applying
/// the events after `last_seq` gives the same engine as applying every event from the start.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EngineState {
    /// Sequence number of the last event applied.
    pub last_seq: u64,
    /// The next order id.
    pub next_order: u64,
    /// The UTC day of the last housekeeping.
    pub day: u32,
    /// Accounts, in id order.
    pub accounts: Vec<Account>,
    /// Keys, in id order.
    pub keys: Vec<KeyRecord>,
    /// Remembered orders, by id.
    pub orders: Vec<Order>,
    /// Last quote per symbol.
    pub quotes: Vec<Option<Quote>>,
    /// Idempotency records, oldest first: account, signal id, time, answer.
    pub idempotency: Vec<(AccountId, SignalKey, Nanos, SignalAnswer)>,
    /// Where the session with a remote venue got: next inbound, first unpromised outbound.
    pub venue_session: (u64, u64),
    /// Why the venue refused the remembered orders it refused, by order id.
    pub venue_reasons: Vec<(OrderId, VenueReason)>,
}

/// The engine. `V` is the venue orders go to.
pub struct Engine<V> {
    cfg: EngineConfig,
    symbols: SymbolTable,
    tiers: Vec<Tier>,
    accounts: Vec<Account>,
    keys: Vec<KeyRecord>,
    /// Where each account is in `accounts`, by id − 1 ([`NO_SLOT`]: none): ids are dense on a
    /// standalone node and sparse on a cluster's, where the cluster hands them out.
    account_slots: Vec<u32>,
    /// Where each key is in `keys`, by id − 1.
    key_slots: Vec<u32>,
    key_index: HashMap<[u8; 32], KeyId, IdHash>,
    /// Every open order and each account's recent finished ones: millions of entries with many
    /// accounts. A map that grows a step per insert, not all at once: moving a million orders
    /// to a bigger table in one go stalls the hot core for hundreds of milliseconds.
    orders: griddle::HashMap<OrderId, Order, IdHash>,
    quotes: Vec<Option<Quote>>,
    idempotency: IdempotencyStore,
    venue: V,
    /// Where the session with a remote venue got (see [`EventKind::VenueSession`]).
    venue_session: (u64, u64),
    /// The event that last reserved outgoing sequence numbers for that session.
    venue_reserved_at: u64,
    /// Why the venue refused orders it refused, for as long as the orders are remembered.
    venue_reasons: HashMap<OrderId, VenueReason, IdHash>,
    next_seq: u64,
    next_order: u64,
    day: u32,
    events: Vec<Event>,
    executions: Vec<Execution>,
}

impl<V: Venue> Engine<V> {
    /// An engine with no accounts.
    pub fn new(cfg: EngineConfig, symbols: SymbolTable, tiers: Vec<Tier>, venue: V) -> Self {
        let n = symbols.len();
        Engine {
            cfg,
            idempotency: IdempotencyStore::new(cfg.idempotency_capacity, cfg.idempotency_ttl),
            symbols,
            tiers,
            accounts: Vec::new(),
            keys: Vec::new(),
            account_slots: Vec::new(),
            key_slots: Vec::new(),
            key_index: HashMap::default(),
            orders: griddle::HashMap::default(),
            quotes: vec![None; n],
            venue,
            venue_session: (0, 0),
            venue_reserved_at: 0,
            venue_reasons: HashMap::default(),
            next_seq: 1,
            next_order: cfg.order_id_base + 1,
            day: 0,
            events: Vec::with_capacity(4096),
            executions: Vec::with_capacity(1024),
        }
    }

    // ----- snapshots -----

    /// A copy of the state (see [`EngineState`]).
    pub fn state(&self) -> EngineState {
        let mut orders: Vec<Order> = self.orders.values().copied().collect();
        orders.sort_unstable_by_key(|o| o.id);
        EngineState {
            last_seq: self.last_seq(),
            next_order: self.next_order,
            day: self.day,
            accounts: self.accounts.clone(),
            keys: self.keys.clone(),
            orders,
            quotes: self.quotes.clone(),
            idempotency: self.idempotency.records().collect(),
            venue_session: self.venue_session,
            venue_reasons: {
                let mut reasons: Vec<_> = self.venue_reasons.iter().map(|(id, r)| (*id, *r)).collect();
                reasons.sort_unstable_by_key(|(id, _)| *id);
                reasons
            },
        }
    }

    /// Replaces the state of an engine that has applied no event yet. Capacities are set as
    /// event by event, so the steady state allocates nothing after a restore either. Fails when
    /// the state does not fit this engine's symbols or tiers.
    pub fn restore(&mut self, state: EngineState) -> Result<(), String> {
        if state.quotes.len() != self.quotes.len() {
            return Err(format!(
                "the snapshot has {} symbols, the configuration {}: symbols may only be added at the end, with a new journal",
                state.quotes.len(),
                self.quotes.len()
            ));
        }
        if let Some(a) = state.accounts.iter().find(|a| usize::from(a.tier) >= self.tiers.len()) {
            return Err(format!("account {} has tier {}, which the configuration lacks", a.id, a.tier));
        }
        let history = self.cfg.orders_per_account.max(1);
        self.next_seq = state.last_seq + 1;
        self.next_order = state.next_order;
        self.day = state.day;
        self.orders.clear();
        self.make_order_room(state.accounts.len(), state.orders.len());
        self.orders.extend(state.orders.into_iter().map(|o| (o.id, o)));
        self.accounts = state.accounts;
        for a in &mut self.accounts {
            let open = (a.limits.max_open_orders as usize).clamp(1, 4096);
            a.open_orders.reserve(open.saturating_sub(a.open_orders.len()));
            a.recent_orders.reserve(history.saturating_sub(a.recent_orders.len()));
        }
        self.key_index.clear();
        self.key_index.extend(state.keys.iter().map(|k| (k.hash, k.id)));
        self.keys = state.keys;
        self.account_slots.clear();
        for (i, a) in self.accounts.iter().enumerate() {
            set_slot(&mut self.account_slots, a.id.0, i);
        }
        self.key_slots.clear();
        for (i, k) in self.keys.iter().enumerate() {
            set_slot(&mut self.key_slots, k.id.0, i);
        }
        self.quotes = state.quotes;
        for (account, signal, at, answer) in state.idempotency {
            self.idempotency.insert(account, signal, answer, at);
        }
        self.venue_session = state.venue_session;
        self.venue_reasons = state.venue_reasons.into_iter().collect();
        Ok(())
    }

    // ----- reading -----

    /// Events produced by the last command, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Sequence number of the last event.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The symbols.
    pub fn symbols(&self) -> &SymbolTable {
        &self.symbols
    }

    /// The tiers.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The tier called `name`.
    pub fn tier_by_name(&self, name: &str) -> Option<TierId> {
        self.tiers.iter().position(|t| t.name == name).map(|i| i as TierId)
    }

    /// Every account, in id order.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    /// One account.
    pub fn account(&self, id: AccountId) -> Option<&Account> {
        self.index_of(id).map(|i| &self.accounts[i])
    }

    /// Number of keys ever added.
    pub fn keys_len(&self) -> usize {
        self.keys.len()
    }

    /// Every key, in the order they were added.
    pub fn keys(&self) -> &[KeyRecord] {
        &self.keys
    }

    /// Where a key is in [`Engine::keys`]: a dense index for tables kept beside the engine.
    pub fn key_position(&self, id: KeyId) -> Option<usize> {
        slot(&self.key_slots, id.0)
    }

    /// One key.
    pub fn key(&self, id: KeyId) -> Option<&KeyRecord> {
        slot(&self.key_slots, id.0).map(|i| &self.keys[i])
    }

    /// The key whose SHA-256 is `hash`, revoked or not.
    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&KeyRecord> {
        self.key_index.get(hash).and_then(|id| self.key(*id))
    }

    /// One order, if still remembered.
    pub fn order(&self, id: OrderId) -> Option<&Order> {
        self.orders.get(&id)
    }

    /// The sequence number of the event that last reserved outgoing sequence numbers for the
    /// session with a remote venue: nothing is sent under them before it is durable.
    pub fn venue_reserved_at(&self) -> u64 {
        self.venue_reserved_at
    }

    /// Why the venue refused a remembered order, when it said.
    pub fn venue_reason(&self, id: OrderId) -> Option<VenueReason> {
        self.venue_reasons.get(&id).copied()
    }

    /// Orders remembered in the engine.
    pub fn orders_len(&self) -> usize {
        self.orders.len()
    }

    /// Last quote of a symbol.
    pub fn quote(&self, symbol: SymbolId) -> Option<&Quote> {
        self.quotes.get(usize::from(symbol.0)).and_then(Option::as_ref)
    }

    /// The venue.
    pub fn venue(&self) -> &V {
        &self.venue
    }

    /// The venue, mutably (for adapters that need to be driven).
    pub fn venue_mut(&mut self) -> &mut V {
        &mut self.venue
    }

    /// The idempotency records.
    pub fn idempotency(&self) -> &IdempotencyStore {
        &self.idempotency
    }

    fn index_of(&self, id: AccountId) -> Option<usize> {
        slot(&self.account_slots, id.0)
    }

    fn account_index(&self, id: AccountId) -> Result<usize, Reject> {
        self.index_of(id).ok_or(Reject::plain(RejectCode::AccountNotFound))
    }

    /// Mark price of a symbol: the last mid, if any.
    pub fn mark(&self, symbol: SymbolId) -> Option<i64> {
        self.quote(symbol).map(Quote::mid)
    }

    fn position_value(&self, symbol: usize, p: &Position) -> i64 {
        match self.quotes[symbol] {
            Some(q) => p.market_value(q.mid(), self.symbols.all()[symbol].money_per_unit()),
            None => p.cost,
        }
    }

    /// Cash plus the market value of every position.
    pub fn equity(&self, account: &Account) -> i64 {
        let mut v = account.cash;
        for (s, p) in account.positions.iter().enumerate() {
            if p.qty != 0 {
                v = v.saturating_add(self.position_value(s, p));
            }
        }
        v
    }

    /// Unrealized P&L over all positions.
    pub fn unrealized(&self, account: &Account) -> i64 {
        let mut v: i64 = 0;
        for (s, p) in account.positions.iter().enumerate() {
            if p.qty != 0 {
                v = v.saturating_add(self.position_value(s, p).saturating_sub(p.cost));
            }
        }
        v
    }

    /// Notional of `qty` at the mark (or at `fallback` when there is no quote).
    fn exposure_of(&self, symbol: usize, qty: i64, fallback: i64) -> i64 {
        let spec = &self.symbols.all()[symbol];
        let price = self.quotes[symbol].map_or(fallback, |q| q.mid());
        spec.notional(price, qty.abs()).unwrap_or(i64::MAX)
    }

    /// Sum over symbols of the absolute notional the account may reach with its open orders.
    pub fn gross_exposure(&self, account: &Account) -> i64 {
        let mut g: i64 = 0;
        for (s, p) in account.positions.iter().enumerate() {
            let worst = p.worst_case_qty();
            if worst != 0 {
                let fallback = if p.qty != 0 { p.avg_price(self.symbols.all()[s].money_per_unit()) } else { 0 };
                g = g.saturating_add(self.exposure_of(s, worst, fallback));
            }
        }
        g
    }

    /// Equity minus the equity at the start of the UTC day.
    pub fn daily_pnl(&self, account: &Account) -> i64 {
        self.equity(account).saturating_sub(account.day_start_equity)
    }

    /// The order part of an answer.
    pub fn order_view(&self, o: &Order) -> OrderView {
        OrderView {
            id: o.id,
            symbol: o.symbol,
            side: o.side,
            qty: o.qty,
            filled_qty: o.filled_qty,
            avg_price: self.avg_fill_price(o),
            status: o.status,
        }
    }

    /// Average fill price of an order (price units), 0 when nothing filled.
    pub fn avg_fill_price(&self, o: &Order) -> i64 {
        if o.filled_qty == 0 {
            return 0;
        }
        let mpu = self.symbols.get(o.symbol).money_per_unit();
        div_round(i128::from(o.filled_notional), i128::from(o.filled_qty) * mpu) as i64
    }

    /// The position part of an answer.
    pub fn position_view(&self, account: &Account, symbol: SymbolId) -> PositionView {
        let p = &account.positions[usize::from(symbol.0)];
        PositionView { symbol, qty: p.qty, avg_price: p.avg_price(self.symbols.get(symbol).money_per_unit()) }
    }

    // ----- commands -----

    fn begin(&mut self) {
        self.events.clear();
    }

    fn emit(&mut self, now: Nanos, kind: EventKind) {
        let e = Event { seq: self.next_seq, ts: now, kind };
        self.apply_event(&e);
        self.events.push(e);
    }

    /// Opens an account.
    pub fn create_account(
        &mut self,
        name: AccountName,
        tier: TierId,
        cash: i64,
        overrides: LimitOverrides,
        now: Nanos,
    ) -> Result<AccountId, Reject> {
        self.create_account_as(self.next_account_id(), name, tier, cash, overrides, now)
    }

    /// Opens an account under an id the caller chose (a cluster hands ids out). Refused, as an
    /// unknown tier is, when the id is taken, zero or above [`MAX_ID`].
    pub fn create_account_as(
        &mut self,
        account: AccountId,
        name: AccountName,
        tier: TierId,
        cash: i64,
        overrides: LimitOverrides,
        now: Nanos,
    ) -> Result<AccountId, Reject> {
        self.begin();
        if usize::from(tier) >= self.tiers.len() || !free_id(&self.account_slots, account.0) {
            return Err(Reject::plain(RejectCode::AccountNotFound));
        }
        self.emit(now, EventKind::AccountCreated { account, name, tier, cash, overrides });
        Ok(account)
    }

    /// The id a standalone node gives its next account: one above the highest.
    pub fn next_account_id(&self) -> AccountId {
        AccountId(self.account_slots.len() as u32 + 1)
    }

    /// Adds an API key (by its hash) to an account.
    pub fn add_key(&mut self, account: AccountId, hash: [u8; 32], roles: Roles, now: Nanos) -> Result<KeyId, Reject> {
        self.add_key_as(self.next_key_id(), account, hash, roles, now)
    }

    /// Adds a key under an id the caller chose; refused when the account is unknown, or the id
    /// taken, zero or above [`MAX_ID`].
    pub fn add_key_as(
        &mut self,
        key: KeyId,
        account: AccountId,
        hash: [u8; 32],
        roles: Roles,
        now: Nanos,
    ) -> Result<KeyId, Reject> {
        self.begin();
        self.account_index(account)?;
        if !free_id(&self.key_slots, key.0) || self.key_index.contains_key(&hash) {
            return Err(Reject::plain(RejectCode::AccountNotFound));
        }
        self.emit(now, EventKind::KeyAdded { key, account, hash, roles });
        Ok(key)
    }

    /// The id a standalone node gives its next key: one above the highest.
    pub fn next_key_id(&self) -> KeyId {
        KeyId(self.key_slots.len() as u32 + 1)
    }

    /// Revokes a key; `false` when there is no such key.
    pub fn revoke_key(&mut self, key: KeyId, now: Nanos) -> bool {
        self.begin();
        match self.key(key) {
            Some(k) if !k.revoked => {
                self.emit(now, EventKind::KeyRevoked { key });
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Replaces an account's limit overrides.
    pub fn set_limits(&mut self, account: AccountId, overrides: LimitOverrides, now: Nanos) -> Result<(), Reject> {
        self.begin();
        self.account_index(account)?;
        self.emit(now, EventKind::LimitsSet { account, overrides });
        Ok(())
    }

    /// The kill switch: cancels every open order and halts the account.
    pub fn halt(&mut self, account: AccountId, now: Nanos) -> Result<(), Reject> {
        self.begin();
        let idx = self.account_index(account)?;
        self.halt_account(idx, StateReason::KillSwitch, now);
        Ok(())
    }

    /// Resumes trading, fully or only to reduce positions.
    pub fn resume(&mut self, account: AccountId, reducing: bool, now: Nanos) -> Result<(), Reject> {
        self.begin();
        let idx = self.account_index(account)?;
        let state = if reducing { AccountState::Reducing } else { AccountState::Active };
        if self.accounts[idx].state != state {
            self.emit(now, EventKind::AccountStateChanged { account, state, reason: StateReason::Resumed });
        }
        Ok(())
    }

    fn halt_account(&mut self, idx: usize, reason: StateReason, now: Nanos) {
        let account = self.accounts[idx].id;
        if self.accounts[idx].state != AccountState::Halted {
            self.emit(now, EventKind::AccountStateChanged { account, state: AccountState::Halted, reason });
        }
        self.cancel_open_orders(idx, None, now);
    }

    /// Cancels the account's open orders (in one symbol, or all). Walks the list from the end,
    /// so the swap-removals of confirmed cancels never skip an order.
    fn cancel_open_orders(&mut self, idx: usize, symbol: Option<SymbolId>, now: Nanos) {
        let mut i = self.accounts[idx].open_orders.len();
        while i > 0 {
            i -= 1;
            let Some(&id) = self.accounts[idx].open_orders.get(i) else { continue };
            if symbol.is_none_or(|s| self.orders[&id].symbol == s) {
                self.cancel_open(id, now);
            }
        }
    }

    /// Cancels one of the account's orders.
    pub fn cancel_order(&mut self, account: AccountId, order: OrderId, now: Nanos) -> Result<(), Reject> {
        self.begin();
        self.account_index(account)?;
        let o = match self.orders.get(&order) {
            Some(o) if o.account == account => o,
            _ => return Err(Reject::plain(RejectCode::OrderNotFound)),
        };
        if transition(o.status, OrderEvent::CancelRequest).is_none() {
            return Err(Reject::plain(RejectCode::NotCancelable));
        }
        self.cancel_open(order, now);
        Ok(())
    }

    fn cancel_open(&mut self, id: OrderId, now: Nanos) {
        let Some(&o) = self.orders.get(&id) else { return };
        if transition(o.status, OrderEvent::CancelRequest).is_none() {
            // Already pending cancel: the venue will confirm.
            return;
        }
        self.emit(now, EventKind::OrderUpdated { order: id, account: o.account, event: OrderEvent::CancelRequest });
        self.venue.cancel(&o, now, &mut self.executions);
        self.apply_executions(now);
    }

    /// A signal (or a direct order, as `Buy`/`Sell` of a quantity).
    pub fn signal(&mut self, account: AccountId, s: &SignalSpec, now: Nanos) -> Result<SignalOutcome, Reject> {
        self.begin();
        let idx = self.account_index(account)?;
        if let Some(key) = &s.signal_id {
            if let Some(answer) = self.idempotency.get(account, key, now) {
                return Ok(SignalOutcome { answer: *answer, replayed: true });
            }
        }
        match self.run_signal(idx, s, now) {
            Ok(answer) => {
                if let Some(signal) = s.signal_id {
                    self.emit(now, EventKind::SignalAnswered { account, signal, answer });
                }
                Ok(SignalOutcome { answer, replayed: false })
            }
            Err(r) => {
                self.emit(now, EventKind::Rejected { account, code: r.code });
                if r.code == RejectCode::MaxDailyLoss {
                    self.halt_account(idx, StateReason::DailyLoss, now);
                }
                Err(r)
            }
        }
    }

    fn run_signal(&mut self, idx: usize, s: &SignalSpec, now: Nanos) -> Result<SignalAnswer, Reject> {
        self.roll_day(idx, now);
        let sym = usize::from(s.symbol.0);
        let (side, qty) = match s.intent {
            Intent::Buy(size) => (Side::Buy, self.size_to_qty(Side::Buy, size, s)?),
            Intent::Sell(size) => (Side::Sell, self.size_to_qty(Side::Sell, size, s)?),
            Intent::Close => {
                self.cancel_open_orders(idx, Some(s.symbol), now);
                let q = self.accounts[idx].positions[sym].qty;
                (if q > 0 { Side::Sell } else { Side::Buy }, q.saturating_abs())
            }
            Intent::Target(target) => {
                // In i128: a target near either end of i64 less a position must not wrap. A
                // difference beyond i64 is an order no symbol allows, refused as such below.
                let p = &self.accounts[idx].positions[sym];
                let working = i128::from(p.qty) + i128::from(p.open_buy) - i128::from(p.open_sell);
                let delta = i128::from(target) - working;
                (if delta > 0 { Side::Buy } else { Side::Sell }, saturate(delta.abs()))
            }
        };
        let order = match (qty, s.intent) {
            (0, Intent::Buy(_) | Intent::Sell(_)) => return Err(Reject::plain(RejectCode::QtyZero)),
            (0, _) => None,
            _ => Some(self.place(idx, side, qty, s, now)?),
        };
        let account = &self.accounts[idx];
        Ok(SignalAnswer {
            order: order.and_then(|id| self.orders.get(&id)).map(|o| self.order_view(o)),
            position: self.position_view(account, s.symbol),
        })
    }

    /// The reference price of an order: the limit, or the touch it would take.
    fn reference_price(&self, side: Side, s: &SignalSpec) -> Option<i64> {
        match s.order_type {
            OrderType::Limit => Some(s.limit_price),
            OrderType::Market => self.quotes[usize::from(s.symbol.0)].map(|q| match side {
                Side::Buy => q.ask,
                Side::Sell => q.bid,
            }),
        }
    }

    fn size_to_qty(&self, side: Side, size: Size, s: &SignalSpec) -> Result<i64, Reject> {
        match size {
            Size::Qty(q) => Ok(q),
            Size::Notional(n) => {
                let spec = self.symbols.get(s.symbol);
                let price = self.reference_price(side, s).filter(|p| *p > 0).ok_or(Reject::over(
                    RejectCode::StaleQuote,
                    -1,
                    (self.cfg.max_quote_age / 1_000_000) as i64,
                    Unit::Millis,
                ))?;
                let units = i128::from(n) / (i128::from(price) * spec.money_per_unit());
                let units = i64::try_from(units).unwrap_or(i64::MAX);
                Ok(units - units % spec.lot)
            }
        }
    }

    /// Risk-checks, journals (as an event) and sends one order; returns its id.
    fn place(&mut self, idx: usize, side: Side, qty: i64, s: &SignalSpec, now: Nanos) -> Result<OrderId, Reject> {
        self.check_order(idx, side, qty, s, now)?;
        let id = OrderId(self.next_order);
        let account = self.accounts[idx].id;
        let tif = if s.order_type == OrderType::Market { Tif::Ioc } else { s.tif };
        let order = Order {
            id,
            account,
            symbol: s.symbol,
            side,
            order_type: s.order_type,
            tif,
            qty,
            filled_qty: 0,
            filled_notional: 0,
            limit_price: if s.order_type == OrderType::Limit { s.limit_price } else { 0 },
            status: OrderStatus::PendingNew,
            strategy: s.strategy,
            created_at: now,
            updated_at: now,
        };
        self.emit(now, EventKind::OrderAccepted { order });
        let spec = self.symbols.get(s.symbol);
        self.venue.submit(&order, spec, self.quotes[usize::from(s.symbol.0)].as_ref(), now, &mut self.executions);
        self.apply_executions(now);
        Ok(id)
    }

    /// Pre-trade risk checks, in the order documented in `docs/api.md`.
    fn check_order(&self, idx: usize, side: Side, qty: i64, s: &SignalSpec, now: Nanos) -> Result<(), Reject> {
        let a = &self.accounts[idx];
        let spec = self.symbols.get(s.symbol);
        let sym = usize::from(s.symbol.0);
        let pos = &a.positions[sym];
        let before = pos.with_open(side);
        let after = before.saturating_add(side.sign().saturating_mul(qty));
        let increases = after.saturating_abs() > before.saturating_abs();
        match a.state {
            AccountState::Halted => return Err(Reject::plain(RejectCode::AccountHalted)),
            AccountState::Reducing => {
                let shrinks = pos.qty != 0
                    && after.saturating_abs() <= pos.qty.saturating_abs()
                    && (after == 0 || after.signum() == pos.qty.signum());
                if !shrinks {
                    return Err(Reject::plain(RejectCode::ReduceOnly));
                }
            }
            AccountState::Active => {}
        }
        if increases && a.limits.max_daily_loss > 0 {
            let loss = -self.daily_pnl(a);
            if loss >= a.limits.max_daily_loss {
                return Err(Reject::over(RejectCode::MaxDailyLoss, loss, a.limits.max_daily_loss, Unit::Money));
            }
        }
        if qty <= 0 {
            return Err(Reject::plain(RejectCode::QtyZero));
        }
        if qty % spec.lot != 0 {
            return Err(Reject::over(RejectCode::LotSize, qty, spec.lot, Unit::Qty(spec.qty_decimals)));
        }
        if qty > spec.max_order_qty {
            return Err(Reject::over(RejectCode::MaxOrderQty, qty, spec.max_order_qty, Unit::Qty(spec.qty_decimals)));
        }
        if s.order_type == OrderType::Limit && (s.limit_price <= 0 || s.limit_price % spec.tick != 0) {
            return Err(Reject::over(RejectCode::TickSize, s.limit_price, spec.tick, Unit::Price(spec.price_decimals)));
        }
        if s.order_type == OrderType::Limit && s.limit_price > spec.max_price() {
            let (price, max) = (s.limit_price, spec.max_price());
            return Err(Reject::over(RejectCode::PriceCollar, price, max, Unit::Price(spec.price_decimals)));
        }
        let max_open = a.limits.max_open_orders as usize;
        if a.open_orders.len() >= max_open {
            return Err(Reject::over(
                RejectCode::MaxOpenOrders,
                a.open_orders.len() as i64 + 1,
                max_open as i64,
                Unit::Count,
            ));
        }
        let max_age_ms = (self.cfg.max_quote_age / 1_000_000) as i64;
        let Some(q) = self.quotes[sym] else {
            return Err(Reject::over(RejectCode::StaleQuote, -1, max_age_ms, Unit::Millis));
        };
        let reference = match s.order_type {
            OrderType::Market => {
                let age = now.saturating_sub(q.ts);
                if age > self.cfg.max_quote_age {
                    return Err(Reject::over(
                        RejectCode::StaleQuote,
                        (age / 1_000_000) as i64,
                        max_age_ms,
                        Unit::Millis,
                    ));
                }
                match side {
                    Side::Buy => q.ask,
                    Side::Sell => q.bid,
                }
            }
            OrderType::Limit => {
                let mid = q.mid().max(1);
                let deviation = saturate(i128::from(s.limit_price - mid).abs() * 10_000 / i128::from(mid));
                if deviation > i64::from(self.cfg.price_collar_bps) {
                    return Err(Reject::over(
                        RejectCode::PriceCollar,
                        deviation,
                        i64::from(self.cfg.price_collar_bps),
                        Unit::Bps,
                    ));
                }
                s.limit_price
            }
        };
        let notional = spec.notional(reference, qty).unwrap_or(i64::MAX);
        // Past the node's own bound whatever the account's limits: no fill may overflow.
        let max_notional = a.limits.max_order_notional.min(MAX_ORDER_MONEY);
        if notional > max_notional {
            return Err(Reject::over(RejectCode::MaxOrderNotional, notional, max_notional, Unit::Money));
        }
        // Room left for one more fill's cash and cost (at most three times its notional).
        let room = MAX_BOOK_MONEY - 3 * MAX_ORDER_MONEY;
        if a.cash.saturating_abs() > room || pos.cost.saturating_abs() > room || after.saturating_abs() > room {
            let worst = a.cash.saturating_abs().max(pos.cost.saturating_abs());
            return Err(Reject::over(RejectCode::MaxPositionNotional, worst, room, Unit::Money));
        }
        if increases {
            let position_notional = spec.notional(reference, after.abs()).unwrap_or(i64::MAX);
            if position_notional > a.limits.max_position_notional {
                return Err(Reject::over(
                    RejectCode::MaxPositionNotional,
                    position_notional,
                    a.limits.max_position_notional,
                    Unit::Money,
                ));
            }
            let gross_before = self.gross_exposure(a);
            let fallback = if pos.qty != 0 { pos.avg_price(spec.money_per_unit()) } else { reference };
            let symbol_before = self.exposure_of(sym, pos.worst_case_qty(), fallback);
            let other_side = pos.with_open(side.opposite());
            let symbol_after = spec.notional(reference, after.abs().max(other_side.abs())).unwrap_or(i64::MAX);
            let gross_after = gross_before.saturating_sub(symbol_before).saturating_add(symbol_after);
            if gross_after > a.limits.max_gross_exposure {
                return Err(Reject::over(
                    RejectCode::MaxGrossExposure,
                    gross_after,
                    a.limits.max_gross_exposure,
                    Unit::Money,
                ));
            }
            let buying_power =
                self.equity(a).saturating_mul(i64::from(a.limits.leverage)).saturating_sub(gross_before).max(0);
            if notional > buying_power {
                return Err(Reject::over(RejectCode::BuyingPower, notional, buying_power, Unit::Money));
            }
        }
        let mut rate = a.order_rate;
        if !rate.admit(now, a.limits.max_orders_per_second).allowed {
            let limit = i64::from(a.limits.max_orders_per_second);
            return Err(Reject::over(RejectCode::OrderRate, limit, limit, Unit::Count));
        }
        Ok(())
    }

    fn roll_day(&mut self, idx: usize, now: Nanos) {
        let day = day_of(now);
        if self.accounts[idx].day != day {
            let equity = self.equity(&self.accounts[idx]);
            let account = self.accounts[idx].id;
            self.emit(now, EventKind::DayStarted { account, day, equity });
        }
    }

    /// A quote: stored, and resting orders may fill. A quote that is not one (crossed, not
    /// positive, above the symbol's highest price, negative sizes: the API refuses those) is
    /// ignored.
    pub fn on_quote(&mut self, quote: Quote, now: Nanos) {
        self.begin();
        let Some(spec) = self.symbols.all().get(usize::from(quote.symbol.0)) else { return };
        if !quote.is_valid(spec) {
            return;
        }
        self.emit(now, EventKind::Quote(quote));
        let spec = self.symbols.get(quote.symbol);
        self.venue.on_quote(&quote, spec, now, &mut self.executions);
        self.apply_executions(now);
    }

    /// Periodic work: delayed venue work, day-order expiry, idempotency expiry.
    pub fn housekeeping(&mut self, now: Nanos) {
        self.begin();
        self.venue.poll(now, &mut self.executions);
        self.apply_executions(now);
        let day = day_of(now);
        if day != self.day {
            let first_run = self.day == 0;
            self.day = day;
            if !first_run {
                self.expire_day_orders(day, now);
            }
        }
        self.idempotency.expire(now);
    }

    /// Lets the venue report what it did since the last call (a venue that answers later, or
    /// orders released by a gate in front of it).
    pub fn poll_venue(&mut self, now: Nanos) {
        self.begin();
        self.venue.poll(now, &mut self.executions);
        self.apply_executions(now);
    }

    /// After a restart: hands the venue where its session got, then every open order with its
    /// status ([`Venue::recover`]): a venue that lost its state (the paper simulator) learns the
    /// book the journal rebuilt, a remote one finds out what became of the orders.
    /// Acknowledgements of orders already working change nothing.
    pub fn recover_venue(&mut self, now: Nanos) {
        self.begin();
        let (inbound, outbound) = self.venue_session;
        self.venue.resume_session(inbound, outbound);
        for idx in 0..self.accounts.len() {
            self.recover_account(idx, now);
        }
        self.apply_executions(now);
    }

    fn recover_account(&mut self, idx: usize, now: Nanos) {
        for i in 0..self.accounts[idx].open_orders.len() {
            let o = self.orders[&self.accounts[idx].open_orders[i]];
            let spec = self.symbols.get(o.symbol);
            self.venue.recover(&o, spec, self.quotes[usize::from(o.symbol.0)].as_ref(), now, &mut self.executions);
        }
    }

    /// Takes an account of a cluster node that died, rebuilt from `history` (its events there,
    /// in order): journals [`EventKind::AccountAdopted`] and each event again, with its time, then
    /// hands the venue the account's open orders. Refused (with why) when this engine holds the
    /// account already or the history does not start with its creation.
    pub fn adopt(&mut self, account: AccountId, epoch: u64, history: &[Event], now: Nanos) -> Result<(), String> {
        if self.index_of(account).is_some() {
            return Err(format!("account {account} is here already"));
        }
        let creates = matches!(history.first().map(|e| e.kind), Some(EventKind::AccountCreated { account: a, .. }) if a == account);
        if !creates {
            return Err(format!("the history of account {account} does not start with its creation"));
        }
        self.begin();
        self.emit(now, EventKind::AccountAdopted { account, epoch, events: history.len() as u32 });
        for e in history {
            self.emit(e.ts, e.kind);
        }
        if let Some(idx) = self.index_of(account) {
            self.recover_account(idx, now);
        }
        self.apply_executions(now);
        Ok(())
    }

    /// The account as it stands, as events that rebuild it on an engine that lacks it: its
    /// creation, balances, positions, keys, remembered orders and live idempotency records. What
    /// another node replays instead of the account's history up to now. `None`: no such account.
    pub fn checkpoint(&self, account: AccountId) -> Option<Vec<Event>> {
        let a = self.account(account)?;
        let ev = |ts: Nanos, kind: EventKind| Event { seq: 0, ts, kind };
        let (name, tier, cash, overrides) = (a.name, a.tier, a.initial_cash, a.overrides);
        let mut out = vec![
            ev(a.created_at, EventKind::AccountCreated { account, name, tier, cash, overrides }),
            ev(
                a.created_at,
                EventKind::AccountRestored {
                    account,
                    state: a.state,
                    reason: a.state_reason,
                    cash: a.cash,
                    realized: a.realized,
                    fees: a.fees,
                    day: a.day,
                    day_start_equity: a.day_start_equity,
                },
            ),
        ];
        for (i, p) in a.positions.iter().enumerate().filter(|(_, p)| **p != Position::default()) {
            let symbol = SymbolId(i as u16);
            out.push(ev(a.created_at, EventKind::PositionRestored { account, symbol, position: *p }));
        }
        for k in a.keys.iter().filter_map(|k| self.key(*k)) {
            out.push(ev(k.created_at, EventKind::KeyAdded { key: k.id, account, hash: k.hash, roles: k.roles }));
            if k.revoked {
                out.push(ev(k.created_at, EventKind::KeyRevoked { key: k.id }));
            }
        }
        for o in a.recent_orders.iter().filter_map(|id| self.orders.get(id)) {
            out.push(ev(o.updated_at, EventKind::OrderRestored { order: *o }));
        }
        for (of, signal, at, answer) in self.idempotency.records() {
            if of == account {
                out.push(ev(at, EventKind::SignalAnswered { account, signal, answer }));
            }
        }
        Some(out)
    }

    /// Lets go of an account another cluster node owns now (under `epoch`): journals
    /// [`EventKind::AccountReleased`].
    pub fn release(&mut self, account: AccountId, epoch: u64, now: Nanos) {
        self.begin();
        if self.index_of(account).is_some() {
            self.emit(now, EventKind::AccountReleased { account, epoch });
        }
    }

    /// `answer` brought up to date: its order and position as they stand now.
    pub fn refresh_answer(&self, account: AccountId, answer: &SignalAnswer) -> SignalAnswer {
        SignalAnswer {
            order: answer.order.map(|o| self.orders.get(&o.id).map_or(o, |cur| self.order_view(cur))),
            position: self.account(account).map_or(answer.position, |a| self.position_view(a, answer.position.symbol)),
        }
    }

    fn expire_day_orders(&mut self, day: u32, now: Nanos) {
        for idx in 0..self.accounts.len() {
            let mut i = 0;
            while i < self.accounts[idx].open_orders.len() {
                let id = self.accounts[idx].open_orders[i];
                let o = self.orders[&id];
                if o.tif == Tif::Day && day_of(o.created_at) < day && transition(o.status, OrderEvent::Expire).is_some()
                {
                    self.venue.forget(&o);
                    self.emit(
                        now,
                        EventKind::OrderUpdated { order: id, account: o.account, event: OrderEvent::Expire },
                    );
                    continue; // the order left the open list
                }
                i += 1;
            }
        }
    }

    fn apply_executions(&mut self, now: Nanos) {
        let first_event = self.events.len();
        let mut executions = std::mem::take(&mut self.executions);
        for ex in executions.drain(..) {
            match ex {
                Execution::Ack { order } => {
                    self.order_event(order, OrderEvent::Ack, now);
                }
                Execution::Canceled { order } => {
                    self.order_event(order, OrderEvent::Canceled, now);
                }
                Execution::Expired { order } => {
                    self.order_event(order, OrderEvent::Expire, now);
                }
                Execution::Rejected { order, reason } => {
                    if let Some(account) = self.order_event(order, OrderEvent::Reject, now) {
                        if let Some(reason) = reason {
                            self.emit(now, EventKind::OrderRejectReason { order, account, reason });
                        }
                    }
                }
                Execution::Session { inbound, outbound } => {
                    if (inbound, outbound) != self.venue_session {
                        self.emit(now, EventKind::VenueSession { inbound, outbound });
                    }
                }
                Execution::Fill { order, qty, price, fee, cum_qty } => {
                    let Some(&o) = self.orders.get(&order) else { continue };
                    // A report sent again (or one the journal had already) fills nothing twice.
                    let qty = qty.min(o.qty - o.filled_qty).min(cum_qty.map_or(i64::MAX, |c| c - o.filled_qty));
                    if qty <= 0 || transition(o.status, OrderEvent::PartialFill).is_none() {
                        continue;
                    }
                    let notional = self.symbols.get(o.symbol).notional(price, qty).unwrap_or(i64::MAX);
                    // What applying the fill will do to the position, worked out on a copy.
                    let mut position =
                        self.account(o.account).map(|a| a.positions[usize::from(o.symbol.0)]).unwrap_or_default();
                    let realized = position.apply_fill(o.side, qty, notional, fee).realized;
                    self.emit(
                        now,
                        EventKind::Fill {
                            order,
                            account: o.account,
                            symbol: o.symbol,
                            side: o.side,
                            qty,
                            price,
                            notional,
                            fee,
                            realized,
                            position: Holding::from(&position),
                        },
                    );
                }
            }
        }
        self.executions = executions;
        // Fills may breach a daily loss limit: the account halts itself.
        let mut i = first_event;
        while i < self.events.len() {
            if let EventKind::Fill { account, .. } = self.events[i].kind {
                if let Some(idx) = self.index_of(account) {
                    let a = &self.accounts[idx];
                    if a.state != AccountState::Halted
                        && a.limits.max_daily_loss > 0
                        && -self.daily_pnl(a) >= a.limits.max_daily_loss
                    {
                        self.halt_account(idx, StateReason::DailyLoss, now);
                    }
                }
            }
            i += 1;
        }
    }

    /// Applies `event` to the order when its status allows: the order's account if it did.
    fn order_event(&mut self, order: OrderId, event: OrderEvent, now: Nanos) -> Option<AccountId> {
        let o = *self.orders.get(&order)?;
        transition(o.status, event)?;
        self.emit(now, EventKind::OrderUpdated { order, account: o.account, event });
        Some(o.account)
    }

    // ----- state changes -----

    /// Applies one event to the state. The only place state changes; replaying every event in
    /// order rebuilds the engine.
    pub fn apply_event(&mut self, e: &Event) {
        self.next_seq = e.seq + 1;
        match e.kind {
            EventKind::AccountCreated { account, name, tier, cash, overrides } => {
                let limits = self.tiers[usize::from(tier)].limits.with(&overrides);
                let nsym = self.symbols.len();
                let history = self.cfg.orders_per_account.max(1);
                if !set_slot(&mut self.account_slots, account.0, self.accounts.len()) {
                    return;
                }
                self.make_order_room(self.accounts.len() + 1, self.orders.len());
                self.accounts.push(Account {
                    id: account,
                    name,
                    tier,
                    overrides,
                    limits,
                    state: AccountState::Active,
                    state_reason: StateReason::Created,
                    cash,
                    initial_cash: cash,
                    realized: 0,
                    fees: 0,
                    positions: vec![Position::default(); nsym],
                    open_orders: Vec::with_capacity((limits.max_open_orders as usize).clamp(1, 4096)),
                    recent_orders: VecDeque::with_capacity(history),
                    order_rate: crate::rate_limit::SlidingWindow::per_second(),
                    day: day_of(e.ts),
                    day_start_equity: cash,
                    keys: Vec::new(),
                    created_at: e.ts,
                });
            }
            EventKind::KeyAdded { key, account, hash, roles } => {
                if !set_slot(&mut self.key_slots, key.0, self.keys.len()) {
                    return;
                }
                self.keys.push(KeyRecord { id: key, account, hash, roles, revoked: false, created_at: e.ts });
                self.key_index.insert(hash, key);
                if let Some(i) = self.index_of(account) {
                    self.accounts[i].keys.push(key);
                }
            }
            EventKind::KeyRevoked { key } => {
                if let Some(i) = slot(&self.key_slots, key.0) {
                    self.keys[i].revoked = true;
                }
            }
            EventKind::LimitsSet { account, overrides } => {
                if let Some(i) = self.index_of(account) {
                    let a = &mut self.accounts[i];
                    a.overrides = overrides;
                    a.limits = self.tiers[usize::from(a.tier)].limits.with(&overrides);
                }
            }
            EventKind::AccountStateChanged { account, state, reason } => {
                if let Some(i) = self.index_of(account) {
                    self.accounts[i].state = state;
                    self.accounts[i].state_reason = reason;
                }
            }
            EventKind::DayStarted { account, day, equity } => {
                if let Some(i) = self.index_of(account) {
                    self.accounts[i].day = day;
                    self.accounts[i].day_start_equity = equity;
                }
            }
            EventKind::OrderAccepted { order } => self.apply_accepted(order, e.ts),
            EventKind::OrderUpdated { order, event, .. } => {
                let Some(o) = self.orders.get_mut(&order) else { return };
                let Some(next) = transition(o.status, event) else { return };
                let remaining = o.remaining();
                o.status = next;
                o.updated_at = e.ts;
                if next.is_terminal() {
                    let (account, symbol, side) = (o.account, o.symbol, o.side);
                    self.close_order(account, symbol, side, order, remaining);
                }
            }
            EventKind::Fill { order, account, symbol, side, qty, notional, fee, .. } => {
                let Some(o) = self.orders.get_mut(&order) else { return };
                o.filled_qty += qty;
                o.filled_notional += notional;
                o.updated_at = e.ts;
                let event = if o.filled_qty >= o.qty { OrderEvent::Fill } else { OrderEvent::PartialFill };
                let next = transition(o.status, event).unwrap_or(o.status);
                o.status = next;
                if let Some(i) = self.index_of(account) {
                    let a = &mut self.accounts[i];
                    let p = &mut a.positions[usize::from(symbol.0)];
                    match side {
                        Side::Buy => p.open_buy -= qty,
                        Side::Sell => p.open_sell -= qty,
                    }
                    let effect = p.apply_fill(side, qty, notional, fee);
                    a.cash += effect.cash;
                    a.realized += effect.realized;
                    a.fees += fee;
                }
                if next.is_terminal() {
                    self.close_order(account, symbol, side, order, 0);
                }
            }
            EventKind::Quote(q) => {
                if let Some(slot) = self.quotes.get_mut(usize::from(q.symbol.0)) {
                    *slot = Some(q);
                }
            }
            EventKind::SignalAnswered { account, signal, answer } => {
                self.idempotency.insert(account, signal, answer, e.ts);
            }
            EventKind::AccountRestored { account, state, reason, cash, realized, fees, day, day_start_equity } => {
                if let Some(i) = self.index_of(account) {
                    let a = &mut self.accounts[i];
                    (a.state, a.state_reason, a.cash, a.realized, a.fees) = (state, reason, cash, realized, fees);
                    (a.day, a.day_start_equity) = (day, day_start_equity);
                }
            }
            EventKind::PositionRestored { account, symbol, position } => {
                if let Some(p) =
                    self.index_of(account).and_then(|i| self.accounts[i].positions.get_mut(usize::from(symbol.0)))
                {
                    *p = position;
                }
            }
            EventKind::OrderRestored { order } => {
                self.note_order_id(order.id);
                let Some(i) = self.index_of(order.account) else { return };
                self.orders.insert(order.id, order);
                let a = &mut self.accounts[i];
                a.recent_orders.push_back(order.id);
                if order.status.is_open() {
                    a.open_orders.push(order.id);
                }
            }
            EventKind::OrderRejectReason { order, reason, .. } => {
                if self.orders.contains_key(&order) {
                    self.venue_reasons.insert(order, reason);
                }
            }
            EventKind::VenueSession { inbound, outbound } => {
                if outbound != self.venue_session.1 {
                    self.venue_reserved_at = e.seq;
                }
                self.venue_session = (inbound, outbound);
            }
            EventKind::Rejected { .. } | EventKind::AccountAdopted { .. } => {}
            EventKind::AccountReleased { account, .. } => self.remove_account(account),
        }
    }

    /// Forgets an account and what hangs on it: its keys stop authenticating here, its orders
    /// and idempotency records go. Its key records stay (revoked) where they are, so that the
    /// per-key tables that follow their order keep it.
    fn remove_account(&mut self, account: AccountId) {
        let Some(i) = self.index_of(account) else { return };
        let a = self.accounts.swap_remove(i);
        if let Some(s) = self.account_slots.get_mut(account.0 as usize - 1) {
            *s = NO_SLOT;
        }
        if let Some(moved) = self.accounts.get(i) {
            set_slot(&mut self.account_slots, moved.id.0, i);
        }
        for k in &a.keys {
            if let Some(ki) = slot(&self.key_slots, k.0) {
                self.key_index.remove(&self.keys[ki].hash);
                self.keys[ki].revoked = true;
            }
        }
        for id in a.open_orders.iter().chain(a.recent_orders.iter()) {
            self.orders.remove(id);
            self.venue_reasons.remove(id);
        }
        self.idempotency.forget_account(account);
    }

    /// Sizes the order map for `accounts` accounts and at least `orders` orders: room for twice
    /// every account's history. Deletions leave tombstones, and with room to spare they rarely
    /// fill the table (which would make it grow, in the middle of trading).
    fn make_order_room(&mut self, accounts: usize, orders: usize) {
        let room = (2 * self.cfg.orders_per_account.max(1) * accounts).max(orders);
        // `reserve` counts from the orders held now: ask for what is missing.
        self.orders.reserve(room.saturating_sub(self.orders.len()));
    }

    /// Keeps the next order id past `id` when it is of this engine's range (orders of other
    /// ranges came with an account from another node).
    fn note_order_id(&mut self, id: OrderId) {
        if (self.cfg.order_id_base + 1..=self.cfg.order_id_base + ORDER_ID_SPAN).contains(&id.0) {
            self.next_order = self.next_order.max(id.0 + 1);
        }
    }

    fn apply_accepted(&mut self, order: Order, ts: Nanos) {
        self.note_order_id(order.id);
        let Some(i) = self.index_of(order.account) else { return };
        self.orders.insert(order.id, order);
        let a = &mut self.accounts[i];
        let limit = a.limits.max_orders_per_second;
        a.order_rate.admit(ts, limit);
        a.open_orders.push(order.id);
        let p = &mut a.positions[usize::from(order.symbol.0)];
        match order.side {
            Side::Buy => p.open_buy += order.qty,
            Side::Sell => p.open_sell += order.qty,
        }
        // Remember it; forget the oldest finished order when the history is full.
        let cap = self.cfg.orders_per_account.max(1);
        let mut turns = a.recent_orders.len();
        while a.recent_orders.len() >= cap && turns > 0 {
            turns -= 1;
            let Some(old) = a.recent_orders.pop_front() else { break };
            match self.orders.get(&old) {
                Some(o) if o.status.is_open() => a.recent_orders.push_back(old),
                _ => {
                    self.orders.remove(&old);
                    self.venue_reasons.remove(&old);
                }
            }
        }
        a.recent_orders.push_back(order.id);
    }

    fn close_order(&mut self, account: AccountId, symbol: SymbolId, side: Side, order: OrderId, remaining: i64) {
        let Some(i) = self.index_of(account) else { return };
        let a = &mut self.accounts[i];
        let p = &mut a.positions[usize::from(symbol.0)];
        match side {
            Side::Buy => p.open_buy -= remaining,
            Side::Sell => p.open_sell -= remaining,
        }
        if let Some(k) = a.open_orders.iter().position(|id| *id == order) {
            a.open_orders.swap_remove(k);
        }
    }
}

#[cfg(test)]
mod tests;

/// The highest account or key id: the slot tables that find them by id stay within 64 MiB.
pub const MAX_ID: u32 = 1 << 24;

/// A slot table's "no such id".
const NO_SLOT: u32 = u32::MAX;

/// Where the item with `id` is, if any.
fn slot(table: &[u32], id: u32) -> Option<usize> {
    let s = *table.get((id as usize).checked_sub(1)?)?;
    (s != NO_SLOT).then_some(s as usize)
}

/// Whether `id` may be given to a new item.
fn free_id(table: &[u32], id: u32) -> bool {
    (1..=MAX_ID).contains(&id) && slot(table, id).is_none()
}

/// Records that the item with `id` is at `index`; `false` (nothing recorded) for an id no
/// command gives.
fn set_slot(table: &mut Vec<u32>, id: u32, index: usize) -> bool {
    if !(1..=MAX_ID).contains(&id) {
        return false;
    }
    let i = id as usize - 1;
    if table.len() <= i {
        table.resize(i + 1, NO_SLOT);
    }
    table[i] = index as u32;
    true
}
