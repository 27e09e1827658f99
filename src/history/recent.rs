//! The history thread without PostgreSQL: the same answers, from the recent events of the node's
//! own journal. When asked, it first reads what the journal gained since the last question into a
//! mirror engine (from the first segment, or from the newest snapshot once older segments were
//! pruned) and keeps, in bounded memory, the last [`FILLS_PER_ACCOUNT`] fills of each account and
//! [`MINUTES`] one-minute candles of each symbol. Older history is not kept: that is what
//! PostgreSQL is for.

use std::collections::{HashMap, VecDeque};

use tokio::sync::mpsc;

use super::{error, finish, Answer, Candles, Job, Performance, Query, Stats, Trades, MAX_CANDLES, TRADE_FIELDS};
use crate::config::Config;
use crate::engine::event::EventKind;
use crate::engine::types::{Nanos, Side, SymbolId, DAY, SECOND};
use crate::error::Code;
use crate::fixed::{decimal_string as decimal, MONEY_DECIMALS};
use crate::journal::follow::{Follower, Limit, Start};
use crate::journal::Watermarks;
use crate::time::{civil_from_days, days_from_civil};

/// Fills kept per account.
pub const FILLS_PER_ACCOUNT: usize = 10_000;
/// One-minute candles kept per symbol: 7 days.
pub const MINUTES: usize = 7 * 24 * 60;
const MINUTE: Nanos = 60 * SECOND;
/// Events read at a time.
const READ_BATCH: usize = 65_536;

/// One fill as kept.
#[derive(Debug, Clone, Copy)]
struct Fill {
    ts: Nanos,
    seq: u64,
    order: u64,
    symbol: SymbolId,
    side: Side,
    qty: i64,
    price: i64,
    notional: i64,
    fee: i64,
    realized: i64,
}

/// A one-minute candle of `bid + ask` (twice the mid, in price units: exact).
#[derive(Debug, Clone, Copy)]
struct Candle {
    start: Nanos,
    open: i64,
    high: i64,
    low: i64,
    close: i64,
    quotes: i64,
}

struct Recent {
    symbols: crate::engine::symbol::SymbolTable,
    follower: Option<Follower>,
    fills: HashMap<u32, VecDeque<Fill>>,
    candles: Vec<VecDeque<Candle>>,
}

pub(super) async fn serve(cfg: &Config, marks: std::sync::Arc<Watermarks>, mut jobs: mpsc::Receiver<Job>) {
    let mut recent = Recent::open(cfg, marks);
    let mut failed = false;
    while let Some((q, reply)) = jobs.recv().await {
        // Read what the journal gained since the last question: between questions this thread
        // costs nothing.
        loop {
            match recent.catch_up() {
                Ok(false) => continue,
                Ok(true) => break,
                Err(e) => {
                    if !failed {
                        log::error!(
                            "history: cannot read the journal ({e}); answers stop at seq {}",
                            recent.follower.as_ref().map_or(0, |f| f.next_seq() - 1)
                        );
                        failed = true;
                    }
                    break;
                }
            }
        }
        let _ = reply.send(recent.answer(&q));
    }
}

impl Recent {
    /// As early as the journal goes: its first event, or the newest snapshot once older segments
    /// were pruned.
    fn open(cfg: &Config, marks: std::sync::Arc<Watermarks>) -> Recent {
        let engine = crate::node::follower_engine(cfg);
        let symbols = engine.symbols().clone();
        let follower = match Follower::start(&cfg.journal.dir, engine, Start::Earliest, Limit::Durable(marks)) {
            Ok(f) => Some(f),
            Err(e) => {
                log::error!("history: cannot read the journal in {}: {e}", cfg.journal.dir.display());
                None
            }
        };
        let candles = vec![VecDeque::new(); symbols.all().len()];
        Recent { symbols, follower, fills: HashMap::new(), candles }
    }

    /// Reads what the journal gained; `true` once nothing more is there.
    fn catch_up(&mut self) -> Result<bool, String> {
        let Recent { follower, fills, candles, .. } = self;
        let Some(follower) = follower.as_mut() else { return Ok(true) };
        let read = follower.advance(u64::MAX, READ_BATCH, |_, e| {
            match e.kind {
                EventKind::Fill { order, account, symbol, side, qty, price, notional, fee, realized, .. } => {
                    let f = Fill {
                        ts: e.ts,
                        seq: e.seq,
                        order: order.0,
                        symbol,
                        side,
                        qty,
                        price,
                        notional,
                        fee,
                        realized,
                    };
                    let list = fills.entry(account.0).or_default();
                    if list.len() == FILLS_PER_ACCOUNT {
                        list.pop_front();
                    }
                    list.push_back(f);
                }
                EventKind::Quote(q) => {
                    let Some(list) = candles.get_mut(usize::from(q.symbol.0)) else { return };
                    let two_mid = q.bid + q.ask;
                    let start = q.ts - q.ts % MINUTE;
                    match list.back_mut() {
                        Some(c) if c.start == start => {
                            c.high = c.high.max(two_mid);
                            c.low = c.low.min(two_mid);
                            c.close = two_mid;
                            c.quotes += 1;
                        }
                        // A quote stamped before the current minute (a late feed) is left out.
                        Some(c) if c.start > start => {}
                        _ => {
                            if list.len() == MINUTES {
                                list.pop_front();
                            }
                            let c =
                                Candle { start, open: two_mid, high: two_mid, low: two_mid, close: two_mid, quotes: 1 };
                            list.push_back(c);
                        }
                    }
                }
                _ => {}
            }
        })?;
        Ok(read < READ_BATCH)
    }

    fn answer(&self, q: &Query) -> Answer {
        let now = crate::clock::now();
        let window = |from: &Option<String>, to: &Option<String>| -> Result<(Option<Nanos>, Option<Nanos>), Answer> {
            let parse = |v: &Option<String>, name: &str| match v {
                None => Ok(None),
                Some(t) => parse_time(t).map(Some).ok_or_else(|| {
                    error(
                        Code::RequestInvalidField,
                        &format!("{name} must be an RFC 3339 time, e.g. 2026-11-23T10:00:00Z"),
                    )
                }),
            };
            Ok((parse(from, "from")?, parse(to, "to")?))
        };
        let (body, settled_at) = match q {
            Query::Trades(t) => match window(&t.from, &t.to) {
                Ok((from, to)) => (self.trades(t, from, to), to),
                Err(r) => return r,
            },
            Query::Candles(k) => match window(&k.from, &k.to) {
                Ok((from, to)) => (self.candles(k, from, to.unwrap_or(now)), to),
                Err(r) => return r,
            },
            Query::Performance(p) => (self.performance(p, now), None),
        };
        finish(body, settled_at.is_some_and(|to| to + 15 * MINUTE < now))
    }

    fn trades(&self, q: &Trades, from: Option<Nanos>, to: Option<Nanos>) -> Vec<u8> {
        let symbol = q.symbol.as_deref().and_then(|s| self.symbols.find(s)).map(|s| s.id);
        let rows: Vec<&Fill> = self
            .fills
            .get(&q.account)
            .into_iter()
            .flat_map(|l| l.iter().rev())
            .filter(|f| symbol.is_none_or(|s| f.symbol == s))
            .filter(|f| from.is_none_or(|t| f.ts >= t) && to.is_none_or(|t| f.ts < t))
            .filter(|f| q.cursor.is_none_or(|(us, seq)| ((f.ts / 1_000) as i64, f.seq as i64) < (us, seq)))
            .take(q.limit as usize)
            .collect();
        let symbols = &self.symbols;
        let trades: Vec<serde_json::Value> = rows
            .iter()
            .map(|f| {
                let spec = symbols.get(f.symbol);
                let mut t = serde_json::Map::new();
                for (i, name) in TRADE_FIELDS.iter().enumerate() {
                    if q.fields & (1 << i) == 0 {
                        continue;
                    }
                    let v = match *name {
                        "ts" => format_time(f.ts).into(),
                        "seq" => f.seq.into(),
                        "order_id" => f.order.into(),
                        "symbol" => spec.name.clone().into(),
                        "side" => f.side.as_str().into(),
                        "qty" => decimal(f.qty, spec.qty_decimals).into(),
                        "price" => decimal(f.price, spec.price_decimals).into(),
                        "notional" => decimal(f.notional, MONEY_DECIMALS).into(),
                        "fee" => decimal(f.fee, MONEY_DECIMALS).into(),
                        _ => decimal(f.realized, MONEY_DECIMALS).into(),
                    };
                    t.insert((*name).to_owned(), v);
                }
                serde_json::Value::Object(t)
            })
            .collect();
        let next = (rows.len() == q.limit as usize)
            .then(|| rows.last().map(|f| format!("{}.{}", f.ts / 1_000, f.seq)))
            .flatten();
        serde_json::json!({"trades": trades, "next_cursor": next}).to_string().into_bytes()
    }

    fn candles(&self, q: &Candles, from: Option<Nanos>, to: Nanos) -> Vec<u8> {
        let (step, offset) = match q.interval {
            "1m" => (MINUTE, 0),
            "1h" => (60 * MINUTE, 0),
            "1d" => (DAY, 0),
            // Weeks start on Monday; 1970-01-01 was a Thursday.
            _ => (7 * DAY, 4 * DAY),
        };
        let from = from.unwrap_or(to.saturating_sub(500 * step));
        let spec = self.symbols.find(&q.symbol);
        let minutes = spec.and_then(|s| self.candles.get(usize::from(s.id.0)));
        let mut out: Vec<Candle> = Vec::new();
        // The candles that start in the window, whole.
        let starts =
            minutes.into_iter().flatten().map(|c| ((c.start + step - offset) / step * step - step + offset, c));
        for (start, c) in starts.filter(|(start, _)| *start >= from && *start < to) {
            let full = out.len() as i64 == MAX_CANDLES;
            match out.last_mut() {
                Some(o) if o.start == start => {
                    o.high = o.high.max(c.high);
                    o.low = o.low.min(c.low);
                    o.close = c.close;
                    o.quotes += c.quotes;
                }
                _ if full => break,
                _ => out.push(Candle { start, ..*c }),
            }
        }
        let decimals = spec.map_or(0, |s| s.price_decimals) + 1;
        // Twice the mid, × 5, at one more decimal: the mid exactly.
        let mid = |two_mid: i64| decimal(two_mid * 5, decimals);
        let candles: Vec<serde_json::Value> = out
            .iter()
            .map(|c| {
                serde_json::json!({
                    "t": format_time_seconds(c.start), "open": mid(c.open), "high": mid(c.high), "low": mid(c.low),
                    "close": mid(c.close), "quotes": c.quotes,
                })
            })
            .collect();
        serde_json::json!({"symbol": q.symbol, "interval": q.interval, "candles": candles}).to_string().into_bytes()
    }

    fn performance(&self, q: &Performance, now: Nanos) -> Vec<u8> {
        let first_day = now / DAY - u64::from(q.days - 1);
        let mut daily = vec![(0i64, 0i64); q.days as usize];
        let (mut trades, mut wins, mut losses) = (0u64, 0u64, 0u64);
        for f in self.fills.get(&q.account).into_iter().flatten() {
            // Days before the window, and any stamped after today, are left out.
            let Some(day) = (f.ts / DAY).checked_sub(first_day).and_then(|d| daily.get_mut(d as usize)) else {
                continue;
            };
            day.0 += f.realized;
            day.1 += f.fee;
            trades += 1;
            wins += u64::from(f.realized > 0);
            losses += u64::from(f.realized < 0);
        }
        let money = |v: i64| decimal(v, MONEY_DECIMALS);
        let nets: Vec<f64> = daily.iter().map(|(r, f)| (r - f) as f64 / 1e8).collect();
        let stats = Stats::of(&nets);
        let (realized, fees) = daily.iter().fold((0, 0), |(r, f), d| (r + d.0, f + d.1));
        let body = serde_json::json!({
            "period": format!("{}d", q.days),
            "from": format_day(first_day * DAY),
            "realized_pnl": money(realized),
            "fees": money(fees),
            "net_pnl": money(realized - fees),
            "trades": trades,
            "win_rate": (wins + losses > 0).then(|| wins as f64 / (wins + losses) as f64),
            "max_drawdown": money((stats.max_drawdown * 1e8).round() as i64),
            "sharpe": stats.sharpe,
            "daily": daily.iter().enumerate().map(|(i, (r, f))| serde_json::json!({
                "day": format_day((first_day + i as u64) * DAY), "net_pnl": money(r - f),
            })).collect::<Vec<_>>(),
        });
        body.to_string().into_bytes()
    }
}

fn format_day(ns: Nanos) -> String {
    let (y, m, d) = civil_from_days((ns / DAY) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

fn format_time_seconds(ns: Nanos) -> String {
    let s = (ns % DAY) / SECOND;
    format!("{}T{:02}:{:02}:{:02}Z", format_day(ns), s / 3600, s / 60 % 60, s % 60)
}

/// RFC 3339 in UTC with microseconds, as PostgreSQL's answers show times.
fn format_time(ns: Nanos) -> String {
    let s = format_time_seconds(ns);
    format!("{}.{:06}Z", &s[..s.len() - 1], ns % SECOND / 1_000)
}

/// Unix nanoseconds of an RFC 3339 time (`2026-11-23T10:00:00Z`, `…T10:00:00.5+01:00`).
fn parse_time(t: &str) -> Option<Nanos> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days = days_from_civil(y, mo, d);
    if civil_from_days(days) != (y, mo, d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = t.get(start..i)?;
        if digits.is_empty() {
            return None;
        }
        let padded = format!("{:0<9}", &digits[..digits.len().min(9)]);
        frac_ns = padded.parse().ok()?;
    }
    let offset = match t.get(i..)? {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && matches!(zone.as_bytes()[0], b'+' | b'-') && zone.as_bytes()[3] == b':' => {
            let minutes = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if zone.starts_with('-') {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset * 60;
    u64::try_from(secs * 1_000_000_000 + frac_ns).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_round_trip_and_bad_ones_are_refused() {
        let t = parse_time("2026-11-23T10:00:00.123456Z").unwrap();
        assert_eq!(format_time(t), "2026-11-23T10:00:00.123456Z");
        assert_eq!(parse_time("2026-11-23T11:00:00+01:00"), parse_time("2026-11-23T10:00:00Z"));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2024-02-29T00:00:00Z").map(format_day), Some("2024-02-29".into()));
        for bad in [
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-23 10:00:00Z",
            "yesterday",
            "2026-11-23T10:00:00",
            "2026-11-23T25:00:00Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
