//! Events: every state change of the engine, numbered without gaps across the node.
//!
//! The engine mutates its state only by applying events (see `Engine::apply_event`), so the
//! same events replayed in order rebuild the same state.

use super::account::{AccountName, AccountState, LimitOverrides, Roles, StateReason, TierId};
use super::market::Quote;
use super::order::{Order, OrderEvent, OrderStatus};
use super::position::{Holding, Position};
use super::risk::RejectCode;
use super::types::{AccountId, KeyId, Nanos, OrderId, Side, SignalKey, SymbolId};
use super::venue::VenueReason;

/// One state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
pub struct Event {
    /// Node-wide sequence number, from 1, without gaps.
    pub seq: u64,
    /// Engine time of the change.
    pub ts: Nanos,
    /// What changed.
    #[serde(flatten)]
    pub kind: EventKind,
}

pub use kinds::EventKind;

// In a private module so that the resolver type rkyv derives for it (whose fields carry no docs)
// stays private.
mod kinds {
    use super::*;

    /// The kinds of state change.
    #[derive(
        Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
    )]
    #[serde(tag = "type", content = "data", rename_all = "snake_case")]
    pub enum EventKind {
        /// An account was opened.
        AccountCreated {
            /// Its id.
            account: AccountId,
            /// Its name.
            name: AccountName,
            /// Its tier.
            tier: TierId,
            /// Starting cash (money units).
            cash: i64,
            /// Limit overrides.
            overrides: LimitOverrides,
        },
        /// An API key was added (hash only).
        KeyAdded {
            /// Its id.
            key: KeyId,
            /// Its account.
            account: AccountId,
            /// SHA-256 of the key.
            #[serde(serialize_with = "crate::engine::types::serialize_hex")]
            hash: [u8; 32],
            /// Its roles.
            roles: Roles,
        },
        /// An API key was revoked.
        KeyRevoked {
            /// Its id.
            key: KeyId,
        },
        /// An account's limit overrides were replaced.
        LimitsSet {
            /// The account.
            account: AccountId,
            /// The new overrides.
            overrides: LimitOverrides,
        },
        /// An account's trading state changed.
        AccountStateChanged {
            /// The account.
            account: AccountId,
            /// The new state.
            state: AccountState,
            /// Why.
            reason: StateReason,
        },
        /// A new UTC day started for an account; daily loss counts from `equity`.
        DayStarted {
            /// The account.
            account: AccountId,
            /// UTC day number.
            day: u32,
            /// Equity at the start of the day (money units).
            equity: i64,
        },
        /// An order passed risk checks and goes to the venue.
        OrderAccepted {
            /// The order as accepted (status `pending_new`).
            order: Order,
        },
        /// An order changed status without a fill.
        OrderUpdated {
            /// The order.
            order: OrderId,
            /// Its account.
            account: AccountId,
            /// What happened.
            event: OrderEvent,
        },
        /// Part or all of an order filled.
        Fill {
            /// The order.
            order: OrderId,
            /// Its account.
            account: AccountId,
            /// Its symbol.
            symbol: SymbolId,
            /// Its side.
            side: Side,
            /// Filled quantity (quantity units).
            qty: i64,
            /// Fill price (price units).
            price: i64,
            /// `qty × price` (money units).
            notional: i64,
            /// Fee (money units).
            fee: i64,
            /// The P&L this fill realized (money units), fees not included.
            realized: i64,
            /// The position after the fill.
            position: Holding,
        },
        /// A quote arrived.
        Quote(Quote),
        /// A signal with a `signal_id` was answered; a repeat gets the same answer.
        SignalAnswered {
            /// The account.
            account: AccountId,
            /// The client's signal id.
            signal: SignalKey,
            /// The answer given.
            answer: SignalAnswer,
        },
        /// A signal or order was refused before reaching the venue (audit trail).
        Rejected {
            /// The account.
            account: AccountId,
            /// Why.
            code: RejectCode,
        },
        /// An account of a cluster node that died moved here: the `events` events that follow
        /// are its history on that node (read back from the cluster), journaled again so that
        /// this node holds the account from now on, under `epoch`.
        AccountAdopted {
            /// The account.
            account: AccountId,
            /// Its epoch here (the cluster's fencing token for its owner).
            epoch: u64,
            /// How many of the events after this one are its history.
            events: u32,
        },
        /// An account's balances and state as they stood: after its `AccountCreated`, the second
        /// event of a checkpoint of the account (`Engine::checkpoint`), which stands for its
        /// history up to then when another node rebuilds it.
        AccountRestored {
            /// The account.
            account: AccountId,
            /// Trading state.
            state: AccountState,
            /// Why.
            reason: StateReason,
            /// Cash (money units).
            cash: i64,
            /// Realized P&L, fees not included.
            realized: i64,
            /// Fees paid.
            fees: i64,
            /// UTC day of `day_start_equity`.
            day: u32,
            /// Equity at the start of `day`.
            day_start_equity: i64,
        },
        /// A position as it stood (in a checkpoint).
        PositionRestored {
            /// The account.
            account: AccountId,
            /// The symbol.
            symbol: SymbolId,
            /// The position, with its open order quantities.
            position: Position,
        },
        /// A remembered order as it stood (in a checkpoint).
        OrderRestored {
            /// The order.
            order: Order,
        },
        /// An account moved to another cluster node while this one was away: this node no
        /// longer holds it.
        AccountReleased {
            /// The account.
            account: AccountId,
            /// Its epoch on its owner now.
            epoch: u64,
        },
        /// Why the venue refused an order, right after the order's `reject` update.
        OrderRejectReason {
            /// The order.
            order: OrderId,
            /// Its account.
            account: AccountId,
            /// The venue's reason.
            reason: VenueReason,
        },
        /// How far the session with a remote venue has got (see
        /// [`crate::engine::venue::Execution::Session`]): a restart resumes it from here.
        VenueSession {
            /// The next sequence number expected from the venue.
            inbound: u64,
            /// The first sequence number no outgoing message has been promised.
            outbound: u64,
        },
    }
}

impl EventKind {
    /// The account the event names, if any: a revocation names only its key, a quote none.
    pub fn account(&self) -> Option<AccountId> {
        match *self {
            EventKind::AccountCreated { account, .. }
            | EventKind::KeyAdded { account, .. }
            | EventKind::LimitsSet { account, .. }
            | EventKind::AccountStateChanged { account, .. }
            | EventKind::DayStarted { account, .. }
            | EventKind::OrderUpdated { account, .. }
            | EventKind::Fill { account, .. }
            | EventKind::SignalAnswered { account, .. }
            | EventKind::Rejected { account, .. }
            | EventKind::AccountAdopted { account, .. }
            | EventKind::AccountReleased { account, .. }
            | EventKind::OrderRejectReason { account, .. }
            | EventKind::AccountRestored { account, .. }
            | EventKind::PositionRestored { account, .. } => Some(account),
            EventKind::OrderAccepted { order } | EventKind::OrderRestored { order } => Some(order.account),
            EventKind::KeyRevoked { .. } | EventKind::Quote(_) | EventKind::VenueSession { .. } => None,
        }
    }
}

/// Tells, event after event, which ones an [`EventKind::AccountAdopted`] brought from another
/// node (the marker included): history there, not something that happened here.
#[derive(Debug, Default, Clone, Copy)]
pub struct Adoptions {
    left: u32,
}

impl Adoptions {
    /// Whether `e` is an adoption's marker or one of the events it brought.
    pub fn imported(&mut self, e: &Event) -> bool {
        if let EventKind::AccountAdopted { events, .. } = e.kind {
            self.left = events;
            return true;
        }
        if self.left > 0 {
            self.left -= 1;
            return true;
        }
        false
    }
}

/// The order part of a signal's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
pub struct OrderView {
    /// Order id.
    pub id: OrderId,
    /// Symbol.
    pub symbol: SymbolId,
    /// Side.
    pub side: Side,
    /// Ordered quantity.
    pub qty: i64,
    /// Filled quantity.
    pub filled_qty: i64,
    /// Average fill price (price units), 0 when nothing filled.
    pub avg_price: i64,
    /// Status.
    pub status: OrderStatus,
}

/// The position part of a signal's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
pub struct PositionView {
    /// Symbol.
    pub symbol: SymbolId,
    /// Signed quantity.
    pub qty: i64,
    /// Average entry price (price units).
    pub avg_price: i64,
}

/// What a signal produced: an order (or none, when nothing had to be done) and the position after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
pub struct SignalAnswer {
    /// The order placed, as it stood when the answer was given.
    pub order: Option<OrderView>,
    /// The position after the signal.
    pub position: PositionView,
}
#[cfg(test)]
mod tests {
    /// Every record in the journal takes the size of the largest kind of event: a kind of event
    /// that grows it costs every signal bytes and time (the fill and the order are the largest).
    #[test]
    fn no_kind_of_event_makes_every_record_larger_than_a_fill() {
        assert!(std::mem::size_of::<rkyv::Archived<super::Event>>() <= 152);
    }
}
