//! Orders and their life cycle, as a FIX-like state machine driven by one transition table.

use super::types::{AccountId, Nanos, OrderId, OrderType, Side, SymbolId, Tag, Tif};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum OrderStatus {
    /// Accepted by risk, not yet acknowledged by the venue.
    PendingNew,
    /// Working at the venue.
    New,
    /// Some quantity filled, the rest working.
    PartiallyFilled,
    /// Completely filled (terminal).
    Filled,
    /// Refused by the venue (terminal).
    Rejected,
    /// Cancel requested, not yet confirmed.
    PendingCancel,
    /// Canceled; may carry a partial fill (terminal).
    Canceled,
    /// Ran out of time in force (terminal).
    Expired,
}

/// Every status, for exhaustive tests and metrics.
pub const ALL_STATUSES: [OrderStatus; 8] = [
    OrderStatus::PendingNew,
    OrderStatus::New,
    OrderStatus::PartiallyFilled,
    OrderStatus::Filled,
    OrderStatus::Rejected,
    OrderStatus::PendingCancel,
    OrderStatus::Canceled,
    OrderStatus::Expired,
];

impl OrderStatus {
    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingNew => "pending_new",
            OrderStatus::New => "new",
            OrderStatus::PartiallyFilled => "partially_filled",
            OrderStatus::Filled => "filled",
            OrderStatus::Rejected => "rejected",
            OrderStatus::PendingCancel => "pending_cancel",
            OrderStatus::Canceled => "canceled",
            OrderStatus::Expired => "expired",
        }
    }

    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Filled | OrderStatus::Rejected | OrderStatus::Canceled | OrderStatus::Expired)
    }

    /// Whether the order still has quantity working (or about to).
    pub fn is_open(self) -> bool {
        !self.is_terminal()
    }
}

/// What happened to an order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum OrderEvent {
    /// The venue acknowledged it.
    Ack,
    /// A fill that leaves quantity open.
    PartialFill,
    /// A fill that completes it.
    Fill,
    /// The venue refused it.
    Reject,
    /// The owner asked to cancel.
    CancelRequest,
    /// The venue confirmed a cancel (also: the ioc remainder was dropped).
    Canceled,
    /// Its time in force ran out.
    Expire,
}

/// Every event, for exhaustive tests.
pub const ALL_EVENTS: [OrderEvent; 7] = [
    OrderEvent::Ack,
    OrderEvent::PartialFill,
    OrderEvent::Fill,
    OrderEvent::Reject,
    OrderEvent::CancelRequest,
    OrderEvent::Canceled,
    OrderEvent::Expire,
];

use OrderEvent as E;
use OrderStatus as S;

/// The transition table: `TABLE[status][event]`, `None` where the event is illegal.
const TABLE: [[Option<OrderStatus>; 7]; 8] = {
    //           Ack            PartialFill                Fill             Reject           CancelRequest          Canceled           Expire
    [
        /* PendingNew */
        [
            Some(S::New),
            Some(S::PartiallyFilled),
            Some(S::Filled),
            Some(S::Rejected),
            Some(S::PendingCancel),
            Some(S::Canceled),
            None,
        ],
        /* New */
        [
            None,
            Some(S::PartiallyFilled),
            Some(S::Filled),
            None,
            Some(S::PendingCancel),
            Some(S::Canceled),
            Some(S::Expired),
        ],
        /* PartiallyFilled */
        [
            None,
            Some(S::PartiallyFilled),
            Some(S::Filled),
            None,
            Some(S::PendingCancel),
            Some(S::Canceled),
            Some(S::Expired),
        ],
        /* Filled */
        [None, None, None, None, None, None, None],
        /* Rejected */
        [None, None, None, None, None, None, None],
        /* PendingCancel: fills racing the cancel still count */
        [None, Some(S::PendingCancel), Some(S::Filled), None, None, Some(S::Canceled), Some(S::Expired)],
        /* Canceled */
        [None, None, None, None, None, None, None],
        /* Expired */
        [None, None, None, None, None, None, None],
    ]
};

fn status_index(s: OrderStatus) -> usize {
    match s {
        S::PendingNew => 0,
        S::New => 1,
        S::PartiallyFilled => 2,
        S::Filled => 3,
        S::Rejected => 4,
        S::PendingCancel => 5,
        S::Canceled => 6,
        S::Expired => 7,
    }
}

fn event_index(e: OrderEvent) -> usize {
    match e {
        E::Ack => 0,
        E::PartialFill => 1,
        E::Fill => 2,
        E::Reject => 3,
        E::CancelRequest => 4,
        E::Canceled => 5,
        E::Expire => 6,
    }
}

/// The status after `event`, or `None` when the table forbids it.
pub fn transition(from: OrderStatus, event: OrderEvent) -> Option<OrderStatus> {
    TABLE[status_index(from)][event_index(event)]
}

/// One order. `Copy`, fixed size: it lives in preallocated maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
pub struct Order {
    /// Its id.
    pub id: OrderId,
    /// The owner.
    pub account: AccountId,
    /// What it trades.
    pub symbol: SymbolId,
    /// Buy or sell.
    pub side: Side,
    /// Market or limit.
    pub order_type: OrderType,
    /// Time in force.
    pub tif: Tif,
    /// Ordered quantity (quantity units).
    pub qty: i64,
    /// Filled so far.
    pub filled_qty: i64,
    /// Sum of fill notionals (money units), for the average price.
    pub filled_notional: i64,
    /// Limit price (price units); 0 for market orders.
    pub limit_price: i64,
    /// Current status.
    pub status: OrderStatus,
    /// Strategy tag, may be empty.
    pub strategy: Tag,
    /// When it was accepted.
    pub created_at: Nanos,
    /// When it last changed.
    pub updated_at: Nanos,
}

impl Order {
    /// Quantity still working.
    pub fn remaining(&self) -> i64 {
        if self.status.is_open() {
            self.qty - self.filled_qty
        } else {
            0
        }
    }
}

crate::engine::types::serialize_as_str!(OrderStatus);

#[cfg(test)]
mod tests {
    use super::*;

    /// The legal transitions, written out by hand: the table must match exactly.
    const LEGAL: &[(OrderStatus, OrderEvent, OrderStatus)] = &[
        (S::PendingNew, E::Ack, S::New),
        (S::PendingNew, E::PartialFill, S::PartiallyFilled),
        (S::PendingNew, E::Fill, S::Filled),
        (S::PendingNew, E::Reject, S::Rejected),
        (S::PendingNew, E::CancelRequest, S::PendingCancel),
        (S::PendingNew, E::Canceled, S::Canceled),
        (S::New, E::PartialFill, S::PartiallyFilled),
        (S::New, E::Fill, S::Filled),
        (S::New, E::CancelRequest, S::PendingCancel),
        (S::New, E::Canceled, S::Canceled),
        (S::New, E::Expire, S::Expired),
        (S::PartiallyFilled, E::PartialFill, S::PartiallyFilled),
        (S::PartiallyFilled, E::Fill, S::Filled),
        (S::PartiallyFilled, E::CancelRequest, S::PendingCancel),
        (S::PartiallyFilled, E::Canceled, S::Canceled),
        (S::PartiallyFilled, E::Expire, S::Expired),
        (S::PendingCancel, E::PartialFill, S::PendingCancel),
        (S::PendingCancel, E::Fill, S::Filled),
        (S::PendingCancel, E::Canceled, S::Canceled),
        (S::PendingCancel, E::Expire, S::Expired),
    ];

    #[test]
    fn every_status_event_pair_matches_the_legal_list() {
        let mut seen = 0;
        for from in ALL_STATUSES {
            for ev in ALL_EVENTS {
                let want = LEGAL.iter().find(|(f, e, _)| *f == from && *e == ev).map(|t| t.2);
                assert_eq!(transition(from, ev), want, "{from:?} --{ev:?}-->");
                seen += 1;
            }
        }
        assert_eq!(seen, 56);
    }

    #[test]
    fn terminal_statuses_have_no_way_out() {
        for from in ALL_STATUSES.into_iter().filter(|s| s.is_terminal()) {
            for ev in ALL_EVENTS {
                assert_eq!(transition(from, ev), None, "{from:?} --{ev:?}-->");
            }
        }
    }

    #[test]
    fn every_non_terminal_status_can_end() {
        for from in ALL_STATUSES.into_iter().filter(|s| s.is_open()) {
            assert!(ALL_EVENTS.iter().any(|&e| transition(from, e).is_some_and(OrderStatus::is_terminal)));
        }
    }

    #[test]
    fn statuses_have_distinct_names() {
        let mut names: Vec<_> = ALL_STATUSES.iter().map(|s| s.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 8);
    }
}
