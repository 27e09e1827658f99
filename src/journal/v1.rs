//! Events as segments of format 1 (`SGJRNL01`) hold them: frozen, to read journals written before
//! format 2. Two kinds differ from today's: `OrderUpdated` did not name its account, and `Fill`
//! did not carry what it realized and the position it left. An event read from such a segment has
//! those fields zero ([`decode`]); a [`super::follow::Follower`] fills them in from its engine.

use crate::engine::account::{AccountName, AccountState, LimitOverrides, Roles, StateReason, TierId};
use crate::engine::event::{Event as Current, EventKind as CurrentKind, SignalAnswer};
use crate::engine::market::Quote;
use crate::engine::order::{Order, OrderEvent};
use crate::engine::position::Holding;
use crate::engine::risk::RejectCode;
use crate::engine::types::{AccountId, KeyId, Nanos, OrderId, Side, SignalKey, SymbolId};

/// An event of format 1.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Event {
    seq: u64,
    ts: Nanos,
    kind: Kind,
}

/// Its kinds, in format 1's order and shapes.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum Kind {
    AccountCreated {
        account: AccountId,
        name: AccountName,
        tier: TierId,
        cash: i64,
        overrides: LimitOverrides,
    },
    KeyAdded {
        key: KeyId,
        account: AccountId,
        hash: [u8; 32],
        roles: Roles,
    },
    KeyRevoked {
        key: KeyId,
    },
    LimitsSet {
        account: AccountId,
        overrides: LimitOverrides,
    },
    AccountStateChanged {
        account: AccountId,
        state: AccountState,
        reason: StateReason,
    },
    DayStarted {
        account: AccountId,
        day: u32,
        equity: i64,
    },
    OrderAccepted {
        order: Order,
    },
    OrderUpdated {
        order: OrderId,
        event: OrderEvent,
    },
    Fill {
        order: OrderId,
        account: AccountId,
        symbol: SymbolId,
        side: Side,
        qty: i64,
        price: i64,
        notional: i64,
        fee: i64,
    },
    Quote(Quote),
    SignalAnswered {
        account: AccountId,
        signal: SignalKey,
        answer: SignalAnswer,
    },
    Rejected {
        account: AccountId,
        code: RejectCode,
    },
}

/// Decodes a format 1 payload, validating it first, into today's event; the fields format 1 did
/// not have are zero.
pub fn decode(payload: &[u8]) -> Result<Current, String> {
    let e = rkyv::from_bytes::<Event, rkyv::rancor::Error>(payload).map_err(|e| format!("undecodable event: {e}"))?;
    let kind = match e.kind {
        Kind::AccountCreated { account, name, tier, cash, overrides } => {
            CurrentKind::AccountCreated { account, name, tier, cash, overrides }
        }
        Kind::KeyAdded { key, account, hash, roles } => CurrentKind::KeyAdded { key, account, hash, roles },
        Kind::KeyRevoked { key } => CurrentKind::KeyRevoked { key },
        Kind::LimitsSet { account, overrides } => CurrentKind::LimitsSet { account, overrides },
        Kind::AccountStateChanged { account, state, reason } => {
            CurrentKind::AccountStateChanged { account, state, reason }
        }
        Kind::DayStarted { account, day, equity } => CurrentKind::DayStarted { account, day, equity },
        Kind::OrderAccepted { order } => CurrentKind::OrderAccepted { order },
        Kind::OrderUpdated { order, event } => CurrentKind::OrderUpdated { order, account: AccountId(0), event },
        Kind::Fill { order, account, symbol, side, qty, price, notional, fee } => CurrentKind::Fill {
            order,
            account,
            symbol,
            side,
            qty,
            price,
            notional,
            fee,
            realized: 0,
            position: Holding::default(),
        },
        Kind::Quote(q) => CurrentKind::Quote(q),
        Kind::SignalAnswered { account, signal, answer } => CurrentKind::SignalAnswered { account, signal, answer },
        Kind::Rejected { account, code } => CurrentKind::Rejected { account, code },
    };
    Ok(Current { seq: e.seq, ts: e.ts, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_1_fill_reads_as_a_fill_without_its_derived_values() {
        let old = Event {
            seq: 9,
            ts: 10,
            kind: Kind::Fill {
                order: OrderId(3),
                account: AccountId(2),
                symbol: SymbolId(1),
                side: Side::Sell,
                qty: 5,
                price: 7,
                notional: 35,
                fee: 1,
            },
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        let e = decode(&bytes).unwrap();
        assert_eq!((e.seq, e.ts), (9, 10));
        match e.kind {
            CurrentKind::Fill { order, account, qty, notional, realized, position, .. } => {
                assert_eq!((order, account, qty, notional, realized), (OrderId(3), AccountId(2), 5, 35, 0));
                assert_eq!(position, Holding::default());
            }
            other => panic!("{other:?}"),
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
