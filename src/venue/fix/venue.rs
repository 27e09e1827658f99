//! The FIX venue: orders become NewOrderSingle and OrderCancelRequest messages, and the
//! venue's ExecutionReports become executions, through one [`Session`].
//!
//! Sans-I/O like the paper venue: the connection hands it what it read
//! ([`FixVenue::received`]) and writes what it wrote ([`FixVenue::output`]); the engine's
//! `poll` makes executions of the reports. An order's ClOrdID is its id; a cancel's is the
//! order's id, a dash and the cancel's MsgSeqNum, so a report is matched to its order by the
//! leading digits of its ClOrdID.
//!
//! Reconciliation: an order whose fate is unknown — sent (or its cancel sent) before the
//! connection dropped without a word back, or found open in the journal at a restart without
//! one since — is asked about (OrderStatusRequest) once the session is in sequence again, and
//! new orders of its account wait until every such order of the account has an answer. An
//! order the venue does not know never reached it: it is rejected (or, if its cancel was asked
//! for, canceled).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use hdrhistogram::Histogram;

use super::codec::{frame, Message};
use super::session::{Progress, Session, SessionConfig, State, Verdict};
use crate::engine::market::Quote;
use crate::engine::order::{Order, OrderStatus};
use crate::engine::symbol::SymbolSpec;
use crate::engine::types::{AccountId, IdHash, OrderId, OrderType, Side, Tif};
use crate::engine::venue::{Execution, ReasonKind, Venue, VenueReason};
use crate::fixed::MONEY_DECIMALS;
use crate::time::{Nanos, SECOND};

/// Settings of the FIX venue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixSettings {
    /// The session's.
    pub session: SessionConfig,
    /// Account (1) on every order, when the venue wants one.
    pub account: Option<String>,
    /// The venue's name of each of the node's symbols, in their order.
    pub symbols: Vec<String>,
}

/// Outgoing messages remembered by sequence number, to find the order a session-level Reject
/// names.
const REFS: usize = 1024;
/// An unanswered OrderStatusRequest is asked again after this long.
const ASK_AGAIN: Nanos = 5 * SECOND;
/// Bytes a read may leave unframed before the connection is taken as broken (a message is at
/// most 64 KiB).
const MAX_INBOX: usize = 1 << 20;

/// Why an order was refused without leaving: the session was down.
const VENUE_DOWN: VenueReason = VenueReason { kind: ReasonKind::VenueDown, code: 0 };

/// What is known of an order's fate at the venue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Reports arrive as they should.
    Known,
    /// Something was sent without a word back before the connection dropped (or the journal
    /// holds it open at a restart): to ask about.
    Unknown,
    /// Asked about at this time.
    Asked(Nanos),
}

#[derive(Debug, Clone, Copy)]
struct Working {
    order: Order,
    fate: Fate,
    /// A NewOrderSingle or cancel went out with no report since.
    awaiting: bool,
    cancel_sent: bool,
    /// When its NewOrderSingle was written, until its first report (the round-trip metric).
    written_at: Option<Instant>,
}

impl Working {
    /// Its fate becomes unknown (counted in `unknown` for its account) unless it already is.
    fn doubt(&mut self, unknown: &mut HashMap<AccountId, u32, IdHash>) {
        if self.fate == Fate::Known {
            self.fate = Fate::Unknown;
            *unknown.entry(self.order.account).or_insert(0) += 1;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Parked {
    Submit(Order),
    Cancel(Order),
}

/// The FIX venue.
pub struct FixVenue {
    session: Session,
    settings: FixSettings,
    specs: Vec<SymbolSpec>,
    working: HashMap<OrderId, Working, IdHash>,
    /// Orders of unknown fate per account.
    unknown: HashMap<AccountId, u32, IdHash>,
    parked: VecDeque<Parked>,
    spare: VecDeque<Parked>,
    inbox: Vec<u8>,
    refs: Box<[(u64, OrderId, u8); REFS]>,
    /// NewOrderSingles in the output not yet written.
    unwritten: Vec<OrderId>,
    /// When the last NewOrderSingles went on the wire.
    written: Box<[(OrderId, Option<Instant>); REFS]>,
    written_next: usize,
    /// NewOrderSingle to first ExecutionReport, nanoseconds.
    round_trip: Histogram<u64>,
    unmatched: u64,
    unreadable: u64,
    broken: bool,
}

impl FixVenue {
    /// A venue for these symbols (named at the venue as `settings.symbols` says).
    pub fn new(settings: FixSettings, specs: &[SymbolSpec]) -> Self {
        FixVenue {
            session: Session::new(settings.session.clone()),
            settings,
            specs: specs.to_vec(),
            working: HashMap::with_capacity_and_hasher(16 * 1024, IdHash::default()),
            unknown: HashMap::with_capacity_and_hasher(1024, IdHash::default()),
            parked: VecDeque::with_capacity(1024),
            spare: VecDeque::with_capacity(1024),
            inbox: Vec::with_capacity(256 * 1024),
            refs: Box::new([(0, OrderId(0), 0); REFS]),
            unwritten: Vec::with_capacity(1024),
            written: Box::new([(OrderId(0), None); REFS]),
            written_next: 0,
            round_trip: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds"),
            unmatched: 0,
            unreadable: 0,
            broken: false,
        }
    }

    // ----- the connection's side -----

    /// A connection to the venue is open: the session logs on.
    pub fn connected(&mut self, now: Nanos) {
        self.inbox.clear();
        self.unwritten.clear();
        self.broken = false;
        self.session.connected(now);
    }

    /// The connection is gone: what was sent without an answer becomes of unknown fate.
    pub fn disconnected(&mut self) {
        self.session.disconnected();
        self.inbox.clear();
        self.unwritten.clear();
        for w in self.working.values_mut() {
            if w.awaiting {
                w.doubt(&mut self.unknown);
            }
            if let Fate::Asked(_) = w.fate {
                w.fate = Fate::Unknown;
            }
        }
    }

    /// Bytes read from the connection; the next `poll` acts on them.
    pub fn received(&mut self, bytes: &[u8]) {
        if self.inbox.len() + bytes.len() > MAX_INBOX {
            log::error!("fix: more than {MAX_INBOX} bytes without a whole message; dropping the connection");
            self.broken = true;
            return;
        }
        self.inbox.extend_from_slice(bytes);
    }

    /// Bytes to write to the connection.
    pub fn output(&mut self) -> &mut Vec<u8> {
        self.session.output()
    }

    /// Takes the bytes to write into `bytes` (empty; its buffer is the venue's from now on),
    /// and the orders whose NewOrderSingle they carry into `orders`.
    pub fn take_output(&mut self, bytes: &mut Vec<u8>, orders: &mut Vec<OrderId>) {
        std::mem::swap(self.session.output(), bytes);
        std::mem::swap(&mut self.unwritten, orders);
    }

    /// `orders` (from [`FixVenue::take_output`]) went on the wire at `at`.
    pub fn written(&mut self, orders: &mut Vec<OrderId>, at: Instant) {
        for id in orders.drain(..) {
            self.written[self.written_next] = (id, Some(at));
            self.written_next = (self.written_next + 1) % REFS;
            if let Some(w) = self.working.get_mut(&id) {
                w.written_at = Some(at);
            }
        }
    }

    /// Whether the connection is to be closed (the session ended, or the venue sent garbage).
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Logs out (at shutdown).
    pub fn logout(&mut self, now: Nanos) {
        self.session.logout(now, "shutting down");
    }

    /// Whether new orders can go out now.
    pub fn available(&self) -> bool {
        self.session.state() == State::Active
    }

    /// Counters and gauges.
    pub fn status(&self) -> crate::metrics::FixSession {
        crate::metrics::FixSession {
            state: self.session.state().as_str(),
            counters: *self.session.counters(),
            reconciling: self.unknown.values().map(|n| *n as usize).sum(),
            unmatched: self.unmatched,
            unreadable: self.unreadable,
        }
    }

    /// NewOrderSingle to first ExecutionReport, nanoseconds.
    pub fn round_trip(&self) -> &Histogram<u64> {
        &self.round_trip
    }

    // ----- messages out -----

    fn spec(&self, order: &Order) -> &SymbolSpec {
        &self.specs[usize::from(order.symbol.0)]
    }

    fn new_order(&mut self, order: &Order, now: Nanos) {
        let spec = &self.specs[usize::from(order.symbol.0)];
        let (qd, pd) = (spec.qty_decimals, spec.price_decimals);
        let symbol = &self.settings.symbols[usize::from(order.symbol.0)];
        let account = self.settings.account.as_deref();
        let seq = self.session.next_out();
        self.session.send(b"D", now, |m| {
            m.int(11, order.id.0 as i64);
            if let Some(a) = account {
                m.str(1, a);
            }
            m.str(55, symbol).char(54, side(order.side)).timestamp(60, now).decimal(38, order.qty, qd);
            match order.order_type {
                OrderType::Market => m.char(40, b'1'),
                OrderType::Limit => m.char(40, b'2').decimal(44, order.limit_price, pd),
            };
            m.char(59, tif(order.tif));
        });
        self.refs[(seq as usize) % REFS] = (seq, order.id, b'D');
        self.unwritten.push(order.id);
        let w = Working { order: *order, fate: Fate::Known, awaiting: true, cancel_sent: false, written_at: None };
        self.working.insert(order.id, w);
    }

    fn cancel_request(&mut self, order: &Order, now: Nanos) {
        let qd = self.spec(order).qty_decimals;
        let symbol = &self.settings.symbols[usize::from(order.symbol.0)];
        let seq = self.session.next_out();
        let mut id = [0u8; 41];
        let n = clordid(&mut id, order.id, seq);
        self.session.send(b"F", now, |m| {
            m.int(41, order.id.0 as i64)
                .bytes(11, &id[..n])
                .str(55, symbol)
                .char(54, side(order.side))
                .timestamp(60, now)
                .decimal(38, order.qty, qd);
        });
        self.refs[(seq as usize) % REFS] = (seq, order.id, b'F');
        if let Some(w) = self.working.get_mut(&order.id) {
            w.cancel_sent = true;
            w.awaiting = true;
        }
    }

    fn status_request(&mut self, order: &Order, now: Nanos) {
        let symbol = &self.settings.symbols[usize::from(order.symbol.0)];
        let seq = self.session.next_out();
        self.session.send(b"H", now, |m| {
            m.int(11, order.id.0 as i64).str(55, symbol).char(54, side(order.side));
        });
        self.refs[(seq as usize) % REFS] = (seq, order.id, b'H');
    }

    // ----- messages in -----

    fn act(&mut self, m: &Message<'_>, out: &mut Vec<Execution>) -> Result<(), &'static str> {
        match m.msg_type() {
            b"8" => self.report(m, out),
            b"9" => {
                // OrderCancelReject: the order's state is whatever the venue says it is now.
                let id = order_id(m.get(41).or(m.get(11))).ok_or("OrderCancelReject without an order id")?;
                log::warn!("fix: the venue refused to cancel order {id} ({})", text(m));
                self.mark_unknown(id);
                Ok(())
            }
            b"3" => {
                let Ok(Some(seq)) = m.uint(45) else { return Err("Reject without RefSeqNum") };
                let code = m.uint(373).ok().flatten().unwrap_or(99) as u32;
                log::warn!("fix: the venue rejected message {seq} ({})", text(m));
                let (ref_seq, id, kind) = self.refs[(seq as usize) % REFS];
                if ref_seq == seq {
                    self.refused(id, kind, VenueReason { kind: ReasonKind::SessionReject, code }, out);
                }
                Ok(())
            }
            b"j" => {
                let code = m.uint(380).ok().flatten().unwrap_or(0) as u32;
                log::warn!("fix: the venue's application refused a message ({})", text(m));
                let kind = m.char(372).ok().flatten().unwrap_or(b'?');
                let by_ref = m.uint(45).ok().flatten().map(|s| self.refs[(s as usize) % REFS]).filter(|r| r.0 > 0);
                let id = order_id(m.get(379)).or(by_ref.map(|r| r.1));
                if let Some(id) = id {
                    self.refused(id, kind, VenueReason { kind: ReasonKind::BusinessReject, code }, out);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The venue refused a message about order `id` (of type `kind`).
    fn refused(&mut self, id: OrderId, kind: u8, reason: VenueReason, out: &mut Vec<Execution>) {
        match kind {
            b'D' => {
                if self.working.contains_key(&id) {
                    self.settle(id);
                    self.forget_id(id);
                    out.push(Execution::Rejected { order: id, reason: Some(reason) });
                }
            }
            // A status request about an id the venue does not know: the order never got there.
            b'H' if reason == (VenueReason { kind: ReasonKind::BusinessReject, code: 1 }) => {
                self.unknown_at_venue(id, out)
            }
            // Any other status request refused is asked again in a while.
            b'H' => {}
            _ => self.mark_unknown(id),
        }
    }

    fn report(&mut self, m: &Message<'_>, out: &mut Vec<Execution>) -> Result<(), &'static str> {
        let id = order_id(m.get(11)).or(order_id(m.get(41))).ok_or("ExecutionReport without ClOrdID")?;
        let exec_type = m.char(150).map_err(|_| "ExecType unreadable")?.ok_or("ExecutionReport without ExecType")?;
        let status = m.char(39).map_err(|_| "OrdStatus unreadable")?.ok_or("ExecutionReport without OrdStatus")?;
        let Some(w) = self.working.get(&id).copied() else {
            self.unmatched += 1;
            return Ok(());
        };
        if let Some(at) = w.written_at {
            // The first report on the order, whatever it says, ends its round trip.
            self.round_trip.saturating_record((at.elapsed().as_nanos() as u64).max(1));
            if let Some(w) = self.working.get_mut(&id) {
                w.written_at = None;
            }
        }
        let spec = &self.specs[usize::from(w.order.symbol.0)];
        let (qd, pd) = (spec.qty_decimals, spec.price_decimals);
        let cum = m.decimal(14, qd).map_err(|_| "CumQty unreadable")?.ok_or("ExecutionReport without CumQty")?;
        let fee = match m.char(13).ok().flatten() {
            None | Some(b'3') => m.decimal(12, MONEY_DECIMALS).ok().flatten().unwrap_or(0),
            Some(_) => 0,
        };
        let order = id;
        match exec_type {
            b'0' => out.push(Execution::Ack { order }),
            b'F' => {
                let qty = m.decimal(32, qd).map_err(|_| "LastQty unreadable")?.ok_or("a trade without LastQty")?;
                let price = m.decimal(31, pd).map_err(|_| "LastPx unreadable")?.ok_or("a trade without LastPx")?;
                out.push(Execution::Fill { order, qty, price, fee, cum_qty: Some(cum) });
            }
            b'4' => out.push(Execution::Canceled { order }),
            b'C' => out.push(Execution::Expired { order }),
            b'8' => out.push(Execution::Rejected { order, reason: Some(ord_rej_reason(m)) }),
            b'I' => {
                // An answer to OrderStatusRequest: the whole state at once.
                let avg = m.decimal(6, pd).ok().flatten().unwrap_or(0);
                if status == b'8' && cum == 0 && m.uint(103).ok().flatten() == Some(5) {
                    self.unknown_at_venue(id, out);
                    return Ok(());
                }
                if status != b'A' && status != b'8' {
                    out.push(Execution::Ack { order });
                }
                if cum > 0 && avg > 0 {
                    out.push(Execution::Fill { order, qty: cum, price: avg, fee, cum_qty: Some(cum) });
                }
                match status {
                    b'4' => out.push(Execution::Canceled { order }),
                    b'C' => out.push(Execution::Expired { order }),
                    b'8' => out.push(Execution::Rejected { order, reason: Some(ord_rej_reason(m)) }),
                    _ => {}
                }
            }
            // Pending new, pending cancel, restated and the like change nothing here.
            _ => return Ok(()),
        }
        self.settle(id);
        if matches!(status, b'2' | b'4' | b'8' | b'C') {
            self.forget_id(id);
        }
        Ok(())
    }

    /// The venue said something about `id`: it is awaited no longer, and known.
    fn settle(&mut self, id: OrderId) {
        let Some(w) = self.working.get_mut(&id) else { return };
        w.awaiting = false;
        if w.fate != Fate::Known {
            w.fate = Fate::Known;
            let account = w.order.account;
            self.known_again(account);
        }
    }

    /// An order of `account` no longer of unknown fate: when it was the last, the account's
    /// parked orders may go.
    fn known_again(&mut self, account: AccountId) {
        if let Some(n) = self.unknown.get_mut(&account) {
            *n -= 1;
            if *n == 0 {
                self.unknown.remove(&account);
                log::info!("fix: the orders of account {account} are reconciled");
            }
        }
    }

    fn mark_unknown(&mut self, id: OrderId) {
        if let Some(w) = self.working.get_mut(&id) {
            w.doubt(&mut self.unknown);
        }
    }

    /// The venue does not know `id`: it never got there.
    fn unknown_at_venue(&mut self, id: OrderId, out: &mut Vec<Execution>) {
        let Some(w) = self.working.get(&id).copied() else { return };
        log::warn!("fix: the venue does not know order {id}: it never reached the venue");
        self.settle(id);
        self.forget_id(id);
        if w.cancel_sent {
            out.push(Execution::Canceled { order: id });
        } else {
            let reason = VenueReason { kind: ReasonKind::UnknownAtVenue, code: 0 };
            out.push(Execution::Rejected { order: id, reason: Some(reason) });
        }
    }

    fn forget_id(&mut self, id: OrderId) {
        if let Some(w) = self.working.remove(&id) {
            if w.fate != Fate::Known {
                self.known_again(w.order.account);
            }
        }
    }

    /// The session dropped: orders that waited for their account's reconciliation do not go
    /// out later, stale; they are refused as the session being down. Cancels wait for the next.
    fn refuse_parked(&mut self, out: &mut Vec<Execution>) {
        self.parked.retain(|p| match p {
            Parked::Submit(o) => {
                out.push(Execution::Rejected { order: o.id, reason: Some(VENUE_DOWN) });
                false
            }
            Parked::Cancel(_) => true,
        });
    }

    /// Asks about orders of unknown fate, and lets parked orders go where nothing holds them.
    fn reconcile(&mut self, now: Nanos) {
        if !self.session.in_sync() {
            return;
        }
        if !self.unknown.is_empty() {
            let mut ask = Vec::new();
            for w in self.working.values_mut() {
                let due = match w.fate {
                    Fate::Unknown => true,
                    Fate::Asked(at) => now.saturating_sub(at) >= ASK_AGAIN,
                    Fate::Known => false,
                };
                if due {
                    w.fate = Fate::Asked(now);
                    ask.push(w.order);
                }
            }
            for o in &ask {
                log::info!("fix: asking the venue about order {} (its fate is unknown)", o.id);
                self.status_request(o, now);
            }
        }
        if self.parked.is_empty() {
            return;
        }
        let mut parked = std::mem::replace(&mut self.parked, std::mem::take(&mut self.spare));
        for p in parked.drain(..) {
            match p {
                Parked::Submit(o) if self.unknown.contains_key(&o.account) => self.parked.push_back(p),
                Parked::Submit(o) => self.new_order(&o, now),
                Parked::Cancel(o) if self.working.get(&o.id).is_some_and(|w| w.fate != Fate::Known) => {
                    self.parked.push_back(p)
                }
                Parked::Cancel(o) if self.working.contains_key(&o.id) => self.cancel_request(&o, now),
                // Its order ended meanwhile (filled, or never reached the venue).
                Parked::Cancel(_) => {}
            }
        }
        self.spare = parked;
    }
}

impl Venue for FixVenue {
    fn submit(&mut self, order: &Order, _: &SymbolSpec, _: Option<&Quote>, now: Nanos, out: &mut Vec<Execution>) {
        if !self.available() {
            // The session dropped after the order was taken: it does not go out later, stale.
            out.push(Execution::Rejected { order: order.id, reason: Some(VENUE_DOWN) });
        } else if !self.session.in_sync() || self.unknown.contains_key(&order.account) {
            self.parked.push_back(Parked::Submit(*order));
        } else {
            self.new_order(order, now);
        }
    }

    fn cancel(&mut self, order: &Order, now: Nanos, out: &mut Vec<Execution>) {
        let parked = self.parked.iter().position(|p| matches!(p, Parked::Submit(o) if o.id == order.id));
        if let Some(i) = parked {
            // It never left: canceled here.
            self.parked.remove(i);
            out.push(Execution::Canceled { order: order.id });
        } else if !self.working.contains_key(&order.id) {
            // Nothing of it at the venue (refused on its way): nothing to ask.
            out.push(Execution::Canceled { order: order.id });
        } else if !self.session.in_sync() || self.working.get(&order.id).is_some_and(|w| w.fate != Fate::Known) {
            self.parked.push_back(Parked::Cancel(*order));
        } else {
            self.cancel_request(order, now);
        }
    }

    fn on_quote(&mut self, _: &Quote, _: &SymbolSpec, _: Nanos, _: &mut Vec<Execution>) {}

    /// The engine expired a day order itself: the venue is told to cancel it too, so that
    /// nothing works there that the node counts as ended.
    fn forget(&mut self, order: &Order) {
        if self.working.contains_key(&order.id) && self.session.in_sync() {
            self.cancel_request(order, crate::clock::now());
        }
        self.forget_id(order.id);
    }

    fn poll(&mut self, now: Nanos, out: &mut Vec<Execution>) {
        if self.session.state() == State::Disconnected {
            self.refuse_parked(out);
        }
        // The messages are read in place: the buffer is lent out while the session and the
        // venue act on them.
        let inbox = std::mem::take(&mut self.inbox);
        let mut at = 0;
        while !self.broken {
            let n = match frame(&inbox[at..]) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    log::error!("fix: unreadable bytes from the venue ({e:?}); dropping the connection");
                    self.broken = true;
                    break;
                }
            };
            let bytes = &inbox[at..at + n];
            at += n;
            match Message::parse(bytes) {
                Ok(m) => match self.session.receive(&m, now) {
                    Verdict::Deliver => {
                        if let Err(why) = self.act(&m, out) {
                            self.unreadable += 1;
                            let kind = String::from_utf8_lossy(m.msg_type());
                            log::error!("fix: ignored a message of type {kind:?}: {why}");
                        }
                    }
                    Verdict::Done => {}
                    Verdict::Disconnect => self.broken = true,
                },
                Err(e) => {
                    log::error!("fix: unreadable message from the venue ({e:?}); dropping the connection");
                    self.broken = true;
                }
            }
        }
        self.inbox = inbox;
        self.inbox.drain(..at);
        if self.session.tick(now) == Verdict::Disconnect {
            self.broken = true;
        }
        if !self.broken {
            self.reconcile(now);
        }
        if let Some(Progress { inbound, outbound }) = self.session.progress() {
            out.push(Execution::Session { inbound, outbound });
        }
    }

    fn working_orders(&self) -> usize {
        self.working.len() + self.parked.iter().filter(|p| matches!(p, Parked::Submit(_))).count()
    }

    fn recover(&mut self, order: &Order, _: &SymbolSpec, _: Option<&Quote>, _: Nanos, _: &mut Vec<Execution>) {
        if self.working.contains_key(&order.id) {
            return;
        }
        let cancel_sent = order.status == OrderStatus::PendingCancel;
        let mut w = Working { order: *order, fate: Fate::Known, awaiting: false, cancel_sent, written_at: None };
        if matches!(order.status, OrderStatus::PendingNew | OrderStatus::PendingCancel) {
            w.doubt(&mut self.unknown);
        }
        self.working.insert(order.id, w);
    }

    fn resume_session(&mut self, inbound: u64, outbound: u64) {
        self.session.resume(Progress { inbound, outbound });
    }

    fn answers_later(&self) -> bool {
        true
    }

    fn reconciling(&self, order: OrderId) -> bool {
        self.working.get(&order).is_some_and(|w| w.fate != Fate::Known)
    }

    /// Looked up newest first: the order asked about was written moments ago.
    fn sent_at(&self, order: OrderId) -> Option<Instant> {
        let (older, newer) = self.written.split_at(self.written_next);
        older.iter().rev().chain(newer.iter().rev()).find(|(id, _)| *id == order).and_then(|(_, at)| *at)
    }
}

fn side(s: Side) -> u8 {
    match s {
        Side::Buy => b'1',
        Side::Sell => b'2',
    }
}

fn tif(t: Tif) -> u8 {
    match t {
        Tif::Day => b'0',
        Tif::Gtc => b'1',
        Tif::Ioc => b'3',
    }
}

/// The order a ClOrdID names: its leading digits.
fn order_id(v: Option<&[u8]>) -> Option<OrderId> {
    let v = v?;
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    v[..digits].iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0'))).map(OrderId)
}

/// A cancel's ClOrdID, `<order>-<seq>`, into `buf`; its length.
fn clordid(buf: &mut [u8; 41], order: OrderId, seq: u64) -> usize {
    let mut digits = itoa::Buffer::new();
    let a = digits.format(order.0).as_bytes();
    buf[..a.len()].copy_from_slice(a);
    buf[a.len()] = b'-';
    let mut digits = itoa::Buffer::new();
    let b = digits.format(seq).as_bytes();
    buf[a.len() + 1..a.len() + 1 + b.len()].copy_from_slice(b);
    a.len() + 1 + b.len()
}

/// A report's OrdRejReason (103); 99, other, when it gives none.
fn ord_rej_reason(m: &Message<'_>) -> VenueReason {
    VenueReason { kind: ReasonKind::OrderReject, code: m.uint(103).ok().flatten().unwrap_or(99) as u32 }
}

/// Text (58) of a message, for logs.
fn text<'m>(m: &Message<'m>) -> std::borrow::Cow<'m, str> {
    String::from_utf8_lossy(m.get(58).unwrap_or(b"no text"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::account::{AccountName, LimitOverrides, RiskLimits, Tier};
    use crate::engine::event::EventKind;
    use crate::engine::symbol::SymbolTable;
    use crate::engine::types::{SymbolId, Tag};
    use crate::engine::{Engine, EngineConfig, Intent, SignalSpec, Size};
    use crate::fixed::MONEY_DECIMALS;
    use crate::time::DAY;
    use crate::venue::fix::codec::Encoder;
    use crate::venue::fix::session::SessionConfig;

    const T0: Nanos = 1_796_660_914_500_000_000;
    const USD: i64 = 10i64.pow(MONEY_DECIMALS as u32);

    fn spec() -> SymbolSpec {
        let name = "BTC-USD".into();
        SymbolSpec { id: SymbolId(0), name, price_decimals: 2, qty_decimals: 2, tick: 1, lot: 1, max_order_qty: 10_000 }
    }

    /// An engine on a FIX venue, logged on, with an account and a quote.
    fn engine() -> (Engine<FixVenue>, AccountId) {
        let cfg = EngineConfig {
            price_collar_bps: 500,
            max_quote_age: 5 * SECOND,
            idempotency_capacity: 100,
            idempotency_ttl: DAY,
            orders_per_account: 64,
            order_id_base: 0,
        };
        let limits = RiskLimits {
            requests_per_minute: 1000,
            max_order_notional: 1_000_000 * USD,
            max_position_notional: 1_000_000 * USD,
            max_gross_exposure: 1_000_000 * USD,
            max_orders_per_second: 1000,
            max_daily_loss: 0,
            max_open_orders: 50,
            leverage: 2,
        };
        let settings = FixSettings {
            session: SessionConfig {
                sender: "SG".into(),
                target: "VENUE".into(),
                heartbeat: 30 * SECOND,
                logon_timeout: 10 * SECOND,
            },
            account: Some("ACC-1".into()),
            symbols: vec!["XBT/USD".into()],
        };
        let venue = FixVenue::new(settings, &[spec()]);
        let tiers = vec![Tier { name: "t".into(), limits }];
        let mut e = Engine::new(cfg, SymbolTable::new(vec![spec()]), tiers, venue);
        let name = AccountName::new("a").unwrap();
        let a = e.create_account(name, 0, 1_000_000 * USD, LimitOverrides::default(), T0).unwrap();
        let q = Quote { symbol: SymbolId(0), bid: 10_000, ask: 10_010, bid_size: 1000, ask_size: 1000, ts: T0 };
        e.on_quote(q, T0);
        e.venue_mut().connected(T0);
        deliver(&mut e, b"A", 1, &[(98, "0"), (108, "30")]);
        e.venue_mut().output().clear();
        (e, a)
    }

    /// A message from the venue, acted on.
    fn deliver(e: &mut Engine<FixVenue>, msg_type: &[u8], seq: u64, fields: &[(u32, &str)]) {
        let mut bytes = Vec::new();
        let mut m = Encoder::new(&mut bytes, msg_type);
        m.str(49, "VENUE").str(56, "SG").int(34, seq as i64).timestamp(52, T0);
        for (tag, v) in fields {
            m.str(*tag, v);
        }
        m.finish();
        e.venue_mut().received(&bytes);
        e.poll_venue(T0);
    }

    fn buy(e: &mut Engine<FixVenue>, a: AccountId, hundredths: i64) -> OrderId {
        let s = SignalSpec {
            symbol: SymbolId(0),
            intent: Intent::Buy(Size::Qty(hundredths)),
            order_type: OrderType::Market,
            limit_price: 0,
            tif: Tif::Ioc,
            strategy: Tag::EMPTY,
            signal_id: None,
        };
        e.signal(a, &s, T0).unwrap().answer.order.unwrap().id
    }

    fn sent(e: &mut Engine<FixVenue>) -> String {
        String::from_utf8_lossy(&std::mem::take(e.venue_mut().output())).replace('\x01', "|")
    }

    #[test]
    fn an_order_goes_out_as_a_new_order_single_with_the_venue_s_names() {
        let (mut e, a) = engine();
        let id = buy(&mut e, a, 150);
        let nos = sent(&mut e);
        assert!(nos.contains("|35=D|49=SG|56=VENUE|34=2|"), "{nos}");
        for field in [format!("|11={}|", id.0), "|1=ACC-1|55=XBT/USD|54=1|".into(), "|38=1.5|40=1|59=3|".into()] {
            assert!(nos.contains(&field), "{field} in {nos}");
        }
        // A cancel names the order and carries its own id.
        let o = *e.order(id).unwrap();
        let mut out = Vec::new();
        e.venue_mut().cancel(&o, T0, &mut out);
        let cancel = sent(&mut e);
        assert!(cancel.contains("|35=F|") && cancel.contains(&format!("|41={}|11={}-3|", id.0, id.0)), "{cancel}");
    }

    #[test]
    fn reports_apply_once_however_often_they_come() {
        let (mut e, a) = engine();
        let id = buy(&mut e, a, 100);
        let clordid = id.0.to_string();
        let report = |exec: &'static str, status: &'static str, last: &'static str, cum: &'static str| {
            let mut f = vec![(11, clordid.clone()), (17, "E".into()), (150, exec.into()), (39, status.into())];
            f.extend([(55, "XBT/USD".into()), (54, "1".into()), (14, cum.into()), (6, "100.05".into())]);
            if exec == "F" {
                f.extend([(32, last.into()), (31, "100.05".into())]);
            }
            f
        };
        let send = |e: &mut Engine<FixVenue>, seq: u64, dup: bool, f: &[(u32, String)]| {
            let mut fields: Vec<(u32, &str)> = f.iter().map(|(t, v)| (*t, v.as_str())).collect();
            if dup {
                fields.insert(0, (43, "Y"));
            }
            deliver(e, b"8", seq, &fields);
        };
        send(&mut e, 2, false, &report("0", "0", "", "0"));
        send(&mut e, 3, false, &report("F", "1", "0.4", "0.4"));
        assert_eq!(e.order(id).unwrap().filled_qty, 40);
        // The same report again, under a new number, flagged: its CumQty is had already.
        send(&mut e, 4, true, &report("F", "1", "0.4", "0.4"));
        // An old number again (a resend after a gap that was not one): dropped by the session.
        send(&mut e, 3, true, &report("F", "1", "0.4", "0.4"));
        assert_eq!(e.order(id).unwrap().filled_qty, 40);
        send(&mut e, 5, false, &report("F", "2", "0.6", "1"));
        // A status answer that says the same: nothing more.
        send(&mut e, 6, false, &report("I", "2", "", "1"));
        let o = e.order(id).unwrap();
        assert_eq!((o.filled_qty, o.status), (100, OrderStatus::Filled));
        assert_eq!(e.account(a).unwrap().positions[0].qty, 100);
        assert_eq!(e.venue().round_trip().len(), 0, "nothing was written, so no round trip is timed");
        // Every report up to 6 is had: the journal learns where the session is.
        assert!(e.events().iter().any(|ev| matches!(ev.kind, EventKind::VenueSession { inbound: 7, .. })));
    }

    #[test]
    fn a_resting_order_expires_or_is_canceled_as_the_venue_reports() {
        let (mut e, a) = engine();
        let s = SignalSpec {
            symbol: SymbolId(0),
            intent: Intent::Buy(Size::Qty(100)),
            order_type: OrderType::Limit,
            limit_price: 9_900,
            tif: Tif::Day,
            strategy: Tag::EMPTY,
            signal_id: None,
        };
        let day = e.signal(a, &s, T0).unwrap().answer.order.unwrap().id;
        let gtc = e.signal(a, &SignalSpec { tif: Tif::Gtc, ..s }, T0).unwrap().answer.order.unwrap().id;
        let sent = sent(&mut e);
        assert!(sent.contains("|40=2|44=99|59=0|") && sent.contains("|40=2|44=99|59=1|"), "{sent}");
        let report = |id: OrderId, exec: &'static str, status: &'static str| {
            [(11, id.0.to_string()), (150, exec.into()), (39, status.into()), (14, "0".into())]
        };
        let reports = [(day, "0", "0"), (gtc, "0", "0"), (day, "C", "C"), (gtc, "4", "4")];
        for (seq, (id, exec, status)) in (2..).zip(reports) {
            let r = report(id, exec, status);
            let fields: Vec<(u32, &str)> = r.iter().map(|(t, v)| (*t, v.as_str())).collect();
            deliver(&mut e, b"8", seq, &fields);
        }
        assert_eq!(e.order(day).unwrap().status, OrderStatus::Expired);
        assert_eq!(e.order(gtc).unwrap().status, OrderStatus::Canceled);
        let p = e.account(a).unwrap().positions[0];
        assert_eq!((p.open_buy, p.qty), (0, 0), "nothing left working");
        assert_eq!(e.venue().working_orders(), 0);
    }

    #[test]
    fn orders_of_unknown_fate_are_asked_about_and_hold_their_account_s_new_orders() {
        let (mut e, a) = engine();
        let first = buy(&mut e, a, 10);
        sent(&mut e);
        // The connection drops with the order unanswered.
        e.venue_mut().disconnected();
        e.poll_venue(T0);
        assert!(e.venue().reconciling(first));
        e.venue_mut().connected(T0);
        deliver(&mut e, b"A", 2, &[(98, "0"), (108, "30")]);
        let asked = sent(&mut e);
        assert!(asked.contains("|35=H|") && asked.contains(&format!("|11={}|", first.0)), "{asked}");
        // A new order of the account waits for the answer.
        let second = buy(&mut e, a, 10);
        assert!(!sent(&mut e).contains("|35=D|"), "held until the account is reconciled");
        // One that waits when the session drops again is refused, never sent late.
        let stale = buy(&mut e, a, 10);
        e.venue_mut().disconnected();
        e.poll_venue(T0);
        assert_eq!(e.order(stale).unwrap().status, OrderStatus::Rejected);
        assert_eq!(e.venue_reason(stale).map(|r| r.kind), Some(ReasonKind::VenueDown));
        assert_eq!(e.order(second).unwrap().status, OrderStatus::Rejected);
        let second = buy(&mut e, a, 10);
        assert_eq!(e.order(second).unwrap().status, OrderStatus::Rejected, "refused while down");
        e.venue_mut().connected(T0);
        deliver(&mut e, b"A", 3, &[(98, "0"), (108, "30")]);
        let asked = sent(&mut e);
        assert!(asked.contains("|35=H|"), "{asked}");
        let second = buy(&mut e, a, 10);
        assert!(!sent(&mut e).contains("|35=D|"), "held again until the account is reconciled");
        // The venue does not know the first: it never got there; the second goes out.
        let unknown =
            [(11, first.0.to_string()), (150, "I".into()), (39, "8".into()), (103, "5".into()), (14, "0".into())];
        let fields: Vec<(u32, &str)> = unknown.iter().map(|(t, v)| (*t, v.as_str())).collect();
        deliver(&mut e, b"8", 4, &fields);
        assert_eq!(e.order(first).unwrap().status, OrderStatus::Rejected);
        assert_eq!(e.venue_reason(first).map(|r| r.kind), Some(ReasonKind::UnknownAtVenue));
        assert!(sent(&mut e).contains("|35=D|"), "the held order goes");
        assert!(!e.venue().reconciling(second));
        // While the session is down an order released to the venue is refused, not kept.
        e.venue_mut().disconnected();
        let third = buy(&mut e, a, 10);
        assert_eq!(e.order(third).unwrap().status, OrderStatus::Rejected);
        assert_eq!(e.venue_reason(third).map(|r| r.kind), Some(ReasonKind::VenueDown));
    }
}
