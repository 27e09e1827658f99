//! Accounts, API keys, tiers and risk limits.

use std::collections::VecDeque;

use super::position::Position;
use super::types::{AccountId, KeyId, Nanos, OrderId, ShortStr};
use crate::rate_limit::SlidingWindow;

/// Whether an account may trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum AccountState {
    /// Trades normally.
    Active,
    /// Only orders that shrink a position are accepted.
    Reducing,
    /// No orders are accepted.
    Halted,
}

impl AccountState {
    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Active => "active",
            AccountState::Reducing => "reducing",
            AccountState::Halted => "halted",
        }
    }
}

/// Why an account's state last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum StateReason {
    /// Created.
    Created,
    /// The owner pressed the kill switch.
    KillSwitch,
    /// The owner resumed trading.
    Resumed,
    /// The daily loss limit was breached.
    DailyLoss,
}

impl StateReason {
    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            StateReason::Created => "created",
            StateReason::KillSwitch => "kill_switch",
            StateReason::Resumed => "resumed",
            StateReason::DailyLoss => "max_daily_loss",
        }
    }
}

/// Effective risk and rate limits of an account. Money in money units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RiskLimits {
    /// API requests per key per minute.
    pub requests_per_minute: u32,
    /// Largest notional of one order.
    pub max_order_notional: i64,
    /// Largest notional of the position in one symbol (counting open orders).
    pub max_position_notional: i64,
    /// Largest sum of absolute position notionals (counting open orders).
    pub max_gross_exposure: i64,
    /// Orders per second per account.
    pub max_orders_per_second: u32,
    /// Loss since the start of the UTC day that halts the account (0 = no limit).
    pub max_daily_loss: i64,
    /// Open orders at once.
    pub max_open_orders: u32,
    /// Gross exposure allowed per unit of equity.
    pub leverage: u32,
}

/// Per-account overrides of its tier's limits; `None` keeps the tier's value.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
)]
pub struct LimitOverrides {
    /// See [`RiskLimits::requests_per_minute`].
    pub requests_per_minute: Option<u32>,
    /// See [`RiskLimits::max_order_notional`].
    pub max_order_notional: Option<i64>,
    /// See [`RiskLimits::max_position_notional`].
    pub max_position_notional: Option<i64>,
    /// See [`RiskLimits::max_gross_exposure`].
    pub max_gross_exposure: Option<i64>,
    /// See [`RiskLimits::max_orders_per_second`].
    pub max_orders_per_second: Option<u32>,
    /// See [`RiskLimits::max_daily_loss`].
    pub max_daily_loss: Option<i64>,
    /// See [`RiskLimits::max_open_orders`].
    pub max_open_orders: Option<u32>,
    /// See [`RiskLimits::leverage`].
    pub leverage: Option<u32>,
}

impl RiskLimits {
    /// These limits with `o` applied on top.
    pub fn with(&self, o: &LimitOverrides) -> RiskLimits {
        RiskLimits {
            requests_per_minute: o.requests_per_minute.unwrap_or(self.requests_per_minute),
            max_order_notional: o.max_order_notional.unwrap_or(self.max_order_notional),
            max_position_notional: o.max_position_notional.unwrap_or(self.max_position_notional),
            max_gross_exposure: o.max_gross_exposure.unwrap_or(self.max_gross_exposure),
            max_orders_per_second: o.max_orders_per_second.unwrap_or(self.max_orders_per_second),
            max_daily_loss: o.max_daily_loss.unwrap_or(self.max_daily_loss),
            max_open_orders: o.max_open_orders.unwrap_or(self.max_open_orders),
            leverage: o.leverage.unwrap_or(self.leverage),
        }
    }
}

/// A named set of limits.
#[derive(Debug, Clone)]
pub struct Tier {
    /// Its name, e.g. `pro`.
    pub name: String,
    /// Its limits.
    pub limits: RiskLimits,
}

/// Index of a tier in the engine's tier list.
pub type TierId = u16;

/// What a key may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
)]
pub struct Roles {
    /// Send market data (`POST /v1/market/ticks`).
    pub feed: bool,
}

/// One API key. Only the SHA-256 of the key is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct KeyRecord {
    /// Its id.
    pub id: KeyId,
    /// Its account.
    pub account: AccountId,
    /// SHA-256 of the key text.
    pub hash: [u8; 32],
    /// Extra roles.
    pub roles: Roles,
    /// Whether it was revoked.
    pub revoked: bool,
    /// When it was created.
    pub created_at: Nanos,
}

/// Account names are stored inline.
pub type AccountName = ShortStr<64>;

/// One trading account and everything it owns.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Account {
    /// Its id.
    pub id: AccountId,
    /// Display name.
    pub name: AccountName,
    /// Its tier.
    pub tier: TierId,
    /// Overrides of the tier's limits.
    pub overrides: LimitOverrides,
    /// Limits in force (tier + overrides).
    pub limits: RiskLimits,
    /// Trading state.
    pub state: AccountState,
    /// Why the state last changed.
    pub state_reason: StateReason,
    /// Cash (money units).
    pub cash: i64,
    /// Cash deposited at creation.
    pub initial_cash: i64,
    /// Realized P&L over all symbols, fees not included.
    pub realized: i64,
    /// Fees paid.
    pub fees: i64,
    /// One position per symbol, indexed by symbol id.
    pub positions: Vec<Position>,
    /// Ids of open orders.
    pub open_orders: Vec<OrderId>,
    /// Ids of the most recent orders, oldest first.
    pub recent_orders: VecDeque<OrderId>,
    /// Orders-per-second throttle.
    pub order_rate: SlidingWindow,
    /// UTC day number that `day_start_equity` belongs to.
    pub day: u32,
    /// Equity at the start of `day`.
    pub day_start_equity: i64,
    /// Keys of this account.
    pub keys: Vec<KeyId>,
    /// When it was created.
    pub created_at: Nanos,
}

crate::engine::types::serialize_as_str!(AccountState, StateReason);
