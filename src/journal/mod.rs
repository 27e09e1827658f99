//! The journal: the node's source of truth.
//!
//! Every engine event is encoded once ([`format::encode`]) into [`Journal`]'s pending buffer on
//! the hot core, right after the command that made it. The writer task ([`writer::run`]) hands
//! whole batches to io_uring, so one write (and, with `fsync = "always"`, one fsync) covers every
//! event produced since the last one: group commit. Nothing leaves the node before its events
//! are durable under the configured policy: requests wait for [`Journal::durable`] to reach their
//! last event before they are answered, and the venue gate (`crate::venue::Gated`) holds orders
//! back until then.
//!
//! At start, [`replay`] restores the newest snapshot and applies the segments after it; a
//! follower thread ([`snapshot::Follower`]) writes new snapshots off the hot core.

pub mod format;
mod replay;
pub mod scan;
pub mod snapshot;
pub mod tail;
pub mod tools;
pub mod writer;

pub use replay::{replay, Replayed};

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::binary_heap::{BinaryHeap, PeekMut};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use serde::{Deserialize, Serialize};

use crate::engine::event::Event;

/// When the journal calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// After every write, before anything it holds is acknowledged (group commit).
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

/// How the writer hands batches to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteIo {
    /// An io_uring write through glommio (the default): the hot core never waits in the kernel.
    /// ext4 runs buffered io_uring writes on kernel worker threads, and glommio reaps file
    /// completions once per scheduler pass, so each write costs a pass or more of latency.
    Uring,
    /// `pwrite(2)` from the hot core: a copy into the page cache, done when the call returns
    /// (about 20 µs for a batch here), so requests are answered in the same scheduler pass — but
    /// the hot core stalls whenever the kernel makes the write wait (ms during a concurrent
    /// fsync). See `docs/durability.md` for the measurements.
    Pwrite,
}

impl WriteIo {
    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteIo::Pwrite => "pwrite",
            WriteIo::Uring => "uring",
        }
    }
}

/// The hot core's side of the journal: encoded events waiting for the writer, and how far the
/// writer got. Owned by the node; the writer task and waiting requests reach it through the node.
pub struct Journal {
    policy: FsyncPolicy,
    /// Encoded records not yet taken by the writer.
    pending: Vec<u8>,
    /// An empty buffer with capacity, swapped in when the writer takes `pending`.
    spare: Vec<u8>,
    /// Last sequence number encoded.
    appended: u64,
    /// Last sequence number whose write completed.
    written: u64,
    /// Last sequence number known to be on stable storage (after an fdatasync).
    synced: u64,
    /// Last sequence number that may be acknowledged and sent (written, and synced under `always`).
    durable: u64,
    /// Whether the last write succeeded.
    healthy: bool,
    /// Set once the writer has stopped: nothing more becomes durable.
    closed: bool,
    writer: Option<Waker>,
    /// Requests waiting for their events, the one waiting for the lowest sequence number first:
    /// an advance wakes only those it covers, not the ones whose events a later write carries.
    waiters: RefCell<BinaryHeap<Reverse<Waiter>>>,
    /// Told how far the journal is stable, when the node offloads to PostgreSQL.
    offload: Option<Arc<crate::postgres::offload::Shared>>,
    /// Carry every record to the WebSocket fan-out executors, one feed each.
    feeds: Vec<crate::ws::feed::Producer>,
}

impl Journal {
    /// An empty journal whose events so far (replayed) are all durable up to `last_seq`.
    pub fn new(policy: FsyncPolicy, last_seq: u64) -> Journal {
        Journal {
            policy,
            pending: Vec::with_capacity(256 * 1024),
            spare: Vec::with_capacity(256 * 1024),
            appended: last_seq,
            written: last_seq,
            synced: last_seq,
            durable: last_seq,
            healthy: true,
            closed: false,
            writer: None,
            waiters: RefCell::new(BinaryHeap::with_capacity(1024)),
            offload: None,
            feeds: Vec::new(),
        }
    }

    /// Copies every record appended from now on to `feed` too.
    pub fn add_feed(&mut self, feed: crate::ws::feed::Producer) {
        feed.publish_durable(self.durable);
        self.feeds.push(feed);
    }

    /// Tells `offload` how far the journal is stable from now on.
    pub fn publish_to(&mut self, offload: Arc<crate::postgres::offload::Shared>) {
        offload.publish_stable(self.stable());
        self.offload = Some(offload);
    }

    /// Last sequence number that survives what the policy promises to survive: written, and
    /// synced unless `fsync = "never"`. Only these events leave the node for PostgreSQL.
    pub fn stable(&self) -> u64 {
        if self.policy == FsyncPolicy::Never {
            self.written
        } else {
            self.synced
        }
    }

    fn publish_stable(&self) {
        if let Some(o) = &self.offload {
            o.publish_stable(self.stable());
        }
    }

    /// The fsync policy.
    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// Encodes events; the writer picks them up.
    pub fn append(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let start = self.pending.len();
        for e in events {
            format::encode(&mut self.pending, e);
        }
        for feed in &self.feeds {
            feed.push(&self.pending[start..]);
        }
        self.appended = events[events.len() - 1].seq;
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Whether new commands may be taken: the last write succeeded and the writer runs.
    pub fn accepting(&self) -> bool {
        self.healthy && !self.closed
    }

    /// Last sequence number written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Last sequence number on stable storage.
    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// An fdatasync covering everything up to `seq` completed.
    pub fn mark_synced(&mut self, seq: u64) {
        self.synced = self.synced.max(seq);
        self.publish_stable();
    }

    /// Last sequence number that may be acknowledged.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Bytes waiting for the writer.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Takes the pending records, leaving an empty buffer; `None` when there are none.
    /// Returns the bytes and the last sequence number they hold.
    pub fn take(&mut self) -> Option<(Vec<u8>, u64)> {
        if self.pending.is_empty() {
            return None;
        }
        let spare = std::mem::take(&mut self.spare);
        Some((std::mem::replace(&mut self.pending, spare), self.appended))
    }

    /// Gives back a buffer from [`Journal::take`] once written, to be reused.
    pub fn give_back(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        if buf.capacity() > self.spare.capacity() {
            self.spare = buf;
        }
    }

    /// The writer finished writing up to `seq`.
    pub fn mark_written(&mut self, seq: u64) {
        self.written = seq;
        self.healthy = true;
        self.publish_stable();
    }

    /// Everything up to `seq` may now be acknowledged; wakes the requests waiting for it.
    pub fn mark_durable(&mut self, seq: u64) {
        if seq > self.durable {
            self.durable = seq;
            let mut waiters = self.waiters.borrow_mut();
            while let Some(w) = waiters.peek_mut().filter(|w| w.0.seq <= seq) {
                PeekMut::pop(w).0.waker.wake();
            }
            drop(waiters);
            for feed in &self.feeds {
                feed.publish_durable(seq);
            }
        }
    }

    /// A write or sync failed: new commands are refused until one succeeds.
    pub fn mark_failed(&mut self) {
        self.healthy = false;
    }

    /// The writer stopped for good: waiting requests give up.
    pub fn close(&mut self) {
        self.closed = true;
        for w in self.waiters.borrow_mut().drain() {
            w.0.waker.wake();
        }
    }

    /// Registers the writer task to be woken by the next append.
    pub fn park_writer(&mut self, waker: &Waker) {
        self.writer = Some(waker.clone());
    }

    /// Whether a request waiting for `seq` is done: `Some(true)` when durable, `Some(false)` when
    /// it never will be (the writer stopped), `None` (registering `waker`) when it must wait.
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
}

/// A request's task waiting for `seq` to become durable; ordered by `seq` alone.
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

/// Waits until the journal holding `node`'s events has made `seq` durable. `false`: it never
/// will (the writer stopped at shutdown).
pub fn wait_durable<'a>(node: &'a RefCell<crate::node::Node>, seq: u64) -> impl Future<Output = bool> + 'a {
    DurableWait { node, seq }
}

struct DurableWait<'a> {
    node: &'a RefCell<crate::node::Node>,
    seq: u64,
}

impl Future for DurableWait<'_> {
    type Output = bool;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        match self.node.borrow().journal.poll_durable(self.seq, cx.waker()) {
            Some(done) => Poll::Ready(done),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::{FsyncPolicy, Journal};

    /// A waker that counts how often it was woken.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn woken(c: &Count) -> usize {
        c.0.load(Ordering::Relaxed)
    }

    #[test]
    fn an_advance_wakes_only_the_requests_whose_events_it_covers() {
        let j = &mut Journal::new(FsyncPolicy::Interval, 0);
        let (late, late_waker) = counting();
        let (early, early_waker) = counting();
        let (middle, middle_waker) = counting();
        // Registered out of order: the wake order follows sequence numbers, not arrival.
        assert_eq!(j.poll_durable(9, &late_waker), None);
        assert_eq!(j.poll_durable(3, &early_waker), None);
        assert_eq!(j.poll_durable(5, &middle_waker), None);

        j.mark_durable(4);
        assert_eq!((woken(&early), woken(&middle), woken(&late)), (1, 0, 0));
        assert_eq!(j.poll_durable(3, &early_waker), Some(true));
        assert_eq!(j.poll_durable(5, &middle_waker), None, "still waiting, registered again");

        j.mark_durable(8);
        // Both of the middle request's registrations wake it.
        assert_eq!((woken(&early), woken(&middle), woken(&late)), (1, 2, 0));
        j.mark_durable(8);
        assert_eq!(woken(&late), 0, "no advance, no wake");

        j.close();
        assert_eq!(woken(&late), 1, "closing wakes whoever is left");
        assert_eq!(j.poll_durable(9, &late_waker), Some(false));
        assert_eq!(j.poll_durable(8, &late_waker), Some(true));
    }
}
