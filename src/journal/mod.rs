//! The journal: the node's source of truth, a layer of its own.
//!
//! It knows events, segments and durability, and nothing of the node, the stream, PostgreSQL or
//! start-up: it depends on the engine's types and leaf modules only.
//!
//! - [`Journal`], on the hot core, encodes each event once ([`format::encode`]) and copies the
//!   record into a memory-mapped, preallocated segment ([`segment`]). A store into a `MAP_SHARED`
//!   file mapping is in the kernel's page cache at once and survives the death of the process, so
//!   under `fsync = "interval"` and `"never"` an event is durable for what those policies promise
//!   as soon as it is copied: nothing waits. Under `"always"` a sync thread makes each batch
//!   stable with one `fdatasync` (group commit) and the answers wait for the sync that covers
//!   them. A prefault thread prepares the next segment (`fallocate`: a full disk is refused here,
//!   never a SIGBUS later) and maps the pages ahead of the writer, so the hot core takes no page
//!   fault. See `docs/durability.md`.
//! - [`Watermarks`] say, to any thread, how far the journal is durable and stable.
//! - [`follow`] reads the mapping behind the writer for every follower (snapshots, the
//!   offloader, recent history, the WebSocket hub); [`replay`] rebuilds an engine at start;
//!   [`snapshot`] writes and reads snapshots; [`scan`] and [`tools`] read a directory for
//!   `journal verify` and `inspect`.

pub mod follow;
pub mod format;
mod replay;
pub mod scan;
pub mod segment;
pub mod snapshot;
pub mod tools;
mod v1;

pub use replay::{replay, Replayed, Resume};

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::binary_heap::{BinaryHeap, PeekMut};
use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::event::Event;
use format::{segment_header, segment_name, SEGMENT_HEADER};
use segment::Mapping;

/// When the journal calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// After every batch, before anything it holds is acknowledged (group commit).
    Always,
    /// Every `fsync_interval_ms`, in the background.
    Interval,
    /// Never; the kernel writes back on its own.
    Never,
}

impl FsyncPolicy {
    /// The name used in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Interval => "interval",
            FsyncPolicy::Never => "never",
        }
    }
}

/// What the journal needs to know.
#[derive(Clone)]
pub struct Options {
    /// The data directory (absolute).
    pub dir: PathBuf,
    /// When to sync.
    pub fsync: FsyncPolicy,
    /// Time between syncs under `interval`.
    pub fsync_interval: Duration,
    /// Size of a segment file.
    pub segment_bytes: u64,
    /// Runs on the journal's threads when they start (to pin them to a core).
    pub on_thread_start: Option<Arc<dyn Fn() + Send + Sync>>,
    /// `Some(n)`: events are acknowledged only once something outside the journal has them
    /// too (a cluster's replication), which had every event up to `n` when the journal opened;
    /// see [`Journal::confirm`]. `None`: durable here is enough.
    pub confirmed: Option<u64>,
}

/// Bytes mapped for writing ahead of the writer by the prefault thread.
const PREFAULT_AHEAD: usize = 16 << 20;
/// How often the prefault thread looks at the writer's position.
const PREFAULT_EVERY: Duration = Duration::from_millis(2);
/// File the next segment is prepared under, until the writer names it after its first record.
const NEXT_SEGMENT: &str = "next.seg.tmp";

/// How far the journal is, for any thread: a follower reads events up to [`Watermarks::durable`];
/// what survives a power loss under the policy is up to [`Watermarks::stable`]; what is durable on
/// this machine (all a journal without [`Options::confirmed`] waits for) is up to
/// [`Watermarks::local`], where the follower that confirms events reads.
#[derive(Debug, Default)]
pub struct Watermarks {
    durable: AtomicU64,
    stable: AtomicU64,
    local: AtomicU64,
    /// A thread sleeps in [`Watermarks::wait_local`]: the writer wakes it.
    local_waiting: AtomicBool,
    local_lock: Mutex<()>,
    local_moved: Condvar,
}

impl Watermarks {
    fn at(seq: u64) -> Watermarks {
        Watermarks {
            durable: AtomicU64::new(seq),
            stable: AtomicU64::new(seq),
            local: AtomicU64::new(seq),
            ..Watermarks::default()
        }
    }

    /// Events up to this one may be acknowledged, sent and read by followers.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Events up to this one are durable on this machine under the policy.
    pub fn local(&self) -> u64 {
        self.local.load(Ordering::Acquire)
    }

    /// Waits until [`Watermarks::local`] passes `after`, or `timeout` passes; returns it.
    pub fn wait_local(&self, after: u64, timeout: Duration) -> u64 {
        let now = self.local();
        if now > after {
            return now;
        }
        let guard = lock(&self.local_lock);
        self.local_waiting.store(true, Ordering::SeqCst);
        let now = self.local.load(Ordering::SeqCst);
        if now > after {
            return now;
        }
        let _ = self.local_moved.wait_timeout(guard, timeout);
        self.local()
    }

    fn set_local(&self, seq: u64) {
        self.local.store(seq, Ordering::SeqCst);
        if self.local_waiting.load(Ordering::SeqCst) {
            let _guard = lock(&self.local_lock);
            self.local_waiting.store(false, Ordering::Relaxed);
            self.local_moved.notify_all();
        }
    }

    /// Events up to this one survive a power loss under the policy (synced; under `never`,
    /// written).
    pub fn stable(&self) -> u64 {
        self.stable.load(Ordering::Acquire)
    }
}

/// Counters for `/metrics`, kept by the hot core and the journal's threads.
#[derive(Debug, Default)]
pub struct Counters {
    /// Batches appended.
    pub appends: AtomicU64,
    /// Bytes appended.
    pub bytes: AtomicU64,
    /// Time spent copying batches in, summed.
    pub append_ns: AtomicU64,
    /// Longest batch copy.
    pub append_max_ns: AtomicU64,
    /// `fdatasync` calls completed.
    pub fsyncs: AtomicU64,
    /// Time spent in them.
    pub fsync_ns: AtomicU64,
    /// Failed syncs and failed segment preparations.
    pub errors: AtomicU64,
    /// Segments started.
    pub segments: AtomicU64,
}

/// Why the journal refuses new commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The disk has no room for the next segment (`fallocate` failed with `ENOSPC`).
    Full,
    /// Syncs fail, or the next segment cannot be prepared for another reason.
    Failing,
    /// The journal is closed (the node is stopping).
    Closed,
}

fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded
}

/// A segment prepared by the prefault thread: preallocated and mapped, not yet named.
struct Prepared {
    file: File,
    map: Arc<Mapping>,
}

/// What the hot core and the journal's threads share.
struct Shared {
    opts: Options,
    marks: Arc<Watermarks>,
    counters: Arc<Counters>,
    /// The writer's offset in the current segment, and that segment's mapping.
    position: AtomicUsize,
    current: Mutex<Option<Arc<Mapping>>>,
    /// The next segment, once prepared.
    next: Mutex<Option<Prepared>>,
    /// Mappings of segments the writer left, for the prefault thread to unmap.
    retired: Mutex<Vec<Arc<Mapping>>>,
    next_ready: AtomicBool,
    /// Why the last preparation failed (until one succeeds), and whether the disk was full.
    prepare_error: Mutex<Option<(bool, String)>>,
    /// Everything up to this sequence number is to be synced (what the mapping holds).
    wanted: AtomicU64,
    sync: Mutex<SyncState>,
    sync_wanted: Condvar,
    stop: AtomicBool,
}

/// What the sync thread is asked to do and has done.
#[derive(Default)]
struct SyncState {
    /// Synced so far.
    synced: u64,
    /// Segments the writer left, to sync whole; and the current one.
    left: Vec<File>,
    current: Option<File>,
    /// The current segment's mapping and first sequence number (synced behind the writer
    /// under `interval`).
    map: Option<(Arc<Mapping>, u64)>,
    /// A segment was named since the last sync: sync the directory too.
    named: bool,
    /// Woken when `synced` moves (under `always`).
    waker: Option<Waker>,
    /// The last sync failed.
    failing: bool,
}

/// The segment being appended to.
struct Current {
    file: File,
    map: Arc<Mapping>,
    first_seq: u64,
    /// Where the next record goes.
    pos: usize,
}

/// The hot core's side of the journal. Owned by one thread; [`Watermarks`] and [`Counters`]
/// are what other threads see of it.
pub struct Journal {
    shared: Arc<Shared>,
    current: Option<Current>,
    /// One record at a time, encoded here, then copied into the mapping.
    scratch: Vec<u8>,
    /// Records with no room yet (no next segment prepared in time): not durable until copied.
    overflow: Vec<u8>,
    appended: u64,
    /// Durable on this machine.
    local: u64,
    /// Confirmed from outside (under [`Options::confirmed`]).
    confirmed: u64,
    durable: u64,
    closed: bool,
    /// Requests waiting for their events under `always`, lowest sequence number first.
    waiters: RefCell<BinaryHeap<Reverse<Waiter>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The segment bytes left free before new commands are refused when no next segment is
    /// ready: room for any one command's events.
    headroom: usize,
}

impl Journal {
    /// Opens the journal in `opts.dir` for appending after `resume` (from [`replay`]), where
    /// every event up to `last_seq` is already durable, and starts its threads.
    pub fn open(opts: Options, resume: &Resume, last_seq: u64) -> io::Result<Journal> {
        let _ = std::fs::remove_file(opts.dir.join(NEXT_SEGMENT));
        let headroom = (opts.segment_bytes as usize / 4).min(4 << 20);
        let marks = Arc::new(Watermarks::at(last_seq));
        // Replayed events an outside party never confirmed are acknowledged once it does.
        let confirmed = opts.confirmed.map_or(last_seq, |c| c.min(last_seq));
        marks.durable.store(confirmed, Ordering::Release);
        let shared = Arc::new(Shared {
            opts,
            marks,
            counters: Arc::default(),
            position: AtomicUsize::new(0),
            current: Mutex::new(None),
            next: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
            next_ready: AtomicBool::new(false),
            prepare_error: Mutex::new(None),
            wanted: AtomicU64::new(last_seq),
            sync: Mutex::new(SyncState { synced: last_seq, ..SyncState::default() }),
            sync_wanted: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let current = match resume {
            Some(end) if end.len as usize <= SEGMENT_HEADER => {
                // A segment without a record (or without its header: a crash came first): the
                // new segment takes its place and its name.
                if end.segment.first_seq != last_seq + 1 {
                    return Err(io::Error::other(format!(
                        "{} is empty but should start at seq {}",
                        end.segment.path.display(),
                        last_seq + 1
                    )));
                }
                std::fs::remove_file(&end.segment.path)?;
                None
            }
            Some(end) if end.version == format::Version::V2 => {
                Some(reopen(&shared, &end.segment.path, end.segment.first_seq, end.len)?)
            }
            // A version 1 segment is never appended to: the next event starts a new segment.
            _ => None,
        };
        let mut journal = Journal {
            shared: shared.clone(),
            current: None,
            scratch: Vec::with_capacity(64 * 1024),
            overflow: Vec::new(),
            appended: last_seq,
            local: last_seq,
            confirmed,
            durable: confirmed,
            closed: false,
            waiters: RefCell::new(BinaryHeap::with_capacity(1024)),
            threads: Vec::new(),
            headroom,
        };
        let current = match current {
            Some(c) => c,
            None => {
                let prepared = prepare(&shared)?;
                journal.start_segment(prepared, last_seq + 1)?
            }
        };
        journal.install(current);
        journal.spawn_threads()?;
        Ok(journal)
    }

    fn spawn_threads(&mut self) -> io::Result<()> {
        let prefault = self.shared.clone();
        self.threads.push(std::thread::Builder::new().name("sg-prefault".into()).spawn(move || {
            run_on_start(&prefault);
            prefault_loop(&prefault);
        })?);
        if self.shared.opts.fsync != FsyncPolicy::Never {
            let sync = self.shared.clone();
            self.threads.push(std::thread::Builder::new().name("sg-sync".into()).spawn(move || {
                run_on_start(&sync);
                sync_loop(&sync);
            })?);
        }
        Ok(())
    }

    /// How far the journal is, for other threads.
    pub fn watermarks(&self) -> Arc<Watermarks> {
        self.shared.marks.clone()
    }

    /// Its counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// The fsync policy.
    pub fn policy(&self) -> FsyncPolicy {
        self.shared.opts.fsync
    }

    /// Appends `events` (consecutive, after every earlier one). Under `interval` and `never`
    /// they are durable when this returns, unless no segment had room ([`Journal::accepting`]
    /// refuses new commands before that can happen); under `always` once the sync thread says so.
    pub fn append(&mut self, events: &[Event]) {
        let Some(last) = events.last() else { return };
        let started = Instant::now();
        let mut bytes = 0;
        for e in events {
            self.scratch.clear();
            format::encode(&mut self.scratch, e);
            bytes += self.scratch.len();
            self.put_scratch(e.seq);
        }
        self.appended = last.seq;
        let c = &self.shared.counters;
        let ns = started.elapsed().as_nanos() as u64;
        c.appends.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        c.append_ns.fetch_add(ns, Ordering::Relaxed);
        c.append_max_ns.fetch_max(ns, Ordering::Relaxed);
        self.after_append();
    }

    fn after_append(&mut self) {
        if let Some(cur) = &self.current {
            // Release: the records below it are whole for the sync thread that loads it.
            self.shared.position.store(cur.pos, Ordering::Release);
        }
        let in_mapping = if self.overflow.is_empty() { self.appended } else { self.first_overflowing() - 1 };
        match self.shared.opts.fsync {
            FsyncPolicy::Always => {
                if self.shared.wanted.fetch_max(in_mapping, Ordering::AcqRel) < in_mapping {
                    // Under the lock, so that the sync thread cannot miss it between its check and
                    // its wait.
                    drop(lock(&self.shared.sync));
                    self.shared.sync_wanted.notify_one();
                }
            }
            FsyncPolicy::Interval => {
                self.shared.wanted.fetch_max(in_mapping, Ordering::AcqRel);
                self.mark_local(in_mapping);
            }
            FsyncPolicy::Never => {
                self.shared.marks.stable.fetch_max(in_mapping, Ordering::Release);
                self.mark_local(in_mapping);
            }
        }
    }

    /// The sequence number of the first record waiting in `overflow`.
    fn first_overflowing(&self) -> u64 {
        self.overflow.get(8..16).map_or(self.appended + 1, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// Copies the record in `scratch` (sequence number `seq`) into the current segment, or into
    /// a new one, or keeps it in `overflow` when neither has room.
    fn put_scratch(&mut self, seq: u64) {
        if self.overflow.is_empty() {
            let rec = std::mem::take(&mut self.scratch);
            let put = self.put(&rec, seq);
            self.scratch = rec;
            if put {
                return;
            }
        }
        self.overflow.extend_from_slice(&self.scratch);
    }

    /// Copies the record `rec` (sequence number `seq`) into the current segment, or into a new
    /// one; `false` when neither has room.
    fn put(&mut self, rec: &[u8], seq: u64) -> bool {
        let fits = self.current.as_ref().is_some_and(|c| c.pos + rec.len() <= c.map.len());
        if !fits && !self.roll(seq) {
            return false;
        }
        let Some(cur) = self.current.as_mut() else { return false };
        copy_record(&cur.map, cur.pos, rec);
        cur.pos += rec.len();
        true
    }

    /// Moves to the prepared segment, naming it after `first_seq`; `false` when none is ready.
    fn roll(&mut self, first_seq: u64) -> bool {
        // The prefault thread holds `next` while it makes a file under the name the prepared
        // one has: that name is given up under the same lock, so the two never meet in one file.
        let mut next = match self.shared.next.try_lock() {
            Ok(next) => next,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        let Some(prepared) = next.take() else { return false };
        self.shared.next_ready.store(false, Ordering::Release);
        let started = self.start_segment(prepared, first_seq);
        drop(next);
        match started {
            Ok(next) => {
                if let Some(old) = self.current.take() {
                    // Unmapping a full segment takes milliseconds (every page's entry goes): the
                    // prefault thread drops it. Its file is synced whole by the sync thread.
                    lock(&self.shared.retired).push(old.map);
                    if self.shared.opts.fsync != FsyncPolicy::Never {
                        lock(&self.shared.sync).left.push(old.file);
                    }
                }
                self.install(next);
                true
            }
            Err(e) => {
                self.shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                *lock(&self.shared.prepare_error) = Some((is_full(&e), format!("cannot name a new segment: {e}")));
                log::error!("journal: cannot name a new segment in {}: {e}", self.shared.opts.dir.display());
                false
            }
        }
    }

    /// Names a prepared segment after its first record and writes its header.
    fn start_segment(&self, prepared: Prepared, first_seq: u64) -> io::Result<Current> {
        let dir = &self.shared.opts.dir;
        let path = dir.join(segment_name(first_seq));
        // Once a segment: a rename, which the sync thread makes durable with the directory.
        std::fs::rename(dir.join(NEXT_SEGMENT), &path)?;
        // SAFETY: a segment nobody reads yet (its name is new); the header is not a record.
        unsafe { prepared.map.write(0, &segment_header(first_seq)) };
        self.shared.counters.segments.fetch_add(1, Ordering::Relaxed);
        log::info!("journal: started segment {}", path.display());
        Ok(Current { file: prepared.file, map: prepared.map, first_seq, pos: SEGMENT_HEADER })
    }

    fn install(&mut self, cur: Current) {
        *lock(&self.shared.current) = Some(cur.map.clone());
        self.shared.position.store(cur.pos, Ordering::Relaxed);
        {
            let mut s = lock(&self.shared.sync);
            s.current = cur.file.try_clone().ok();
            s.map = Some((cur.map.clone(), cur.first_seq));
            s.named = true;
        }
        self.current = Some(cur);
    }

    /// Copies what waits in `overflow` into a segment once one is prepared; `true` when nothing
    /// waits any more. Called by the node's housekeeping. Reads only what it copies (what stays
    /// is moved to the front once), however much waits.
    pub fn drain_overflow(&mut self) -> bool {
        if self.overflow.is_empty() {
            return true;
        }
        let mut pending = std::mem::take(&mut self.overflow);
        let mut off = 0;
        while off < pending.len() {
            let Ok(rec) = format::read_at(&pending, off, format::Version::V2) else { break };
            if !self.put(&pending[off..rec.next], rec.seq) {
                break;
            }
            off = rec.next;
        }
        pending.drain(..off);
        self.overflow = pending;
        // What was copied is published either way: when more waits than a segment holds, the
        // prefault thread prepares the next one from the position it sees.
        self.after_append();
        if !self.overflow.is_empty() {
            return false;
        }
        log::warn!("journal: writing again in {}; taking commands", self.shared.opts.dir.display());
        true
    }

    /// Whether new commands may be taken: the journal is open, nothing waits for room, the
    /// current segment has room for any command or the next one is prepared, and syncs succeed
    /// (a failing sync is retried; meanwhile what it would make stable piles up in memory only).
    pub fn accepting(&self) -> bool {
        if self.closed || !self.overflow.is_empty() {
            return false;
        }
        let room = self.current.as_ref().is_some_and(|c| c.map.len() - c.pos >= self.headroom)
            || self.shared.next_ready.load(Ordering::Acquire);
        room && !lock(&self.shared.sync).failing
    }

    /// Why new commands are refused (`None` while they are not).
    pub fn refusal(&self) -> Option<Refusal> {
        if self.accepting() {
            return None;
        }
        if self.closed {
            return Some(Refusal::Closed);
        }
        if lock(&self.shared.sync).failing {
            return Some(Refusal::Failing);
        }
        match &*lock(&self.shared.prepare_error) {
            Some((true, _)) => Some(Refusal::Full),
            _ => Some(Refusal::Failing),
        }
    }

    /// Last sequence number appended.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Last sequence number that may be acknowledged.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Last sequence number durable on this machine.
    pub fn local(&self) -> u64 {
        self.local
    }

    /// Last sequence number on stable storage.
    pub fn stable(&self) -> u64 {
        self.shared.marks.stable()
    }

    /// Bytes waiting for room.
    pub fn pending_bytes(&self) -> usize {
        self.overflow.len()
    }

    /// Everything up to `seq` is durable on this machine (what a sync under `always` covers): it
    /// may be acknowledged, unless it must be confirmed as well.
    pub fn mark_local(&mut self, seq: u64) {
        if seq > self.local {
            self.local = seq;
            self.shared.marks.set_local(seq);
            self.advance();
        }
    }

    /// Under [`Options::confirmed`], the outside party has every event up to `seq`: what is also
    /// durable here may be acknowledged.
    pub fn confirm(&mut self, seq: u64) {
        if seq > self.confirmed {
            self.confirmed = seq;
            self.advance();
        }
    }

    /// Moves the acknowledged mark to what is both local and (when needed) confirmed, and wakes
    /// the requests waiting for it.
    fn advance(&mut self) {
        let seq = if self.shared.opts.confirmed.is_some() { self.local.min(self.confirmed) } else { self.local };
        if seq > self.durable {
            self.durable = seq;
            self.shared.marks.durable.store(seq, Ordering::Release);
            let mut waiters = self.waiters.borrow_mut();
            while let Some(w) = waiters.peek_mut().filter(|w| w.0.seq <= seq) {
                PeekMut::pop(w).0.waker.wake();
            }
        }
    }

    /// Whether a request waiting for `seq` is done: `Some(true)` when durable, `Some(false)` when
    /// it never will be (the journal closed), `None` (registering `waker`) when it must wait.
    pub fn poll_durable(&self, seq: u64, waker: &Waker) -> Option<bool> {
        if self.durable >= seq {
            return Some(true);
        }
        if self.closed {
            return Some(false);
        }
        self.waiters.borrow_mut().push(Reverse(Waiter { seq, waker: waker.clone() }));
        None
    }

    /// Resolves with the sequence number the sync thread has made stable once it passes
    /// `after` (under `always`, what may then be acknowledged); `None` once the journal closes.
    pub fn synced_after(&self, after: u64) -> SyncedAfter {
        SyncedAfter { shared: self.shared.clone(), after }
    }

    /// Stops the journal: its threads end, the last batch is synced (unless `never`), and the
    /// current segment is cut back to what it holds. Requests still waiting give up.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.shared.stop.store(true, Ordering::Release);
        self.shared.sync_wanted.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(cur) = self.current.take() {
            if self.shared.opts.fsync != FsyncPolicy::Never {
                if let Err(e) = cur.file.sync_data() {
                    log::error!("journal: final sync of segment {} failed: {e}", cur.first_seq);
                }
            }
            *lock(&self.shared.current) = None;
            drop(cur.map);
            if let Err(e) = cur.file.set_len(cur.pos as u64) {
                log::warn!("journal: cannot cut segment {} back to {} bytes: {e}", cur.first_seq, cur.pos);
            }
            if self.overflow.is_empty() {
                let stable = self.appended.max(self.shared.marks.stable());
                if self.shared.opts.fsync != FsyncPolicy::Never {
                    self.shared.marks.stable.store(stable, Ordering::Release);
                }
                self.mark_local(self.appended);
            } else {
                log::error!(
                    "journal: events {}..={} found no room before the node stopped; they were not acknowledged and their orders not sent",
                    self.first_overflowing(),
                    self.appended
                );
            }
        }
        let _ = std::fs::remove_file(self.shared.opts.dir.join(NEXT_SEGMENT));
        for w in self.waiters.borrow_mut().drain() {
            w.0.waker.wake();
        }
        // What waits for a sync learns that none will come.
        if let Some(w) = lock(&self.shared.sync).waker.take() {
            w.wake();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Copies a whole encoded record (`rec`, its length in its first four bytes) to `off`, the length
/// last.
fn copy_record(map: &Mapping, off: usize, rec: &[u8]) {
    let len = u32::from_le_bytes(rec[..4].try_into().unwrap_or_default());
    // SAFETY: the hot core is the mapping's only writer; `off` is past every published record and
    // the record fits (checked by the caller); records start at multiples of 8.
    unsafe {
        map.write(off + 4, &rec[4..]);
        map.publish(off, len);
    }
}

/// A request waiting for `seq` to become durable; ordered by `seq` alone.
struct Waiter {
    seq: u64,
    waker: Waker,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.seq.cmp(&other.seq)
    }
}

/// See [`Journal::synced_after`].
pub struct SyncedAfter {
    shared: Arc<Shared>,
    after: u64,
}

impl Future for SyncedAfter {
    type Output = Option<u64>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u64>> {
        let mut s = lock(&self.shared.sync);
        if s.synced > self.after {
            return Poll::Ready(Some(s.synced));
        }
        if self.shared.stop.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn run_on_start(shared: &Shared) {
    if let Some(f) = &shared.opts.on_thread_start {
        f();
    }
}

/// Creates, preallocates and maps the next segment under its temporary name.
fn prepare(shared: &Shared) -> io::Result<Prepared> {
    let path = shared.opts.dir.join(NEXT_SEGMENT);
    let file = File::options().read(true).write(true).create(true).truncate(true).open(&path)?;
    let result = (|| {
        segment::preallocate(&file, shared.opts.segment_bytes)?;
        let map = Mapping::new(&file, shared.opts.segment_bytes as usize, true)?;
        map.populate(0, PREFAULT_AHEAD)?;
        Ok(map)
    })();
    match result {
        Ok(map) => Ok(Prepared { file, map: Arc::new(map) }),
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Maps the last segment again to go on appending at `end`.
fn reopen(shared: &Shared, path: &Path, first_seq: u64, end: u64) -> io::Result<Current> {
    let file = File::options().read(true).write(true).open(path)?;
    let len = file.metadata()?.len().max(shared.opts.segment_bytes);
    segment::preallocate(&file, len)?;
    let map = Arc::new(Mapping::new(&file, len as usize, true)?);
    let pos = usize::try_from(end).unwrap_or(usize::MAX).max(SEGMENT_HEADER);
    map.populate(pos, pos + PREFAULT_AHEAD)?;
    // Whatever follows the last good record (a crash's partial record, or records a power loss
    // left after a hole) is cleared before anything goes there: a record is published by its
    // length, and every length past the writer must read zero.
    segment::clear_from(&file, &map, pos)?;
    if shared.opts.fsync != FsyncPolicy::Never {
        file.sync_data()?;
    }
    Ok(Current { file, map, first_seq, pos })
}

/// Keeps the next segment prepared and the current one's pages mapped ahead of the writer.
fn prefault_loop(shared: &Shared) {
    let mut mapped_to = 0usize;
    let mut mapped_of: Option<Arc<Mapping>> = None;
    let mut backoff = Duration::from_millis(100);
    let mut retry_at = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        // Taken out first: the unmapping runs with the lock released (the writer pushes there).
        let retired = std::mem::take(&mut *lock(&shared.retired));
        drop(retired);
        let current = lock(&shared.current).clone();
        if let Some(map) = current {
            if mapped_of.as_ref().is_none_or(|m| !Arc::ptr_eq(m, &map)) {
                mapped_to = PREFAULT_AHEAD;
                mapped_of = Some(map.clone());
            }
            let want = shared.position.load(Ordering::Relaxed) + PREFAULT_AHEAD;
            if want > mapped_to + (PREFAULT_AHEAD / 4) && mapped_to < map.len() {
                if let Err(e) = map.populate(mapped_to, want) {
                    log::warn!("journal: cannot map the pages ahead of the writer: {e}");
                }
                mapped_to = want;
            }
        }
        // The next segment is prepared once the current one is half full (or there is none).
        let half =
            lock(&shared.current).as_ref().is_none_or(|m| shared.position.load(Ordering::Relaxed) >= m.len() / 2);
        if half && !shared.next_ready.load(Ordering::Acquire) && Instant::now() >= retry_at {
            // Held while preparing (see `Journal::roll`); the writer does not wait for it.
            let mut next = lock(&shared.next);
            let prepared = if next.is_some() { None } else { Some(prepare(shared)) };
            match prepared {
                None => {}
                Some(Ok(p)) => {
                    *next = Some(p);
                    shared.next_ready.store(true, Ordering::Release);
                    if lock(&shared.prepare_error).take().is_some() {
                        log::warn!("journal: a new segment could be prepared again in {}", shared.opts.dir.display());
                    }
                    backoff = Duration::from_millis(100);
                }
                Some(Err(e)) => {
                    shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    let mut last = lock(&shared.prepare_error);
                    if last.is_none() {
                        log::error!(
                            "journal: cannot prepare a segment of {} bytes in {} ({e}); new commands are refused \
                             with 503 once the current one is nearly full",
                            shared.opts.segment_bytes,
                            shared.opts.dir.display()
                        );
                    }
                    *last = Some((is_full(&e), format!("cannot prepare a new segment: {e}")));
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        std::thread::sleep(PREFAULT_EVERY);
    }
}

/// Syncs what the writer asks: under `always` as soon as there is something (group commit: one
/// sync covers every batch appended meanwhile), under `interval` every interval.
fn sync_loop(shared: &Shared) {
    let always = shared.opts.fsync == FsyncPolicy::Always;
    let interval = shared.opts.fsync_interval;
    let mut failing_since: Option<Instant> = None;
    let mut behind = Behind::default();
    loop {
        let (target, left, current, map, named) = {
            let mut s = lock(&shared.sync);
            loop {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                let wanted = shared.wanted.load(Ordering::Acquire);
                if wanted > s.synced && (always || s.failing) {
                    break;
                }
                let (next, _) = shared
                    .sync_wanted
                    .wait_timeout(s, if always { Duration::from_millis(100) } else { interval })
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s = next;
                if !always && shared.wanted.load(Ordering::Acquire) > s.synced {
                    break;
                }
            }
            let current = s.current.as_ref().and_then(|f| f.try_clone().ok());
            let map = if always { None } else { s.map.clone() };
            let target = shared.wanted.load(Ordering::Acquire);
            (target, std::mem::take(&mut s.left), current, map, std::mem::take(&mut s.named))
        };
        let started = Instant::now();
        let result = (|| {
            for f in &left {
                f.sync_data()?;
            }
            let synced = match &map {
                Some((map, first_seq)) => behind.sync(map, *first_seq, shared.position.load(Ordering::Acquire))?,
                None => {
                    if let Some(f) = &current {
                        f.sync_data()?;
                    }
                    target
                }
            };
            if named {
                segment::sync_dir(&shared.opts.dir)?;
            }
            Ok::<u64, io::Error>(synced)
        })();
        let c = &shared.counters;
        c.fsyncs.fetch_add(1, Ordering::Relaxed);
        c.fsync_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let mut s = lock(&shared.sync);
        match result {
            Ok(synced) => {
                s.synced = s.synced.max(synced);
                shared.marks.stable.fetch_max(s.synced, Ordering::Release);
                if s.failing {
                    log::warn!("journal: syncing again in {}", shared.opts.dir.display());
                }
                s.failing = false;
                failing_since = None;
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                // What was not synced is synced again next time.
                s.left.extend(left);
                s.named |= named;
                if !s.failing {
                    log::error!(
                        "journal: fdatasync failed in {} ({e}); {}",
                        shared.opts.dir.display(),
                        "refusing commands with 503 journal.unavailable until one succeeds"
                    );
                }
                s.failing = true;
                let since = *failing_since.get_or_insert_with(Instant::now);
                drop(s);
                let wait = (since.elapsed() / 2).clamp(Duration::from_millis(20), Duration::from_secs(1));
                std::thread::sleep(wait);
            }
        }
    }
}

/// Under `interval`, how far the sync thread has synced the current segment: whole pages behind
/// the writer, so that a sync never cleans (and so write-protects) the page the writer is filling
/// or the pages mapped ahead of it, which would cost the hot core a page fault on its next store.
#[derive(Default)]
struct Behind {
    map: Option<Arc<Mapping>>,
    /// Synced below this offset.
    synced_to: usize,
    /// The first record not known to lie wholly below `synced_to`.
    walked: usize,
    /// The last record wholly below `synced_to`.
    last_seq: u64,
}

impl Behind {
    /// Syncs `map` (the current segment, its first record `first_seq`) behind the writer's
    /// `position`; returns the last sequence number it holds synced.
    fn sync(&mut self, map: &Arc<Mapping>, first_seq: u64, position: usize) -> io::Result<u64> {
        if !self.map.as_ref().is_some_and(|m| Arc::ptr_eq(m, map)) {
            let last_seq = first_seq.saturating_sub(1);
            *self = Behind { map: Some(map.clone()), synced_to: 0, walked: SEGMENT_HEADER, last_seq };
        }
        // The page the writer is in waits for the next round, unless it was in it at the last
        // round too: a record is synced within two intervals.
        let page = segment::page_size();
        let floor = position / page * page;
        let to = if floor > self.synced_to { floor } else { position };
        map.sync(self.synced_to, to)?;
        self.synced_to = self.synced_to.max(to);
        // Records below `position` were published before it was (release, acquire).
        while let Some(seq) = map.record_seq(self.walked) {
            let end = self.walked + format::record_len(map.record_len(self.walked) as usize);
            if end > self.synced_to {
                break;
            }
            (self.last_seq, self.walked) = (seq, end);
        }
        Ok(self.last_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::follow::{Limit, Reader};
    use super::*;
    use crate::engine::event::EventKind;
    use crate::engine::market::Quote;
    use crate::engine::types::SymbolId;

    fn quote(seq: u64) -> Event {
        let q = Quote { symbol: SymbolId(0), bid: 10, ask: 11, bid_size: 1, ask_size: 1, ts: seq };
        Event { seq, ts: seq, kind: EventKind::Quote(q) }
    }

    fn options(dir: &Path, fsync: FsyncPolicy) -> Options {
        Options {
            dir: dir.to_path_buf(),
            fsync,
            fsync_interval: Duration::from_millis(5),
            segment_bytes: 1 << 20,
            on_thread_start: None,
            confirmed: None,
        }
    }

    /// Opens the journal of `dir` the way a node does: replay first, then open after it.
    fn open(dir: &Path, fsync: FsyncPolicy) -> Journal {
        open_confirmed(dir, fsync, None)
    }

    /// Like [`open`], with [`Options::confirmed`].
    fn open_confirmed(dir: &Path, fsync: FsyncPolicy, confirmed: Option<u64>) -> Journal {
        let config = crate::engine::EngineConfig {
            price_collar_bps: 100,
            max_quote_age: 1,
            idempotency_capacity: 16,
            idempotency_ttl: 1,
            orders_per_account: 16,
            order_id_base: 0,
        };
        let symbols = crate::engine::symbol::SymbolTable::new(vec![]);
        let mut engine = crate::engine::Engine::new(config, symbols, vec![], crate::engine::venue::NoVenue);
        let r = replay(&mut engine, dir, false).unwrap();
        Journal::open(Options { confirmed, ..options(dir, fsync) }, &r.resume, r.last_seq).unwrap()
    }

    fn read_all(dir: &Path, limit: Limit) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut reader = Reader::new(dir, 1, limit);
        while reader
            .read(u64::MAX, 10_000, |e, _| {
                seqs.push(e.seq);
                Ok(())
            })
            .unwrap()
            > 0
        {}
        seqs
    }

    /// Waits until `done`, failing with `why()` after 5 s.
    fn within_5s(mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "{}", why());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Appends `from..=to` one event at a time, waiting for a prepared segment when the current
    /// one is nearly full (as the node's refusals make its commands do).
    fn append(j: &mut Journal, from: u64, to: u64) {
        for seq in from..=to {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !j.accepting() {
                assert!(Instant::now() < deadline, "no segment was prepared");
                std::thread::sleep(Duration::from_millis(1));
            }
            j.append(&[quote(seq)]);
        }
    }

    #[test]
    fn appended_events_are_durable_at_once_and_read_back_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path(), FsyncPolicy::Interval);
        let marks = j.watermarks();
        // About 20,000 records of 88 bytes: two 1 MiB segments and a part of a third.
        append(&mut j, 1, 20_000);
        assert_eq!((j.durable(), marks.durable()), (20_000, 20_000), "interval: durable once copied");
        assert_eq!(read_all(dir.path(), Limit::Durable(marks.clone())), (1..=20_000).collect::<Vec<_>>());
        assert!(super::scan::list_segments(dir.path()).unwrap().len() >= 2);
        // The sync thread catches up within a few intervals.
        within_5s(|| marks.stable() >= 20_000, || format!("stable stuck at {}", marks.stable()));
        j.close();
        let segments = super::scan::list_segments(dir.path()).unwrap();
        let last = std::fs::metadata(&segments.last().unwrap().path).unwrap().len();
        assert!(last < 1 << 20, "a stopped journal's last segment is cut back to what it holds ({last})");
        assert!(!dir.path().join(NEXT_SEGMENT).exists());
        // A restart appends after the last record, in the same segment.
        let mut j = open(dir.path(), FsyncPolicy::Never);
        assert_eq!(j.appended(), 20_000);
        append(&mut j, 20_001, 20_100);
        assert_eq!(super::scan::list_segments(dir.path()).unwrap().len(), segments.len());
        drop(j);
        assert_eq!(read_all(dir.path(), Limit::Files), (1..=20_100).collect::<Vec<_>>());
    }

    #[test]
    fn a_writer_that_outruns_the_preparation_of_segments_loses_and_mixes_up_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path(), FsyncPolicy::Never);
        // Never waiting for a prepared segment: records wait in memory and are moved into the
        // segment once it is there, as the node's housekeeping does, at times more than a segment
        // holds. About a hundred rolls, each a hand-over of the prepared file between the
        // prefault thread and the writer.
        let last = 1_000_000;
        for seq in 1..=last {
            j.append(&[quote(seq)]);
            if seq % 50_000 == 0 {
                j.drain_overflow();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !j.drain_overflow() {
            assert!(
                Instant::now() < deadline,
                "the records in memory never reached a segment ({} bytes wait)",
                j.overflow.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(j.durable(), last);
        assert_eq!(j.counters().errors.load(Ordering::Relaxed), 0, "every roll found its prepared segment");
        j.close();
        let seqs = read_all(dir.path(), Limit::Files);
        assert_eq!(seqs.len() as u64, last);
        assert!(seqs.iter().copied().eq(1..=last), "every record once, in order");
    }

    #[test]
    fn interval_syncs_leave_the_pages_the_writer_fills_writable() {
        fn minor_faults_of_this_thread() -> i64 {
            // SAFETY: getrusage fills the struct it is given.
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) }, 0);
            u.ru_minflt
        }
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path(), FsyncPolicy::Interval);
        let marks = j.watermarks();
        append(&mut j, 1, 10);
        let (faults, syncs) = (minor_faults_of_this_thread(), j.counters().fsyncs.load(Ordering::Relaxed));
        // 10,000 records of 88 bytes, all in the first 1 MiB segment, whose pages were mapped
        // ahead of the writer, with a sync after every 200 (waited for: on a busy machine the
        // sync thread's turn comes late).
        for seq in 11..=10_010 {
            j.append(&[quote(seq)]);
            if seq % 200 == 0 {
                let before = j.counters().fsyncs.load(Ordering::Relaxed);
                let deadline = Instant::now() + Duration::from_secs(2);
                while j.counters().fsyncs.load(Ordering::Relaxed) == before && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let faults = minor_faults_of_this_thread() - faults;
        let syncs = j.counters().fsyncs.load(Ordering::Relaxed) - syncs;
        assert!(syncs >= 10, "the sync thread ran ({syncs} syncs)");
        // At most the page the writer was in when the writer stood still, once a sync; a sync
        // that cleaned every dirty page would cost a fault for each of the 215 pages filled.
        assert!(faults <= syncs as i64 + 5, "{faults} page faults on the writer over {syncs} syncs");
        // What stays behind is synced too once the writer stands still.
        within_5s(|| marks.stable() >= 10_010, || format!("stable stuck at {}", marks.stable()));
    }

    #[test]
    fn segments_left_behind_hold_nothing_open_that_nobody_needs() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path(), FsyncPolicy::Never);
        append(&mut j, 1, 30_000);
        assert!(super::scan::list_segments(dir.path()).unwrap().len() >= 3);
        // Nothing syncs under `never`: the files left behind are not kept for a sync.
        assert!(lock(&j.shared.sync).left.is_empty());
        // Their mappings are unmapped by the prefault thread, not by the writer.
        within_5s(|| lock(&j.shared.retired).is_empty(), || "retired mappings were never dropped".into());
    }

    #[test]
    fn after_a_kill_the_mapping_holds_every_copied_record_and_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path(), FsyncPolicy::Never);
        append(&mut j, 1, 500);
        // What a kill -9 leaves: the threads gone, the segment never cut back, the file as the
        // page cache has it. Leaked on purpose, so that no close runs.
        std::mem::forget(j);
        let mut j = open(dir.path(), FsyncPolicy::Never);
        assert_eq!(j.appended(), 500);
        append(&mut j, 501, 600);
        j.close();
        assert_eq!(read_all(dir.path(), Limit::Files), (1..=600).collect::<Vec<_>>());
    }

    #[test]
    fn under_always_events_are_durable_only_once_a_sync_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path(), FsyncPolicy::Always);
        let marks = j.watermarks();
        j.append(&[quote(1), quote(2), quote(3)]);
        assert_eq!(j.durable(), 0, "not before the sync");
        assert!(read_all(dir.path(), Limit::Durable(marks.clone())).is_empty(), "followers wait for it too");
        let synced = futures_lite::future::block_on(j.synced_after(0));
        assert_eq!(synced, Some(3));
        assert!(marks.stable() >= 3);
        j.mark_local(3);
        assert_eq!(read_all(dir.path(), Limit::Durable(marks)), vec![1, 2, 3]);
        j.close();
        assert_eq!(futures_lite::future::block_on(j.synced_after(3)), None, "a closed journal syncs no more");
    }

    #[test]
    fn a_journal_that_needs_confirmation_acknowledges_only_what_is_both_local_and_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open_confirmed(dir.path(), FsyncPolicy::Never, Some(0));
        let marks = j.watermarks();
        j.append(&[quote(1), quote(2), quote(3)]);
        assert_eq!((j.local(), j.durable()), (3, 0), "durable here, not yet confirmed");
        assert_eq!(read_all(dir.path(), Limit::Local(marks.clone())), vec![1, 2, 3], "what confirms reads it");
        assert!(read_all(dir.path(), Limit::Durable(marks.clone())).is_empty(), "no other follower does");
        assert!(read_all(dir.path(), Limit::Stable(marks.clone())).is_empty());
        assert_eq!(marks.wait_local(0, Duration::from_secs(1)), 3);
        j.confirm(2);
        assert_eq!(j.durable(), 2);
        j.confirm(5);
        assert_eq!(j.durable(), 3, "never past what is durable here");
        j.close();
        // Reopened with what the outside party had: the rest waits for it again.
        let mut j = open_confirmed(dir.path(), FsyncPolicy::Never, Some(1));
        assert_eq!((j.local(), j.durable()), (3, 1));
        j.confirm(3);
        assert_eq!(j.durable(), 3);
    }
}
