//! Tradable symbols: their scales, tick and lot sizes, and money arithmetic on them.

use std::collections::HashMap;

use super::types::{SymbolId, MAX_ORDER_MONEY};
use crate::fixed::MONEY_DECIMALS;

/// One tradable symbol.
#[derive(Debug, Clone)]
pub struct SymbolSpec {
    /// Its index.
    pub id: SymbolId,
    /// Its name, e.g. `BTC-USD`.
    pub name: String,
    /// Decimals of a price.
    pub price_decimals: u8,
    /// Decimals of a quantity.
    pub qty_decimals: u8,
    /// Smallest price increment, in price units.
    pub tick: i64,
    /// Smallest quantity increment, in quantity units.
    pub lot: i64,
    /// Largest quantity of one order, in quantity units.
    pub max_order_qty: i64,
}

impl SymbolSpec {
    /// `price × qty` in money units, exact (the configuration guarantees
    /// `price_decimals + qty_decimals ≤ MONEY_DECIMALS`); `None` on overflow.
    pub fn notional(&self, price: i64, qty: i64) -> Option<i64> {
        let shift = MONEY_DECIMALS - self.price_decimals - self.qty_decimals;
        let v = i128::from(price) * i128::from(qty) * 10i128.pow(u32::from(shift));
        i64::try_from(v).ok()
    }

    /// The highest price a quote or a limit may have: its largest order is then worth at most
    /// [`MAX_ORDER_MONEY`] (at least one tick).
    pub fn max_price(&self) -> i64 {
        let per_unit = i128::from(self.max_order_qty.max(1)) * self.money_per_unit();
        i64::try_from(i128::from(MAX_ORDER_MONEY) / per_unit).unwrap_or(i64::MAX).max(self.tick)
    }

    /// Money per one price unit per one quantity unit, the factor [`SymbolSpec::notional`] uses.
    pub fn money_per_unit(&self) -> i128 {
        10i128.pow(u32::from(MONEY_DECIMALS - self.price_decimals - self.qty_decimals))
    }
}

/// All configured symbols, looked up by name without allocating.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    specs: Vec<SymbolSpec>,
    by_name: HashMap<String, SymbolId>,
}

impl SymbolTable {
    /// Builds the table; ids follow the order of `specs`.
    pub fn new(specs: Vec<SymbolSpec>) -> Self {
        let by_name = specs.iter().map(|s| (s.name.clone(), s.id)).collect();
        SymbolTable { specs, by_name }
    }

    /// The symbol called `name`.
    pub fn find(&self, name: &str) -> Option<&SymbolSpec> {
        self.by_name.get(name).map(|id| &self.specs[usize::from(id.0)])
    }

    /// The symbol with id `id`.
    pub fn get(&self, id: SymbolId) -> &SymbolSpec {
        &self.specs[usize::from(id.0)]
    }

    /// Every symbol, in id order.
    pub fn all(&self) -> &[SymbolSpec] {
        &self.specs
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}
