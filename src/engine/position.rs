//! A net position in one symbol, tracked by cost basis so that cash, cost and realized P&L
//! always balance exactly, whatever the rounding of averages shown to people.

use crate::fixed::div_round;

use super::types::{saturate, Side};

/// Net position of one account in one symbol.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
)]
pub struct Position {
    /// Signed quantity (quantity units): long > 0, short < 0.
    pub qty: i64,
    /// Signed cost of the open quantity (money units): what was paid (long) or received (short).
    pub cost: i64,
    /// Realized P&L (money units), fees not included.
    pub realized: i64,
    /// Fees paid in this symbol (money units).
    pub fees: i64,
    /// Quantity of open buy orders not yet filled.
    pub open_buy: i64,
    /// Quantity of open sell orders not yet filled.
    pub open_sell: i64,
}

/// A position's figures after a fill, carried in the fill's event so that those who follow the
/// journal (the stream, history, PostgreSQL) need not work them out again.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
)]
pub struct Holding {
    /// Signed quantity (quantity units).
    pub qty: i64,
    /// Signed cost of the open quantity (money units).
    pub cost: i64,
    /// Realized P&L so far (money units), fees not included.
    pub realized: i64,
    /// Fees paid in this symbol so far (money units).
    pub fees: i64,
}

impl From<&Position> for Holding {
    fn from(p: &Position) -> Holding {
        Holding { qty: p.qty, cost: p.cost, realized: p.realized, fees: p.fees }
    }
}

/// What a fill did to a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillEffect {
    /// Change of realized P&L (money units).
    pub realized: i64,
    /// Change of cash (money units): minus the signed notional, minus the fee.
    pub cash: i64,
}

impl Position {
    /// Applies a fill of `qty` at a total `notional` (money units) with `fee`.
    pub fn apply_fill(&mut self, side: Side, qty: i64, notional: i64, fee: i64) -> FillEffect {
        let sign = side.sign();
        let mut realized = 0;
        let mut open_qty = qty;
        let mut open_notional = notional;
        if self.qty != 0 && self.qty.signum() != sign {
            let closing = qty.min(self.qty.abs());
            // Whole fills and whole positions need no division.
            let closing_notional = if closing == qty {
                notional
            } else {
                div_round(i128::from(notional) * i128::from(closing), i128::from(qty)) as i64
            };
            let removed_cost = if closing == self.qty.abs() {
                self.cost
            } else {
                div_round(i128::from(self.cost) * i128::from(closing), i128::from(self.qty.abs())) as i64
            };
            realized = -(removed_cost + sign * closing_notional);
            self.cost -= removed_cost;
            self.qty += sign * closing;
            open_qty = qty - closing;
            open_notional = notional - closing_notional;
        }
        if open_qty > 0 {
            self.qty += sign * open_qty;
            self.cost += sign * open_notional;
        }
        if self.qty == 0 {
            // Rounding of partial closes may leave a unit of cost behind; it is realized.
            realized -= self.cost;
            self.cost = 0;
        }
        self.realized += realized;
        self.fees += fee;
        FillEffect { realized, cash: -sign * notional - fee }
    }

    /// Average entry price in price units (0 when flat), given the symbol's money per unit.
    pub fn avg_price(&self, money_per_unit: i128) -> i64 {
        if self.qty == 0 {
            return 0;
        }
        saturate(div_round(i128::from(self.cost), i128::from(self.qty) * money_per_unit))
    }

    /// Market value at `mark` (money units, signed; saturated under a mark far above any order's
    /// price).
    pub fn market_value(&self, mark: i64, money_per_unit: i128) -> i64 {
        saturate(i128::from(self.qty) * i128::from(mark) * money_per_unit)
    }

    /// Unrealized P&L at `mark` (money units).
    pub fn unrealized(&self, mark: i64, money_per_unit: i128) -> i64 {
        self.market_value(mark, money_per_unit).saturating_sub(self.cost)
    }

    /// Signed quantity after every open order of `side` fills.
    pub fn with_open(&self, side: Side) -> i64 {
        match side {
            Side::Buy => self.qty.saturating_add(self.open_buy),
            Side::Sell => self.qty.saturating_sub(self.open_sell),
        }
    }

    /// Largest absolute exposure the position may reach with its open orders.
    pub fn worst_case_qty(&self) -> i64 {
        self.with_open(Side::Buy).saturating_abs().max(self.with_open(Side::Sell).saturating_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MPU: i128 = 1;

    fn fill(p: &mut Position, side: Side, qty: i64, price: i64, fee: i64) -> FillEffect {
        p.apply_fill(side, qty, qty * price, fee)
    }

    #[test]
    fn long_then_partial_close_realizes_the_difference() {
        let mut p = Position::default();
        fill(&mut p, Side::Buy, 10, 100, 1);
        fill(&mut p, Side::Buy, 10, 110, 1);
        assert_eq!((p.qty, p.cost, p.avg_price(MPU)), (20, 2100, 105));
        let e = fill(&mut p, Side::Sell, 5, 120, 1);
        assert_eq!(e.realized, 5 * (120 - 105));
        assert_eq!(e.cash, 600 - 1);
        assert_eq!((p.qty, p.cost, p.realized, p.fees), (15, 1575, 75, 3));
        assert_eq!(p.unrealized(130, MPU), 15 * 130 - 1575);
    }

    #[test]
    fn short_positions_profit_when_the_price_falls() {
        let mut p = Position::default();
        let e = fill(&mut p, Side::Sell, 4, 50, 0);
        assert_eq!(e.cash, 200);
        assert_eq!((p.qty, p.cost, p.avg_price(MPU)), (-4, -200, 50));
        let e = fill(&mut p, Side::Buy, 4, 40, 0);
        assert_eq!(e.realized, 40);
        assert_eq!(p, Position { realized: 40, ..Position::default() });
    }

    #[test]
    fn a_flip_closes_then_opens_the_other_way() {
        let mut p = Position::default();
        fill(&mut p, Side::Buy, 3, 100, 0);
        let e = fill(&mut p, Side::Sell, 5, 90, 0);
        assert_eq!(e.realized, -30);
        assert_eq!((p.qty, p.cost, p.avg_price(MPU)), (-2, -180, 90));
    }

    #[test]
    fn rounding_remainders_are_realized_when_flat() {
        let mut p = Position::default();
        p.apply_fill(Side::Buy, 3, 100, 0);
        p.apply_fill(Side::Sell, 1, 40, 0);
        p.apply_fill(Side::Sell, 1, 40, 0);
        p.apply_fill(Side::Sell, 1, 40, 0);
        assert_eq!((p.qty, p.cost), (0, 0));
        assert_eq!(p.realized, 20);
    }

    #[test]
    fn open_orders_widen_the_worst_case() {
        let p = Position { qty: 5, open_buy: 3, open_sell: 10, ..Position::default() };
        assert_eq!(p.with_open(Side::Buy), 8);
        assert_eq!(p.with_open(Side::Sell), -5);
        assert_eq!(p.worst_case_qty(), 8);
    }
}
