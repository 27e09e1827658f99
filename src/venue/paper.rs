//! The paper venue: fills against the node's own quotes, deterministically.
//!
//! Market orders fill in full at the touch plus slippage. Limit orders fill at the touch (never
//! worse than their limit) up to the quoted size, and rest for later quotes unless they are ioc.
//! Optional latency delays the venue's handling of new orders.

use std::collections::VecDeque;

use super::{Execution, Venue};
use crate::engine::market::Quote;
use crate::engine::order::Order;
use crate::engine::symbol::SymbolSpec;
use crate::engine::types::{saturate, Nanos, OrderId, OrderType, Side, Tif};
use crate::fixed::div_ceil;

/// Settings of the paper venue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaperConfig {
    /// Price slippage of market orders, in basis points of the touch.
    pub slippage_bps: u32,
    /// Fee, in basis points of the notional.
    pub fee_bps: u32,
    /// Delay before a new order is handled (0 = at once).
    pub latency: Nanos,
}

#[derive(Debug, Clone, Copy)]
struct Resting {
    order: OrderId,
    side: Side,
    limit: i64,
    remaining: i64,
}

/// The paper venue.
#[derive(Debug)]
pub struct PaperVenue {
    cfg: PaperConfig,
    specs: Vec<SymbolSpec>,
    quotes: Vec<Option<Quote>>,
    books: Vec<Vec<Resting>>,
    delayed: VecDeque<(Nanos, Order)>,
}

impl PaperVenue {
    /// A venue for these symbols.
    pub fn new(cfg: PaperConfig, specs: &[SymbolSpec]) -> Self {
        PaperVenue {
            cfg,
            specs: specs.to_vec(),
            quotes: vec![None; specs.len()],
            books: specs.iter().map(|_| Vec::with_capacity(1024)).collect(),
            delayed: VecDeque::with_capacity(1024),
        }
    }

    fn fee(&self, spec: &SymbolSpec, price: i64, qty: i64) -> i64 {
        let notional = i128::from(price) * i128::from(qty) * spec.money_per_unit();
        saturate(div_ceil(notional * i128::from(self.cfg.fee_bps), 10_000))
    }

    fn fill(&self, spec: &SymbolSpec, order: OrderId, qty: i64, price: i64, out: &mut Vec<Execution>) {
        let fee = self.fee(spec, price, qty);
        out.push(Execution::Fill { order, qty, price, fee, cum_qty: None });
    }

    /// The market price with slippage, rounded to the tick against the taker.
    fn slipped(&self, spec: &SymbolSpec, side: Side, touch: i64) -> i64 {
        let slip = saturate(div_ceil(i128::from(touch) * i128::from(self.cfg.slippage_bps), 10_000));
        match side {
            Side::Buy => {
                // Quotes are at most the symbol's highest price and slippage at most 100%: no wrap.
                let p = touch.saturating_add(slip);
                p.saturating_add((spec.tick - p % spec.tick) % spec.tick)
            }
            Side::Sell => {
                let p = (touch - slip).max(spec.tick);
                p - p % spec.tick
            }
        }
    }

    fn execute(&mut self, order: &Order, out: &mut Vec<Execution>) {
        let sym = usize::from(order.symbol.0);
        let spec = &self.specs[sym];
        let Some(q) = self.quotes[sym] else {
            out.push(Execution::Rejected { order: order.id, reason: None });
            return;
        };
        out.push(Execution::Ack { order: order.id });
        let touch = match order.side {
            Side::Buy => q.ask,
            Side::Sell => q.bid,
        };
        let mut remaining = order.qty - order.filled_qty;
        match order.order_type {
            OrderType::Market => {
                let price = self.slipped(spec, order.side, touch);
                self.fill(spec, order.id, remaining, price, out);
                return;
            }
            OrderType::Limit => {
                if crosses(order.side, order.limit_price, touch) {
                    let size = match order.side {
                        Side::Buy => q.ask_size,
                        Side::Sell => q.bid_size,
                    };
                    let qty = remaining.min(size);
                    if qty > 0 {
                        self.fill(spec, order.id, qty, touch, out);
                        remaining -= qty;
                        self.consume(sym, order.side, qty);
                    }
                }
            }
        }
        if remaining == 0 {
            return;
        }
        if order.tif == Tif::Ioc {
            out.push(Execution::Canceled { order: order.id });
        } else {
            self.books[sym].push(Resting { order: order.id, side: order.side, limit: order.limit_price, remaining });
        }
    }

    /// Takes `qty` off the venue's copy of the touch, so later orders on the same quote see less.
    fn consume(&mut self, sym: usize, side: Side, qty: i64) {
        if let Some(q) = self.quotes[sym].as_mut() {
            match side {
                Side::Buy => q.ask_size -= qty,
                Side::Sell => q.bid_size -= qty,
            }
        }
    }
}

fn crosses(side: Side, limit: i64, touch: i64) -> bool {
    match side {
        Side::Buy => limit >= touch,
        Side::Sell => limit <= touch,
    }
}

impl Venue for PaperVenue {
    fn submit(
        &mut self,
        order: &Order,
        _spec: &SymbolSpec,
        quote: Option<&Quote>,
        now: Nanos,
        out: &mut Vec<Execution>,
    ) {
        if let Some(q) = quote {
            let slot = &mut self.quotes[usize::from(q.symbol.0)];
            if slot.is_none_or(|old| old.ts != q.ts) {
                *slot = Some(*q);
            }
        }
        if self.cfg.latency > 0 {
            self.delayed.push_back((now + self.cfg.latency, *order));
        } else {
            self.execute(order, out);
        }
    }

    fn cancel(&mut self, order: &Order, _now: Nanos, out: &mut Vec<Execution>) {
        self.forget(order);
        out.push(Execution::Canceled { order: order.id });
    }

    fn on_quote(&mut self, quote: &Quote, spec: &SymbolSpec, _now: Nanos, out: &mut Vec<Execution>) {
        let sym = usize::from(quote.symbol.0);
        self.quotes[sym] = Some(*quote);
        let mut ask_size = quote.ask_size;
        let mut bid_size = quote.bid_size;
        let fee_bps = self.cfg.fee_bps;
        let book = &mut self.books[sym];
        let mut i = 0;
        while i < book.len() {
            let r = &mut book[i];
            let (touch, size) = match r.side {
                Side::Buy => (quote.ask, &mut ask_size),
                Side::Sell => (quote.bid, &mut bid_size),
            };
            if *size > 0 && crosses(r.side, r.limit, touch) {
                let qty = r.remaining.min(*size);
                *size -= qty;
                r.remaining -= qty;
                let notional = i128::from(touch) * i128::from(qty) * spec.money_per_unit();
                let fee = saturate(div_ceil(notional * i128::from(fee_bps), 10_000));
                out.push(Execution::Fill { order: r.order, qty, price: touch, fee, cum_qty: None });
                if r.remaining == 0 {
                    book.remove(i);
                    continue;
                }
            }
            i += 1;
        }
        if let Some(q) = self.quotes[sym].as_mut() {
            q.ask_size = ask_size;
            q.bid_size = bid_size;
        }
    }

    fn poll(&mut self, now: Nanos, out: &mut Vec<Execution>) {
        while let Some(&(due, order)) = self.delayed.front() {
            if due > now {
                break;
            }
            self.delayed.pop_front();
            self.execute(&order, out);
        }
    }

    fn forget(&mut self, order: &Order) {
        self.books[usize::from(order.symbol.0)].retain(|r| r.order != order.id);
        self.delayed.retain(|(_, o)| o.id != order.id);
    }

    fn working_orders(&self) -> usize {
        self.books.iter().map(Vec::len).sum::<usize>() + self.delayed.len()
    }
}
