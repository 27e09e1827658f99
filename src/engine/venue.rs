//! The port orders leave the engine through: the [`Venue`] trait the engine calls, and what a
//! venue reports back ([`Execution`]). The venues themselves (paper, gated) live in
//! `crate::venue`, above the engine.

use super::market::Quote;
use super::order::Order;
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
    },
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
