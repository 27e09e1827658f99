//! The port orders leave the engine through: the [`Venue`] trait the engine calls, and what a
//! venue reports back ([`Execution`]). The venues themselves (paper, FIX, gated) live in
//! `crate::venue`, above the engine.

use super::market::Quote;
use super::order::{Order, OrderStatus};
use super::symbol::SymbolSpec;
use super::types::{Nanos, OrderId};

/// What a venue did with an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// The order is working.
    Ack {
        /// Which order.
        order: OrderId,
    },
    /// Some quantity traded.
    Fill {
        /// Which order.
        order: OrderId,
        /// Quantity (quantity units).
        qty: i64,
        /// Price (price units).
        price: i64,
        /// Fee (money units).
        fee: i64,
        /// What the venue says has filled in all, this fill included, when it says (a remote
        /// venue's report): a report already applied, sent again, then changes nothing, and
        /// the fill never takes the order past it.
        cum_qty: Option<i64>,
    },
    /// Whatever remained is canceled (cancel request, or an ioc remainder).
    Canceled {
        /// Which order.
        order: OrderId,
    },
    /// The venue refused the order.
    Rejected {
        /// Which order.
        order: OrderId,
        /// Why, when the venue said.
        reason: Option<VenueReason>,
    },
    /// What remained ran out of its time in force at the venue.
    Expired {
        /// Which order.
        order: OrderId,
    },
    /// How far a venue's session has got, to keep across a restart: every message received
    /// before `inbound` is in the executions reported with or before this one, and no message
    /// was or will be sent under a sequence number from `outbound` on until a later report.
    Session {
        /// The next sequence number expected from the venue.
        inbound: u64,
        /// The first sequence number not yet promised to outgoing messages.
        outbound: u64,
    },
}

/// Why a venue refused an order, as its protocol says it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
)]
pub struct VenueReason {
    /// Which list `code` is from.
    pub kind: ReasonKind,
    /// The code in that list.
    pub code: u32,
}

/// The lists of reasons a venue gives.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ReasonKind {
    /// An ExecutionReport's OrdRejReason (FIX tag 103).
    OrderReject,
    /// A session-level Reject's SessionRejectReason (FIX tag 373).
    SessionReject,
    /// A BusinessMessageReject's BusinessRejectReason (FIX tag 380).
    BusinessReject,
    /// The venue does not know the order: it never arrived there (found by reconciliation).
    UnknownAtVenue,
    /// The order was released while the session with the venue was down: it never left.
    VenueDown,
}

impl ReasonKind {
    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonKind::OrderReject => "order_reject",
            ReasonKind::SessionReject => "session_reject",
            ReasonKind::BusinessReject => "business_reject",
            ReasonKind::UnknownAtVenue => "unknown_at_venue",
            ReasonKind::VenueDown => "venue_down",
        }
    }
}

impl VenueReason {
    /// The reason in words, for answers and logs.
    pub fn text(self) -> &'static str {
        match (self.kind, self.code) {
            (ReasonKind::OrderReject, 0) => "broker or exchange option",
            (ReasonKind::OrderReject, 1) => "unknown symbol",
            (ReasonKind::OrderReject, 2) => "exchange closed",
            (ReasonKind::OrderReject, 3) => "order exceeds limit",
            (ReasonKind::OrderReject, 4) => "too late to enter",
            (ReasonKind::OrderReject, 5) => "unknown order",
            (ReasonKind::OrderReject, 6) => "duplicate order",
            (ReasonKind::OrderReject, 8) => "stale order",
            (ReasonKind::OrderReject, 11) => "unsupported order characteristic",
            (ReasonKind::OrderReject, 13) => "incorrect quantity",
            (ReasonKind::OrderReject, 15) => "unknown account",
            (ReasonKind::OrderReject, _) => "refused by the venue",
            (ReasonKind::SessionReject, 1) => "a required field is missing",
            (ReasonKind::SessionReject, 5) => "a value is out of range",
            (ReasonKind::SessionReject, 6) => "a value is badly formatted",
            (ReasonKind::SessionReject, _) => "the venue could not read the message",
            (ReasonKind::BusinessReject, 1) => "unknown id",
            (ReasonKind::BusinessReject, 2) => "unknown security",
            (ReasonKind::BusinessReject, 3) => "unsupported message type",
            (ReasonKind::BusinessReject, 4) => "application not available",
            (ReasonKind::BusinessReject, 5) => "a conditionally required field is missing",
            (ReasonKind::BusinessReject, 6) => "not authorized",
            (ReasonKind::BusinessReject, _) => "refused by the venue's application",
            (ReasonKind::UnknownAtVenue, _) => "the order never reached the venue",
            (ReasonKind::VenueDown, _) => "the session with the venue was down",
        }
    }
}

/// An execution venue.
pub trait Venue {
    /// A new order, already journaled and risk-checked.
    fn submit(&mut self, order: &Order, spec: &SymbolSpec, quote: Option<&Quote>, now: Nanos, out: &mut Vec<Execution>);
    /// Cancel what remains of `order`.
    fn cancel(&mut self, order: &Order, now: Nanos, out: &mut Vec<Execution>);
    /// A new quote; resting orders may fill.
    fn on_quote(&mut self, quote: &Quote, spec: &SymbolSpec, now: Nanos, out: &mut Vec<Execution>);
    /// Drops `order` without reporting anything (the engine expired it).
    fn forget(&mut self, order: &Order);
    /// Time passes; delayed work may complete.
    fn poll(&mut self, now: Nanos, out: &mut Vec<Execution>);
    /// Orders the venue holds (resting or in flight).
    fn working_orders(&self) -> usize;

    /// An order the journal holds open after a restart (or that came with an adopted account),
    /// with the status it has. A venue that keeps its book in memory takes it again (and its
    /// cancel, if one was asked for); a remote venue finds out what became of it instead.
    fn recover(
        &mut self,
        order: &Order,
        spec: &SymbolSpec,
        quote: Option<&Quote>,
        now: Nanos,
        out: &mut Vec<Execution>,
    ) {
        self.submit(order, spec, quote, now, out);
        if order.status == OrderStatus::PendingCancel {
            self.cancel(order, now, out);
        }
    }

    /// Where the venue's session was when the journal last recorded it (see
    /// [`Execution::Session`]), handed over once after a restart.
    fn resume_session(&mut self, _inbound: u64, _outbound: u64) {}

    /// When `order` went on the wire to a remote venue, if it was among the last few.
    fn sent_at(&self, _order: OrderId) -> Option<std::time::Instant> {
        None
    }

    /// Whether the venue is finding out what became of `order` (a remote venue, after the
    /// connection dropped or a restart, before its answer).
    fn reconciling(&self, _order: OrderId) -> bool {
        false
    }

    /// Whether the venue answers orders later, from outside (an answer then waits a while for
    /// the venue's first word on its order), rather than as it is handed them.
    fn answers_later(&self) -> bool {
        false
    }
}

/// A venue that is never called: the engine of a follower, which only applies the events the
/// hot core's engine made (snapshots, the offloader, history, the WebSocket hub).
pub struct NoVenue;

impl Venue for NoVenue {
    fn submit(&mut self, _: &Order, _: &SymbolSpec, _: Option<&Quote>, _: Nanos, _: &mut Vec<Execution>) {}
    fn cancel(&mut self, _: &Order, _: Nanos, _: &mut Vec<Execution>) {}
    fn on_quote(&mut self, _: &Quote, _: &SymbolSpec, _: Nanos, _: &mut Vec<Execution>) {}
    fn forget(&mut self, _: &Order) {}
    fn poll(&mut self, _: Nanos, _: &mut Vec<Execution>) {}
    fn working_orders(&self) -> usize {
        0
    }
}
