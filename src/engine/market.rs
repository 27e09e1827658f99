//! Quotes: the last bid/ask per symbol.

use super::types::{Nanos, SymbolId};

/// Top of book for one symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
pub struct Quote {
    /// Symbol.
    pub symbol: SymbolId,
    /// Best bid (price units).
    pub bid: i64,
    /// Best ask (price units).
    pub ask: i64,
    /// Quantity at the bid (quantity units).
    pub bid_size: i64,
    /// Quantity at the ask (quantity units).
    pub ask_size: i64,
    /// When it was observed.
    pub ts: Nanos,
}

impl Quote {
    /// Mid price, rounded down to a price unit.
    pub fn mid(&self) -> i64 {
        self.bid + (self.ask - self.bid) / 2
    }

    /// Whether it can be traded against: `0 < bid ≤ ask ≤ spec.max_price()`, sizes not negative.
    pub fn is_valid(&self, spec: &super::symbol::SymbolSpec) -> bool {
        0 < self.bid && self.bid <= self.ask && self.ask <= spec.max_price() && self.bid_size >= 0 && self.ask_size >= 0
    }
}
