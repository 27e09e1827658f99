//! History queries — `GET /v1/trades`, `GET /v1/performance`, `GET /v1/market/{symbol}/candles`
//! — answered on a thread of their own, so a slow query never delays the hot core: it validates
//! the request, hands it over ([`History::ask`]) and waits, without blocking, for the finished
//! answer. The thread answers from PostgreSQL ([`postgres`]) when the node has one, otherwise
//! from the recent events of the node's own journal ([`recent`]).

mod postgres;
mod recent;

use std::sync::Arc;

pub use postgres::{ReadStatus, Replica};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::error::Code;
use crate::node::request::Answer;
use crate::postgres::offload::Shared;

/// Queries waiting for the history thread beyond which the API answers 503.
const QUEUE: usize = 256;

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

/// `GET /v1/market/{symbol}/candles`, validated.
#[derive(Debug, Clone, Default)]
pub struct Candles {
    /// The symbol.
    pub symbol: String,
    /// `1m`, `1h`, `1d` or `1w`.
    pub interval: &'static str,
    /// Candles that start from this time (RFC 3339) on; default: 500 intervals before `to`.
    pub from: Option<String>,
    /// Candles that start before this time (RFC 3339); default: now.
    pub to: Option<String>,
}

/// `GET /v1/performance`, validated.
#[derive(Debug, Clone, Default)]
pub struct Performance {
    /// The key's account.
    pub account: u32,
    /// Calendar days (UTC) up to and including today.
    pub days: u32,
}

/// A history query.
#[derive(Debug, Clone)]
pub enum Query {
    /// `GET /v1/trades`
    Trades(Trades),
    /// `GET /v1/market/{symbol}/candles`
    Candles(Candles),
    /// `GET /v1/performance`
    Performance(Performance),
}

/// Most candles in one answer.
pub const MAX_CANDLES: i64 = 5000;

/// What the history thread receives.
type Job = (Query, oneshot::Sender<Answer>);

/// The hot core's handle on the history thread.
pub struct History {
    jobs: mpsc::Sender<Job>,
    /// Where reads go, on PostgreSQL.
    reads: Option<Arc<ReadStatus>>,
}

impl History {
    /// Starts the history thread: on PostgreSQL when `postgres.url` is set (`offload` is then
    /// its offload), on the journal's recent events otherwise.
    /// `marks` says how far the journal may be read.
    pub fn spawn(
        cfg: &Config,
        offload: Option<Arc<Shared>>,
        marks: Arc<crate::journal::Watermarks>,
        core: Option<usize>,
    ) -> std::io::Result<History> {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let reads = offload.is_some().then(|| Arc::new(ReadStatus::default()));
        let (cfg, status) = (cfg.clone(), reads.clone());
        std::thread::Builder::new().name("sg-history".into()).spawn(move || {
            if let Some(core) = core {
                crate::cores::pin_current_thread(core);
            }
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => match (offload, status) {
                    (Some(o), Some(s)) => rt.block_on(postgres::serve(&cfg.postgres, o, s, rx)),
                    _ => rt.block_on(recent::serve(&cfg, marks, rx)),
                },
                Err(e) => log::error!("history: cannot start the runtime: {e}"),
            }
        })?;
        Ok(History { jobs, reads })
    }

    /// On PostgreSQL, where reads go: the replica's state and lag (ms).
    pub fn replica(&self) -> Option<(Replica, u64)> {
        self.reads.as_ref().map(|r| r.replica())
    }

    /// Queues a query; `None` when the queue is full (the caller answers 503).
    pub fn ask(&self, q: Query) -> Option<oneshot::Receiver<Answer>> {
        let (tx, rx) = oneshot::channel();
        self.jobs.try_send((q, tx)).ok().map(|()| rx)
    }
}

/// An error answer.
fn error(code: Code, message: &str) -> Answer {
    let body = serde_json::json!({"error": {"code": code.as_str(), "message": message}});
    Answer { status: code.status(), body: body.to_string().into_bytes(), cache_control: None, etag: None }
}

/// A successful answer: cached for a day when its window has `settled` (ended more than 15
/// minutes ago, before anything still on its way), for 5 s otherwise; tagged with a digest of
/// the body.
fn finish(body: Vec<u8>, settled: bool) -> Answer {
    let cache_control = Some(if settled { "public, max-age=86400" } else { "public, max-age=5" });
    let digest = Sha256::digest(&body);
    let etag = format!("\"{}\"", digest[..12].iter().map(|b| format!("{b:02x}")).collect::<String>());
    Answer { status: 200, body, cache_control, etag: Some(etag) }
}

/// Drawdown and Sharpe ratio of a daily P&L series.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    /// Largest fall of cumulative P&L from an earlier peak (≥ 0; the start counts as a peak at 0).
    max_drawdown: f64,
    /// Mean over sample standard deviation of daily P&L, × √365; `None` with fewer than two days
    /// or no variation.
    sharpe: Option<f64>,
}

impl Stats {
    fn of(daily: &[f64]) -> Stats {
        let (mut cumulative, mut peak, mut max_drawdown) = (0.0f64, 0.0f64, 0.0f64);
        for d in daily {
            cumulative += d;
            peak = peak.max(cumulative);
            max_drawdown = max_drawdown.max(peak - cumulative);
        }
        let n = daily.len() as f64;
        let sharpe = (daily.len() >= 2).then(|| {
            let mean = daily.iter().sum::<f64>() / n;
            let var = daily.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (var > 0.0).then(|| mean / var.sqrt() * 365f64.sqrt())
        });
        Stats { max_drawdown, sharpe: sharpe.flatten() }
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn drawdown_and_sharpe_of_known_series() {
        let s = Stats::of(&[10.0, -30.0, 5.0, 40.0, -10.0]);
        // Cumulative 10, -20, -15, 25, 15: the worst fall is from 10 to -20.
        assert_eq!(s.max_drawdown, 30.0);
        // Mean 3, sample variance (49 + 1089 + 4 + 1369 + 169) / 4 = 670.
        let expected = 3.0 / 670f64.sqrt() * 365f64.sqrt();
        assert!((s.sharpe.unwrap() - expected).abs() < 1e-12);
        assert_eq!(Stats::of(&[-5.0]).max_drawdown, 5.0, "a loss from the start is a drawdown");
        assert_eq!(Stats::of(&[-5.0]).sharpe, None);
        assert_eq!(Stats::of(&[2.0, 2.0]).sharpe, None, "no variation");
        assert_eq!(Stats::of(&[]), Stats { max_drawdown: 0.0, sharpe: None });
    }
}
