//! Reading the journal behind its writer: the one mechanism every follower uses (the snapshot
//! writer, the PostgreSQL offloader, recent history, the WebSocket hub).
//!
//! A [`Reader`] maps segments read-only and hands out the events after a position, never past a
//! [`Limit`]: the journal's durable or stable watermark on a running node, the end of the files
//! for a stopped one. A record the writer has not published yet is not there; it is read on a
//! later call. Records must follow each other without gaps: a gap means the journal changed under
//! the reader, and is an error.
//!
//! A [`Follower`] is a reader with an engine of its own: it starts from the newest snapshot that
//! suits it (or from a state it is given), then applies every event it reads, and lets its
//! owner see each event with the engine's state after it. Events carry what their followers
//! need of the hot core's work (a fill, what it realized and the position it left), so a
//! follower that needs no more reads with a plain [`Reader`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{self, Bad, Version, RECORD_HEADER, SEGMENT_HEADER};
use super::scan::{list_segments, Segment};
use super::segment::Mapping;
use super::{snapshot, Watermarks};
use crate::engine::event::{Event, EventKind};
use crate::engine::position::Holding;
use crate::engine::types::AccountId;
use crate::engine::venue::NoVenue;
use crate::engine::Engine;

/// How far a reader may read.
#[derive(Clone)]
pub enum Limit {
    /// Up to what may be acknowledged and sent (a running node's stream and history).
    Durable(Arc<Watermarks>),
    /// Up to what is durable on this machine (what a cluster's replication reads, to confirm it).
    Local(Arc<Watermarks>),
    /// Up to what survives a power loss and may be acknowledged (what goes to PostgreSQL, and
    /// into snapshots).
    Stable(Arc<Watermarks>),
    /// Every record in the files (a stopped node's directory).
    Files,
}

impl Limit {
    fn now(&self) -> u64 {
        match self {
            Limit::Durable(w) => w.durable(),
            Limit::Local(w) => w.local(),
            Limit::Stable(w) => w.stable().min(w.durable()),
            Limit::Files => u64::MAX,
        }
    }
}

/// The segment a reader is in.
struct Open {
    segment: Segment,
    version: Version,
    map: Mapping,
    /// Where the next record starts.
    pos: usize,
}

/// A reading position in the journal of one directory.
pub struct Reader {
    dir: PathBuf,
    limit: Limit,
    open: Option<Open>,
    next_seq: u64,
}

impl Reader {
    /// A reader whose first event will be `next_seq`.
    pub fn new(dir: &Path, next_seq: u64, limit: Limit) -> Reader {
        Reader { dir: dir.to_path_buf(), limit, open: None, next_seq }
    }

    /// The sequence number of the next event.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// How far the limit lets it read now.
    pub fn limit(&self) -> u64 {
        self.limit.now()
    }

    /// Hands the events from `next_seq` up to `upto` and the limit (at most `max` of them) to
    /// `f`, in order, each with the format of its segment (an event of version 1 lacks some
    /// fields: see `journal::v1`). Returns how many it handed out; fewer when there are no more
    /// yet.
    pub fn read(
        &mut self,
        upto: u64,
        max: usize,
        mut f: impl FnMut(&Event, Version) -> Result<(), String>,
    ) -> Result<usize, String> {
        let bound = upto.min(self.limit.now());
        let mut n = 0;
        while n < max && self.next_seq <= bound {
            if self.open.is_none() && !self.find_segment()? {
                break;
            }
            match self.next_event()? {
                Some((e, version)) => {
                    f(&e, version)?;
                    n += 1;
                }
                None if self.limit_is_files() || self.next_seq <= bound => {
                    // The segment holds no more: the writer went on in the next one (or, for a
                    // stopped node's files, this was the last).
                    if !self.next_segment()? {
                        break;
                    }
                }
                None => break,
            }
        }
        Ok(n)
    }

    fn limit_is_files(&self) -> bool {
        matches!(self.limit, Limit::Files)
    }

    /// The next event of the open segment, skipping those before `next_seq`; `None` when the
    /// segment has no more (yet).
    fn next_event(&mut self) -> Result<Option<(Event, Version)>, String> {
        let Some(open) = self.open.as_mut() else { return Ok(None) };
        loop {
            let len = match open.version {
                Version::V2 => open.map.record_len(open.pos) as usize,
                Version::V1 => open.map.len().saturating_sub(open.pos),
            };
            if len == 0 || open.pos + RECORD_HEADER > open.map.len() {
                return Ok(None);
            }
            let end = match open.version {
                Version::V2 => (open.pos + RECORD_HEADER + len).min(open.map.len()),
                Version::V1 => open.map.len(),
            };
            // SAFETY: a version 2 record whose length is published was written whole before it;
            // a version 1 segment has no writer.
            let bytes = unsafe { open.map.bytes(open.pos, end) };
            let rec = match format::read_at(bytes, 0, open.version) {
                Ok(rec) => rec,
                Err(Bad::Short | Bad::End) => return Ok(None),
                Err(bad) => {
                    return Err(format!("{} at offset {}: {bad}", open.segment.path.display(), open.pos));
                }
            };
            let at = open.pos;
            open.pos += rec.next;
            if rec.seq < self.next_seq {
                // Only when starting inside a segment: skip to the position asked for.
                continue;
            }
            if rec.seq != self.next_seq {
                return Err(format!(
                    "{} at offset {at}: seq {} where {} was expected",
                    open.segment.path.display(),
                    rec.seq,
                    self.next_seq
                ));
            }
            let event = format::decode(rec.payload, open.version)?;
            self.next_seq += 1;
            return Ok(Some((event, open.version)));
        }
    }

    /// Opens the segment holding `next_seq`; `false` when there is none yet.
    fn find_segment(&mut self) -> Result<bool, String> {
        let segments = list_segments(&self.dir).map_err(|e| format!("cannot list {}: {e}", self.dir.display()))?;
        let Some(seg) = segments.iter().rev().find(|s| s.first_seq <= self.next_seq) else {
            if let Some(first) = segments.first() {
                return Err(format!(
                    "events {}..{} are no longer in the journal in {} (pruned)",
                    self.next_seq,
                    first.first_seq - 1,
                    self.dir.display()
                ));
            }
            return Ok(false);
        };
        self.open_segment(seg.clone())
    }

    /// Moves to the segment that starts at `next_seq`, once the writer has named it; `false`
    /// when it has not (the current one may still grow).
    fn next_segment(&mut self) -> Result<bool, String> {
        let segments = list_segments(&self.dir).map_err(|e| format!("cannot list {}: {e}", self.dir.display()))?;
        match segments.into_iter().find(|s| s.first_seq == self.next_seq) {
            Some(seg) if self.open.as_ref().is_none_or(|o| o.segment.path != seg.path) => self.open_segment(seg),
            _ => Ok(false),
        }
    }

    fn open_segment(&mut self, segment: Segment) -> Result<bool, String> {
        let cannot = |e: std::io::Error| format!("cannot read {}: {e}", segment.path.display());
        let file = File::open(&segment.path).map_err(cannot)?;
        let len = file.metadata().map_err(cannot)?.len() as usize;
        if len < SEGMENT_HEADER {
            // Created, its header not written yet (or cut short by a crash).
            return Ok(false);
        }
        let map = Mapping::new(&file, len, false).map_err(cannot)?;
        // SAFETY: a segment's header is written before its name is given, and never again.
        let version = match format::read_header(unsafe { map.bytes(0, SEGMENT_HEADER) }) {
            Some((first, v)) if first == segment.first_seq => v,
            _ => return Err(format!("{}: not a journal segment (bad header)", segment.path.display())),
        };
        self.open = Some(Open { segment, version, map, pos: SEGMENT_HEADER });
        Ok(true)
    }
}

/// Where a [`Follower`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the newest snapshot (or the first event when there is none).
    Newest,
    /// At exactly this event: the newest snapshot at or before it, then the journal up to it.
    After(u64),
    /// As early as the journal still goes: its first event if no segment was pruned, the newest
    /// snapshot otherwise.
    Earliest,
}

/// A reader with an engine of its own, kept at the state after the last event read.
pub struct Follower {
    engine: Engine<NoVenue>,
    reader: Reader,
}

impl Follower {
    /// Rebuilds `engine` (empty) in the journal of `dir` as `start` says, reading no further than
    /// `limit`.
    pub fn start(dir: &Path, mut engine: Engine<NoVenue>, start: Start, limit: Limit) -> Result<Follower, String> {
        let snapshots =
            snapshot::list(dir).map_err(|e| format!("cannot list the snapshots in {}: {e}", dir.display()))?;
        let at_most = match start {
            Start::Newest => u64::MAX,
            Start::After(seq) => seq,
            Start::Earliest => {
                let from_start = list_segments(dir)
                    .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
                    .first()
                    .is_none_or(|s| s.first_seq == 1);
                if from_start {
                    0
                } else {
                    u64::MAX
                }
            }
        };
        let mut after = 0;
        for (seq, path) in snapshots.iter().rev().filter(|(seq, _)| *seq <= at_most) {
            match snapshot::read(path) {
                Ok(state) => {
                    engine.restore(state)?;
                    after = *seq;
                    break;
                }
                Err(e) => log::warn!("{e}; trying an older one"),
            }
        }
        let mut f = Follower { engine, reader: Reader::new(dir, after + 1, limit) };
        if let Start::After(cursor) = start {
            while f.reader.next_seq() <= cursor {
                if f.advance(cursor, 65_536, |_, _| {})? == 0 {
                    return Err(format!(
                        "the journal in {} ends at seq {}, before seq {cursor}",
                        dir.display(),
                        f.reader.next_seq() - 1
                    ));
                }
            }
        }
        Ok(f)
    }

    /// Follows on from `engine`, a state at its `last_seq` (the hot core's, at start).
    pub fn from_state(dir: &Path, engine: Engine<NoVenue>, limit: Limit) -> Follower {
        let next = engine.last_seq() + 1;
        Follower { engine, reader: Reader::new(dir, next, limit) }
    }

    /// The engine, at the state after the last event read.
    pub fn engine(&self) -> &Engine<NoVenue> {
        &self.engine
    }

    /// The sequence number of the next event.
    pub fn next_seq(&self) -> u64 {
        self.reader.next_seq()
    }

    /// How far the limit lets it read now.
    pub fn limit(&self) -> u64 {
        self.reader.limit()
    }

    /// Applies the events after the last one read, up to `upto` and the limit (at most `max`),
    /// and hands each to `f` with the engine's state after it. Returns how many it applied.
    pub fn advance(
        &mut self,
        upto: u64,
        max: usize,
        mut f: impl FnMut(&Engine<NoVenue>, &Event),
    ) -> Result<usize, String> {
        let Follower { engine, reader } = self;
        reader.read(upto, max, |e, version| {
            let e = match version {
                Version::V2 => *e,
                Version::V1 => complete(engine, e),
            };
            engine.apply_event(&e);
            f(engine, &e);
            Ok(())
        })
    }
}

/// An event read from a segment of version 1 with what it lacks there filled in from `engine`,
/// the state before it: an order update's account, a fill's realized P&L and the position it
/// leaves.
fn complete(engine: &Engine<NoVenue>, e: &Event) -> Event {
    let mut e = *e;
    match &mut e.kind {
        EventKind::OrderUpdated { order, account, .. } => {
            *account = engine.order(*order).map_or(AccountId(0), |o| o.account);
        }
        EventKind::Fill { account, symbol, side, qty, notional, fee, realized, position, .. } => {
            let mut p = engine.account(*account).map(|a| a.positions[usize::from(symbol.0)]).unwrap_or_default();
            *realized = p.apply_fill(*side, *qty, *notional, *fee).realized;
            *position = Holding::from(&p);
        }
        _ => {}
    }
    e
}
