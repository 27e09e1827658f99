//! JSON shapes of the API's answers. Decimals are strings; absent values are `null`.

use crate::engine::account::{Account, RiskLimits};
use crate::engine::event::{OrderView, PositionView, SignalAnswer};
use crate::engine::market::Quote;
use crate::engine::order::Order;
use crate::engine::symbol::SymbolTable;
use crate::engine::types::SignalKey;
use crate::engine::venue::Venue;
use crate::engine::Engine;
use crate::fixed::MONEY_DECIMALS;
use crate::json::Writer;

/// Money is shown with at least two decimals.
const MONEY_MIN: u8 = 2;

fn money(w: &mut Writer<'_>, key: &str, v: i64) {
    w.key(key).decimal(v, MONEY_DECIMALS, MONEY_MIN);
}

/// `{"id","symbol","side","qty","filled_qty","avg_price","status"}`
pub fn order_view(w: &mut Writer<'_>, symbols: &SymbolTable, o: &OrderView) {
    let spec = symbols.get(o.symbol);
    let (pd, qd) = (spec.price_decimals, spec.qty_decimals);
    w.begin_object();
    w.key("id").u64(o.id.0);
    w.key("symbol").str(&spec.name);
    w.key("side").str(o.side.as_str());
    w.key("qty").decimal(o.qty, qd, qd);
    w.key("filled_qty").decimal(o.filled_qty, qd, qd);
    w.key("avg_price");
    if o.filled_qty > 0 {
        w.decimal(o.avg_price, pd, pd);
    } else {
        w.null();
    }
    w.key("status").str(o.status.as_str());
    w.end_object();
}

/// `{"symbol","qty","avg_price"}`
pub fn position_view(w: &mut Writer<'_>, symbols: &SymbolTable, p: &PositionView) {
    let spec = symbols.get(p.symbol);
    w.begin_object();
    w.key("symbol").str(&spec.name);
    w.key("qty").decimal(p.qty, spec.qty_decimals, spec.qty_decimals);
    w.key("avg_price");
    if p.qty != 0 {
        w.decimal(p.avg_price, spec.price_decimals, spec.price_decimals);
    } else {
        w.null();
    }
    w.end_object();
}

/// A signal's answer.
pub fn signal_answer(out: &mut Vec<u8>, symbols: &SymbolTable, signal_id: Option<&SignalKey>, a: &SignalAnswer) {
    let mut w = Writer::new(out);
    w.begin_object();
    w.key("signal_id");
    match signal_id {
        Some(s) => w.str(s.as_str()),
        None => w.null(),
    };
    w.key("order");
    match &a.order {
        Some(o) => order_view(&mut w, symbols, o),
        None => {
            w.null();
        }
    }
    w.key("position");
    position_view(&mut w, symbols, &a.position);
    w.end_object();
}

/// The full order.
pub fn order<V: Venue>(w: &mut Writer<'_>, engine: &Engine<V>, o: &Order) {
    let spec = engine.symbols().get(o.symbol);
    let (pd, qd) = (spec.price_decimals, spec.qty_decimals);
    w.begin_object();
    w.key("id").u64(o.id.0);
    w.key("symbol").str(&spec.name);
    w.key("side").str(o.side.as_str());
    w.key("order_type").str(o.order_type.as_str());
    w.key("tif").str(o.tif.as_str());
    w.key("qty").decimal(o.qty, qd, qd);
    w.key("filled_qty").decimal(o.filled_qty, qd, qd);
    w.key("remaining_qty").decimal(o.remaining(), qd, qd);
    w.key("limit_price");
    if o.limit_price > 0 {
        w.decimal(o.limit_price, pd, pd);
    } else {
        w.null();
    }
    w.key("avg_price");
    if o.filled_qty > 0 {
        w.decimal(engine.avg_fill_price(o), pd, pd);
    } else {
        w.null();
    }
    // While the venue is asked what became of the order (after a disconnect or a restart).
    let status = if engine.venue().reconciling(o.id) { "reconciling" } else { o.status.as_str() };
    w.key("status").str(status);
    if let Some(r) = engine.venue_reason(o.id) {
        w.key("reject_reason").begin_object();
        w.key("kind").str(r.kind.as_str()).key("code").u64(u64::from(r.code)).key("text").str(r.text());
        w.end_object();
    }
    w.key("strategy");
    if o.strategy.is_empty() {
        w.null();
    } else {
        w.str(o.strategy.as_str());
    }
    w.key("created_at").u64(o.created_at);
    w.key("updated_at").u64(o.updated_at);
    w.end_object();
}

/// A quote.
pub fn quote(w: &mut Writer<'_>, symbols: &SymbolTable, q: &Quote) {
    let spec = symbols.get(q.symbol);
    let (pd, qd) = (spec.price_decimals, spec.qty_decimals);
    w.begin_object();
    w.key("symbol").str(&spec.name);
    w.key("bid").decimal(q.bid, pd, pd);
    w.key("ask").decimal(q.ask, pd, pd);
    w.key("bid_size").decimal(q.bid_size, qd, qd);
    w.key("ask_size").decimal(q.ask_size, qd, qd);
    w.key("mid").decimal(q.mid(), pd, pd);
    w.key("ts").u64(q.ts);
    w.end_object();
}

/// Effective limits.
pub fn limits(w: &mut Writer<'_>, l: &RiskLimits) {
    w.begin_object();
    w.key("requests_per_minute").u64(u64::from(l.requests_per_minute));
    money(w, "max_order_notional", l.max_order_notional);
    money(w, "max_position_notional", l.max_position_notional);
    money(w, "max_gross_exposure", l.max_gross_exposure);
    w.key("max_orders_per_second").u64(u64::from(l.max_orders_per_second));
    money(w, "max_daily_loss", l.max_daily_loss);
    w.key("max_open_orders").u64(u64::from(l.max_open_orders));
    w.key("leverage").u64(u64::from(l.leverage));
    w.end_object();
}

/// The account summary (`GET /v1/account`, admin listings).
pub fn account<V: Venue>(w: &mut Writer<'_>, engine: &Engine<V>, a: &Account) {
    let equity = engine.equity(a);
    let gross = engine.gross_exposure(a);
    w.begin_object();
    w.key("id").u64(u64::from(a.id.0));
    w.key("name").str(a.name.as_str());
    w.key("tier").str(&engine.tiers()[usize::from(a.tier)].name);
    w.key("state").str(a.state.as_str());
    w.key("state_reason").str(a.state_reason.as_str());
    money(w, "cash", a.cash);
    money(w, "equity", equity);
    money(w, "realized_pnl", a.realized);
    money(w, "unrealized_pnl", engine.unrealized(a));
    money(w, "fees", a.fees);
    money(w, "daily_pnl", engine.daily_pnl(a));
    money(w, "gross_exposure", gross);
    money(w, "buying_power", equity.saturating_mul(i64::from(a.limits.leverage)).saturating_sub(gross).max(0));
    w.key("open_orders").u64(a.open_orders.len() as u64);
    w.key("limits");
    limits(w, &a.limits);
    w.end_object();
}

/// Every non-empty position of an account.
pub fn positions<V: Venue>(w: &mut Writer<'_>, engine: &Engine<V>, a: &Account) {
    w.begin_object().key("positions").begin_array();
    for (i, p) in a.positions.iter().enumerate() {
        if p.qty == 0 && p.realized == 0 && p.fees == 0 {
            continue;
        }
        let spec = &engine.symbols().all()[i];
        let (pd, qd) = (spec.price_decimals, spec.qty_decimals);
        let mpu = spec.money_per_unit();
        w.begin_object();
        w.key("symbol").str(&spec.name);
        w.key("qty").decimal(p.qty, qd, qd);
        w.key("avg_price");
        if p.qty != 0 {
            w.decimal(p.avg_price(mpu), pd, pd);
        } else {
            w.null();
        }
        w.key("mark_price");
        match engine.mark(spec.id) {
            Some(m) => w.decimal(m, pd, pd),
            None => w.null(),
        };
        money(w, "cost", p.cost);
        let unrealized = engine.mark(spec.id).map_or(0, |m| p.unrealized(m, mpu));
        money(w, "unrealized_pnl", unrealized);
        money(w, "realized_pnl", p.realized);
        money(w, "fees", p.fees);
        w.key("open_buy_qty").decimal(p.open_buy, qd, qd);
        w.key("open_sell_qty").decimal(p.open_sell, qd, qd);
        w.end_object();
    }
    w.end_array().end_object();
}
