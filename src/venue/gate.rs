//! Write before send: a venue wrapper that holds orders and cancels back until the events that
//! decided them are durable in the journal.
//!
//! The engine calls its venue synchronously, inside the command that journals the order. The gate
//! queues those calls instead; the node stamps each with the last sequence number of its command
//! ([`Gated::stamp`]) and, once the journal reports that number durable, releases it
//! ([`Gated::release`]). Released calls reach the inner venue on the next [`Venue::poll`], in the
//! order they were made.

use std::collections::VecDeque;
use std::time::Instant;

use super::{Execution, Venue};
use crate::engine::market::Quote;
use crate::engine::order::Order;
use crate::engine::symbol::{SymbolSpec, SymbolTable};
use crate::engine::types::{Nanos, OrderId};

/// Not stamped yet.
const UNSTAMPED: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
enum Call {
    Submit(Order),
    Cancel(Order),
}

/// Hand-over times of the last orders, for the signal-to-order metric.
const HANDED: usize = 256;

/// A venue behind the journal.
pub struct Gated<V> {
    inner: V,
    symbols: SymbolTable,
    quotes: Vec<Option<Quote>>,
    held: VecDeque<(u64, Call)>,
    released: u64,
    handed: [(OrderId, Option<Instant>); HANDED],
    handed_next: usize,
}

impl<V: Venue> Gated<V> {
    /// Wraps `inner`; orders are priced against the symbols' latest quotes when released.
    pub fn new(inner: V, symbols: SymbolTable) -> Self {
        let n = symbols.len();
        Gated {
            inner,
            symbols,
            quotes: vec![None; n],
            held: VecDeque::with_capacity(4096),
            released: 0,
            handed: [(OrderId(0), None); HANDED],
            handed_next: 0,
        }
    }

    /// Stamps every call made since the last stamp with `seq`: it may go once `seq` is durable.
    pub fn stamp(&mut self, seq: u64) {
        for (s, _) in self.held.iter_mut().rev() {
            if *s != UNSTAMPED {
                break;
            }
            *s = seq;
        }
    }

    /// Everything stamped up to `seq` may go to the venue. Whether something now waits to go.
    pub fn release(&mut self, seq: u64) -> bool {
        self.released = self.released.max(seq);
        self.held.front().is_some_and(|(s, _)| *s <= self.released)
    }

    /// Calls waiting for the journal.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// When `order` was handed to the venue (a remote one: when it went on the wire), if it was
    /// among the last few.
    pub fn handed_at(&self, order: OrderId) -> Option<Instant> {
        self.inner.sent_at(order).or_else(|| self.handed.iter().find(|(id, _)| *id == order).and_then(|(_, at)| *at))
    }

    /// The venue inside.
    pub fn inner(&self) -> &V {
        &self.inner
    }

    /// The venue inside, to hand it what its connection received.
    pub fn inner_mut(&mut self) -> &mut V {
        &mut self.inner
    }
}

impl<V: Venue> Venue for Gated<V> {
    fn submit(&mut self, order: &Order, _: &SymbolSpec, _: Option<&Quote>, _: Nanos, _: &mut Vec<Execution>) {
        self.held.push_back((UNSTAMPED, Call::Submit(*order)));
    }

    fn cancel(&mut self, order: &Order, _: Nanos, _: &mut Vec<Execution>) {
        self.held.push_back((UNSTAMPED, Call::Cancel(*order)));
    }

    fn on_quote(&mut self, quote: &Quote, spec: &SymbolSpec, now: Nanos, out: &mut Vec<Execution>) {
        if let Some(slot) = self.quotes.get_mut(usize::from(quote.symbol.0)) {
            *slot = Some(*quote);
        }
        self.inner.on_quote(quote, spec, now, out);
    }

    fn forget(&mut self, order: &Order) {
        self.inner.forget(order);
    }

    fn poll(&mut self, now: Nanos, out: &mut Vec<Execution>) {
        while let Some(&(seq, call)) = self.held.front() {
            if seq > self.released {
                break;
            }
            self.held.pop_front();
            match call {
                Call::Submit(o) => {
                    let sym = usize::from(o.symbol.0);
                    self.handed[self.handed_next] = (o.id, Some(Instant::now()));
                    self.handed_next = (self.handed_next + 1) % HANDED;
                    let quote = self.quotes[sym];
                    self.inner.submit(&o, self.symbols.get(o.symbol), quote.as_ref(), now, out);
                }
                Call::Cancel(o) => self.inner.cancel(&o, now, out),
            }
        }
        self.inner.poll(now, out);
    }

    fn working_orders(&self) -> usize {
        self.inner.working_orders() + self.held.iter().filter(|(_, c)| matches!(c, Call::Submit(_))).count()
    }

    /// Straight through: a recovered order's events are durable already.
    fn recover(
        &mut self,
        order: &Order,
        spec: &SymbolSpec,
        quote: Option<&Quote>,
        now: Nanos,
        out: &mut Vec<Execution>,
    ) {
        self.inner.recover(order, spec, quote, now, out);
    }

    fn resume_session(&mut self, inbound: u64, outbound: u64) {
        self.inner.resume_session(inbound, outbound);
    }

    fn answers_later(&self) -> bool {
        self.inner.answers_later()
    }

    fn reconciling(&self, order: OrderId) -> bool {
        self.inner.reconciling(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::order::{Order, OrderStatus};
    use crate::engine::symbol::SymbolSpec;
    use crate::engine::types::{AccountId, OrderType, Side, SymbolId, Tif};

    /// Records the calls that reach it.
    #[derive(Default)]
    struct Recorder(Vec<(char, u64)>);

    impl Venue for Recorder {
        fn submit(&mut self, o: &Order, _: &SymbolSpec, _: Option<&Quote>, _: Nanos, out: &mut Vec<Execution>) {
            self.0.push(('s', o.id.0));
            out.push(Execution::Ack { order: o.id });
        }
        fn cancel(&mut self, o: &Order, _: Nanos, _: &mut Vec<Execution>) {
            self.0.push(('c', o.id.0));
        }
        fn on_quote(&mut self, _: &Quote, _: &SymbolSpec, _: Nanos, _: &mut Vec<Execution>) {}
        fn forget(&mut self, _: &Order) {}
        fn poll(&mut self, _: Nanos, _: &mut Vec<Execution>) {}
        fn working_orders(&self) -> usize {
            0
        }
    }

    fn order(id: u64) -> Order {
        Order {
            id: OrderId(id),
            account: AccountId(1),
            symbol: SymbolId(0),
            side: Side::Buy,
            order_type: OrderType::Market,
            tif: Tif::Ioc,
            qty: 1,
            filled_qty: 0,
            filled_notional: 0,
            limit_price: 0,
            status: OrderStatus::PendingNew,
            strategy: Default::default(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn calls_wait_for_their_events_and_keep_their_order() {
        let spec = SymbolSpec {
            id: SymbolId(0),
            name: "X".into(),
            price_decimals: 2,
            qty_decimals: 0,
            tick: 1,
            lot: 1,
            max_order_qty: 10,
        };
        let mut g = Gated::new(Recorder::default(), SymbolTable::new(vec![spec.clone()]));
        let mut out = Vec::new();
        g.submit(&order(1), &spec, None, 0, &mut out);
        g.stamp(10);
        g.submit(&order(2), &spec, None, 0, &mut out);
        g.cancel(&order(1), 0, &mut out);
        g.stamp(12);
        assert!(out.is_empty(), "nothing reaches the venue before the journal");
        assert_eq!((g.held(), g.working_orders()), (3, 2));
        assert!(!g.release(9));
        g.poll(0, &mut out);
        assert!(g.inner().0.is_empty());
        assert!(g.release(11));
        g.poll(0, &mut out);
        assert_eq!(g.inner().0, vec![('s', 1)]);
        assert_eq!(out, vec![Execution::Ack { order: OrderId(1) }]);
        assert!(g.handed_at(OrderId(1)).is_some() && g.handed_at(OrderId(2)).is_none());
        g.release(12);
        g.poll(0, &mut out);
        assert_eq!(g.inner().0, vec![('s', 1), ('s', 2), ('c', 1)]);
        assert_eq!(g.held(), 0);
    }
}
