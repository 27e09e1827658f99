//! Where orders go after risk: the venues, implementations of the engine's [`Venue`] port.
//!
//! A venue is sans-I/O like the engine: it receives orders and quotes with the current time and
//! reports executions into a buffer the engine hands it. A venue that talks to the outside world
//! reports asynchronously, through later calls, instead of at once.

pub mod fix;
mod gate;
mod paper;

use std::time::Instant;

pub use fix::{FixSettings, FixVenue};
pub use gate::Gated;
pub use paper::{PaperConfig, PaperVenue};

use crate::engine::market::Quote;
use crate::engine::order::Order;
use crate::engine::symbol::SymbolSpec;
use crate::engine::types::{Nanos, OrderId};
pub use crate::engine::venue::{Execution, NoVenue, Venue};

/// The venue a node runs, as its configuration chose.
pub enum NodeVenue {
    /// The built-in simulator.
    Paper(PaperVenue),
    /// A FIX 4.4 counterparty.
    Fix(Box<FixVenue>),
}

impl NodeVenue {
    /// The FIX venue, when it is one.
    pub fn fix(&self) -> Option<&FixVenue> {
        match self {
            NodeVenue::Fix(f) => Some(f),
            NodeVenue::Paper(_) => None,
        }
    }

    /// The FIX venue, when it is one, to hand it what its connection read.
    pub fn fix_mut(&mut self) -> Option<&mut FixVenue> {
        match self {
            NodeVenue::Fix(f) => Some(f),
            NodeVenue::Paper(_) => None,
        }
    }
}

/// Calls `$call` on whichever venue it is.
macro_rules! each {
    ($self:ident, $v:ident => $call:expr) => {
        match $self {
            NodeVenue::Paper($v) => $call,
            NodeVenue::Fix($v) => $call,
        }
    };
}

impl Venue for NodeVenue {
    fn submit(
        &mut self,
        order: &Order,
        spec: &SymbolSpec,
        quote: Option<&Quote>,
        now: Nanos,
        out: &mut Vec<Execution>,
    ) {
        each!(self, v => v.submit(order, spec, quote, now, out))
    }
    fn cancel(&mut self, order: &Order, now: Nanos, out: &mut Vec<Execution>) {
        each!(self, v => v.cancel(order, now, out))
    }
    fn on_quote(&mut self, quote: &Quote, spec: &SymbolSpec, now: Nanos, out: &mut Vec<Execution>) {
        each!(self, v => v.on_quote(quote, spec, now, out))
    }
    fn forget(&mut self, order: &Order) {
        each!(self, v => v.forget(order))
    }
    fn poll(&mut self, now: Nanos, out: &mut Vec<Execution>) {
        each!(self, v => v.poll(now, out))
    }
    fn working_orders(&self) -> usize {
        each!(self, v => v.working_orders())
    }
    fn recover(
        &mut self,
        order: &Order,
        spec: &SymbolSpec,
        quote: Option<&Quote>,
        now: Nanos,
        out: &mut Vec<Execution>,
    ) {
        each!(self, v => v.recover(order, spec, quote, now, out))
    }
    fn resume_session(&mut self, inbound: u64, outbound: u64) {
        each!(self, v => v.resume_session(inbound, outbound))
    }
    fn sent_at(&self, order: OrderId) -> Option<Instant> {
        each!(self, v => v.sent_at(order))
    }
    fn answers_later(&self) -> bool {
        each!(self, v => v.answers_later())
    }
    fn reconciling(&self, order: OrderId) -> bool {
        each!(self, v => v.reconciling(order))
    }
}
