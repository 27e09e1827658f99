//! Quotes in one order for the whole cluster: every quote (the ticks a feed posts to any node, and
//! the elected simulator's) goes into one Redis stream, `signalgate:quotes`, and every node applies
//! the stream in its order, so a resting order fills the same way whichever node got the tick.
//!
//! Two threads of their own: the publisher adds batches to the stream for the hot core (which
//! awaits the outcome without blocking), the reader follows the stream and hands each batch to
//! the hot core. Neither is on the path of a signal. While Redis is away nothing can be published
//! (ticks get `503 cluster.unavailable`) and each node's simulator feeds that node alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use super::{connect_to, key, Background, Status};
use crate::engine::market::Quote;
use crate::engine::types::SymbolId;

/// Batches waiting to be published at most.
const QUEUE: usize = 1024;
/// Batches read but not yet taken by the hot core at most (the reader waits beyond).
const AHEAD: usize = 4096;
/// Entries the stream keeps (about).
const KEEP: u64 = 100_000;
/// How long the reader waits on the stream per call.
const BLOCK_MS: u64 = 100;

type Batch = (Vec<Quote>, tokio::sync::oneshot::Sender<bool>);

/// The hot core's handle on the publisher.
pub struct Publisher {
    batches: SyncSender<Batch>,
}

impl Publisher {
    /// Queues `quotes` for the stream; the receiver says whether Redis took them (`None`: too
    /// many batches are waiting).
    pub fn publish(&self, quotes: Vec<Quote>) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.batches.try_send((quotes, tx)).ok().map(|()| rx)
    }
}

/// The market threads; dropping it stops them.
pub struct Market {
    publisher: Arc<Publisher>,
    _threads: [Background; 2],
}

impl Market {
    /// Starts both threads; the receiver gets every batch of the stream from now on, in order.
    pub fn start(
        url: &str,
        symbols: usize,
        status: Arc<Status>,
    ) -> Result<(Market, tokio::sync::mpsc::Receiver<Vec<Quote>>), String> {
        let client = redis::Client::open(url).map_err(|e| format!("cluster.redis_url: {e}"))?;
        let mut con = connect_to(&client).map_err(|e| format!("cluster: Redis at {url}: {e}"))?;
        // From the stream's end as it is now: what came before is in this node's journal.
        let tip = tip(&mut con).map_err(|e| format!("cluster: Redis at {url}: {e}"))?;
        let (batches, queued) = std::sync::mpsc::sync_channel(QUEUE);
        let (to_hot, from_market) = tokio::sync::mpsc::channel(AHEAD);
        let publisher = {
            let client = client.clone();
            Background::spawn("sg-quotes-out", move |stop| publish_loop(&client, &queued, stop))?
        };
        let reader = Background::spawn("sg-quotes-in", move |stop| {
            read_loop(&client, Some(con), tip, symbols, &to_hot, &status, stop)
        })?;
        let market = Market { publisher: Arc::new(Publisher { batches }), _threads: [publisher, reader] };
        Ok((market, from_market))
    }

    /// What the hot core publishes with.
    pub fn publisher(&self) -> Arc<Publisher> {
        self.publisher.clone()
    }
}

/// The id of the stream's last entry (`0-0` when it has none).
fn tip(con: &mut redis::Connection) -> redis::RedisResult<String> {
    let last: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XREVRANGE").arg(key("quotes")).arg("+").arg("-").arg("COUNT").arg(1).query(con)?;
    Ok(last.into_iter().next().map_or_else(|| "0-0".to_string(), |(id, _)| id))
}

fn encode(quotes: &[Quote]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(quotes.len() * 48);
    for q in quotes {
        let _ = write!(s, "{} {} {} {} {} {};", q.symbol.0, q.bid, q.ask, q.bid_size, q.ask_size, q.ts);
    }
    s
}

/// The quotes of one entry; those that cannot be one of this cluster's are left out.
fn decode(text: &str, symbols: usize) -> Vec<Quote> {
    text.split(';')
        .filter_map(|q| {
            let mut f = q.split(' ').map(str::parse::<i64>);
            let mut next = || f.next().and_then(Result::ok);
            let (symbol, bid, ask, bid_size, ask_size, ts) = (next()?, next()?, next()?, next()?, next()?, next()?);
            let ok = (0..symbols as i64).contains(&symbol) && 0 < bid && bid <= ask && bid_size >= 0 && ask_size >= 0;
            ok.then(|| Quote { symbol: SymbolId(symbol as u16), bid, ask, bid_size, ask_size, ts: ts.max(0) as u64 })
        })
        .collect()
}

fn publish_loop(client: &redis::Client, queued: &Receiver<Batch>, stop: &AtomicBool) {
    let mut con: Option<redis::Connection> = None;
    while !stop.load(Ordering::Acquire) {
        let (quotes, done) = match queued.recv_timeout(Duration::from_millis(100)) {
            Ok(b) => b,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if con.is_none() {
            con = connect_to(client).ok();
        }
        let added = con.as_mut().is_some_and(|c| {
            redis::cmd("XADD")
                .arg(key("quotes"))
                .arg("MAXLEN")
                .arg("~")
                .arg(KEEP)
                .arg("*")
                .arg("q")
                .arg(encode(&quotes))
                .query::<String>(c)
                .is_ok()
        });
        if !added {
            con = None;
        }
        let _ = done.send(added);
    }
}

type Entries = Vec<(String, Vec<(String, Vec<(String, String)>)>)>;

fn read_loop(
    client: &redis::Client,
    mut con: Option<redis::Connection>,
    mut last: String,
    symbols: usize,
    to_hot: &tokio::sync::mpsc::Sender<Vec<Quote>>,
    status: &Status,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Acquire) {
        let Some(c) = con.as_mut() else {
            std::thread::sleep(Duration::from_millis(100));
            con = connect_to(client).ok();
            if let Some(c) = con.as_mut() {
                // Redis may have come back empty: its ids then start again below ours.
                match tip(c) {
                    Ok(t) if before(&t, &last) => last = "0-0".into(),
                    Ok(_) => {}
                    Err(_) => con = None,
                }
            }
            continue;
        };
        let read: redis::RedisResult<Option<Entries>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(key("quotes"))
            .arg(&last)
            .query(c);
        match read {
            Ok(Some(streams)) => {
                for (_, entries) in streams {
                    for (id, fields) in entries {
                        let quotes: Vec<Quote> =
                            fields.iter().filter(|(k, _)| k == "q").flat_map(|(_, v)| decode(v, symbols)).collect();
                        last = id;
                        if !quotes.is_empty() && to_hot.blocking_send(quotes).is_err() {
                            return;
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(_) => {
                con = None;
                status.note_loss();
            }
        }
    }
}

/// Whether stream id `a` comes before `b` (`ms-n`).
fn before(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (ms, n) = s.split_once('-').unwrap_or((s, "0"));
        (ms.parse::<u64>().unwrap_or(0), n.parse::<u64>().unwrap_or(0))
    };
    parse(a) < parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_read_back_as_written_and_bad_ones_are_left_out() {
        let q = |s: u16, bid, ask| Quote { symbol: SymbolId(s), bid, ask, bid_size: 5, ask_size: 7, ts: 99 };
        let quotes = [q(0, 100, 101), q(1, 2000, 2005)];
        assert_eq!(decode(&encode(&quotes), 2), quotes);
        assert_eq!(decode(&encode(&quotes), 1), [quotes[0]], "a symbol this node lacks");
        assert_eq!(decode("0 101 100 1 1 1;0 x 1 1 1 1;", 1), [], "crossed, or not numbers");
        assert!(before("1-5", "2-0") && before("1-5", "1-6") && !before("3-0", "2-9"));
    }
}
