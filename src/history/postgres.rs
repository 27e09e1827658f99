//! The history thread on PostgreSQL: one connection, one query at a time.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::{
    error, finish, Answer, Candles, Job, Performance, Query, Stats, Trades, MAX_CANDLES, QUERY_TIMEOUT, TRADE_FIELDS,
};
use crate::error::Code;
use crate::postgres::migrate::describe;
use crate::postgres::offload::Shared;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn serve(url: &str, offload: &Shared, mut jobs: mpsc::Receiver<Job>) {
    let mut client: Option<Client> = None;
    while let Some((q, reply)) = jobs.recv().await {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(url).await.map_err(|e| log::warn!("history: {e}")).ok();
        }
        let answer = match &client {
            None => error(Code::HistoryUnavailable, "PostgreSQL cannot be reached; try again later"),
            Some(c) => match tokio::time::timeout(QUERY_TIMEOUT, answer(c, &q, offload)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
                    error(Code::RequestInvalidField, "from and to must be RFC 3339 times, e.g. 2026-11-23T10:00:00Z")
                }
                Ok(Err(e)) => {
                    log::warn!("history: query failed: {}", describe(&e));
                    error(Code::HistoryUnavailable, "the history query failed; try again later")
                }
                Err(_) => {
                    // The connection may still be busy with it: start a new one next time.
                    client = None;
                    error(Code::HistoryUnavailable, "the history query took too long")
                }
            },
        };
        let _ = reply.send(answer);
    }
}

async fn connect(url: &str) -> Result<Client, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("postgres.url: {e}"))?;
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| "cannot connect to PostgreSQL in time".to_string())?
        .map_err(|e| format!("cannot connect to PostgreSQL: {}", describe(&e)))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn answer(c: &Client, q: &Query, offload: &Shared) -> Result<Answer, tokio_postgres::Error> {
    let (body, to) = match q {
        Query::Trades(t) => (trades(c, t).await?, &t.to),
        Query::Candles(k) => (candles(c, k).await?, &k.to),
        // The window always includes today.
        Query::Performance(p) => (performance(c, p).await?, &None),
    };
    // A window that ended more than 15 minutes ago (and before what the offload still owes)
    // does not change any more.
    let settled = match to {
        Some(to) => {
            let lag = offload.status(crate::clock::now()).lag_seconds;
            let sql = "SELECT $1::text::timestamptz < now() - interval '15 minutes' - $2::float8 * interval '1 second'";
            c.query_one(sql, &[to, &lag]).await?.get::<_, bool>(0)
        }
        None => false,
    };
    Ok(finish(body, settled))
}

/// One page of an account's fills, newest first, with keyset pagination on (time, seq).
async fn trades(c: &Client, q: &Trades) -> Result<Vec<u8>, tokio_postgres::Error> {
    let (cursor_us, cursor_seq) = q.cursor.unzip();
    let limit = i64::from(q.limit);
    let params: [&(dyn ToSql + Sync); 7] =
        [&(q.account as i32), &q.symbol, &q.from, &q.to, &cursor_us, &cursor_seq, &limit];
    let rows = c
        .query(
            "SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    (extract(epoch FROM ts) * 1000000)::bigint, seq, order_id, symbol, side,
                    trim_scale(qty)::text, trim_scale(price)::text, trim_scale(notional)::text,
                    trim_scale(fee)::text, trim_scale(realized)::text
             FROM fills
             WHERE account_id = $1
               AND ($2::text IS NULL OR symbol = $2)
               AND ($3::text IS NULL OR ts >= $3::timestamptz)
               AND ($4::text IS NULL OR ts < $4::timestamptz)
               AND ($5::bigint IS NULL OR (ts, seq) < (timestamptz 'epoch' + $5 * interval '1 microsecond', $6))
             ORDER BY ts DESC, seq DESC
             LIMIT $7",
            &params,
        )
        .await?;
    let mut trades = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut t = serde_json::Map::new();
        for (i, name) in TRADE_FIELDS.iter().enumerate() {
            if q.fields & (1 << i) == 0 {
                continue;
            }
            let column = if i == 0 { 0 } else { i + 1 };
            let value = match *name {
                "seq" | "order_id" => serde_json::Value::from(row.get::<_, i64>(column)),
                _ => serde_json::Value::from(row.get::<_, String>(column)),
            };
            t.insert((*name).to_owned(), value);
        }
        trades.push(serde_json::Value::Object(t));
    }
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| format!("{}.{}", r.get::<_, i64>(1), r.get::<_, i64>(2))))
        .flatten();
    Ok(serde_json::json!({"trades": trades, "next_cursor": next}).to_string().into_bytes())
}

/// OHLC of the mid price per interval, from the quotes, oldest first. The window's bounds are
/// scalar subqueries, computed once: written inline, the casts would be evaluated again for every
/// row the index's time ranges let through.
async fn candles(c: &Client, q: &Candles) -> Result<Vec<u8>, tokio_postgres::Error> {
    let unit = match q.interval {
        "1m" => "minute",
        "1h" => "hour",
        _ => "day",
    };
    let rows = c
        .query(
            "WITH w AS (
                 SELECT coalesce($3::text::timestamptz, now()) AS upto, ('1 ' || $4)::interval AS step
             ), b AS (
                 SELECT coalesce($2::text::timestamptz, upto - 500 * step) AS lo, upto AS hi FROM w
             )
             SELECT to_char(date_trunc($4, ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    trim_scale((array_agg((bid + ask) / 2 ORDER BY ts, seq))[1])::text,
                    trim_scale(max((bid + ask) / 2))::text,
                    trim_scale(min((bid + ask) / 2))::text,
                    trim_scale((array_agg((bid + ask) / 2 ORDER BY ts DESC, seq DESC))[1])::text,
                    count(*)
             FROM market_data
             WHERE symbol = $1
               AND ts >= (SELECT lo FROM b)
               AND ts < (SELECT hi FROM b)
             GROUP BY date_trunc($4, ts)
             ORDER BY date_trunc($4, ts)
             LIMIT $5",
            &[&q.symbol, &q.from, &q.to, &unit, &MAX_CANDLES],
        )
        .await?;
    let candles: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "t": r.get::<_, String>(0), "open": r.get::<_, String>(1), "high": r.get::<_, String>(2),
                "low": r.get::<_, String>(3), "close": r.get::<_, String>(4), "quotes": r.get::<_, i64>(5),
            })
        })
        .collect();
    let body = serde_json::json!({"symbol": q.symbol, "interval": q.interval, "candles": candles});
    Ok(body.to_string().into_bytes())
}

/// Realized P&L, fees, trade count, win rate, max drawdown and Sharpe ratio of an account over
/// its last `days` calendar days, from its daily net P&L (days without fills count as 0).
async fn performance(c: &Client, q: &Performance) -> Result<Vec<u8>, tokio_postgres::Error> {
    let rows = c
        .query(
            "WITH days AS (
                 SELECT generate_series(date_trunc('day', now() AT TIME ZONE 'UTC') - ($2 - 1) * interval '1 day',
                                        date_trunc('day', now() AT TIME ZONE 'UTC'), interval '1 day') AS day
             ), f AS (
                 SELECT date_trunc('day', ts AT TIME ZONE 'UTC') AS day, sum(realized) AS realized, sum(fee) AS fees,
                        count(*) AS fills, count(*) FILTER (WHERE realized > 0) AS wins,
                        count(*) FILTER (WHERE realized < 0) AS losses
                 FROM fills
                 WHERE account_id = $1
                   AND ts >= (date_trunc('day', now() AT TIME ZONE 'UTC') - ($2 - 1) * interval '1 day') AT TIME ZONE 'UTC'
                 GROUP BY 1
             )
             SELECT to_char(days.day, 'YYYY-MM-DD'), coalesce(f.realized, 0)::text, coalesce(f.fees, 0)::text,
                    coalesce(f.realized - f.fees, 0)::float8, coalesce(f.fills, 0), coalesce(f.wins, 0),
                    coalesce(f.losses, 0), trim_scale(coalesce(f.realized - f.fees, 0))::text
             FROM days LEFT JOIN f USING (day)
             ORDER BY days.day",
            &[&(q.account as i32), &(q.days as i32)],
        )
        .await?;
    let sums = c
        .query_one(
            "SELECT trim_scale(coalesce(sum(realized), 0))::text, trim_scale(coalesce(sum(fee), 0))::text,
                    trim_scale(coalesce(sum(realized) - sum(fee), 0))::text
             FROM fills
             WHERE account_id = $1
               AND ts >= (date_trunc('day', now() AT TIME ZONE 'UTC') - ($2 - 1) * interval '1 day') AT TIME ZONE 'UTC'",
            &[&(q.account as i32), &(q.days as i32)],
        )
        .await?;
    let daily: Vec<f64> = rows.iter().map(|r| r.get::<_, f64>(3)).collect();
    let (trades, wins, losses) = rows
        .iter()
        .fold((0, 0, 0), |(t, w, l), r| (t + r.get::<_, i64>(4), w + r.get::<_, i64>(5), l + r.get::<_, i64>(6)));
    let stats = Stats::of(&daily);
    let body = serde_json::json!({
        "period": format!("{}d", q.days),
        "from": rows.first().map(|r| r.get::<_, String>(0)),
        "realized_pnl": sums.get::<_, String>(0),
        "fees": sums.get::<_, String>(1),
        "net_pnl": sums.get::<_, String>(2),
        "trades": trades,
        "win_rate": (wins + losses > 0).then(|| wins as f64 / (wins + losses) as f64),
        "max_drawdown": format!("{:.8}", stats.max_drawdown).trim_end_matches('0').trim_end_matches('.'),
        "sharpe": stats.sharpe,
        "daily": rows.iter().map(|r| serde_json::json!({"day": r.get::<_, String>(0), "net_pnl": r.get::<_, String>(7)})).collect::<Vec<_>>(),
    });
    Ok(body.to_string().into_bytes())
}
