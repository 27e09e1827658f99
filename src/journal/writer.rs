//! The journal writer: a task on the hot core that moves encoded events to disk through io_uring.
//!
//! Each turn takes everything the engine produced since the last turn and writes it with one
//! write (group commit: `pwrite` or an io_uring write, per `journal.io`); under
//! `fsync = "always"` one `fdatasync` (through io_uring) then covers the whole batch.
//! Only then does the node acknowledge those events and release the orders they hold
//! (`Node::on_durable`). While a write fails (disk full, I/O error) the journal reports itself
//! unavailable — the API refuses new commands with 503 `journal.unavailable` — and the same bytes
//! are retried with backoff until they go through.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use glommio::io::{BufferedFile, Directory, OpenOptions};

use super::format::{segment_header, segment_name, SEGMENT_HEADER};
use super::scan::Segment;
use super::{FsyncPolicy, WriteIo};
use crate::config::JournalConfig;
use crate::node::Node;
use crate::shutdown::Shutdown;

/// First wait after a failed write; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Attempts left for a failing write once the node is stopping.
const ATTEMPTS_WHEN_STOPPING: u32 = 3;
/// Immediate retries of an interrupted operation before it counts as a failure.
const QUICK_RETRIES: u32 = 8;

/// The segment being appended to.
struct Open {
    file: Rc<BufferedFile>,
    first_seq: u64,
    /// Bytes in the file (where the next write goes).
    len: u64,
}

/// Where appending continues: the last segment and the length of its good part (from the scan at
/// start), or nothing for an empty journal.
pub type Resume = Option<(Segment, u64)>;

/// Writes the node's journal until `finish` fires and nothing is left to write.
pub async fn run(node: Rc<RefCell<Node>>, cfg: JournalConfig, resume: Resume, finish: Shutdown) {
    let policy = cfg.fsync;
    let mut w =
        Writer { node: node.clone(), dir: cfg.dir.clone(), policy, io: cfg.io, finish: finish.clone(), failing: false };
    let mut open: Option<Open> = None;
    if let Some((seg, len)) = resume {
        open = w.retry("open the last segment", || reopen(seg.path.clone(), seg.first_seq, len)).await;
    }
    let syncing = Rc::new(Cell::new(false));
    let mut last_sync = Instant::now();
    let interval = Duration::from_millis(cfg.fsync_interval_ms);
    loop {
        let unsynced =
            policy == FsyncPolicy::Interval && node.borrow().journal.synced() < node.borrow().journal.written();
        let deadline = unsynced.then(|| interval.saturating_sub(last_sync.elapsed()));
        let Some((buf, last)) = next_batch(&node, &finish, deadline).await else {
            if finish.is_triggered() {
                if node.borrow().journal.pending_bytes() == 0 {
                    break;
                }
                continue;
            }
            // The interval passed with unsynced writes and nothing new to write.
            if let Some(o) = &open {
                spawn_sync(&node, o.file.clone(), &syncing);
                last_sync = Instant::now();
            }
            continue;
        };
        let first = node.borrow().journal.written() + 1;
        let roll =
            open.as_ref().is_none_or(|o| o.len > SEGMENT_HEADER as u64 && o.len + buf.len() as u64 > cfg.segment_bytes);
        if roll {
            if let Some(old) = open.take() {
                if policy != FsyncPolicy::Never {
                    w.retry("sync the full segment", || timed_sync(node.clone(), old.file.clone())).await;
                }
                node.borrow_mut().metrics.journal.segments += 1;
            }
            let dir = cfg.dir.clone();
            open = w.retry("start a segment", || create(dir.clone(), first)).await;
        }
        // Either fails only when the node is stopping and the disk still fails: it exits without
        // acknowledging these events.
        let started = Instant::now();
        let Some(seg) = open.as_mut() else {
            log_lost(first, last);
            break;
        };
        if !w.write_all(seg, &buf).await {
            log_lost(first, last);
            break;
        }
        let write_ns = started.elapsed().as_nanos() as u64;
        {
            let mut n = node.borrow_mut();
            n.metrics.journal.writes += 1;
            n.metrics.journal.bytes += buf.len() as u64;
            n.metrics.journal.write_ns += write_ns;
            n.metrics.journal.write_max_ns = n.metrics.journal.write_max_ns.max(write_ns);
            n.journal.mark_written(last);
        }
        match policy {
            FsyncPolicy::Always => {
                let synced = w.retry("sync", || timed_sync(node.clone(), seg.file.clone())).await;
                if synced.is_none() {
                    break;
                }
                node.borrow_mut().journal.mark_synced(last);
            }
            FsyncPolicy::Interval if last_sync.elapsed() >= interval => {
                spawn_sync(&node, seg.file.clone(), &syncing);
                last_sync = Instant::now();
            }
            FsyncPolicy::Interval | FsyncPolicy::Never => {}
        }
        let mut n = node.borrow_mut();
        n.on_durable(last, crate::clock::now());
        n.journal.give_back(buf);
    }
    if let Some(o) = open {
        if policy != FsyncPolicy::Never {
            if let Err(e) = timed_sync(node.clone(), o.file.clone()).await {
                log::error!("journal: final sync of segment {} failed: {e}", o.first_seq);
            } else {
                let mut n = node.borrow_mut();
                let written = n.journal.written();
                n.journal.mark_synced(written);
            }
        }
    }
    node.borrow_mut().journal.close();
    log::info!("journal writer stopped at seq {}", node.borrow().journal.written());
}

fn log_lost(first: u64, last: u64) {
    log::error!(
        "journal: events {first}..={last} could not be written; they were not acknowledged and their orders not sent"
    );
}

struct Writer {
    node: Rc<RefCell<Node>>,
    dir: PathBuf,
    policy: FsyncPolicy,
    io: WriteIo,
    finish: Shutdown,
    failing: bool,
}

impl Writer {
    /// Runs `op` until it succeeds. While it fails the journal is marked unavailable; once the
    /// node is stopping it gives up after a few attempts (`None`).
    async fn retry<T, F, Fut>(&mut self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::io::Result<T>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempts_left = ATTEMPTS_WHEN_STOPPING;
        let mut quick = QUICK_RETRIES;
        loop {
            match op().await {
                Ok(v) => {
                    if self.failing {
                        self.failing = false;
                        log::warn!("journal: writing again in {}; taking commands", self.dir.display());
                    }
                    return Some(v);
                }
                // Interrupted or would-block is not a failing disk: try again at once.
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) && quick > 0 => {
                    log::debug!("journal: {what} interrupted ({e}); again");
                    quick -= 1;
                }
                Err(e) => {
                    {
                        let mut n = self.node.borrow_mut();
                        n.metrics.journal.errors += 1;
                        n.journal.mark_failed();
                    }
                    if !self.failing {
                        self.failing = true;
                        log::error!(
                            "journal: cannot {what} in {} ({e}); refusing commands with 503 journal.unavailable until it can (fsync = {})",
                            self.dir.display(),
                            self.policy.as_str()
                        );
                    }
                    if self.finish.is_triggered() {
                        attempts_left -= 1;
                        if attempts_left == 0 {
                            return None;
                        }
                    }
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Writes all of `buf` at the end of `seg`, resuming after short writes. `false`: gave up.
    async fn write_all(&mut self, seg: &mut Open, buf: &[u8]) -> bool {
        let mut done = 0;
        while done < buf.len() {
            let (file, at) = (seg.file.clone(), seg.len);
            let rest = &buf[done..];
            let io = self.io;
            let Some(n) = self.retry("write", || write_at(file.clone(), io, rest, at)).await else {
                return false;
            };
            done += n;
            seg.len += n as u64;
        }
        true
    }
}

async fn write_at(file: Rc<BufferedFile>, io: WriteIo, buf: &[u8], at: u64) -> std::io::Result<usize> {
    let n = match io {
        WriteIo::Pwrite => {
            // SAFETY: the descriptor is open for as long as `file` lives, and `buf` is a valid
            // slice of `buf.len()` bytes for the duration of the call.
            let n = unsafe { libc::pwrite(file.as_raw_fd(), buf.as_ptr().cast(), buf.len(), at as libc::off_t) };
            usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?
        }
        // glommio keeps the buffer while the kernel has it, so it gets its own copy: the batch
        // stays ours, to retry after a failure and to reuse afterwards.
        WriteIo::Uring => file.write_at(buf.to_vec(), at).await?,
    };
    if n == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "wrote nothing"));
    }
    Ok(n)
}

/// One fdatasync, counted in the metrics.
async fn timed_sync(node: Rc<RefCell<Node>>, file: Rc<BufferedFile>) -> std::io::Result<()> {
    let started = Instant::now();
    file.fdatasync().await?;
    let mut n = node.borrow_mut();
    n.metrics.journal.fsyncs += 1;
    n.metrics.journal.fsync_ns += started.elapsed().as_nanos() as u64;
    Ok(())
}

/// Under `fsync = "interval"`: syncs in the background, one at a time, while writes go on.
fn spawn_sync(node: &Rc<RefCell<Node>>, file: Rc<BufferedFile>, busy: &Rc<Cell<bool>>) {
    if busy.get() {
        return;
    }
    busy.set(true);
    let (node, busy) = (node.clone(), busy.clone());
    let covers = node.borrow().journal.written();
    let task = glommio::spawn_local(async move {
        match timed_sync(node.clone(), file).await {
            Ok(()) => node.borrow_mut().journal.mark_synced(covers),
            Err(e) => {
                node.borrow_mut().metrics.journal.errors += 1;
                log::error!("journal: background fdatasync failed: {e}");
            }
        }
        busy.set(false);
    });
    task.detach();
}

async fn reopen(path: PathBuf, first_seq: u64, len: u64) -> std::io::Result<Open> {
    let file = OpenOptions::new().write(true).buffered_open(&path).await?;
    let mut open = Open { file: Rc::new(file), first_seq, len };
    if len < SEGMENT_HEADER as u64 {
        // A segment whose header a crash cut short: write it again.
        open.file.write_at(segment_header(first_seq).to_vec(), 0).await?;
        open.len = SEGMENT_HEADER as u64;
    }
    Ok(open)
}

async fn create(dir: PathBuf, first_seq: u64) -> std::io::Result<Open> {
    let path = dir.join(segment_name(first_seq));
    let file = OpenOptions::new().write(true).create(true).truncate(true).buffered_open(&path).await?;
    let header = segment_header(first_seq);
    let n = file.write_at(header.to_vec(), 0).await?;
    if n != header.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "short write of a segment header"));
    }
    // The new file's name must survive a power loss too.
    file.fdatasync().await?;
    sync_dir(&dir).await?;
    log::info!("journal: started segment {}", path.display());
    Ok(Open { file: Rc::new(file), first_seq, len: SEGMENT_HEADER as u64 })
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let d = Directory::open(dir).await?;
    d.sync().await?;
    d.close().await?;
    Ok(())
}

/// The next batch, or `None` when `finish` fired or `deadline` passed.
async fn next_batch(node: &RefCell<Node>, finish: &Shutdown, deadline: Option<Duration>) -> Option<(Vec<u8>, u64)> {
    let batch = futures_lite::future::or(NextBatch { node }, async {
        finish.wait().await;
        None
    });
    match deadline {
        None => batch.await,
        Some(d) => {
            futures_lite::future::or(batch, async move {
                glommio::timer::sleep(d).await;
                None
            })
            .await
        }
    }
}

/// Resolves with the pending records once there are some.
struct NextBatch<'a> {
    node: &'a RefCell<Node>,
}

impl Future for NextBatch<'_> {
    type Output = Option<(Vec<u8>, u64)>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut n = self.node.borrow_mut();
        match n.journal.take() {
            Some(batch) => Poll::Ready(Some(batch)),
            None => {
                n.journal.park_writer(cx.waker());
                Poll::Pending
            }
        }
    }
}
