//! Engine tests: every signal action, every risk check, order life cycles, replay, and
//! property tests of the accounting invariants.

use proptest::prelude::*;

use super::account::{AccountName, AccountState, LimitOverrides, RiskLimits, StateReason, Tier};
use super::event::{Event, EventKind};
use super::market::Quote;
use super::order::OrderStatus;
use super::risk::RejectCode;
use super::symbol::{SymbolSpec, SymbolTable};
use super::types::{AccountId, OrderId, OrderType, SignalKey, SymbolId, Tag, Tif, DAY, SECOND};
use super::{Engine, EngineConfig, EngineState, Intent, SignalSpec, Size};
use crate::venue::{PaperConfig, PaperVenue};

const T0: u64 = 1_800_000_000 * SECOND;
const BTC: SymbolId = SymbolId(0);
const ETH: SymbolId = SymbolId(1);
/// One dollar in money units.
const USD: i64 = 100_000_000;

fn specs() -> Vec<SymbolSpec> {
    vec![
        // price: cents; qty: 1/100 of a coin
        SymbolSpec {
            id: BTC,
            name: "BTC".into(),
            price_decimals: 2,
            qty_decimals: 2,
            tick: 1,
            lot: 1,
            max_order_qty: 100_000,
        },
        SymbolSpec {
            id: ETH,
            name: "ETH".into(),
            price_decimals: 2,
            qty_decimals: 2,
            tick: 5,
            lot: 10,
            max_order_qty: 1_000_000,
        },
    ]
}

fn limits() -> RiskLimits {
    RiskLimits {
        requests_per_minute: 1000,
        max_order_notional: 50_000 * USD,
        max_position_notional: 100_000 * USD,
        max_gross_exposure: 150_000 * USD,
        max_orders_per_second: 1000,
        max_daily_loss: 0,
        max_open_orders: 50,
        leverage: 2,
    }
}

fn engine_with(fee_bps: u32, slippage_bps: u32, latency: u64) -> Engine<PaperVenue> {
    let cfg = EngineConfig {
        price_collar_bps: 500,
        max_quote_age: 5 * SECOND,
        idempotency_capacity: 1000,
        idempotency_ttl: DAY,
        orders_per_account: 64,
        order_id_base: 0,
    };
    let venue = PaperVenue::new(PaperConfig { slippage_bps, fee_bps, latency }, &specs());
    Engine::new(cfg, SymbolTable::new(specs()), vec![Tier { name: "t".into(), limits: limits() }], venue)
}

fn engine() -> Engine<PaperVenue> {
    engine_with(0, 0, 0)
}

fn open(e: &mut Engine<PaperVenue>, cash_usd: i64, o: LimitOverrides) -> AccountId {
    e.create_account(AccountName::new("a").unwrap(), 0, cash_usd * USD, o, T0).unwrap()
}

/// BTC quoted 100.00 / 100.10 (cents), 5.00 coins each side.
fn quote(e: &mut Engine<PaperVenue>, sym: SymbolId, bid: i64, ask: i64, size: i64, ts: u64) {
    e.on_quote(Quote { symbol: sym, bid, ask, bid_size: size, ask_size: size, ts }, ts);
}

fn spec(symbol: SymbolId, intent: Intent) -> SignalSpec {
    SignalSpec {
        symbol,
        intent,
        order_type: OrderType::Market,
        limit_price: 0,
        tif: Tif::Ioc,
        strategy: Tag::EMPTY,
        signal_id: None,
    }
}

fn limit(symbol: SymbolId, intent: Intent, price: i64, tif: Tif) -> SignalSpec {
    SignalSpec { order_type: OrderType::Limit, limit_price: price, tif, ..spec(symbol, intent) }
}

fn buy(q: i64) -> Intent {
    Intent::Buy(Size::Qty(q))
}
fn sell(q: i64) -> Intent {
    Intent::Sell(Size::Qty(q))
}

fn reject(e: &mut Engine<PaperVenue>, a: AccountId, s: SignalSpec, now: u64) -> RejectCode {
    e.signal(a, &s, now).expect_err("expected a rejection").code
}

fn setup() -> (Engine<PaperVenue>, AccountId) {
    let mut e = engine();
    let a = open(&mut e, 100_000, LimitOverrides::default());
    quote(&mut e, BTC, 10_000, 10_010, 500, T0);
    quote(&mut e, ETH, 2_000, 2_005, 100_000, T0);
    (e, a)
}

#[test]
fn a_market_buy_fills_at_the_ask_with_slippage_and_fee() {
    let mut e = engine_with(10, 10, 0);
    let a = open(&mut e, 10_000, LimitOverrides::default());
    quote(&mut e, BTC, 10_000, 10_010, 500, T0);
    let out = e.signal(a, &spec(BTC, buy(200)), T0).unwrap();
    let o = out.answer.order.unwrap();
    assert_eq!(o.status, OrderStatus::Filled);
    // ask 100.10 + 10 bps = 100.2001 → rounded up to the tick: 100.21
    assert_eq!(o.avg_price, 10_021);
    assert_eq!(out.answer.position.qty, 200);
    let acct = e.account(a).unwrap();
    let notional = 10_021 * 200 * 10_000; // cents × hundredths → money units (10^8)
    let fee = notional / 1000; // 10 bps
    assert_eq!(acct.cash, 10_000 * USD - notional - fee);
    assert_eq!(acct.fees, fee);
    let kinds: Vec<&str> = e
        .events()
        .iter()
        .map(|ev| match ev.kind {
            EventKind::OrderAccepted { .. } => "accepted",
            EventKind::OrderUpdated { .. } => "updated",
            EventKind::Fill { .. } => "fill",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["accepted", "updated", "fill"]);
}

#[test]
fn notional_signals_round_down_to_a_lot() {
    let (mut e, a) = setup();
    // 1000 USD at ask 20.05 → 49.875 coins → 49.87 → lot 0.10 → 49.80
    let out = e.signal(a, &spec(ETH, Intent::Buy(Size::Notional(1000 * USD))), T0).unwrap();
    assert_eq!(out.answer.order.unwrap().qty, 4980);
    assert_eq!(reject(&mut e, a, spec(ETH, Intent::Buy(Size::Notional(USD / 100))), T0), RejectCode::QtyZero);
}

#[test]
fn sell_close_and_target_move_the_position() {
    let (mut e, a) = setup();
    e.signal(a, &spec(BTC, buy(300)), T0).unwrap();
    let out = e.signal(a, &spec(BTC, sell(100)), T0).unwrap();
    assert_eq!(out.answer.position.qty, 200);
    // Target: reach -150 from +200 → sell 350.
    let out = e.signal(a, &spec(BTC, Intent::Target(-150)), T0).unwrap();
    assert_eq!(out.answer.order.unwrap().qty, 350);
    assert_eq!(out.answer.position.qty, -150);
    // Repeating the target changes nothing.
    let seq = e.last_seq();
    let again = e.signal(a, &spec(BTC, Intent::Target(-150)), T0).unwrap();
    assert_eq!(again.answer.order, None);
    assert_eq!(again.answer.position.qty, -150);
    assert_eq!(e.last_seq(), seq, "a no-op target produces no event");
    // Close flattens.
    let out = e.signal(a, &spec(BTC, Intent::Close), T0).unwrap();
    assert_eq!(out.answer.order.unwrap().qty, 150);
    assert_eq!(out.answer.position.qty, 0);
    assert_eq!(e.signal(a, &spec(BTC, Intent::Close), T0).unwrap().answer.order, None);
}

#[test]
fn target_counts_working_orders() {
    let (mut e, a) = setup();
    let s = limit(BTC, Intent::Target(100), 9_900, Tif::Gtc);
    let first = e.signal(a, &s, T0).unwrap();
    assert_eq!(first.answer.order.unwrap().status, OrderStatus::New);
    assert!(e.signal(a, &s, T0).unwrap().answer.order.is_none(), "the resting order already reaches the target");
}

#[test]
fn close_cancels_working_orders_in_the_symbol_first() {
    let (mut e, a) = setup();
    e.signal(a, &spec(BTC, buy(100)), T0).unwrap();
    let resting = e.signal(a, &limit(BTC, buy(100), 9_900, Tif::Gtc), T0).unwrap().answer.order.unwrap();
    let other = e.signal(a, &limit(ETH, buy(100), 1_990, Tif::Gtc), T0).unwrap().answer.order.unwrap();
    e.signal(a, &spec(BTC, Intent::Close), T0).unwrap();
    assert_eq!(e.order(resting.id).unwrap().status, OrderStatus::Canceled);
    assert_eq!(e.order(other.id).unwrap().status, OrderStatus::New);
    assert_eq!(e.account(a).unwrap().positions[0].qty, 0);
}

#[test]
fn limit_orders_rest_then_fill_partially_and_fully_on_quotes() {
    let (mut e, a) = setup();
    let o = e.signal(a, &limit(BTC, buy(800), 9_990, Tif::Gtc), T0).unwrap().answer.order.unwrap();
    assert_eq!(o.status, OrderStatus::New);
    assert_eq!(e.account(a).unwrap().positions[0].open_buy, 800);
    quote(&mut e, BTC, 9_980, 9_985, 500, T0 + 1);
    let o1 = *e.order(o.id).unwrap();
    assert_eq!((o1.status, o1.filled_qty), (OrderStatus::PartiallyFilled, 500));
    quote(&mut e, BTC, 9_980, 9_990, 500, T0 + 2);
    let o2 = *e.order(o.id).unwrap();
    assert_eq!((o2.status, o2.filled_qty), (OrderStatus::Filled, 800));
    assert_eq!(e.avg_fill_price(&o2), (500 * 9_985 + 300 * 9_990 + 400) / 800);
    let p = e.account(a).unwrap().positions[0];
    assert_eq!((p.qty, p.open_buy), (800, 0));
    assert!(e.account(a).unwrap().open_orders.is_empty());
}

#[test]
fn an_ioc_limit_cancels_what_does_not_fill() {
    let (mut e, a) = setup();
    let o = e.signal(a, &limit(BTC, buy(800), 10_010, Tif::Ioc), T0).unwrap().answer.order.unwrap();
    assert_eq!((o.status, o.filled_qty), (OrderStatus::Canceled, 500));
    assert_eq!(e.account(a).unwrap().positions[0].open_buy, 0);
}

#[test]
fn cancel_rules() {
    let (mut e, a) = setup();
    let b = open(&mut e, 1000, LimitOverrides::default());
    let o = e.signal(a, &limit(BTC, buy(10), 9_900, Tif::Gtc), T0).unwrap().answer.order.unwrap();
    assert_eq!(e.cancel_order(b, o.id, T0).unwrap_err().code, RejectCode::OrderNotFound);
    e.cancel_order(a, o.id, T0).unwrap();
    assert_eq!(e.order(o.id).unwrap().status, OrderStatus::Canceled);
    assert_eq!(e.cancel_order(a, o.id, T0).unwrap_err().code, RejectCode::NotCancelable);
    assert_eq!(e.cancel_order(a, OrderId(999), T0).unwrap_err().code, RejectCode::OrderNotFound);
}

#[test]
fn the_kill_switch_cancels_and_halts_and_resume_restores() {
    let (mut e, a) = setup();
    e.signal(a, &limit(BTC, buy(10), 9_900, Tif::Gtc), T0).unwrap();
    e.signal(a, &limit(ETH, buy(10), 1_990, Tif::Gtc), T0).unwrap();
    e.halt(a, T0).unwrap();
    assert!(e.account(a).unwrap().open_orders.is_empty());
    assert_eq!(reject(&mut e, a, spec(BTC, buy(1)), T0), RejectCode::AccountHalted);
    e.resume(a, false, T0).unwrap();
    assert!(e.signal(a, &spec(BTC, buy(1)), T0).is_ok());
}

#[test]
fn reducing_accepts_only_orders_that_shrink() {
    let (mut e, a) = setup();
    e.signal(a, &spec(BTC, buy(100)), T0).unwrap();
    e.resume(a, true, T0).unwrap();
    assert_eq!(reject(&mut e, a, spec(BTC, buy(1)), T0), RejectCode::ReduceOnly);
    assert_eq!(reject(&mut e, a, spec(BTC, sell(101)), T0), RejectCode::ReduceOnly, "a flip is not a reduction");
    assert_eq!(reject(&mut e, a, spec(ETH, sell(10)), T0), RejectCode::ReduceOnly, "flat symbols cannot open");
    assert!(e.signal(a, &spec(BTC, sell(60)), T0).is_ok());
    assert!(e.signal(a, &spec(BTC, Intent::Close), T0).is_ok());
}

#[test]
fn each_size_and_price_check() {
    let (mut e, a) = setup();
    assert_eq!(reject(&mut e, a, spec(ETH, buy(15)), T0), RejectCode::LotSize);
    assert_eq!(reject(&mut e, a, spec(BTC, buy(100_001)), T0), RejectCode::MaxOrderQty);
    assert_eq!(reject(&mut e, a, limit(ETH, buy(10), 2_001, Tif::Gtc), T0), RejectCode::TickSize);
    assert_eq!(reject(&mut e, a, limit(BTC, buy(10), 9_400, Tif::Gtc), T0), RejectCode::PriceCollar);
    assert!(e.signal(a, &limit(BTC, buy(10), 9_600, Tif::Gtc), T0).is_ok(), "within 500 bps");
}

#[test]
fn stale_or_missing_quotes_stop_market_orders() {
    let mut e = engine();
    let a = open(&mut e, 1000, LimitOverrides::default());
    assert_eq!(reject(&mut e, a, spec(BTC, buy(1)), T0), RejectCode::StaleQuote);
    quote(&mut e, BTC, 10_000, 10_010, 500, T0);
    assert!(e.signal(a, &spec(BTC, buy(1)), T0 + 5 * SECOND).is_ok());
    let r = e.signal(a, &spec(BTC, buy(1)), T0 + 6 * SECOND).unwrap_err();
    assert_eq!((r.code, r.value, r.limit), (RejectCode::StaleQuote, 6000, 5000));
    assert!(
        e.signal(a, &limit(BTC, buy(1), 10_000, Tif::Gtc), T0 + 6 * SECOND).is_ok(),
        "limit orders only need the collar"
    );
}

#[test]
fn notional_position_and_gross_limits() {
    let (mut e, a) = setup();
    // 100.10 × 500 coins = 50,050 > 50,000
    let r = e.signal(a, &limit(BTC, buy(50_000), 10_010, Tif::Gtc), T0).unwrap_err();
    assert_eq!((r.code, r.value, r.limit), (RejectCode::MaxOrderNotional, 50_000 * 10_010 * 10_000, 50_000 * USD));
    // Position limit 100,000: two 40,000 orders pass, the third (120,000 in all) does not.
    let big = limit(BTC, buy(40_000), 10_000, Tif::Gtc);
    e.signal(a, &big, T0).unwrap();
    e.signal(a, &big, T0).unwrap();
    assert_eq!(reject(&mut e, a, big, T0), RejectCode::MaxPositionNotional);
    // Gross exposure 150,000: 80,000 BTC working + 2 × 40,000 ETH > 150,000.
    let eth = limit(ETH, buy(200_000), 2_000, Tif::Gtc);
    e.signal(a, &eth, T0).unwrap();
    assert_eq!(reject(&mut e, a, eth, T0), RejectCode::MaxGrossExposure);
    // Reducing orders are not limited by exposure.
    assert!(e.signal(a, &limit(BTC, sell(100), 10_000, Tif::Gtc), T0).is_ok());
}

#[test]
fn buying_power_is_equity_times_leverage_minus_exposure() {
    let mut e = engine();
    let a = open(&mut e, 10_000, LimitOverrides { leverage: Some(1), ..LimitOverrides::default() });
    quote(&mut e, BTC, 10_000, 10_000, 100_000, T0);
    e.signal(a, &spec(BTC, buy(6_000)), T0).unwrap(); // 6,000 USD
    let r = e.signal(a, &spec(BTC, buy(5_000)), T0).unwrap_err();
    assert_eq!((r.code, r.value, r.limit), (RejectCode::BuyingPower, 5_000 * USD, 4_000 * USD));
    assert!(e.signal(a, &spec(BTC, buy(4_000)), T0).is_ok());
}

#[test]
fn order_rate_and_open_order_limits() {
    let mut e = engine();
    let a = open(
        &mut e,
        100_000,
        LimitOverrides { max_orders_per_second: Some(3), max_open_orders: Some(2), ..Default::default() },
    );
    quote(&mut e, BTC, 10_000, 10_010, 500, T0);
    let rest = limit(BTC, buy(1), 9_900, Tif::Gtc);
    let first = e.signal(a, &rest, T0).unwrap().answer.order.unwrap();
    e.signal(a, &rest, T0).unwrap();
    assert_eq!(reject(&mut e, a, rest, T0), RejectCode::MaxOpenOrders);
    e.cancel_order(a, first.id, T0).unwrap();
    e.signal(a, &spec(BTC, buy(1)), T0).unwrap();
    assert_eq!(reject(&mut e, a, spec(BTC, buy(1)), T0), RejectCode::OrderRate);
    assert!(e.signal(a, &spec(BTC, buy(1)), T0 + 2 * SECOND).is_ok(), "the window slides");
}

#[test]
fn a_daily_loss_breach_halts_the_account() {
    let mut e = engine();
    let a = open(&mut e, 100_000, LimitOverrides { max_daily_loss: Some(1_000 * USD), ..Default::default() });
    quote(&mut e, BTC, 10_000, 10_000, 100_000, T0);
    e.signal(a, &spec(BTC, buy(10_000)), T0).unwrap(); // 100 coins at 100.00
                                                       // The price falls 11%: 1,100 USD lost, above the 1,000 limit.
    quote(&mut e, BTC, 8_900, 8_900, 100_000, T0 + 1);
    assert_eq!(e.account(a).unwrap().state, AccountState::Active, "quotes alone do not halt");
    let r = e.signal(a, &spec(BTC, buy(1)), T0 + 2).unwrap_err();
    assert_eq!((r.code, r.value), (RejectCode::MaxDailyLoss, 1_100 * USD));
    assert_eq!(e.account(a).unwrap().state, AccountState::Halted);
    // Resuming to reduce lets the trader flatten; the next UTC day starts afresh.
    e.resume(a, true, T0 + 3).unwrap();
    assert!(e.signal(a, &spec(BTC, sell(1)), T0 + 3).is_ok());
    e.resume(a, false, T0 + DAY).unwrap();
    quote(&mut e, BTC, 8_900, 8_900, 100_000, T0 + DAY);
    assert!(e.signal(a, &spec(BTC, buy(1)), T0 + DAY).is_ok());
}

#[test]
fn a_fill_that_breaches_the_daily_loss_halts_at_once() {
    let mut e = engine();
    let a = open(&mut e, 100_000, LimitOverrides { max_daily_loss: Some(1_000 * USD), ..Default::default() });
    quote(&mut e, BTC, 10_000, 10_000, 100_000, T0);
    e.signal(a, &spec(BTC, buy(10_000)), T0).unwrap();
    e.signal(a, &limit(BTC, buy(10), 9_600, Tif::Gtc), T0).unwrap();
    e.signal(a, &limit(BTC, buy(10), 9_500, Tif::Gtc), T0).unwrap();
    // The 96.00 order fills as the price falls, and the loss is then over the limit.
    quote(&mut e, BTC, 8_000, 9_590, 5, T0 + 1);
    let acct = e.account(a).unwrap();
    assert_eq!((acct.state, acct.state_reason), (AccountState::Halted, StateReason::DailyLoss));
    assert!(acct.open_orders.is_empty(), "halting cancels what is left");
}

#[test]
fn the_same_signal_id_returns_the_first_answer() {
    let (mut e, a) = setup();
    let b = open(&mut e, 100_000, LimitOverrides::default());
    let s = SignalSpec { signal_id: SignalKey::new("tv-1"), ..spec(BTC, buy(10)) };
    let first = e.signal(a, &s, T0).unwrap();
    assert!(!first.replayed);
    let seq = e.last_seq();
    let again = e.signal(a, &s, T0 + 1000).unwrap();
    assert!(again.replayed);
    assert_eq!(again.answer, first.answer);
    assert_eq!(e.last_seq(), seq, "no second order");
    assert!(!e.signal(b, &s, T0).unwrap().replayed, "ids are per account");
    quote(&mut e, BTC, 10_000, 10_010, 500, T0 + DAY + 1);
    assert!(!e.signal(a, &s, T0 + DAY + 1).unwrap().replayed, "forgotten after the TTL");
}

#[test]
fn day_orders_expire_at_the_next_utc_day() {
    let (mut e, a) = setup();
    let day = e.signal(a, &limit(BTC, buy(1), 9_900, Tif::Day), T0).unwrap().answer.order.unwrap();
    let gtc = e.signal(a, &limit(BTC, buy(1), 9_900, Tif::Gtc), T0).unwrap().answer.order.unwrap();
    e.housekeeping(T0);
    e.housekeeping(T0 + DAY);
    assert_eq!(e.order(day.id).unwrap().status, OrderStatus::Expired);
    assert_eq!(e.order(gtc.id).unwrap().status, OrderStatus::New);
    assert_eq!(e.account(a).unwrap().positions[0].open_buy, 1);
}

#[test]
fn venue_latency_acknowledges_later() {
    let mut e = engine_with(0, 0, 1_000_000);
    let a = open(&mut e, 100_000, LimitOverrides::default());
    quote(&mut e, BTC, 10_000, 10_010, 500, T0);
    let o = e.signal(a, &spec(BTC, buy(10)), T0).unwrap().answer.order.unwrap();
    assert_eq!(o.status, OrderStatus::PendingNew);
    e.housekeeping(T0 + 999_999);
    assert_eq!(e.order(o.id).unwrap().status, OrderStatus::PendingNew);
    e.housekeeping(T0 + 1_000_000);
    assert_eq!(e.order(o.id).unwrap().status, OrderStatus::Filled);
}

#[test]
fn finished_orders_are_forgotten_beyond_the_history() {
    let (mut e, a) = setup();
    let resting = e.signal(a, &limit(BTC, buy(1), 9_900, Tif::Gtc), T0).unwrap().answer.order.unwrap();
    for i in 0..200 {
        let s = if i % 2 == 0 { buy(1) } else { sell(1) };
        e.signal(a, &spec(BTC, s), T0 + i).unwrap();
    }
    assert!(e.orders_len() <= 64);
    assert!(e.order(resting.id).is_some(), "open orders are kept");
    assert_eq!(e.account(a).unwrap().recent_orders.len(), 64);
}

#[test]
fn the_order_table_is_sized_for_every_accounts_history_when_the_accounts_are_made() {
    let mut e = engine();
    let accounts: Vec<AccountId> = (0..5).map(|_| open(&mut e, 1_000_000, LimitOverrides::default())).collect();
    let room = e.orders.capacity();
    assert!(room >= 2 * 64 * accounts.len(), "room for {room} orders");
    // Every account's history filled, and turned over twice: the table never grows.
    let mut t = T0;
    quote(&mut e, BTC, 9_990, 10_000, 1_000_000, t);
    for round in 0..3 * 64 {
        for &a in &accounts {
            t += 1;
            let s = if round % 2 == 0 { buy(1) } else { sell(1) };
            e.signal(a, &spec(BTC, s), t).unwrap();
        }
    }
    assert_eq!(e.orders_len(), 64 * accounts.len());
    assert_eq!(e.orders.capacity(), room, "the table grew while trading");
}

#[test]
fn sequence_numbers_have_no_gaps_and_replay_rebuilds_the_state() {
    let (mut e, a) = setup();
    let mut all = Vec::new();
    let mut collect = |e: &Engine<PaperVenue>| all.extend_from_slice(e.events());
    for (i, s) in [
        spec(BTC, buy(100)),
        limit(BTC, buy(50), 9_950, Tif::Gtc),
        spec(ETH, Intent::Target(-500)),
        SignalSpec { signal_id: SignalKey::new("x"), ..spec(BTC, sell(30)) },
    ]
    .iter()
    .enumerate()
    {
        let _ = e.signal(a, s, T0 + i as u64);
        collect(&e);
    }
    quote(&mut e, BTC, 9_940, 9_945, 500, T0 + 10);
    collect(&e);
    e.halt(a, T0 + 11).unwrap();
    collect(&e);
    e.add_key(a, [7; 32], super::account::Roles::default(), T0 + 12).unwrap();
    collect(&e);
    // Events from account creation and the first quotes came before `setup` returned: rebuild
    // them by replaying into a fresh engine from the first event we saw.
    let first = all[0].seq;
    for (i, ev) in all.iter().enumerate() {
        assert_eq!(ev.seq, first + i as u64, "gap at {i}");
    }
    let mut fresh = engine();
    open(&mut fresh, 100_000, LimitOverrides::default());
    quote(&mut fresh, BTC, 10_000, 10_010, 500, T0);
    quote(&mut fresh, ETH, 2_000, 2_005, 100_000, T0);
    assert_eq!(fresh.last_seq() + 1, first);
    for ev in &all {
        fresh.apply_event(ev);
    }
    let (x, y) = (e.account(a).unwrap(), fresh.account(a).unwrap());
    assert_eq!(x.positions, y.positions);
    assert_eq!((x.cash, x.realized, x.fees, x.state), (y.cash, y.realized, y.fees, y.state));
    assert_eq!(e.last_seq(), fresh.last_seq());
    for id in 1..=e.last_seq() {
        assert_eq!(e.order(OrderId(id)), fresh.order(OrderId(id)));
    }
    assert_eq!(e.state(), fresh.state(), "replay rebuilds the whole state");

    // A snapshot taken halfway, restored, then the rest of the events: the same state again.
    let mut half = engine();
    open(&mut half, 100_000, LimitOverrides::default());
    quote(&mut half, BTC, 10_000, 10_010, 500, T0);
    quote(&mut half, ETH, 2_000, 2_005, 100_000, T0);
    let (early, late) = all.split_at(all.len() / 2);
    for ev in early {
        half.apply_event(ev);
    }
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&half.state()).unwrap();
    let state = rkyv::from_bytes::<EngineState, rkyv::rancor::Error>(&bytes).unwrap();
    let mut restored = engine();
    restored.restore(state).unwrap();
    for ev in late {
        restored.apply_event(ev);
    }
    assert_eq!(restored.state(), e.state());
    assert!(restored.idempotency().get(a, &SignalKey::new("x").unwrap(), T0 + 20).is_some());
    assert_eq!(restored.key_by_hash(&[7; 32]).map(|k| k.account), Some(a), "the key index is rebuilt");
    let mut wrong = Engine::new(
        restored.config().to_owned(),
        SymbolTable::new(restored.symbols().all()[..1].to_vec()),
        restored.tiers().to_vec(),
        PaperVenue::new(PaperConfig { slippage_bps: 0, fee_bps: 0, latency: 0 }, restored.symbols().all()),
    );
    assert!(wrong.restore(e.state()).unwrap_err().contains("symbols"));
}

#[derive(Debug, Clone)]
enum Step {
    Signal(u8, i8, i64, Option<i64>),
    Quote(u8, i64),
    Cancel(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..2, -3i8..4, 1i64..400, proptest::option::of(-300i64..300)).prop_map(|(s, a, q, p)| Step::Signal(s, a, q, p)),
        2 => (0u8..2, -200i64..200).prop_map(|(s, d)| Step::Quote(s, d)),
        1 => (1u64..40).prop_map(Step::Cancel),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Position = sum of signed fills; cash + position cost = initial cash + realized − fees.
    #[test]
    fn fills_balance_positions_and_cash(steps in proptest::collection::vec(step(), 1..60)) {
        let mut e = engine_with(7, 3, 0);
        let a = open(&mut e, 1_000_000, LimitOverrides { leverage: Some(5), max_daily_loss: Some(0), ..Default::default() });
        let mut mids = [10_000i64, 2_000];
        let mut signed = [0i64; 2];
        let mut fees = 0i64;
        let mut t = T0;
        quote(&mut e, BTC, 10_000, 10_010, 500, t);
        quote(&mut e, ETH, 2_000, 2_005, 5_000, t);
        for s in steps {
            t += 1_000_000;
            match s {
                Step::Signal(sym, action, qty, px) => {
                    let symbol = SymbolId(u16::from(sym));
                    let qty = if sym == 1 { qty * 10 } else { qty };
                    let intent = match action {
                        -3 => Intent::Close,
                        -2 | -1 => sell(qty),
                        0 => Intent::Target(qty - 200),
                        _ => buy(qty),
                    };
                    let s = match px {
                        Some(d) => {
                            let tick = if sym == 1 { 5 } else { 1 };
                            let p = (mids[usize::from(sym)] + d) / tick * tick;
                            limit(symbol, intent, p, Tif::Gtc)
                        }
                        None => spec(symbol, intent),
                    };
                    let _ = e.signal(a, &s, t);
                }
                Step::Quote(sym, d) => {
                    let i = usize::from(sym);
                    let tick = if sym == 1 { 5 } else { 1 };
                    mids[i] = ((mids[i] + d).max(100)) / tick * tick;
                    quote(&mut e, SymbolId(u16::from(sym)), mids[i] - tick, mids[i] + tick, 300, t);
                }
                Step::Cancel(id) => { let _ = e.cancel_order(a, OrderId(id), t); }
            }
            for ev in e.events() {
                if let EventKind::Fill { symbol, side, qty, fee, .. } = ev.kind {
                    signed[usize::from(symbol.0)] += side.sign() * qty;
                    fees += fee;
                }
            }
        }
        let acct = e.account(a).unwrap();
        for (p, signed) in acct.positions.iter().zip(signed) {
            prop_assert_eq!(p.qty, signed);
            prop_assert!(p.open_buy >= 0 && p.open_sell >= 0);
        }
        let cost: i64 = acct.positions.iter().map(|p| p.cost).sum();
        prop_assert_eq!(acct.fees, fees);
        prop_assert_eq!(acct.cash + cost, acct.initial_cash + acct.realized - acct.fees);
        let open_buy: i64 = acct.open_orders.iter().map(|id| e.order(*id).unwrap()).filter(|o| o.side == super::types::Side::Buy).map(|o| o.remaining()).sum();
        prop_assert_eq!(open_buy, acct.positions.iter().map(|p| p.open_buy).sum::<i64>());
    }
}

#[test]
fn the_same_commands_give_the_same_events() {
    let run = || {
        let mut e = engine_with(5, 2, 0);
        let a = open(&mut e, 100_000, LimitOverrides::default());
        let mut events = Vec::new();
        for i in 0..200u64 {
            let t = T0 + i * SECOND / 10;
            let mid = 10_000 + ((i * 7919) % 41) as i64 - 20;
            quote(&mut e, BTC, mid - 2, mid + 2, 30 + (i % 5) as i64, t);
            events.extend_from_slice(e.events());
            let s = match i % 4 {
                0 => spec(BTC, buy(10)),
                1 => limit(BTC, sell(25), mid + 1, Tif::Gtc),
                2 => limit(BTC, buy(40), mid - 1, Tif::Ioc),
                _ => spec(BTC, Intent::Target(i as i64 % 50 - 25)),
            };
            let _ = e.signal(a, &s, t);
            events.extend_from_slice(e.events());
        }
        events
    };
    let (first, second) = (run(), run());
    assert!(first.iter().filter(|e| matches!(e.kind, EventKind::Fill { .. })).count() > 100);
    assert_eq!(first, second, "the paper venue and the engine are deterministic");
}

/// Values at and near the ends of `i64`, and a few ordinary ones.
fn extreme() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MIN + 1),
        Just(-1),
        Just(0),
        Just(1),
        Just(2),
        Just(i64::MAX / 2),
        Just(i64::MAX - 1),
        Just(i64::MAX),
        Just(1_000_000_000_000_000_000),
        any::<i64>(),
        1i64..1_000_000,
    ]
}

#[derive(Debug, Clone)]
enum Extreme {
    Signal(u8, i64, Option<i64>),
    Quote(i64, i64, i64),
}

fn extreme_step() -> impl Strategy<Value = Extreme> {
    prop_oneof![
        3 => (0u8..5, extreme(), proptest::option::of(extreme())).prop_map(|(a, v, p)| Extreme::Signal(a, v, p)),
        1 => (extreme(), extreme(), extreme()).prop_map(|(b, a, s)| Extreme::Quote(b, a, s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Quantities, prices, targets and money at the ends of `i64`, against a symbol and an
    /// account without practical limits: nothing overflows (a debug build would panic), every
    /// answer is a rejection or a consistent fill, and the accounting invariants still hold.
    #[test]
    fn extreme_values_never_wrap(cash in extreme(), steps in proptest::collection::vec(extreme_step(), 1..30)) {
        let wide = SymbolSpec { id: BTC, name: "W".into(), price_decimals: 4, qty_decimals: 4, tick: 1, lot: 1, max_order_qty: i64::MAX };
        let cfg = EngineConfig { price_collar_bps: u32::MAX, max_quote_age: u64::MAX, idempotency_capacity: 100, idempotency_ttl: DAY, orders_per_account: 64, order_id_base: 0 };
        let venue = PaperVenue::new(PaperConfig { slippage_bps: 10_000, fee_bps: 10_000, latency: 0 }, std::slice::from_ref(&wide));
        let unlimited = RiskLimits {
            requests_per_minute: u32::MAX,
            max_order_notional: i64::MAX,
            max_position_notional: i64::MAX,
            max_gross_exposure: i64::MAX,
            max_orders_per_second: u32::MAX,
            max_daily_loss: 0,
            max_open_orders: 1000,
            leverage: u32::MAX,
        };
        let mut e = Engine::new(cfg, SymbolTable::new(vec![wide]), vec![Tier { name: "t".into(), limits: unlimited }], venue);
        let Ok(a) = e.create_account(AccountName::new("x").unwrap(), 0, cash, LimitOverrides::default(), T0) else {
            return Ok(());
        };
        let (mut signed, mut fees) = (0i128, 0i128);
        let mut t = T0;
        for s in steps {
            t += 1_000_000;
            match s {
                // Not one the API would pass on: the engine must ignore it (its events are none).
                Extreme::Quote(bid, ask, size) => quote(&mut e, BTC, bid.min(ask), bid.max(ask), size, t),
                Extreme::Signal(action, v, px) => {
                    let intent = match action {
                        0 => buy(v),
                        1 => sell(v),
                        2 => Intent::Buy(Size::Notional(v)),
                        3 => Intent::Target(v),
                        _ => Intent::Close,
                    };
                    let s = match px { Some(p) => limit(BTC, intent, p, Tif::Gtc), None => spec(BTC, intent) };
                    if let Ok(out) = e.signal(a, &s, t) {
                        if let Some(o) = out.answer.order {
                            prop_assert!(o.qty > 0 && o.filled_qty <= o.qty, "{o:?}");
                        }
                    }
                }
            }
            for ev in e.events() {
                if let EventKind::Fill { side, qty, fee, .. } = ev.kind {
                    prop_assert!(qty > 0 && fee >= 0);
                    signed += i128::from(side.sign()) * i128::from(qty);
                    fees += i128::from(fee);
                }
            }
        }
        let acct = e.account(a).unwrap();
        prop_assert_eq!(i128::from(acct.positions[0].qty), signed);
        prop_assert_eq!(i128::from(acct.fees), fees);
        prop_assert_eq!(
            i128::from(acct.cash) + i128::from(acct.positions[0].cost),
            i128::from(acct.initial_cash) + i128::from(acct.realized) - i128::from(acct.fees)
        );
    }
}

#[test]
fn accounts_and_keys_keep_the_ids_a_cluster_hands_out_through_events_and_snapshots() {
    use super::account::Roles;
    use super::types::KeyId;
    let name = || AccountName::new("c").unwrap();
    let mut e = engine();
    let mut events = Vec::new();
    let run = |e: &mut Engine<PaperVenue>, events: &mut Vec<super::event::Event>| events.extend_from_slice(e.events());
    assert_eq!(e.create_account_as(AccountId(7), name(), 0, 10, LimitOverrides::default(), T0), Ok(AccountId(7)));
    run(&mut e, &mut events);
    assert_eq!(e.create_account_as(AccountId(3), name(), 0, 20, LimitOverrides::default(), T0), Ok(AccountId(3)));
    run(&mut e, &mut events);
    for taken_or_bad in [AccountId(7), AccountId(0), AccountId(super::MAX_ID + 1)] {
        assert!(e.create_account_as(taken_or_bad, name(), 0, 1, LimitOverrides::default(), T0).is_err());
        assert!(e.events().is_empty());
    }
    assert_eq!(e.account(AccountId(7)).map(|a| a.cash), Some(10));
    assert_eq!(e.account(AccountId(3)).map(|a| a.cash), Some(20));
    assert!(e.account(AccountId(5)).is_none());
    // A standalone node's next id is one above the highest.
    assert_eq!(e.next_account_id(), AccountId(8));
    assert_eq!(e.add_key_as(KeyId(100), AccountId(3), [1; 32], Roles::default(), T0), Ok(KeyId(100)));
    run(&mut e, &mut events);
    assert!(e.add_key_as(KeyId(100), AccountId(7), [2; 32], Roles::default(), T0).is_err(), "a taken key id");
    assert!(e.add_key_as(KeyId(101), AccountId(7), [1; 32], Roles::default(), T0).is_err(), "a taken hash");
    assert!(e.add_key_as(KeyId(101), AccountId(5), [2; 32], Roles::default(), T0).is_err(), "no such account");
    assert_eq!(e.add_key(AccountId(7), [3; 32], Roles::default(), T0), Ok(KeyId(101)));
    run(&mut e, &mut events);
    assert!(e.revoke_key(KeyId(100), T0));
    run(&mut e, &mut events);
    assert!(e.key(KeyId(100)).unwrap().revoked);
    assert_eq!(e.key_by_hash(&[3; 32]).map(|k| (k.id, k.account)), Some((KeyId(101), AccountId(7))));
    assert_eq!(e.key_position(KeyId(101)), Some(1));
    // The same state from the events, and from a snapshot.
    let mut replayed = engine();
    for ev in &events {
        replayed.apply_event(ev);
    }
    assert_eq!(replayed.state(), e.state());
    let mut restored = engine();
    restored.restore(e.state()).unwrap();
    assert_eq!(restored.state(), e.state());
    assert_eq!(restored.account(AccountId(7)).map(|a| a.cash), Some(10));
    assert!(restored.key(KeyId(100)).unwrap().revoked);
    assert_eq!(restored.next_key_id(), KeyId(102));
}

#[test]
fn a_cluster_node_gives_order_ids_from_its_own_range_whatever_orders_it_replays() {
    let base = 3 * super::ORDER_ID_SPAN;
    let venue = || PaperVenue::new(PaperConfig { slippage_bps: 0, fee_bps: 0, latency: 0 }, &specs());
    let cfg = EngineConfig { order_id_base: base, ..*engine().config() };
    let mut e = Engine::new(cfg, SymbolTable::new(specs()), vec![Tier { name: "t".into(), limits: limits() }], venue());
    let a = open(&mut e, 10_000, LimitOverrides::default());
    quote(&mut e, BTC, 10_000, 10_010, 500, T0);
    let first = e.signal(a, &spec(BTC, buy(1)), T0).unwrap().answer.order.unwrap().id;
    assert_eq!(first, OrderId(base + 1));
    // Orders of another node's range (an account that moved here) leave this node's count alone.
    let mut foreign = *e.order(first).unwrap();
    foreign.id = OrderId(7 * super::ORDER_ID_SPAN + 40);
    e.apply_event(&Event { seq: e.last_seq() + 1, ts: T0, kind: EventKind::OrderAccepted { order: foreign } });
    let next = e.signal(a, &spec(BTC, buy(1)), T0).unwrap().answer.order.unwrap().id;
    assert_eq!(next, OrderId(base + 2));
}

#[test]
fn an_account_moves_to_another_engine_through_its_checkpoint_and_is_released_by_the_first() {
    let (mut e, a) = setup();
    for s in [
        spec(BTC, buy(100)),
        limit(BTC, buy(50), 9_950, Tif::Gtc),
        spec(ETH, Intent::Target(-500)),
        SignalSpec { signal_id: SignalKey::new("x"), ..spec(BTC, sell(30)) },
    ] {
        e.signal(a, &s, T0 + 1).unwrap();
    }
    let kept = e.add_key(a, [7; 32], super::account::Roles::default(), T0 + 2).unwrap();
    let gone = e.add_key(a, [8; 32], super::account::Roles::default(), T0 + 2).unwrap();
    assert!(e.revoke_key(gone, T0 + 3));
    // The checkpoint, adopted by an engine that never had the account, rebuilds it: the same
    // account, positions, orders (open ones included), keys and idempotency records.
    let checkpoint = e.checkpoint(a).unwrap();
    let mut other = engine();
    quote(&mut other, BTC, 10_000, 10_010, 500, T0);
    other.adopt(a, 2, &checkpoint, T0 + 5).unwrap();
    assert!(
        matches!(other.events()[0].kind, EventKind::AccountAdopted { events, .. } if events as usize == checkpoint.len())
    );
    let (x, y) = (e.account(a).unwrap(), other.account(a).unwrap());
    assert_eq!(x.positions, y.positions);
    assert_eq!(
        (x.cash, x.realized, x.fees, x.state, x.day_start_equity),
        (y.cash, y.realized, y.fees, y.state, y.day_start_equity)
    );
    assert_eq!((x.name, x.tier, x.created_at, x.initial_cash), (y.name, y.tier, y.created_at, y.initial_cash));
    assert_eq!(x.open_orders, y.open_orders);
    assert_eq!(x.open_orders.len(), 1, "the resting limit order");
    for id in &x.recent_orders {
        assert_eq!(e.order(*id), other.order(*id));
    }
    assert_eq!(other.key_by_hash(&[7; 32]).map(|k| k.id), Some(kept));
    assert!(other.key(gone).unwrap().revoked);
    let x_answer = e.idempotency().get(a, &SignalKey::new("x").unwrap(), T0 + 6);
    assert_eq!(other.idempotency().get(a, &SignalKey::new("x").unwrap(), T0 + 6), x_answer);
    assert!(x_answer.is_some());
    // Adopting it twice is refused; so is a history that does not start with the account.
    assert!(other.adopt(a, 3, &checkpoint, T0 + 7).is_err());
    assert!(engine().adopt(a, 2, &checkpoint[1..], T0 + 7).is_err());
    // The first engine lets it go: its keys no longer authenticate, its orders are gone, and
    // the account can come back later.
    let order = x.open_orders[0];
    e.release(a, 2, T0 + 8);
    assert!(e.account(a).is_none() && e.key_by_hash(&[7; 32]).is_none() && e.order(order).is_none());
    assert!(e.idempotency().get(a, &SignalKey::new("x").unwrap(), T0 + 8).is_none());
    let back = other.checkpoint(a).unwrap();
    e.adopt(a, 3, &back, T0 + 9).unwrap();
    assert_eq!(e.account(a).unwrap().cash, other.account(a).unwrap().cash);
    assert_eq!(e.key_by_hash(&[7; 32]).map(|k| k.account), Some(a));
}
