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
//! File format: `SGSNAP01`, u64 seq, u64 payload length, u32 CRC32C of the payload, 4 bytes
//! zero, then the rkyv-encoded [`EngineState`] (little-endian, unaligned).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::format::{self, SEGMENT_HEADER};
use super::scan::{self, list_segments, Segment};
use crate::config::Config;
use crate::engine::event::Event;
use crate::engine::market::Quote;
use crate::engine::order::Order;
use crate::engine::symbol::SymbolSpec;
use crate::engine::types::Nanos;
use crate::engine::{Engine, EngineState};
use crate::venue::{Execution, Venue};

const MAGIC: &[u8; 8] = b"SGSNAP01";
const HEADER: usize = 32;
/// Snapshots kept; older ones are deleted once a new one is safely written.
const KEEP: usize = 2;
/// How often the follower looks for new events.
const POLL: Duration = Duration::from_millis(100);

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
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&state.last_seq.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&payload);
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

/// Reads and checks a snapshot.
pub fn read(path: &Path) -> Result<EngineState, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let bad = |what: &str| format!("snapshot {} is unusable: {what}", path.display());
    let header = bytes.get(..HEADER).ok_or_else(|| bad("shorter than its header"))?;
    if &header[..8] != MAGIC {
        return Err(bad("bad magic"));
    }
    let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let len = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(header[24..28].try_into().unwrap_or_default());
    let payload = bytes.get(HEADER..).filter(|p| p.len() as u64 == len).ok_or_else(|| bad("cut short"))?;
    if crc32c::crc32c(payload) != crc {
        return Err(bad("checksum mismatch"));
    }
    let state = rkyv::from_bytes::<EngineState, rkyv::rancor::Error>(payload).map_err(|e| bad(&e.to_string()))?;
    if state.last_seq != seq {
        return Err(bad("header and contents disagree on the sequence number"));
    }
    Ok(state)
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

/// A venue for an engine that only applies events: it is never called.
struct NoVenue;

impl Venue for NoVenue {
    fn submit(&mut self, _: &Order, _: &SymbolSpec, _: Option<&Quote>, _: Nanos, _: &mut Vec<Execution>) {}
    fn cancel(&mut self, _: &Order, _: Nanos, _: &mut Vec<Execution>) {}
    fn on_quote(&mut self, _: &Quote, _: &SymbolSpec, _: Nanos, _: &mut Vec<Execution>) {}
    fn forget(&mut self, _: &Order) {}
    fn poll(&mut self, _: Nanos, _: &mut Vec<Execution>) {}
    fn working_orders(&self) -> usize {
        0
    }
}

/// The snapshot thread; stops when dropped.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    /// Starts following the journal of `cfg` (after the node's own replay, so a torn tail is
    /// already cut). `None` when snapshots are off.
    pub fn spawn(cfg: &Config, core: Option<usize>) -> std::io::Result<Option<Follower>> {
        if cfg.journal.snapshot_every_events == 0 {
            return Ok(None);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (cfg, flag) = (cfg.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("sg-snapshot".into()).spawn(move || {
            if let Some(core) = core {
                let id = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == core));
                id.map(core_affinity::set_for_current);
            }
            if let Err(e) = follow(&cfg, &flag) {
                log::error!("snapshots stopped: {e}; restarts will replay more of the journal");
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

/// Where the follower reads next.
struct Cursor {
    segment: Segment,
    offset: u64,
    next_seq: u64,
}

fn follow(cfg: &Config, stop: &AtomicBool) -> Result<(), String> {
    let dir = &cfg.journal.dir;
    let mut engine =
        Engine::new(crate::node::engine_config(cfg), crate::node::symbol_table(cfg), crate::node::tiers(cfg), NoVenue);
    let start = newest(dir).map_err(|e| e.to_string())?;
    let after = start.as_ref().map_or(0, |s| s.last_seq);
    if let Some(state) = start {
        engine.restore(state)?;
    }
    let report = scan::scan(dir, after, |e| {
        engine.apply_event(&e);
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    let mut last_snapshot = engine.last_seq();
    // A segment whose header was not written yet when the scan read it ends at 0: its records
    // start after the header all the same.
    let mut cursor = report.end.map(|(segment, offset)| Cursor {
        segment,
        offset: offset.max(SEGMENT_HEADER as u64),
        next_seq: report.last_seq + 1,
    });
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(POLL);
        if cursor.is_none() {
            // No segment yet: wait for the writer's first.
            cursor = list_segments(dir).map_err(|e| e.to_string())?.into_iter().next().map(|segment| Cursor {
                offset: SEGMENT_HEADER as u64,
                next_seq: segment.first_seq,
                segment,
            });
        }
        let Some(c) = cursor.as_mut() else { continue };
        read_new(dir, c, |e| engine.apply_event(&e))?;
        if engine.last_seq() >= last_snapshot + cfg.journal.snapshot_every_events {
            let started = std::time::Instant::now();
            let state = engine.state();
            let path = write(dir, &state).map_err(|e| format!("cannot write a snapshot in {}: {e}", dir.display()))?;
            log::info!(
                "journal: snapshot at seq {} written to {} in {:.3} s",
                state.last_seq,
                path.display(),
                started.elapsed().as_secs_f64()
            );
            last_snapshot = state.last_seq;
            prune(dir, state.last_seq, cfg.journal.keep_covered_segments).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Applies the complete records written since the cursor, moving to the next segment when the
/// writer has started one. A record still being written is left for the next call.
fn read_new(dir: &Path, c: &mut Cursor, mut apply: impl FnMut(Event)) -> Result<(), String> {
    let mut bytes = Vec::new();
    loop {
        // Only what was added since the last call.
        bytes.clear();
        let read = std::fs::File::open(&c.segment.path).and_then(|mut f| {
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(c.offset))?;
            std::io::Read::read_to_end(&mut f, &mut bytes)
        });
        read.map_err(|e| format!("cannot read {}: {e}", c.segment.path.display()))?;
        let mut off = 0;
        while let Ok(rec) = format::read_at(&bytes, off) {
            if rec.seq != c.next_seq {
                return Err(format!("{}: seq {} where {} was expected", c.segment.path.display(), rec.seq, c.next_seq));
            }
            apply(format::decode(rec.payload)?);
            c.next_seq += 1;
            off = rec.next;
        }
        c.offset += off as u64;
        let next = list_segments(dir).map_err(|e| e.to_string())?.into_iter().find(|s| s.first_seq == c.next_seq);
        match next {
            // The writer moved on: this segment is complete.
            Some(segment) if segment.path != c.segment.path => {
                *c = Cursor { segment, offset: SEGMENT_HEADER as u64, next_seq: c.next_seq };
            }
            _ => return Ok(()),
        }
    }
}

/// Deletes snapshots older than the newest [`KEEP`], and segments wholly covered by the
/// snapshot at `seq` beyond the newest `keep` of them (`keep < 0`: none).
fn prune(dir: &Path, seq: u64, keep: i64) -> std::io::Result<()> {
    let snapshots = list(dir)?;
    for (_, path) in snapshots.iter().rev().skip(KEEP) {
        std::fs::remove_file(path)?;
    }
    let Ok(keep) = usize::try_from(keep) else { return Ok(()) };
    let segments = list_segments(dir)?;
    // A segment is covered when the next one starts at or before seq + 1.
    let covered: Vec<&Segment> = segments.windows(2).filter(|w| w[1].first_seq <= seq + 1).map(|w| &w[0]).collect();
    for seg in covered.iter().rev().skip(keep) {
        std::fs::remove_file(&seg.path)?;
        log::info!("journal: removed {} (covered by the snapshot at seq {seq})", seg.path.display());
    }
    Ok(())
}
