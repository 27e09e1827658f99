//! Snapshots: the engine's whole state at one sequence number, so that a restart replays only
//! the events after it.
//!
//! The hot core never writes one. A follower thread ([`Follower`]) keeps its own copy of the
//! engine by reading the journal's segments as the writer fills them, applying each event as
//! replay does; every `journal.snapshot_every_events` events it writes that copy to
//! `snapshot-<seq>.snap` (written to a temporary name, synced, renamed, directory synced), keeps
//! the newest two, and deletes segments wholly covered by the newest when
//! `journal.keep_covered_segments` allows.
//!
//! File format: `SGSNAP02`, u64 seq, u64 payload length, u32 CRC32C of the payload, 4 bytes
//! zero, then the rkyv-encoded [`EngineState`] (little-endian, unaligned). `SGSNAP01` snapshots,
//! written before the state held the venue's session, still read (as [`StateV1`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::follow::{Follower as Reading, Limit, Start};
use super::format;
use super::scan::{list_segments, Segment};
use super::Watermarks;
use crate::engine::venue::NoVenue;
use crate::engine::{Engine, EngineState};

const MAGIC: &[u8; 8] = b"SGSNAP02";
const MAGIC_V1: &[u8; 8] = b"SGSNAP01";
const HEADER: usize = 32;
/// Snapshots kept; older ones are deleted once a new one is safely written.
const KEEP: usize = 2;
/// How often the follower looks for new events.
const POLL: Duration = Duration::from_millis(100);
/// Events applied between looks at the stop flag and the snapshot threshold.
const READ_BATCH: usize = 65_536;

/// The file name of the snapshot at `seq`.
pub fn name(seq: u64) -> String {
    format!("snapshot-{seq:020}.snap")
}

/// The snapshots in `dir`, oldest first.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    format::list_numbered(dir, "snapshot-", ".snap")
}

/// Writes `state` as a snapshot in `dir`, durably; returns its path.
pub fn write(dir: &Path, state: &EngineState) -> std::io::Result<PathBuf> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(state).map_err(std::io::Error::other)?;
    let bytes = framed(MAGIC, state.last_seq, &payload);
    let path = dir.join(name(state.last_seq));
    let tmp = dir.join(format!("{}.tmp", name(state.last_seq)));
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// A snapshot's bytes: the header, then `payload`.
fn framed(magic: &[u8; 8], seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(payload);
    bytes
}

/// Reads and checks a snapshot.
pub fn read(path: &Path) -> Result<EngineState, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode(&bytes).map_err(|what| format!("snapshot {} is unusable: {what}", path.display()))
}

/// Checks and decodes a snapshot's bytes; what is wrong otherwise.
pub fn decode(bytes: &[u8]) -> Result<EngineState, String> {
    let bad = |what: &str| what.to_string();
    let header = bytes.get(..HEADER).ok_or_else(|| bad("shorter than its header"))?;
    let v1 = match &header[..8] {
        m if m == MAGIC => false,
        m if m == MAGIC_V1 => true,
        _ => return Err(bad("bad magic")),
    };
    let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let len = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(header[24..28].try_into().unwrap_or_default());
    let payload = bytes.get(HEADER..).filter(|p| p.len() as u64 == len).ok_or_else(|| bad("cut short"))?;
    if crc32c::crc32c(payload) != crc {
        return Err(bad("checksum mismatch"));
    }
    let state = if v1 {
        rkyv::from_bytes::<StateV1, rkyv::rancor::Error>(payload).map(EngineState::from)
    } else {
        rkyv::from_bytes::<EngineState, rkyv::rancor::Error>(payload)
    }
    .map_err(|e| bad(&e.to_string()))?;
    if state.last_seq != seq {
        return Err(bad("header and contents disagree on the sequence number"));
    }
    Ok(state)
}

/// [`EngineState`] as `SGSNAP01` snapshots hold it: without the venue's session, which starts
/// from nothing (a node of that version only had the paper venue).
#[derive(rkyv::Archive, rkyv::Deserialize, rkyv::Serialize)]
struct StateV1 {
    last_seq: u64,
    next_order: u64,
    day: u32,
    accounts: Vec<crate::engine::account::Account>,
    keys: Vec<crate::engine::account::KeyRecord>,
    orders: Vec<crate::engine::order::Order>,
    quotes: Vec<Option<crate::engine::market::Quote>>,
    idempotency: Vec<IdempotencyRecord>,
}

type IdempotencyRecord = (
    crate::engine::types::AccountId,
    crate::engine::types::SignalKey,
    crate::engine::types::Nanos,
    crate::engine::event::SignalAnswer,
);

impl From<StateV1> for EngineState {
    fn from(s: StateV1) -> Self {
        EngineState {
            last_seq: s.last_seq,
            next_order: s.next_order,
            day: s.day,
            accounts: s.accounts,
            keys: s.keys,
            orders: s.orders,
            quotes: s.quotes,
            idempotency: s.idempotency,
            venue_session: (0, 0),
            venue_reasons: Vec::new(),
        }
    }
}

/// The newest snapshot that reads back whole, with a warning for each newer one that does not.
pub fn newest(dir: &Path) -> std::io::Result<Option<EngineState>> {
    for (_, path) in list(dir)?.iter().rev() {
        match read(path) {
            Ok(state) => return Ok(Some(state)),
            Err(e) => log::warn!("{e}; trying an older one"),
        }
    }
    Ok(None)
}

/// First wait after the snapshot thread fails; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How the snapshot thread is doing, for `/ready` and `/metrics` (written by the thread, read by
/// the hot core).
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the thread runs (snapshots are on).
    running: AtomicBool,
    /// Set from a failure until the next snapshot is written.
    failing: AtomicBool,
    /// Failures so far (each followed by a retry).
    failures: AtomicU64,
    /// Sequence number of the newest snapshot written since start (0: none yet).
    last_seq: AtomicU64,
    /// What the last failure was.
    last_error: Mutex<String>,
}

impl Health {
    /// Whether the snapshot thread runs (`journal.snapshot_every_events` > 0).
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Whether the last attempt failed and no snapshot was written since.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Failures so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Sequence number of the newest snapshot written since start.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    /// What the last failure was.
    pub fn last_error(&self) -> String {
        self.last_error.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn written(&self, seq: u64) {
        self.last_seq.store(seq, Ordering::Relaxed);
        self.failing.store(false, Ordering::Release);
    }

    fn failed(&self, e: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = e.to_string();
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.failing.store(true, Ordering::Release);
    }
}

/// What the snapshot thread needs.
pub struct Settings {
    /// The data directory.
    pub dir: PathBuf,
    /// A snapshot after this many events.
    pub every_events: u64,
    /// Covered segments kept (-1: all).
    pub keep_covered_segments: i64,
    /// Runs on the thread when it starts (to pin it to a core).
    pub on_start: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// The snapshot thread; stops when dropped.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    /// Starts following the journal (after the node's own replay, so a torn tail is already
    /// cut), with engines made by `engine`, reading what `marks` says is stable. `None` when
    /// snapshots are off. Segments are pruned only below `prune_floor()` (where PostgreSQL's copy
    /// ends, when there is one). A failure (a file that cannot be read or written, no descriptor
    /// left) is reported in `health` and the thread starts over from the newest snapshot after a
    /// backoff, until it succeeds.
    pub fn spawn(
        settings: Settings,
        engine: impl Fn() -> Engine<NoVenue> + Send + 'static,
        marks: Arc<Watermarks>,
        prune_floor: impl Fn() -> u64 + Send + 'static,
        health: Arc<Health>,
    ) -> std::io::Result<Option<Follower>> {
        if settings.every_events == 0 {
            return Ok(None);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        health.running.store(true, Ordering::Release);
        let thread = std::thread::Builder::new().name("sg-snapshot".into()).spawn(move || {
            if let Some(f) = &settings.on_start {
                f();
            }
            let mut backoff = FIRST_BACKOFF;
            let mut written_before = health.last_seq();
            let run = || follow(&settings, engine(), &marks, &prune_floor, &flag, &health);
            while let Err(e) = run() {
                if health.last_seq() != written_before {
                    // It had worked since the last failure: this is a new streak.
                    backoff = FIRST_BACKOFF;
                    written_before = health.last_seq();
                }
                if !health.failing() {
                    log::error!("snapshots: {e}; trying again in {backoff:?}, then less often (a restart replays more of the journal until one is written)");
                }
                health.failed(&e);
                let until = Instant::now() + backoff;
                while Instant::now() < until && !flag.load(Ordering::Acquire) {
                    std::thread::sleep(POLL.min(backoff));
                }
                if flag.load(Ordering::Acquire) {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })?;
        Ok(Some(Follower { stop, thread: Some(thread) }))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn follow(
    settings: &Settings,
    engine: Engine<NoVenue>,
    marks: &Arc<Watermarks>,
    prune_floor: &dyn Fn() -> u64,
    stop: &AtomicBool,
    health: &Health,
) -> Result<(), String> {
    let dir = &settings.dir;
    let mut reading = Reading::start(dir, engine, Start::Newest, Limit::Stable(marks.clone()))?;
    let mut last_snapshot = reading.engine().last_seq();
    loop {
        let read = reading.advance(u64::MAX, READ_BATCH, |_, _| {})?;
        if reading.engine().last_seq() >= last_snapshot + settings.every_events {
            let started = std::time::Instant::now();
            let state = reading.engine().state();
            let path = write(dir, &state).map_err(|e| format!("cannot write a snapshot in {}: {e}", dir.display()))?;
            log::info!(
                "journal: snapshot at seq {} written to {} in {:.3} s",
                state.last_seq,
                path.display(),
                started.elapsed().as_secs_f64()
            );
            last_snapshot = state.last_seq;
            if health.failing() {
                log::info!("snapshots: writing again");
            }
            health.written(state.last_seq);
            prune(dir, prune_floor(), settings.keep_covered_segments).map_err(|e| e.to_string())?;
        }
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        if read < READ_BATCH {
            std::thread::sleep(POLL);
        }
    }
}

/// Deletes snapshots other than the newest [`KEEP`], and segments wholly covered by the newest
/// snapshot at or before `floor`, beyond the newest `keep` of them (`keep < 0`: none). `floor` is
/// where PostgreSQL's copy ends (`u64::MAX` without PostgreSQL): the offloader restarts from that
/// snapshot and the segments after it, so they stay.
fn prune(dir: &Path, floor: u64, keep: i64) -> std::io::Result<()> {
    let snapshots = list(dir)?;
    // With none at or before the floor, the offloader may need any of them: keep everything.
    let Some(base) = snapshots.iter().rev().map(|(seq, _)| *seq).find(|seq| *seq <= floor) else { return Ok(()) };
    for (seq, path) in snapshots.iter().rev().skip(KEEP) {
        if *seq != base {
            std::fs::remove_file(path)?;
        }
    }
    let Ok(keep) = usize::try_from(keep) else { return Ok(()) };
    let segments = list_segments(dir)?;
    // A segment is covered when the next one starts at or before base + 1.
    let covered: Vec<&Segment> = segments.windows(2).filter(|w| w[1].first_seq <= base + 1).map(|w| &w[0]).collect();
    for seg in covered.iter().rev().skip(keep) {
        std::fs::remove_file(&seg.path)?;
        log::info!("journal: removed {} (covered by the snapshot at seq {base})", seg.path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn snapshots_of_the_first_format_still_read() {
        let old = StateV1 {
            last_seq: 7,
            next_order: 3,
            day: 20_000,
            accounts: Vec::new(),
            keys: Vec::new(),
            orders: Vec::new(),
            quotes: vec![None, None],
            idempotency: Vec::new(),
        };
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        let state = decode(&framed(MAGIC_V1, 7, &payload)).unwrap();
        assert_eq!((state.last_seq, state.next_order, state.day, state.quotes.len()), (7, 3, 20_000, 2));
        assert_eq!(state.venue_session, (0, 0));
        // The current format keeps the venue's session.
        let dir = tempfile::tempdir().unwrap();
        let state = EngineState { venue_session: (12, 4_097), ..state };
        let back = read(&write(dir.path(), &state).unwrap()).unwrap();
        assert_eq!(back.venue_session, (12, 4_097));
        // A v1 header over a v2 payload (or the reverse) does not read as something else.
        assert!(decode(&framed(MAGIC_V1, 7, &rkyv::to_bytes::<rkyv::rancor::Error>(&state).unwrap())).is_err());
    }

    #[test]
    fn pruning_keeps_what_postgresql_has_not_got_yet() {
        let dir = tempfile::tempdir().unwrap();
        for first in [1, 101, 201, 301] {
            std::fs::write(dir.path().join(format::segment_name(first)), b"").unwrap();
        }
        for seq in [100, 200, 300] {
            std::fs::write(dir.path().join(name(seq)), b"").unwrap();
        }
        // PostgreSQL has events up to 150: the snapshot at 100 and the segments after it stay.
        prune(dir.path(), 150, 0).unwrap();
        let seg = |first| format::segment_name(first);
        assert_eq!(names(dir.path()), vec![seg(101), seg(201), seg(301), name(100), name(200), name(300)]);
        // Until the cursor is known (floor 0) nothing goes.
        prune(dir.path(), 0, 0).unwrap();
        assert_eq!(names(dir.path()).len(), 6);
        // Without PostgreSQL the newest snapshot decides; older snapshots go beyond the newest two.
        prune(dir.path(), u64::MAX, 0).unwrap();
        assert_eq!(names(dir.path()), vec![seg(301), name(200), name(300)]);
    }
}
