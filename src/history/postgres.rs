//! The history thread on PostgreSQL: a pool of connections to the primary (`postgres.url`) and,
//! when there is one, to a read replica (`postgres.read_url`), never the offloader's connection.
//!
//! Each query runs as a task of its own on a pooled connection, within `postgres.read_timeout_ms`
//! (the server stops the statement then: `statement_timeout`). All connections busy for a second,
//! the database down, a query too slow: `503 history.unavailable`, saying which.
//!
//! Reads go to the replica while it is up and its replication lag is within
//! `postgres.read_max_lag_ms`, to the primary otherwise; [`watch`] measures the lag twice a
//! second, and `/ready` shows it. Candles and performance read `candles_*` and `pnl_daily`:
//! continuous aggregates on TimescaleDB, views over the offloader's rollups on plain PostgreSQL
//! (`schema/`), the same names and columns either way.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::{error, finish, Answer, Candles, Job, Performance, Query, Stats, Trades, MAX_CANDLES, TRADE_FIELDS};
use crate::config::PostgresConfig;
use crate::error::Code;
use crate::postgres::connect::Target;
use crate::postgres::migrate::describe;
use crate::postgres::offload::Shared;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a query waits for a free connection (less when `postgres.read_timeout_ms` is less):
/// all of them busy that long, the API answers 503 at once rather than queueing.
const POOL_WAIT: Duration = Duration::from_secs(1);
/// What a query is given beyond `statement_timeout`, for the server's own cancellation to
/// arrive; past it the connection is closed.
const BACKSTOP: Duration = Duration::from_secs(1);
/// How often the replica's lag is measured.
const WATCH: Duration = Duration::from_millis(500);

/// The read replica's state, for `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replica {
    /// No replica configured.
    None = 0,
    /// Not measured yet: reads go to the primary.
    Connecting = 1,
    /// Up and within the lag bound: reads go to it.
    Ok = 2,
    /// Up but behind by more than the bound: reads go to the primary.
    Lagging = 3,
    /// Cannot be reached: reads go to the primary.
    Down = 4,
}

impl Replica {
    /// Its name in `/ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            Replica::None => "off",
            Replica::Connecting => "connecting",
            Replica::Ok => "ok",
            Replica::Lagging => "lagging",
            Replica::Down => "down",
        }
    }
}

/// Where history reads stand; read by `/ready` on the hot core.
#[derive(Debug, Default)]
pub struct ReadStatus {
    replica: AtomicU8,
    lag_ms: AtomicU64,
}

impl ReadStatus {
    /// The replica's state and its last measured lag (ms).
    pub fn replica(&self) -> (Replica, u64) {
        let state = match self.replica.load(Ordering::Acquire) {
            1 => Replica::Connecting,
            2 => Replica::Ok,
            3 => Replica::Lagging,
            4 => Replica::Down,
            _ => Replica::None,
        };
        (state, self.lag_ms.load(Ordering::Acquire))
    }

    fn set(&self, state: Replica, lag_ms: u64) {
        self.lag_ms.store(lag_ms, Ordering::Release);
        self.replica.store(state as u8, Ordering::Release);
    }
}

/// The pools and what picks between them.
struct Reads {
    primary: Pool,
    replica: Option<Pool>,
    status: Arc<ReadStatus>,
    max_lag_ms: u64,
    timeout: Duration,
    pool_size: usize,
}

pub(super) async fn serve(
    cfg: &PostgresConfig,
    offload: Arc<Shared>,
    status: Arc<ReadStatus>,
    mut jobs: mpsc::Receiver<Job>,
) {
    let reads = match Reads::new(cfg, status) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            // check-config refuses this; here for a URL from the environment.
            log::error!("history: {e}; history queries are answered 503");
            while let Some((_, reply)) = jobs.recv().await {
                let _ = reply.send(error(Code::HistoryUnavailable, "the history database is not configured correctly"));
            }
            return;
        }
    };
    if reads.replica.is_some() {
        tokio::spawn(watch(reads.clone()));
    }
    while let Some((q, reply)) = jobs.recv().await {
        let (reads, offload) = (reads.clone(), offload.clone());
        tokio::spawn(async move {
            let _ = reply.send(reads.answer(&q, &offload).await);
        });
    }
}

/// Why a read failed.
enum Failed {
    /// No connection within the time: all busy.
    Busy,
    /// The query took too long.
    Slow,
    /// The database cannot be reached.
    Down(String),
    /// The query failed.
    Query(tokio_postgres::Error),
}

impl Reads {
    fn new(cfg: &PostgresConfig, status: Arc<ReadStatus>) -> Result<Reads, String> {
        let timeout = Duration::from_millis(cfg.read_timeout_ms);
        let pool = |name: &str, url: &str| -> Result<Pool, String> {
            let mut target = Target::parse(url).map_err(|e| format!("{name} is not a valid connection string: {e}"))?;
            // Reads only, and never longer than the API waits for them.
            let options = format!(
                "{} -c default_transaction_read_only=on -c statement_timeout={} -c TimeZone=UTC",
                target.config.get_options().unwrap_or_default(),
                cfg.read_timeout_ms
            );
            target.config.options(options.trim_start()).connect_timeout(CONNECT_TIMEOUT);
            let manager = Manager::from_config(
                target.config,
                target.tls,
                ManagerConfig { recycling_method: RecyclingMethod::Fast },
            );
            Pool::builder(manager)
                .max_size(cfg.read_pool_size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(timeout.min(POOL_WAIT)))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .build()
                .map_err(|e| format!("{name}: {e}"))
        };
        let primary = pool("postgres.url", &cfg.url)?;
        let replica = (!cfg.read_url.is_empty()).then(|| pool("postgres.read_url", &cfg.read_url)).transpose()?;
        status.set(if replica.is_some() { Replica::Connecting } else { Replica::None }, 0);
        Ok(Reads { primary, replica, status, max_lag_ms: cfg.read_max_lag_ms, timeout, pool_size: cfg.read_pool_size })
    }

    /// The replica with its lag (s) when reads go there.
    fn replica(&self) -> Option<(&Pool, f64)> {
        let (state, lag_ms) = self.status.replica();
        self.replica.as_ref().filter(|_| state == Replica::Ok).map(|p| (p, lag_ms as f64 / 1e3))
    }

    async fn answer(&self, q: &Query, offload: &Shared) -> Answer {
        let from_replica = match self.replica() {
            Some((replica, lag)) => match self.read(replica, q, offload, lag).await {
                // Gone since it was last measured: the primary answers ([`watch`] logs it).
                Err(Failed::Down(_)) => {
                    self.status.set(Replica::Down, 0);
                    None
                }
                other => Some(other),
            },
            None => None,
        };
        let result = match from_replica {
            Some(r) => r,
            None => self.read(&self.primary, q, offload, 0.0).await,
        };
        match result {
            Ok(answer) => answer,
            Err(Failed::Busy) => error(
                Code::HistoryUnavailable,
                &format!("all {} history connections are busy; try again later", self.pool_size),
            ),
            Err(Failed::Down(e)) => {
                log::warn!("history: {e}");
                error(Code::HistoryUnavailable, "PostgreSQL cannot be reached; try again later")
            }
            Err(Failed::Query(e)) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
                error(Code::RequestInvalidField, "from and to must be RFC 3339 times, e.g. 2026-11-23T10:00:00Z")
            }
            // 57014: stopped by statement_timeout.
            Err(Failed::Query(e)) if e.code().is_some_and(|c| c.code() == "57014") => {
                error(Code::HistoryUnavailable, "the history query took too long")
            }
            Err(Failed::Slow) => error(Code::HistoryUnavailable, "the history query took too long"),
            Err(Failed::Query(e)) => {
                log::warn!("history: query failed: {}", describe(&e));
                error(Code::HistoryUnavailable, "the history query failed; try again later")
            }
        }
    }

    /// Answers `q` on a connection of `pool`; `lag`: how far (s) that database is behind the
    /// primary.
    async fn read(&self, pool: &Pool, q: &Query, offload: &Shared, lag: f64) -> Result<Answer, Failed> {
        let client = match pool.get().await {
            Ok(c) => c,
            Err(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) => return Err(Failed::Busy),
            Err(PoolError::Timeout(_)) => return Err(Failed::Down("cannot connect in time".into())),
            Err(PoolError::Backend(e)) => return Err(Failed::Down(format!("cannot connect: {}", describe(&e)))),
            Err(e) => return Err(Failed::Down(e.to_string())),
        };
        // Given back to the pool only when the query finished: dropped half-way, the connection
        // may still be busy with it.
        let mut guard = Unfinished(Some(client));
        let result = tokio::time::timeout(self.timeout + BACKSTOP, answer(guard.client(), q, offload, lag))
            .await
            .map_err(|_| Failed::Slow)?;
        let closed = guard.client().is_closed();
        if !closed {
            guard.0.take(); // back to the pool
        }
        result.map_err(|e| if closed { Failed::Down(describe(&e)) } else { Failed::Query(e) })
    }
}

/// A pooled connection that is closed, not reused, unless taken out of it.
struct Unfinished(Option<Object>);

impl Unfinished {
    fn client(&self) -> &Client {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            drop(Object::take(c));
        }
    }
}

/// Measures the replica's lag, twice a second, for [`Reads::replica`] and `/ready`: none when
/// it has replayed all the primary had written a moment before, otherwise the age of the last
/// transaction it replayed (an upper bound).
async fn watch(reads: Arc<Reads>) {
    let Some(replica) = reads.replica.as_ref() else { return };
    let mut last = Replica::Connecting;
    loop {
        let measured = tokio::time::timeout(reads.timeout, async {
            let primary_lsn = match reads.primary.get().await {
                Ok(c) => {
                    c.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.ok().map(|r| r.get::<_, String>(0))
                }
                Err(_) => None,
            };
            let c = replica.get().await.map_err(|e| e.to_string())?;
            let row = c
                .query_one(
                    "SELECT pg_is_in_recovery(),
                            coalesce(pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn()), 0)::float8,
                            coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)::float8",
                    &[&primary_lsn],
                )
                .await
                .map_err(|e| describe(&e))?;
            let (recovering, behind, age) = (row.get::<_, bool>(0), row.get::<_, f64>(1), row.get::<_, f64>(2));
            // A replica that replayed everything the primary had is not behind, however long ago
            // its last transaction.
            let lag = if !recovering || (behind <= 0.0 && primary_lsn.is_some()) { 0.0 } else { age };
            Ok::<_, String>(((lag * 1e3).max(0.0) as u64, primary_lsn.is_some()))
        })
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()));
        let state = match &measured {
            // The primary down, the replica is the best there is, however far behind.
            Ok((lag, true)) if *lag > reads.max_lag_ms => Replica::Lagging,
            Ok(_) => Replica::Ok,
            Err(_) => Replica::Down,
        };
        reads.status.set(state, measured.as_ref().map_or(0, |(lag, _)| *lag));
        if state != last {
            match (&measured, state) {
                (Err(e), _) => {
                    log::warn!("history: the read replica cannot be reached ({e}); reading from the primary")
                }
                (Ok((lag, _)), Replica::Lagging) => {
                    log::warn!("history: the read replica is {lag} ms behind; reading from the primary")
                }
                _ => log::info!("history: reading from the replica"),
            }
            last = state;
        }
        tokio::time::sleep(WATCH).await;
    }
}

async fn answer(c: &Client, q: &Query, offload: &Shared, lag: f64) -> Result<Answer, tokio_postgres::Error> {
    let (body, to) = match q {
        Query::Trades(t) => (trades(c, t).await?, &t.to),
        Query::Candles(k) => (candles(c, k).await?, &k.to),
        // The window always includes today.
        Query::Performance(p) => (performance(c, p).await?, &None),
    };
    // A window that ended more than 15 minutes ago (and before what the offload and the
    // replication still owe) does not change any more.
    let settled = match to {
        Some(to) => {
            let lag = offload.status(crate::clock::now()).lag_seconds + lag;
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

/// The candles of one width whose interval starts in the window, oldest first, from the
/// aggregate of that width. The window's bounds are scalar subqueries, computed once.
async fn candles(c: &Client, q: &Candles) -> Result<Vec<u8>, tokio_postgres::Error> {
    macro_rules! from {
        ($view:literal) => {
            concat!(
                "WITH w AS (
                     SELECT coalesce($2::text::timestamptz, now()) AS upto, $3::text::interval AS step
                 ), b AS (
                     SELECT coalesce($1::text::timestamptz, upto - 500 * step) AS lo, upto AS hi FROM w
                 )
                 SELECT to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        trim_scale(open)::text, trim_scale(high)::text, trim_scale(low)::text,
                        trim_scale(close)::text, quotes
                 FROM ",
                $view,
                " WHERE symbol = $4 AND bucket >= (SELECT lo FROM b) AND bucket < (SELECT hi FROM b)
                 ORDER BY bucket
                 LIMIT $5"
            )
        };
    }
    let (sql, step) = match q.interval {
        "1m" => (from!("candles_1m"), "1 minute"),
        "1h" => (from!("candles_1h"), "1 hour"),
        "1d" => (from!("candles_1d"), "1 day"),
        _ => (from!("candles_1w"), "1 week"),
    };
    let rows = c.query(sql, &[&q.from, &q.to, &step, &q.symbol, &MAX_CANDLES]).await?;
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
/// its last `days` calendar days (UTC), from its daily P&L (`pnl_daily`; days without fills
/// count as 0).
async fn performance(c: &Client, q: &Performance) -> Result<Vec<u8>, tokio_postgres::Error> {
    let rows = c
        .query(
            "WITH days AS (
                 SELECT generate_series(date_trunc('day', now(), 'UTC') - ($2 - 1) * interval '1 day',
                                        date_trunc('day', now(), 'UTC'), interval '1 day') AS day
             ), p AS (
                 SELECT bucket AS day, realized, fees, fills, winning_fills, losing_fills
                 FROM pnl_daily
                 WHERE account_id = $1 AND bucket >= date_trunc('day', now(), 'UTC') - ($2 - 1) * interval '1 day'
             )
             SELECT to_char(days.day AT TIME ZONE 'UTC', 'YYYY-MM-DD'), coalesce(p.realized - p.fees, 0)::float8,
                    coalesce(p.fills, 0)::int8, coalesce(p.winning_fills, 0)::int8, coalesce(p.losing_fills, 0)::int8,
                    trim_scale(coalesce(p.realized - p.fees, 0))::text,
                    trim_scale(coalesce(sum(p.realized) OVER (), 0))::text,
                    trim_scale(coalesce(sum(p.fees) OVER (), 0))::text,
                    trim_scale(coalesce(sum(p.realized - p.fees) OVER (), 0))::text
             FROM days LEFT JOIN p USING (day)
             ORDER BY days.day",
            &[&(q.account as i32), &(q.days as i32)],
        )
        .await?;
    let daily: Vec<f64> = rows.iter().map(|r| r.get::<_, f64>(1)).collect();
    let (trades, wins, losses) = rows
        .iter()
        .fold((0, 0, 0), |(t, w, l), r| (t + r.get::<_, i64>(2), w + r.get::<_, i64>(3), l + r.get::<_, i64>(4)));
    let stats = Stats::of(&daily);
    let sum = |i: usize| rows.first().map_or_else(|| "0".to_string(), |r| r.get::<_, String>(i));
    let body = serde_json::json!({
        "period": format!("{}d", q.days),
        "from": rows.first().map(|r| r.get::<_, String>(0)),
        "realized_pnl": sum(6),
        "fees": sum(7),
        "net_pnl": sum(8),
        "trades": trades,
        "win_rate": (wins + losses > 0).then(|| wins as f64 / (wins + losses) as f64),
        "max_drawdown": format!("{:.8}", stats.max_drawdown).trim_end_matches('0').trim_end_matches('.'),
        "sharpe": stats.sharpe,
        "daily": rows.iter().map(|r| serde_json::json!({"day": r.get::<_, String>(0), "net_pnl": r.get::<_, String>(5)})).collect::<Vec<_>>(),
    });
    Ok(body.to_string().into_bytes())
}
