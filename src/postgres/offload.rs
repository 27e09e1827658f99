//! The offloader: copies the journal into PostgreSQL, exactly once, off the hot core.
//!
//! The hot core has no part in it. A reader thread follows the journal's mapping
//! ([`crate::journal::follow`]) up to what the journal says is stable (synced, unless
//! `fsync = "never"`), with a follower engine of its own (so that each row carries the state after
//! its event: an order's status, an account's; a fill brings its realized P&L and the position it
//! leaves), and builds
//! batches bounded by events and by time. A writer thread (tokio current-thread runtime,
//! tokio-postgres) writes each batch with binary `COPY` while the reader builds the next. The offload cursor moves in the same transaction as the rows,
//! so a batch is in the database whole or not at all, and a restart — of the node or of
//! PostgreSQL — continues from the cursor: nothing is lost and nothing is inserted twice.
//!
//! Falling behind costs nothing on the hot core: there is no queue to fill, the journal is the
//! backlog. While PostgreSQL is unreachable the node keeps trading, `/ready` says
//! `postgres: degraded` with the lag, and the offloader reconnects with backoff and catches up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::Client;

use super::copy::CopyBuf;
use super::migrate::describe;
use super::rollup;
use crate::config::Config;
use crate::engine::event::{Adoptions, Event, EventKind};
use crate::engine::order::Order;
use crate::engine::position::Holding;
use crate::engine::symbol::SymbolTable;
use crate::engine::types::{AccountId, KeyId, Nanos, SymbolId};
use crate::engine::venue::NoVenue;
use crate::engine::Engine;
use crate::fixed::MONEY_DECIMALS;
use crate::journal::follow::{self, Follower, Limit};
use crate::journal::Watermarks;

/// Wait between looks at the journal when there is nothing to offload.
const POLL: Duration = Duration::from_millis(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping node keeps offloading what was stable at the stop.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Where the offload stands; read by `/ready` and `/metrics` on the hot core.
pub struct Shared {
    /// How far the journal is: what is stable may be offloaded.
    marks: Arc<Watermarks>,
    /// Last sequence number committed to PostgreSQL (the cursor), once read.
    offloaded: AtomicU64,
    /// Whether `offloaded` has been read from the database.
    cursor_known: AtomicBool,
    /// Unix ns since when events have been waiting (0: none waiting).
    waiting_since: AtomicU64,
    state: AtomicU8,
    reason: AtomicU8,
    batches: AtomicU64,
    events: AtomicU64,
    rows: AtomicU64,
    last_batch_events: AtomicU64,
    copy_ns: AtomicU64,
    failures: AtomicU64,
    /// Events that must not reach the database although the journal holds them (a cluster
    /// node's events that Redis never had, of accounts that moved away).
    excluded: std::sync::OnceLock<Exclude>,
    /// Accounts another node owned, whose events there this node writes (see [`Shared::import`]).
    imports: std::sync::Mutex<Vec<Import>>,
}

/// Another node's events of an account this node took, for the database (see
/// [`Shared::import`]).
struct Import {
    account: AccountId,
    history: Vec<Origin>,
    done: std::sync::mpsc::Sender<Result<usize, String>>,
}

/// An event of an account's stream in Redis with the node that wrote it (`None`: an entry from
/// before streams named nodes). A checkpoint's events are numbered 0: state, not history.
pub type Origin = (Option<String>, Event);

/// Says whether an event must stay out of the database.
pub type Exclude = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// The offloader's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not connected yet.
    Connecting = 0,
    /// Connected and offloading.
    Ok = 1,
    /// PostgreSQL cannot be used; events wait in the journal.
    Degraded = 2,
}

/// Why the offload is degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Nothing wrong.
    None = 0,
    /// No connection (down, restarting, wrong address, timeout).
    Unreachable = 1,
    /// PostgreSQL refused (credentials, permissions, schema not migrated).
    Refused = 2,
    /// The journal does not hold what the database expects next.
    Journal = 3,
}

impl Reason {
    /// Name shown in `/ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "",
            Reason::Unreachable => "postgres.unreachable",
            Reason::Refused => "postgres.refused",
            Reason::Journal => "postgres.journal_mismatch",
        }
    }
}

/// What `/ready` reports.
#[derive(Debug, Clone, Copy)]
pub struct Status {
    /// Connection state.
    pub state: State,
    /// Why degraded.
    pub reason: Reason,
    /// Stable events not yet in the database.
    pub lag_events: u64,
    /// How long the oldest of them has waited.
    pub lag_seconds: f64,
    /// The database's cursor (when known).
    pub offloaded: Option<u64>,
}

impl Shared {
    /// The offload of the journal whose watermarks are `marks`.
    pub fn new(marks: Arc<Watermarks>) -> Shared {
        Shared {
            marks,
            offloaded: AtomicU64::new(0),
            cursor_known: AtomicBool::new(false),
            waiting_since: AtomicU64::new(0),
            state: AtomicU8::new(State::Connecting as u8),
            reason: AtomicU8::new(Reason::None as u8),
            batches: AtomicU64::new(0),
            events: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            last_batch_events: AtomicU64::new(0),
            copy_ns: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            excluded: std::sync::OnceLock::new(),
            imports: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Writes the rows of an account that moved here from the events its earlier owners
    /// journaled (`history`: its stream in Redis as it rebuilds the account, from its creation or
    /// a checkpoint on) that their offload had not committed:
    /// what a node that died before its offload caught up would otherwise never bring. Rows are
    /// merged, so one already there (written by the old owner, back again, or by an earlier
    /// import) stays once. Done by the offloader's connection between batches; the receiver gets
    /// the rows written, or why not.
    pub fn import(&self, account: AccountId, history: Vec<Origin>) -> std::sync::mpsc::Receiver<Result<usize, String>> {
        let (done, rx) = std::sync::mpsc::channel();
        if let Ok(mut q) = self.imports.lock() {
            // One per account: a newer request replaces one still waiting.
            q.retain(|i| i.account != account);
            q.push(Import { account, history, done });
        }
        rx
    }

    /// Keeps the events `exclude` names out of the database (set once, before the offload
    /// starts).
    pub fn exclude(&self, exclude: Exclude) {
        let _ = self.excluded.set(exclude);
    }

    /// Events up to here may be dropped from the journal (the database has them); 0 until the
    /// offloader has read its cursor.
    pub fn prune_floor(&self) -> u64 {
        if self.cursor_known.load(Ordering::Acquire) {
            self.offloaded.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// The state, for `/ready` and `/metrics`.
    pub fn status(&self, now: Nanos) -> Status {
        let state = match self.state.load(Ordering::Acquire) {
            1 => State::Ok,
            2 => State::Degraded,
            _ => State::Connecting,
        };
        let reason = match self.reason.load(Ordering::Acquire) {
            1 => Reason::Unreachable,
            2 => Reason::Refused,
            3 => Reason::Journal,
            _ => Reason::None,
        };
        let known = self.cursor_known.load(Ordering::Acquire);
        let offloaded = self.offloaded.load(Ordering::Acquire);
        let stable = self.marks.stable();
        let lag_events = stable.saturating_sub(offloaded);
        let since = self.waiting_since.load(Ordering::Acquire);
        let lag_seconds = if lag_events > 0 && since > 0 { now.saturating_sub(since) as f64 / 1e9 } else { 0.0 };
        Status { state, reason, lag_events, lag_seconds, offloaded: known.then_some(offloaded) }
    }

    /// Appends the offload metrics in Prometheus text format.
    pub fn render_metrics(&self, now: Nanos, out: &mut Vec<u8>) {
        use std::io::Write;
        let s = self.status(now);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let lines: [(&str, &str, &str, String); 9] = [
            ("offload_lag_events", "gauge", "Stable journal events not yet in PostgreSQL.", s.lag_events.to_string()),
            (
                "offload_lag_seconds",
                "gauge",
                "How long the oldest event not yet in PostgreSQL has waited.",
                format!("{:.3}", s.lag_seconds),
            ),
            (
                "offload_connected",
                "gauge",
                "1 while the offloader is connected to PostgreSQL.",
                u8::from(s.state == State::Ok).to_string(),
            ),
            (
                "offload_seq",
                "gauge",
                "The offload cursor: last event in PostgreSQL.",
                s.offloaded.unwrap_or(0).to_string(),
            ),
            ("offload_batches_total", "counter", "Batches committed to PostgreSQL.", get(&self.batches).to_string()),
            (
                "offload_events_total",
                "counter",
                "Journal events committed to PostgreSQL.",
                get(&self.events).to_string(),
            ),
            ("offload_rows_total", "counter", "Rows written to PostgreSQL.", get(&self.rows).to_string()),
            (
                "offload_last_batch_events",
                "gauge",
                "Events in the last committed batch.",
                get(&self.last_batch_events).to_string(),
            ),
            (
                "offload_copy_seconds_total",
                "counter",
                "Time spent in the COPY transactions.",
                format!("{:.6}", get(&self.copy_ns) as f64 / 1e9),
            ),
        ];
        for (name, kind, help, v) in lines {
            let _ = writeln!(
                out,
                "# HELP signalgate_{name} {help}\n# TYPE signalgate_{name} {kind}\nsignalgate_{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP signalgate_offload_failures_total Failed connections and batches.\n# TYPE signalgate_offload_failures_total counter\nsignalgate_offload_failures_total {}",
            get(&self.failures)
        );
    }

    fn set_state(&self, state: State, reason: Reason) {
        self.state.store(state as u8, Ordering::Release);
        self.reason.store(reason as u8, Ordering::Release);
    }

    /// `batch` was committed. When it held every event that was stable as it was sealed, any
    /// event still waiting arrived after that; a full batch says nothing about the ones after it.
    fn note_committed(&self, batch: &Sealed) {
        if self.marks.stable() <= batch.last {
            self.waiting_since.store(0, Ordering::Release);
        } else if batch.reached_stable || self.waiting_since.load(Ordering::Acquire) == 0 {
            self.waiting_since.store(batch.sealed_at, Ordering::Release);
        }
    }

    /// No progress right now: if events wait and no earlier time is known, they wait since `now`.
    fn note_stalled(&self, now: Nanos) {
        let waiting = self.marks.stable() > self.offloaded.load(Ordering::Acquire);
        if !waiting {
            self.waiting_since.store(0, Ordering::Release);
        } else if self.waiting_since.load(Ordering::Acquire) == 0 {
            self.waiting_since.store(now, Ordering::Release);
        }
    }
}

/// The offloader thread; stops (after a last batch when it can) when dropped.
pub struct Offloader {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Offloader {
    /// Starts offloading the journal of `cfg` (after the node's replay) to `postgres.url`: a
    /// reader thread that turns journal events into batches, and a writer thread that commits
    /// them, so reading the next batch overlaps the COPY of the last.
    pub fn spawn(cfg: &Config, shared: Arc<Shared>, core: Option<usize>) -> std::io::Result<Offloader> {
        let stop = Arc::new(AtomicBool::new(false));
        let (batches_tx, batches) = tokio::sync::mpsc::channel(2);
        let (starts, starts_rx) = std::sync::mpsc::channel();
        let pin = move || {
            if let Some(core) = core {
                crate::cores::pin_current_thread(core);
            }
        };
        let reader = {
            let (cfg, shared, stop) = (cfg.clone(), shared.clone(), stop.clone());
            std::thread::Builder::new().name("sg-offload-read".into()).spawn(move || {
                pin();
                read_batches(&cfg, &shared, &stop, &starts_rx, &batches_tx);
            })?
        };
        let (cfg, flag) = (cfg.clone(), stop.clone());
        let writer = std::thread::Builder::new().name("sg-offload".into()).spawn(move || {
            pin();
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(run(&cfg, &shared, &flag, Reader { starts, batches })),
                Err(e) => log::error!("postgres: cannot start the offload runtime: {e}; nothing is offloaded"),
            }
        })?;
        Ok(Offloader { stop, threads: vec![writer, reader] })
    }
}

impl Drop for Offloader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A failure, classified for `/ready`.
struct Failure {
    reason: Reason,
    message: String,
}

impl Failure {
    fn journal(message: String) -> Failure {
        Failure { reason: Reason::Journal, message }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        let reason = if e.code().is_some() { Reason::Refused } else { Reason::Unreachable };
        Failure { reason, message: describe(&e) }
    }
}

/// Tells the reader thread where to (re)start: after `cursor`, tagging its batches `generation`.
struct Start {
    cursor: u64,
    generation: u64,
}

/// What the reader thread sends: a batch, or why it cannot read the journal.
type FromReader = (u64, Result<Sealed, String>);

/// The writer's end of the reader thread.
struct Reader {
    starts: std::sync::mpsc::Sender<Start>,
    batches: tokio::sync::mpsc::Receiver<FromReader>,
}

/// Where the writer stands between connections.
#[derive(Default)]
struct Progress {
    /// Batches from an older generation are dropped.
    generation: u64,
    /// The first event of the next batch the reader will send (0: the reader must be restarted).
    next: u64,
    /// A batch taken from the reader and not yet known to be committed.
    held: Option<Sealed>,
}

async fn run(cfg: &Config, shared: &Shared, stop: &AtomicBool, mut reader: Reader) {
    let target = match super::connect::Target::parse(&cfg.postgres.url) {
        Ok(t) => t,
        Err(e) => {
            // check-config refuses this; here for a URL from the environment.
            log::error!("postgres: postgres.url is not a valid connection string ({e}); nothing is offloaded");
            shared.set_state(State::Degraded, Reason::Refused);
            return;
        }
    };
    let mut progress = Progress::default();
    let mut backoff = FIRST_BACKOFF;
    let mut last_error = String::new();
    loop {
        let outcome = async {
            let connect = target.config.connect(target.tls.clone());
            let (client, connection) =
                tokio::time::timeout(CONNECT_TIMEOUT, connect).await.map_err(|_| Failure {
                    reason: Reason::Unreachable,
                    message: format!("cannot connect within {} s", CONNECT_TIMEOUT.as_secs()),
                })??;
            let driver = tokio::spawn(connection);
            let result = session(cfg, shared, &client, &mut reader, &mut progress, stop).await;
            drop(client);
            let _ = driver.await;
            result
        }
        .await;
        match outcome {
            Ok(()) => return,
            Err(f) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                shared.set_state(State::Degraded, f.reason);
                shared.note_stalled(crate::clock::now());
                if f.reason == Reason::Journal {
                    progress.next = 0;
                }
                if f.message != last_error {
                    log::error!(
                        "postgres: offload stopped: {}; the node keeps trading, events wait in the journal (retrying)",
                        f.message
                    );
                    last_error = f.message;
                }
            }
        }
        let slept = Instant::now();
        while slept.elapsed() < backoff {
            if stop.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if shared.state.load(Ordering::Acquire) == State::Ok as u8 {
            backoff = FIRST_BACKOFF;
        }
    }
}

/// One connection's work: read the cursor, then commit the reader's batches until stopped or a
/// failure.
async fn session(
    cfg: &Config,
    shared: &Shared,
    client: &Client,
    reader: &mut Reader,
    progress: &mut Progress,
    stop: &AtomicBool,
) -> Result<(), Failure> {
    // Its row in `offload_cursor`: on a cluster node its node id, unique in the cluster.
    let node = if cfg.cluster.enabled() { cfg.cluster.node_id.as_str() } else { cfg.node.name.as_str() };
    if let Err(e) = client.batch_execute(STAGING).await {
        let mut f = Failure::from(e);
        if f.message.contains("does not exist") {
            f.message += " (the schema is missing: run `signalgate migrate` or set postgres.migrate = true)";
        }
        return Err(f);
    }
    client
        .execute(
            "INSERT INTO offload_cursor (node, last_seq, updated_at) VALUES ($1, 0, now()) ON CONFLICT (node) DO NOTHING",
            &[&node],
        )
        .await?;
    let mut cursor = read_cursor(client, node).await?;
    let stable = shared.marks.stable();
    if cursor > stable {
        return Err(Failure::journal(format!(
            "the database's cursor for node {node:?} is at seq {cursor}, past the end of this journal (seq {stable}): is this the node's data directory?"
        )));
    }
    shared.offloaded.store(cursor, Ordering::Release);
    shared.cursor_known.store(true, Ordering::Release);
    // A batch taken before the connection broke: drop it if it was committed after all, retry
    // it, or restart the reader from the cursor.
    let continues = match &progress.held {
        Some(b) if b.last == cursor => {
            progress.held = None;
            true
        }
        Some(b) => b.first == cursor + 1,
        None => progress.next == cursor + 1,
    };
    if !continues {
        progress.generation += 1;
        progress.held = None;
        progress.next = cursor + 1;
        let start = Start { cursor, generation: progress.generation };
        if reader.starts.send(start).is_err() {
            return Ok(()); // the reader has stopped: the node is stopping
        }
    }
    shared.set_state(State::Ok, Reason::None);
    log::info!("postgres: offloading events after seq {cursor}");
    let mut stopping_since: Option<Instant> = None;
    loop {
        imports(cfg, shared, client).await?;
        if progress.held.is_none() {
            let received = tokio::select! {
                r = reader.batches.recv() => r,
                () = tokio::time::sleep(POLL) => {
                    // Nothing sealed yet: look at the stop flag and the lag again.
                    shared.note_stalled(crate::clock::now().saturating_sub(POLL.as_nanos() as u64));
                    // Stopping: the reader hands over what was stable and finishes; do not wait
                    // for it for ever.
                    if stop.load(Ordering::Acquire) && stopping_since.get_or_insert_with(Instant::now).elapsed() > STOP_GRACE {
                        return Ok(());
                    }
                    continue;
                }
            };
            let Some((generation, batch)) = received else {
                return Ok(()); // the reader finished: the node is stopping
            };
            if generation != progress.generation {
                continue;
            }
            let batch = batch.map_err(Failure::journal)?;
            progress.next = batch.last + 1;
            progress.held = Some(batch);
        }
        let Some(batch) = &progress.held else { continue };
        let started = Instant::now();
        commit(client, Some((node, cursor)), batch).await?;
        cursor = batch.last;
        shared.copy_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        shared.batches.fetch_add(1, Ordering::Relaxed);
        shared.events.fetch_add(batch.events as u64, Ordering::Relaxed);
        shared.rows.fetch_add(batch.rows as u64, Ordering::Relaxed);
        shared.last_batch_events.store(batch.events as u64, Ordering::Relaxed);
        shared.offloaded.store(cursor, Ordering::Release);
        shared.note_committed(batch);
        progress.held = None;
    }
}

/// The reader thread: from each [`Start`], reads stable events into batches (bounded by
/// `postgres.batch_events` and `postgres.batch_ms`) and hands them to the writer, waiting when
/// the writer is two batches behind.
fn read_batches(
    cfg: &Config,
    shared: &Shared,
    stop: &AtomicBool,
    starts: &std::sync::mpsc::Receiver<Start>,
    out: &tokio::sync::mpsc::Sender<FromReader>,
) {
    let batch_time = Duration::from_millis(cfg.postgres.batch_ms);
    let mut mirror: Option<(Mirror, u64)> = None;
    let mut opened = Instant::now();
    let mut stopping_since: Option<Instant> = None;
    loop {
        while let Ok(start) = starts.try_recv() {
            let started = Instant::now();
            match Mirror::at(cfg, start.cursor, &shared.marks) {
                Ok(m) => {
                    log::info!(
                        "postgres: offload reads the journal after seq {} (positioned in {:.3} s)",
                        start.cursor,
                        started.elapsed().as_secs_f64()
                    );
                    mirror = Some((m, start.generation));
                }
                Err(e) => {
                    mirror = None;
                    if out.blocking_send((start.generation, Err(e))).is_err() {
                        return;
                    }
                }
            }
            opened = Instant::now();
        }
        if stop.load(Ordering::Acquire) && stopping_since.get_or_insert_with(Instant::now).elapsed() > STOP_GRACE {
            return;
        }
        let Some((m, generation)) = mirror.as_mut() else {
            if stopping_since.is_some() {
                return; // never started: nothing to hand over
            }
            std::thread::sleep(POLL);
            continue;
        };
        let stable = shared.marks.stable();
        if let Err(e) = m.read(stable, cfg.postgres.batch_events - m.open.events, shared.excluded.get()) {
            let generation = *generation;
            mirror = None;
            if out.blocking_send((generation, Err(e))).is_err() {
                return;
            }
            continue;
        }
        let stopping = stopping_since.is_some();
        let full = m.open.events >= cfg.postgres.batch_events;
        if m.open.events > 0 && (full || stopping || opened.elapsed() >= batch_time) {
            let sealed = m.seal(stable);
            if out.blocking_send((*generation, Ok(sealed))).is_err() {
                return;
            }
            opened = Instant::now();
        } else if stopping && m.open.events == 0 {
            return; // everything stable at the stop was handed over
        } else if !full {
            std::thread::sleep(POLL);
        }
    }
}

/// Does the imports waiting (see [`Shared::import`]); `Err` when the connection broke.
async fn imports(cfg: &Config, shared: &Shared, client: &Client) -> Result<(), Failure> {
    loop {
        let Some(job) = shared.imports.lock().ok().and_then(|mut q| q.pop()) else { return Ok(()) };
        let result = import(cfg, client, &job.history).await;
        let _ = job.done.send(result.as_ref().map(|n| *n).map_err(|f| f.message.clone()));
        if client.is_closed() {
            return result.map(|_| ());
        }
    }
}

/// Writes the rows of the events in `history` (an account's stream) that were journaled by
/// another node and are past that node's offload cursor, merged; the rows written.
async fn import(cfg: &Config, client: &Client, history: &[Origin]) -> Result<usize, Failure> {
    let me = cfg.cluster.node_id.as_str();
    let mut origins: Vec<&str> = history.iter().filter_map(|(o, _)| o.as_deref()).filter(|o| *o != me).collect();
    origins.sort_unstable();
    origins.dedup();
    if origins.is_empty() {
        return Ok(0);
    }
    let cursors: HashMap<String, u64> = client
        .query("SELECT node, last_seq FROM offload_cursor WHERE node = ANY($1)", &[&origins])
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
        .collect();
    // The account as each event left it, from its creation (or a checkpoint, whose events are
    // numbered 0: state, not events to write) on.
    let mut engine = crate::node::follower_engine(cfg);
    let mut batch = Batch::default();
    for (origin, e) in history {
        engine.apply_event(e);
        let Some(origin) = origin.as_deref().filter(|o| *o != me) else { continue };
        if e.seq > cursors.get(origin).copied().unwrap_or(0) {
            add_event(&engine, &mut batch, &Event { seq: crate::config::node_base(origin) + e.seq, ..*e });
        }
    }
    if batch.events == 0 {
        return Ok(0);
    }
    let sealed = batch.seal(engine.symbols(), &MERGED, 0, 0);
    commit(client, None, &sealed).await?;
    Ok(sealed.rows)
}

async fn read_cursor(client: &Client, node: &str) -> Result<u64, Failure> {
    let row = client.query_one("SELECT last_seq FROM offload_cursor WHERE node = $1", &[&node]).await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Session-local staging tables: rows copied here are merged into their table with one upsert
/// (for the tables whose rows change, and on a cluster node for all of an account's).
const STAGING: &str = "
CREATE TEMP TABLE IF NOT EXISTS stage_accounts (LIKE accounts) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_api_keys (LIKE api_keys) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_orders (LIKE orders) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_fills (LIKE fills) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_position_snapshots (LIKE position_snapshots) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_signals (LIKE signals) ON COMMIT DELETE ROWS;
";

/// Where each table's rows go: the COPY, and for staged rows the merge after it.
struct Target {
    copy: &'static str,
    merge: Option<&'static str>,
    /// Where the database keeps rollups (plain PostgreSQL, see [`rollup`]): how the rows go
    /// instead, when not as above.
    rolled: Option<&'static Target>,
}

/// Fills where the database keeps rollups: staged, then merged with their P&L.
const FILLS_ROLLED: Target = Target {
    copy: "COPY stage_fills (ts, seq, order_id, account_id, symbol, side, qty, price, notional, fee, realized) FROM STDIN (FORMAT binary)",
    merge: Some(rollup::FILLS),
    rolled: None,
};

/// Where a batch's rows go, table by table.
struct Targets {
    accounts: Target,
    api_keys: Target,
    /// Orders the batch accepted (None: with the changed ones).
    new_orders: Option<Target>,
    orders: Target,
    fills: Target,
    positions: Target,
    signals: Target,
    market_data: Target,
}

/// A standalone node's: each event is offloaded once, by this node, in journal order.
const DIRECT: Targets = Targets {
    accounts: Target {
        copy: "COPY stage_accounts (account_id, name, tier, initial_cash, state, created_at, updated_at, seq) FROM STDIN (FORMAT binary)",
        merge: Some(
            "INSERT INTO accounts SELECT * FROM stage_accounts ON CONFLICT (account_id) DO UPDATE SET
             name = EXCLUDED.name, tier = EXCLUDED.tier, state = EXCLUDED.state, updated_at = EXCLUDED.updated_at, seq = EXCLUDED.seq",
        ),
        rolled: None,
    },
    api_keys: Target {
        copy: "COPY stage_api_keys (key_id, account_id, key_sha256, feed, created_at, revoked_at, seq) FROM STDIN (FORMAT binary)",
        merge: Some(
            "INSERT INTO api_keys SELECT * FROM stage_api_keys ON CONFLICT (key_id) DO UPDATE SET
             feed = EXCLUDED.feed, revoked_at = EXCLUDED.revoked_at, seq = EXCLUDED.seq",
        ),
        rolled: None,
    },
    // No row can exist yet: straight in.
    new_orders: Some(Target {
        copy: "COPY orders (order_id, account_id, symbol, side, order_type, tif, qty, limit_price, strategy, status, filled_qty, created_at, updated_at, seq) FROM STDIN (FORMAT binary)",
        merge: None,
        rolled: None,
    }),
    orders: Target {
        copy: "COPY stage_orders (order_id, account_id, symbol, side, order_type, tif, qty, limit_price, strategy, status, filled_qty, created_at, updated_at, seq) FROM STDIN (FORMAT binary)",
        merge: Some(
            "INSERT INTO orders SELECT * FROM stage_orders ON CONFLICT (order_id) DO UPDATE SET
             status = EXCLUDED.status, filled_qty = EXCLUDED.filled_qty, updated_at = EXCLUDED.updated_at, seq = EXCLUDED.seq",
        ),
        rolled: None,
    },
    fills: Target {
        copy: "COPY fills (ts, seq, order_id, account_id, symbol, side, qty, price, notional, fee, realized) FROM STDIN (FORMAT binary)",
        merge: None,
        rolled: Some(&FILLS_ROLLED),
    },
    positions: Target {
        copy: "COPY position_snapshots (ts, seq, account_id, symbol, qty, cost, realized, fees) FROM STDIN (FORMAT binary)",
        merge: None,
        rolled: None,
    },
    signals: Target {
        copy: "COPY signals (ts, seq, account_id, signal_id, order_id, outcome, reject_code) FROM STDIN (FORMAT binary)",
        merge: None,
        rolled: None,
    },
    market_data: Target {
        copy: "COPY market_data (ts, seq, symbol, bid, ask, bid_size, ask_size) FROM STDIN (FORMAT binary)",
        merge: None,
        rolled: None,
    },
};

/// A cluster node's. An account's events can reach the database from two nodes: the owner that
/// journaled them, and the node that took the account after it died (see [`Shared::import`]),
/// or the owner coming back after that. Each event's rows carry the same key from either (its
/// cluster-wide sequence number, see [`Mirror::at`]), so a row already there is left alone,
/// and a changing row (an order, an account) is never set back to an older state.
const MERGED: Targets = Targets {
    accounts: Target {
        copy: DIRECT.accounts.copy,
        merge: Some(
            "INSERT INTO accounts SELECT * FROM stage_accounts ON CONFLICT (account_id) DO UPDATE SET
             name = EXCLUDED.name, tier = EXCLUDED.tier, state = EXCLUDED.state, updated_at = EXCLUDED.updated_at, seq = EXCLUDED.seq
             WHERE accounts.updated_at <= EXCLUDED.updated_at",
        ),
        rolled: None,
    },
    api_keys: Target {
        copy: DIRECT.api_keys.copy,
        // A revocation is for good.
        merge: Some(
            "INSERT INTO api_keys SELECT * FROM stage_api_keys ON CONFLICT (key_id) DO UPDATE SET
             revoked_at = EXCLUDED.revoked_at, seq = EXCLUDED.seq
             WHERE api_keys.revoked_at IS NULL AND EXCLUDED.revoked_at IS NOT NULL",
        ),
        rolled: None,
    },
    new_orders: None,
    orders: Target {
        copy: DIRECT.orders.copy,
        merge: Some(
            "INSERT INTO orders SELECT * FROM stage_orders ON CONFLICT (order_id) DO UPDATE SET
             status = EXCLUDED.status, filled_qty = EXCLUDED.filled_qty, updated_at = EXCLUDED.updated_at, seq = EXCLUDED.seq
             WHERE orders.updated_at <= EXCLUDED.updated_at",
        ),
        rolled: None,
    },
    fills: Target {
        copy: FILLS_ROLLED.copy,
        merge: Some("INSERT INTO fills SELECT * FROM stage_fills ON CONFLICT DO NOTHING"),
        rolled: Some(&FILLS_ROLLED),
    },
    positions: Target {
        copy: "COPY stage_position_snapshots (ts, seq, account_id, symbol, qty, cost, realized, fees) FROM STDIN (FORMAT binary)",
        merge: Some("INSERT INTO position_snapshots SELECT * FROM stage_position_snapshots ON CONFLICT DO NOTHING"),
        rolled: None,
    },
    signals: Target {
        copy: "COPY stage_signals (ts, seq, account_id, signal_id, order_id, outcome, reject_code) FROM STDIN (FORMAT binary)",
        merge: Some("INSERT INTO signals SELECT * FROM stage_signals ON CONFLICT DO NOTHING"),
        rolled: None,
    },
    // Quotes are each node's own: never written by two.
    market_data: Target { copy: DIRECT.market_data.copy, merge: None, rolled: None },
};

/// Writes one batch and, given the node and its cursor, moves the cursor from there to the
/// batch's last event, in one transaction.
async fn commit(client: &Client, cursor: Option<(&str, u64)>, batch: &Sealed) -> Result<(), Failure> {
    client.batch_execute("BEGIN").await?;
    let result = async {
        // The cursor's table first: a migration that makes the rollups holds it while it fills
        // them (schema/0006_rollups.sql), so that what comes next sees whether they exist.
        if cursor.is_none() {
            client.batch_execute("LOCK TABLE offload_cursor IN ROW EXCLUSIVE MODE").await?;
        }
        if let Some((node, cursor)) = cursor {
            let moved = client
                .execute(
                    "UPDATE offload_cursor SET last_seq = $3, updated_at = now() WHERE node = $1 AND last_seq = $2",
                    &[&node, &(cursor as i64), &(batch.last as i64)],
                )
                .await?;
            if moved != 1 {
                return Err(Failure::journal(format!(
                    "the offload cursor of node {node:?} moved away from seq {cursor}: is another node offloading under the same name?"
                )));
            }
        }
        let rollups = rollup::kept(client).await?;
        for (target, rows) in &batch.copies {
            let target = if rollups { target.rolled.unwrap_or(target) } else { target };
            let sink = client.copy_in(target.copy).await?;
            futures_util::pin_mut!(sink);
            sink.send(rows.clone()).await?;
            sink.finish().await?;
            if let Some(merge) = target.merge {
                client.execute(merge, &[]).await?;
            }
        }
        if let Some(candles) = batch.candles.as_ref().filter(|_| rollups) {
            rollup::merge(client, candles).await?;
        }
        client.batch_execute("COMMIT").await?;
        Ok(())
    }
    .await;
    if result.is_err() && !client.is_closed() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// The journal as the offloader has read it: a follower (its engine at the state after the last
/// event read), and the rows of the batch being built.
struct Mirror {
    follower: Follower,
    open: Batch,
    adoptions: Adoptions,
    /// What turns a journal sequence number into the rows' (see [`Mirror::at`]).
    base: u64,
    /// Where the rows go.
    targets: &'static Targets,
}

/// Rows collected for one batch.
#[derive(Default)]
struct Batch {
    first: u64,
    events: usize,
    accounts: HashMap<AccountId, AccountRow>,
    keys: HashMap<KeyId, KeyRow>,
    /// Orders changed by the batch, with the last event's seq and whether the batch accepted them.
    orders: HashMap<u64, (Order, u64, bool)>,
    fills: CopyBuf,
    /// The last state of each position the batch changed, with its fill's seq and time.
    positions: HashMap<(AccountId, SymbolId), (Holding, u64, Nanos)>,
    signals: CopyBuf,
    market_data: CopyBuf,
    /// The quotes' one-minute candles, for the rollups.
    minutes: rollup::Minutes,
}

/// A batch ready to commit (kept until it is, to retry after a broken connection).
struct Sealed {
    /// When it was closed.
    sealed_at: Nanos,
    /// Whether it holds every event that was stable when it was closed.
    reached_stable: bool,
    first: u64,
    last: u64,
    events: usize,
    rows: usize,
    copies: Vec<(&'static Target, Bytes)>,
    /// The quotes' candles, for the rollups.
    candles: Option<rollup::Candles>,
}

struct AccountRow {
    name: String,
    tier: String,
    initial_cash: i64,
    state: &'static str,
    created_at: Nanos,
    updated_at: Nanos,
    seq: u64,
}

struct KeyRow {
    account: AccountId,
    hash: [u8; 32],
    feed: bool,
    created_at: Nanos,
    revoked_at: Option<Nanos>,
    seq: u64,
}

impl Mirror {
    /// The engine's state after event `cursor`: the newest snapshot at or before it, then the
    /// journal up to it; reading on, no further than what is stable.
    ///
    /// A cluster node's rows carry each event's cluster-wide sequence number: its journal's plus
    /// the node's base (`ClusterConfig::order_id_base`, a range no other node's numbers reach),
    /// so that events of two nodes never share a key, and the node that takes an account writes
    /// the rows of its old owner's events under the keys that node gives them.
    fn at(cfg: &Config, cursor: u64, marks: &Arc<Watermarks>) -> Result<Mirror, String> {
        let engine = crate::node::follower_engine(cfg);
        let follower =
            Follower::start(&cfg.journal.dir, engine, follow::Start::After(cursor), Limit::Stable(marks.clone()))?;
        let targets = if cfg.cluster.enabled() { &MERGED } else { &DIRECT };
        let base = cfg.cluster.order_id_base();
        Ok(Mirror { follower, open: Batch::default(), adoptions: Adoptions::default(), base, targets })
    }

    /// Reads up to `max` stable events (up to `stable`) into the open batch.
    fn read(&mut self, stable: u64, max: usize, excluded: Option<&Exclude>) -> Result<(), String> {
        let Mirror { follower, open, adoptions, base, .. } = self;
        if open.events == 0 {
            open.first = follower.next_seq();
        }
        follower.advance(stable, max, |engine, e| {
            // What an adoption brought is the old owners' history: they offloaded it, or it was
            // imported when the account moved here.
            if !adoptions.imported(e) && !excluded.is_some_and(|x| x(e)) {
                add_event(engine, open, &Event { seq: *base + e.seq, ..*e });
            }
        })?;
        Ok(())
    }

    /// Closes the open batch (which has events); `stable` as of its last read.
    fn seal(&mut self, stable: u64) -> Sealed {
        let last = self.follower.next_seq() - 1;
        std::mem::take(&mut self.open).seal(self.follower.engine().symbols(), self.targets, last, stable)
    }
}

impl Batch {
    /// The batch as rows for `targets`: it reads the journal up to `last`, and `stable` was as
    /// of its last read.
    fn seal(mut self, symbols: &SymbolTable, targets: &'static Targets, last: u64, stable: u64) -> Sealed {
        let b = &mut self;
        let mut accounts = CopyBuf::new();
        for (id, a) in &b.accounts {
            accounts
                .row(8)
                .int4(id.0 as i32)
                .text(&a.name)
                .text(&a.tier)
                .numeric(a.initial_cash, MONEY_DECIMALS)
                .text(a.state)
                .timestamptz(a.created_at)
                .timestamptz(a.updated_at)
                .int8(a.seq as i64);
        }
        let mut keys = CopyBuf::new();
        for (id, k) in &b.keys {
            keys.row(7)
                .int4(id.0 as i32)
                .int4(k.account.0 as i32)
                .bytea(&k.hash)
                .bool(k.feed)
                .timestamptz(k.created_at);
            match k.revoked_at {
                Some(ts) => keys.timestamptz(ts),
                None => keys.null(),
            };
            keys.int8(k.seq as i64);
        }
        let (mut new_orders, mut changed_orders) = (CopyBuf::new(), CopyBuf::new());
        for (o, seq, new) in b.orders.values() {
            let spec = symbols.get(o.symbol);
            let orders = if *new && targets.new_orders.is_some() { &mut new_orders } else { &mut changed_orders };
            orders
                .row(14)
                .int8(o.id.0 as i64)
                .int4(o.account.0 as i32)
                .text(&spec.name)
                .text(o.side.as_str())
                .text(o.order_type.as_str())
                .text(o.tif.as_str())
                .numeric(o.qty, spec.qty_decimals);
            if o.limit_price == 0 {
                orders.null();
            } else {
                orders.numeric(o.limit_price, spec.price_decimals);
            }
            orders
                .text(o.strategy.as_str())
                .text(o.status.as_str())
                .numeric(o.filled_qty, spec.qty_decimals)
                .timestamptz(o.created_at)
                .timestamptz(o.updated_at)
                .int8(*seq as i64);
        }
        let mut positions = CopyBuf::new();
        for ((account, symbol), (p, seq, ts)) in &b.positions {
            let spec = symbols.get(*symbol);
            positions
                .row(8)
                .timestamptz(*ts)
                .int8(*seq as i64)
                .int4(account.0 as i32)
                .text(&spec.name)
                .numeric(p.qty, spec.qty_decimals)
                .numeric(p.cost, MONEY_DECIMALS)
                .numeric(p.realized, MONEY_DECIMALS)
                .numeric(p.fees, MONEY_DECIMALS);
        }
        let mut copies = Vec::new();
        let mut rows = 0;
        for (target, buf) in [
            (Some(&targets.accounts), &mut accounts),
            (Some(&targets.api_keys), &mut keys),
            (targets.new_orders.as_ref(), &mut new_orders),
            (Some(&targets.orders), &mut changed_orders),
            (Some(&targets.fills), &mut b.fills),
            (Some(&targets.positions), &mut positions),
            (Some(&targets.signals), &mut b.signals),
            (Some(&targets.market_data), &mut b.market_data),
        ] {
            if let Some(target) = target.filter(|_| buf.rows() > 0) {
                rows += buf.rows();
                copies.push((target, buf.finish()));
            }
        }
        let candles = std::mem::take(&mut b.minutes).seal(symbols);
        let (sealed_at, reached_stable) = (crate::clock::now(), last >= stable);
        Sealed { first: b.first, last, events: b.events, rows, copies, candles, sealed_at, reached_stable }
    }
}

/// Notes an order's new state for the batch (still new if the batch accepted it).
fn update_order(engine: &Engine<NoVenue>, b: &mut Batch, id: crate::engine::types::OrderId, seq: u64) {
    if let Some(o) = engine.order(id) {
        let new = b.orders.get(&id.0).is_some_and(|(_, _, new)| *new);
        b.orders.insert(id.0, (*o, seq, new));
    }
}

/// Adds the rows `e` makes to the batch, from the engine's state after it (`realized`: what a
/// fill realized).
fn add_event(engine: &Engine<NoVenue>, b: &mut Batch, e: &Event) {
    b.events += 1;
    match e.kind {
        EventKind::AccountCreated { account, .. } | EventKind::AccountStateChanged { account, .. } => {
            if let Some(a) = engine.account(account) {
                let tier = engine.tiers().get(usize::from(a.tier)).map_or("", |t| t.name.as_str());
                let row = AccountRow {
                    name: a.name.as_str().to_owned(),
                    tier: tier.to_owned(),
                    initial_cash: a.initial_cash,
                    state: a.state.as_str(),
                    created_at: a.created_at,
                    updated_at: e.ts,
                    seq: e.seq,
                };
                b.accounts.insert(account, row);
            }
        }
        EventKind::KeyAdded { key, .. } | EventKind::KeyRevoked { key } => {
            if let Some(k) = engine.key(key) {
                let revoked_at = match e.kind {
                    EventKind::KeyRevoked { .. } => Some(e.ts),
                    _ => b.keys.get(&key).and_then(|r| r.revoked_at),
                };
                let row = KeyRow {
                    account: k.account,
                    hash: k.hash,
                    feed: k.roles.feed,
                    created_at: k.created_at,
                    revoked_at,
                    seq: e.seq,
                };
                b.keys.insert(key, row);
            }
        }
        EventKind::OrderAccepted { order } => {
            if let Some(o) = engine.order(order.id) {
                b.orders.insert(order.id.0, (*o, e.seq, true));
            }
        }
        EventKind::OrderUpdated { order, .. } => update_order(engine, b, order, e.seq),
        EventKind::Fill { order, account, symbol, side, qty, price, notional, fee, realized, position } => {
            update_order(engine, b, order, e.seq);
            let spec = engine.symbols().get(symbol);
            b.fills
                .row(11)
                .timestamptz(e.ts)
                .int8(e.seq as i64)
                .int8(order.0 as i64)
                .int4(account.0 as i32)
                .text(&spec.name)
                .text(side.as_str())
                .numeric(qty, spec.qty_decimals)
                .numeric(price, spec.price_decimals)
                .numeric(notional, MONEY_DECIMALS)
                .numeric(fee, MONEY_DECIMALS)
                .numeric(realized, MONEY_DECIMALS);
            b.positions.insert((account, symbol), (position, e.seq, e.ts));
        }
        EventKind::Quote(q) => {
            let spec = engine.symbols().get(q.symbol);
            b.market_data
                .row(7)
                .timestamptz(q.ts)
                .int8(e.seq as i64)
                .text(&spec.name)
                .numeric(q.bid, spec.price_decimals)
                .numeric(q.ask, spec.price_decimals)
                .numeric(q.bid_size, spec.qty_decimals)
                .numeric(q.ask_size, spec.qty_decimals);
            b.minutes.quote(q.symbol, q.ts, e.seq, q.bid, q.ask);
        }
        EventKind::SignalAnswered { account, signal, answer } => {
            b.signals.row(7).timestamptz(e.ts).int8(e.seq as i64).int4(account.0 as i32).text(signal.as_str());
            match answer.order {
                Some(o) => b.signals.int8(o.id.0 as i64),
                None => b.signals.null(),
            };
            b.signals.text("answered").null();
        }
        EventKind::Rejected { account, code } => {
            b.signals
                .row(7)
                .timestamptz(e.ts)
                .int8(e.seq as i64)
                .int4(account.0 as i32)
                .null()
                .null()
                .text("rejected")
                .text(code.as_str());
        }
        EventKind::LimitsSet { .. }
        | EventKind::DayStarted { .. }
        | EventKind::AccountAdopted { .. }
        | EventKind::AccountReleased { .. }
        | EventKind::AccountRestored { .. }
        | EventKind::PositionRestored { .. }
        | EventKind::OrderRestored { .. }
        | EventKind::OrderRejectReason { .. }
        | EventKind::VenueSession { .. } => {}
    }
}
