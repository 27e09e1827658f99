//! The rollups of plain PostgreSQL (`schema/0006_rollups.sql`): what TimescaleDB's continuous
//! aggregates keep, kept by the offloader in the transaction of the rows they sum up.
//!
//! Candles are summed up here, from the quotes of a batch: one-minute candles as the quotes are
//! read, the longer ones from those when the batch is sealed, then merged into `candle_rollups`
//! with one upsert. Quotes are each node's own and written once, so adding a batch's candles is
//! exact. P&L is summed up by PostgreSQL from the fills the batch actually inserted
//! ([`FILLS`]): on a cluster a fill can come from two nodes, and only the insert knows which
//! copy went in.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::engine::symbol::SymbolTable;
use crate::engine::types::{Nanos, SymbolId, DAY};
use crate::fixed::decimal_string;

const MINUTE: Nanos = 60_000_000_000;
const HOUR: Nanos = 60 * MINUTE;
/// 1970-01-01 was a Thursday: weeks (Monday to Sunday, as PostgreSQL's `date_trunc('week')` and
/// TimescaleDB's `time_bucket('1 week')`) start 4 days after a multiple of 7 days.
const MONDAY: Nanos = 4 * DAY;

/// The start of the bucket a time falls in.
type Bucket = fn(Nanos) -> Nanos;

/// The candle widths kept.
const WIDTHS: [(&str, Bucket); 4] = [
    ("1m", |t| t - t % MINUTE),
    ("1h", |t| t - t % HOUR),
    ("1d", |t| t - t % DAY),
    ("1w", |t| t.saturating_sub((t + 7 * DAY - MONDAY) % (7 * DAY))),
];

/// Where a quote stands in (time, seq) order: its time as PostgreSQL keeps it (µs) and its row's
/// sequence number.
type Order = (u64, u64);

/// A candle of `bid + ask` (twice the mid: exact), in the symbol's price units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candle {
    open: (Order, i64),
    close: (Order, i64),
    high: i64,
    low: i64,
    quotes: i64,
}

impl Candle {
    fn merge(&mut self, other: &Candle) {
        if other.open.0 < self.open.0 {
            self.open = other.open;
        }
        if other.close.0 > self.close.0 {
            self.close = other.close;
        }
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
        self.quotes += other.quotes;
    }
}

/// A batch's one-minute candles, by symbol and minute.
#[derive(Default)]
pub struct Minutes(HashMap<(SymbolId, Nanos), Candle>);

impl Minutes {
    /// Adds a quote (its time, its row's sequence number, bid and ask).
    pub fn quote(&mut self, symbol: SymbolId, ts: Nanos, seq: u64, bid: i64, ask: i64) {
        let two_mid = bid + ask;
        let at = ((ts / 1_000), seq);
        let candle = Candle { open: (at, two_mid), close: (at, two_mid), high: two_mid, low: two_mid, quotes: 1 };
        self.0.entry((symbol, WIDTHS[0].1(ts))).and_modify(|c| c.merge(&candle)).or_insert(candle);
    }

    /// Every width's candles, as the columns of the upsert [`merge`] makes.
    pub fn seal(self, symbols: &SymbolTable) -> Option<Candles> {
        if self.0.is_empty() {
            return None;
        }
        let mut all: HashMap<(SymbolId, usize, Nanos), Candle> = HashMap::with_capacity(self.0.len() * 4);
        for ((symbol, minute), c) in self.0 {
            for (i, (_, bucket)) in WIDTHS.iter().enumerate() {
                all.entry((symbol, i, bucket(minute))).and_modify(|o| o.merge(&c)).or_insert(c);
            }
        }
        let mut out = Candles::default();
        for ((symbol, width, bucket), c) in all {
            let spec = symbols.get(symbol);
            let decimal = |v: i64| decimal_string(v, spec.price_decimals);
            out.width.push(WIDTHS[width].0);
            out.symbol.push(spec.name.clone());
            out.bucket.push((bucket / 1_000) as i64);
            out.open_ts.push(c.open.0 .0 as i64);
            out.open_seq.push(c.open.0 .1 as i64);
            out.open.push(decimal(c.open.1));
            out.close_ts.push(c.close.0 .0 as i64);
            out.close_seq.push(c.close.0 .1 as i64);
            out.close.push(decimal(c.close.1));
            out.high.push(decimal(c.high));
            out.low.push(decimal(c.low));
            out.quotes.push(c.quotes);
        }
        Some(out)
    }
}

/// A batch's candles of every width, column by column (times in Unix µs, prices `bid + ask` as
/// decimal text).
#[derive(Debug, Default)]
pub struct Candles {
    width: Vec<&'static str>,
    symbol: Vec<String>,
    bucket: Vec<i64>,
    open_ts: Vec<i64>,
    open_seq: Vec<i64>,
    open: Vec<String>,
    close_ts: Vec<i64>,
    close_seq: Vec<i64>,
    close: Vec<String>,
    high: Vec<String>,
    low: Vec<String>,
    quotes: Vec<i64>,
}

/// Adds a batch's candles to `candle_rollups`, inside the batch's transaction.
pub async fn merge(client: &Client, c: &Candles) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO candle_rollups AS r
             SELECT width, symbol, timestamptz 'epoch' + bucket * interval '1 microsecond',
                    timestamptz 'epoch' + open_ts * interval '1 microsecond', open_seq, open2,
                    timestamptz 'epoch' + close_ts * interval '1 microsecond', close_seq, close2, high2, low2, quotes
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::text[]::numeric[],
                         $7::int8[], $8::int8[], $9::text[]::numeric[], $10::text[]::numeric[], $11::text[]::numeric[],
                         $12::int8[])
                  AS c (width, symbol, bucket, open_ts, open_seq, open2, close_ts, close_seq, close2, high2, low2, quotes)
             ON CONFLICT (width, symbol, bucket) DO UPDATE SET
                 (open_ts, open_seq, open2) = (
                     SELECT ts, seq, v FROM (VALUES (r.open_ts, r.open_seq, r.open2),
                                                    (EXCLUDED.open_ts, EXCLUDED.open_seq, EXCLUDED.open2)) AS o (ts, seq, v)
                     ORDER BY ts, seq LIMIT 1),
                 (close_ts, close_seq, close2) = (
                     SELECT ts, seq, v FROM (VALUES (r.close_ts, r.close_seq, r.close2),
                                                    (EXCLUDED.close_ts, EXCLUDED.close_seq, EXCLUDED.close2)) AS o (ts, seq, v)
                     ORDER BY ts DESC, seq DESC LIMIT 1),
                 high2 = greatest(r.high2, EXCLUDED.high2),
                 low2 = least(r.low2, EXCLUDED.low2),
                 quotes = r.quotes + EXCLUDED.quotes",
            &[
                &c.width,
                &c.symbol,
                &c.bucket,
                &c.open_ts,
                &c.open_seq,
                &c.open,
                &c.close_ts,
                &c.close_seq,
                &c.close,
                &c.high,
                &c.low,
                &c.quotes,
            ],
        )
        .await
}

/// The merge of a batch's fills (copied into `stage_fills`) where rollups are kept: the fills
/// not there yet go in, and what they realized is added to their account's hour and day.
pub const FILLS: &str = "
WITH inserted AS (
    INSERT INTO fills SELECT * FROM stage_fills ON CONFLICT DO NOTHING RETURNING ts, account_id, realized, fee
), hours AS (
    SELECT account_id, date_trunc('hour', ts, 'UTC') AS bucket, sum(realized) AS realized, sum(fee) AS fees,
           count(*) AS fills, count(*) FILTER (WHERE realized > 0) AS wins, count(*) FILTER (WHERE realized < 0) AS losses
    FROM inserted GROUP BY 1, 2
)
INSERT INTO pnl_rollups AS r
SELECT '1h', account_id, bucket, realized, fees, fills, wins, losses FROM hours
UNION ALL
SELECT '1d', account_id, date_trunc('day', bucket, 'UTC'), sum(realized), sum(fees), sum(fills), sum(wins), sum(losses)
FROM hours GROUP BY 2, 3
ON CONFLICT (width, account_id, bucket) DO UPDATE SET
    realized = r.realized + EXCLUDED.realized, fees = r.fees + EXCLUDED.fees, fills = r.fills + EXCLUDED.fills,
    winning_fills = r.winning_fills + EXCLUDED.winning_fills, losing_fills = r.losing_fills + EXCLUDED.losing_fills";

/// Whether the database keeps rollups (plain PostgreSQL migrated to 0006): asked inside each
/// batch's transaction, after its cursor moved (see `schema/0006_rollups.sql`).
pub async fn kept(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client.query_one("SELECT to_regclass('candle_rollups') IS NOT NULL", &[]).await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_where_postgresql_starts_them() {
        // 2026-12-07T16:28:34.5Z, a Monday.
        let t: Nanos = 1_796_660_914_500_000_000;
        let at = |i: usize| WIDTHS[i].1(t);
        assert_eq!(at(0), 1_796_660_880_000_000_000, "16:28:00");
        assert_eq!(at(1), 1_796_659_200_000_000_000, "16:00:00");
        assert_eq!(at(2), 1_796_601_600_000_000_000, "00:00:00");
        assert_eq!(at(3), at(2), "a Monday starts its week");
        // The Sunday before belongs to the week before.
        assert_eq!(WIDTHS[3].1(at(2) - 1), at(2) - 7 * DAY);
        assert_eq!(WIDTHS[3].1(MONDAY), MONDAY, "1970-01-05 was a Monday");
    }

    #[test]
    fn candles_keep_first_and_last_in_time_then_seq_order_whatever_the_arrival() {
        let mut m = Minutes::default();
        let s = SymbolId(0);
        m.quote(s, 2_000, 7, 100, 102); // same µs as the next, later seq
        m.quote(s, 2_999, 5, 90, 92); // same µs (2), earlier seq: the open
        m.quote(s, 1_000_000, 9, 110, 112);
        m.quote(s, 1_000_500, 8, 95, 97); // same µs, earlier seq: not the close
        let c = m.0[&(s, 0)];
        assert_eq!(c.open, ((2, 5), 182));
        assert_eq!(c.close, ((1_000, 9), 222));
        assert_eq!((c.high, c.low, c.quotes), (222, 182, 4));
    }
}
