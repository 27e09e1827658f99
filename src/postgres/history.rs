//! History queries, answered from PostgreSQL on a thread of their own: a slow query never delays
//! the hot core, which only validates the request, hands it over here and waits (without
//! blocking) for the finished answer.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::migrate::describe;
use super::offload::Shared;

/// Queries waiting for the history thread beyond which the API answers 503.
const QUEUE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A query that takes longer is cancelled and answered 503.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The columns of `GET /v1/trades`, in answer order.
pub const TRADE_FIELDS: [&str; 10] =
    ["ts", "seq", "order_id", "symbol", "side", "qty", "price", "notional", "fee", "realized_pnl"];

/// `GET /v1/trades`, validated.
#[derive(Debug, Clone, Default)]
pub struct Trades {
    /// The key's account.
    pub account: u32,
    /// Only this symbol.
    pub symbol: Option<String>,
    /// From this time (RFC 3339), inclusive.
    pub from: Option<String>,
    /// Up to this time (RFC 3339), exclusive.
    pub to: Option<String>,
    /// Most rows in the page.
    pub limit: u32,
    /// Rows strictly before this (time µs, seq), from the previous page's `next_cursor`.
    pub cursor: Option<(i64, i64)>,
    /// Bit `i` set: field `TRADE_FIELDS[i]` is shown.
    pub fields: u16,
}

/// A finished answer.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Vec<u8>,
    /// `Cache-Control` (successful answers).
    pub cache_control: Option<&'static str>,
    /// `ETag` (successful answers), quoted.
    pub etag: Option<String>,
}

type Job = (Trades, oneshot::Sender<Reply>);

/// The hot core's handle on the history thread.
pub struct History {
    jobs: mpsc::Sender<Job>,
}

impl History {
    /// Starts the history thread for `url`.
    pub fn spawn(url: &str, offload: Arc<Shared>, core: Option<usize>) -> std::io::Result<History> {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let url = url.to_owned();
        std::thread::Builder::new().name("sg-history".into()).spawn(move || {
            if let Some(core) = core {
                crate::server::pin_current_thread(core);
            }
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(serve(&url, &offload, rx)),
                Err(e) => log::error!("history: cannot start the runtime: {e}"),
            }
        })?;
        Ok(History { jobs })
    }

    /// Queues a query; `None` when the queue is full (the caller answers 503).
    pub fn ask(&self, q: Trades) -> Option<oneshot::Receiver<Reply>> {
        let (tx, rx) = oneshot::channel();
        self.jobs.try_send((q, tx)).ok().map(|()| rx)
    }
}

async fn serve(url: &str, offload: &Shared, mut jobs: mpsc::Receiver<Job>) {
    let mut client: Option<Client> = None;
    while let Some((q, reply)) = jobs.recv().await {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(url).await.map_err(|e| log::warn!("history: {e}")).ok();
        }
        let answer = match &client {
            None => error(503, "history.unavailable", "PostgreSQL cannot be reached; try again later"),
            Some(c) => match tokio::time::timeout(QUERY_TIMEOUT, trades(c, &q, offload)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
                    error(400, "request.invalid_field", "from and to must be RFC 3339 times, e.g. 2026-11-23T10:00:00Z")
                }
                Ok(Err(e)) => {
                    log::warn!("history: query failed: {}", describe(&e));
                    error(503, "history.unavailable", "the history query failed; try again later")
                }
                Err(_) => {
                    // The connection may still be busy with it: start a new one next time.
                    client = None;
                    error(503, "history.unavailable", "the history query took too long")
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

fn error(status: u16, code: &str, message: &str) -> Reply {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    Reply { status, body: body.to_string().into_bytes(), cache_control: None, etag: None }
}

/// One page of an account's fills, newest first, with keyset pagination on (time, seq).
async fn trades(c: &Client, q: &Trades, offload: &Shared) -> Result<Reply, tokio_postgres::Error> {
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
    let body = serde_json::json!({"trades": trades, "next_cursor": next}).to_string().into_bytes();
    // A window that ended more than 15 minutes ago does not change any more (its events are in
    // PostgreSQL once the offload is past it).
    let settled = match &q.to {
        Some(to) => {
            let lag = offload.status(crate::clock::now()).lag_seconds;
            let sql = "SELECT $1::text::timestamptz < now() - interval '15 minutes' - $2::float8 * interval '1 second'";
            c.query_one(sql, &[to, &lag]).await?.get::<_, bool>(0)
        }
        None => false,
    };
    let cache_control = Some(if settled { "public, max-age=86400" } else { "public, max-age=5" });
    let digest = Sha256::digest(&body);
    let etag = format!("\"{}\"", digest[..12].iter().map(|b| format!("{b:02x}")).collect::<String>());
    Ok(Reply { status: 200, body, cache_control, etag: Some(etag) })
}
