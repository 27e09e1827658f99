//! Pre-trade risk: the stable rejection codes and how they read.
//!
//! The checks themselves run in `Engine::check_order`, in the order listed in `docs/api.md`;
//! this module owns what a rejection *is*: a code, its HTTP status and its message.

use crate::fixed::MONEY_DECIMALS;
use crate::json::Writer;

/// Why the engine refused a command. Each has a stable code in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RejectCode {
    /// The account is halted.
    AccountHalted,
    /// The account only accepts orders that shrink a position.
    ReduceOnly,
    /// No such account.
    AccountNotFound,
    /// No such symbol.
    UnknownSymbol,
    /// Quantity is not a multiple of the lot size.
    LotSize,
    /// Price is not a multiple of the tick size.
    TickSize,
    /// The quantity is zero (e.g. a notional smaller than one lot).
    QtyZero,
    /// No such order for this account.
    OrderNotFound,
    /// The order is already done.
    NotCancelable,
    /// Order quantity above the symbol's maximum.
    MaxOrderQty,
    /// Order notional above the limit.
    MaxOrderNotional,
    /// Position notional above the limit.
    MaxPositionNotional,
    /// Gross exposure above the limit.
    MaxGrossExposure,
    /// Not enough buying power.
    BuyingPower,
    /// Limit price too far from the market.
    PriceCollar,
    /// No recent quote to price the order.
    StaleQuote,
    /// Too many orders per second.
    OrderRate,
    /// The daily loss limit is breached; the account halted itself.
    MaxDailyLoss,
    /// Too many open orders.
    MaxOpenOrders,
}

/// How a value in a rejection message is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A plain integer.
    Count,
    /// Money units.
    Money,
    /// Quantity units with these decimals.
    Qty(u8),
    /// Price units with these decimals.
    Price(u8),
    /// Basis points.
    Bps,
    /// Milliseconds.
    Millis,
}

/// A rejection with the numbers that explain it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// Which rule.
    pub code: RejectCode,
    /// The offending value.
    pub value: i64,
    /// The limit it broke.
    pub limit: i64,
    /// How `value` and `limit` read.
    pub unit: Unit,
}

impl Reject {
    /// A rejection without numbers.
    pub const fn plain(code: RejectCode) -> Self {
        Reject { code, value: 0, limit: 0, unit: Unit::Count }
    }

    /// A rejection: `value` broke `limit`.
    pub const fn over(code: RejectCode, value: i64, limit: i64, unit: Unit) -> Self {
        Reject { code, value, limit, unit }
    }

    /// Writes the message as a JSON string value.
    pub fn write_message(&self, w: &mut Writer<'_>) {
        if self.code == RejectCode::StaleQuote && self.value < 0 {
            w.str("no quote yet for this symbol: market data is needed to price the order");
            return;
        }
        let (before, between) = match self.code {
            RejectCode::AccountHalted => ("the account is halted; POST /v1/account/resume to trade again", ""),
            RejectCode::ReduceOnly => ("the account is reducing: only orders that shrink a position are accepted", ""),
            RejectCode::AccountNotFound => ("no such account", ""),
            RejectCode::UnknownSymbol => ("unknown symbol", ""),
            RejectCode::LotSize => ("quantity is not a multiple of the lot size ", ""),
            RejectCode::TickSize => ("price is not a multiple of the tick size ", ""),
            RejectCode::QtyZero => ("the order quantity is zero (a notional smaller than one lot?)", ""),
            RejectCode::OrderNotFound => ("no such order", ""),
            RejectCode::NotCancelable => ("the order is already done", ""),
            RejectCode::MaxOrderQty => ("order quantity ", " exceeds the symbol's maximum "),
            RejectCode::MaxOrderNotional => ("order notional ", " exceeds the limit "),
            RejectCode::MaxPositionNotional => ("position notional would reach ", ", above the limit "),
            RejectCode::MaxGrossExposure => ("gross exposure would reach ", ", above the limit "),
            RejectCode::BuyingPower => ("order needs ", " of buying power; available "),
            RejectCode::PriceCollar => ("limit price is ", " bps away from the market; the collar is "),
            RejectCode::StaleQuote => ("the last quote is ", " ms old, older than the stale-quote guard of "),
            RejectCode::OrderRate => ("order rate above ", " orders per second; limit "),
            RejectCode::MaxDailyLoss => ("daily loss ", " reached the limit; the account is halted. Limit "),
            RejectCode::MaxOpenOrders => ("open orders would exceed ", "; limit "),
        };
        w.begin_string().string_part(before);
        let numbered = !between.is_empty();
        let only_limit = matches!(self.code, RejectCode::LotSize | RejectCode::TickSize);
        if numbered {
            self.write_number(w, self.value);
            w.string_part(between);
        }
        if numbered || only_limit {
            self.write_number(w, self.limit);
        }
        w.end_string();
    }

    fn write_number(&self, w: &mut Writer<'_>, v: i64) {
        match self.unit {
            Unit::Count | Unit::Bps | Unit::Millis => {
                w.string_int(v);
            }
            Unit::Money => {
                w.string_decimal(v, MONEY_DECIMALS, 2);
            }
            Unit::Qty(d) | Unit::Price(d) => {
                w.string_decimal(v, d, d);
            }
        }
    }
}

impl RejectCode {
    /// Every code, for documentation checks and tests.
    pub const ALL: [RejectCode; 19] = [
        RejectCode::AccountHalted,
        RejectCode::ReduceOnly,
        RejectCode::AccountNotFound,
        RejectCode::UnknownSymbol,
        RejectCode::LotSize,
        RejectCode::TickSize,
        RejectCode::QtyZero,
        RejectCode::OrderNotFound,
        RejectCode::NotCancelable,
        RejectCode::MaxOrderQty,
        RejectCode::MaxOrderNotional,
        RejectCode::MaxPositionNotional,
        RejectCode::MaxGrossExposure,
        RejectCode::BuyingPower,
        RejectCode::PriceCollar,
        RejectCode::StaleQuote,
        RejectCode::OrderRate,
        RejectCode::MaxDailyLoss,
        RejectCode::MaxOpenOrders,
    ];

    /// The stable code in error answers.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectCode::AccountHalted => "account.halted",
            RejectCode::ReduceOnly => "account.reduce_only",
            RejectCode::AccountNotFound => "account.not_found",
            RejectCode::UnknownSymbol => "symbol.unknown",
            RejectCode::LotSize => "order.lot_size",
            RejectCode::TickSize => "order.tick_size",
            RejectCode::QtyZero => "order.qty_zero",
            RejectCode::OrderNotFound => "order.not_found",
            RejectCode::NotCancelable => "order.not_cancelable",
            RejectCode::MaxOrderQty => "risk.max_order_qty",
            RejectCode::MaxOrderNotional => "risk.max_order_notional",
            RejectCode::MaxPositionNotional => "risk.max_position_notional",
            RejectCode::MaxGrossExposure => "risk.max_gross_exposure",
            RejectCode::BuyingPower => "risk.buying_power",
            RejectCode::PriceCollar => "risk.price_collar",
            RejectCode::StaleQuote => "risk.stale_quote",
            RejectCode::OrderRate => "risk.order_rate",
            RejectCode::MaxDailyLoss => "risk.max_daily_loss",
            RejectCode::MaxOpenOrders => "risk.max_open_orders",
        }
    }

    /// The HTTP status of the error answer.
    pub const fn status(self) -> u16 {
        match self {
            RejectCode::AccountNotFound | RejectCode::OrderNotFound => 404,
            RejectCode::NotCancelable => 409,
            _ => 422,
        }
    }
}

crate::engine::types::serialize_as_str!(RejectCode);

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Reject) -> String {
        let mut out = Vec::new();
        r.write_message(&mut Writer::new(&mut out));
        serde_json::from_slice::<String>(&out).unwrap()
    }

    #[test]
    fn messages_carry_the_numbers() {
        let m = message(Reject::over(
            RejectCode::MaxOrderNotional,
            32_533_385 * 1_000_000,
            50_000 * 100_000_000,
            Unit::Money,
        ));
        assert_eq!(m, "order notional 325333.85 exceeds the limit 50000.00");
        let m = message(Reject::over(RejectCode::StaleQuote, 6000, 5000, Unit::Millis));
        assert_eq!(m, "the last quote is 6000 ms old, older than the stale-quote guard of 5000");
        let m = message(Reject::over(RejectCode::StaleQuote, -1, 5000, Unit::Millis));
        assert_eq!(m, "no quote yet for this symbol: market data is needed to price the order");
        let m = message(Reject::over(RejectCode::LotSize, 15, 10, Unit::Qty(2)));
        assert_eq!(m, "quantity is not a multiple of the lot size 0.10");
        assert_eq!(
            message(Reject::plain(RejectCode::AccountHalted)),
            "the account is halted; POST /v1/account/resume to trade again"
        );
    }

    #[test]
    fn codes_are_distinct_documented_and_statuses_sensible() {
        let all = RejectCode::ALL;
        let api_doc = include_str!("../../docs/api.md");
        let mut codes: Vec<&str> = all.iter().map(|c| c.as_str()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for c in all {
            assert!(api_doc.contains(&format!("`{}`", c.as_str())), "{} is not in docs/api.md", c.as_str());
            assert!(matches!(c.status(), 404 | 409 | 422), "{c:?}");
            assert!(!message(Reject::plain(c)).is_empty());
        }
    }
}
