//! The cluster's registry in Redis — which node owns each account, which account each key (by
//! hash) and key id belongs to — and the thread that keeps this node's part of it: one more
//! follower of the journal.
//!
//! At start the node publishes what its journal holds (refusing to start when Redis says another
//! node owns one of its accounts), then the thread reads each new durable event and publishes the
//! accounts and keys it creates. [`Shared::registered`] says how far Redis has the journal; admin
//! answers wait for it, so an account or key exists on every node once its creation is answered.
//! The same thread answers the hot core's questions (whose is this key, this account, this key
//! id; where does a new account go) and keeps pools of ids that Redis hands out, so the hot core
//! never waits on Redis but for a request another node serves.
//!
//! Redis keys (prefix `signalgate:`): `keys` (key hash, hex → account), `key_accounts` (key id →
//! account), `next_account` and `next_key` (the last ids handed out). Who owns each account
//! (`owners`, `accounts:{node_id}`) is recorded by the replication of the journal, with the
//! account's epoch (`cluster::replicate`), and read here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{connect_to as connect, key, Status};
use crate::config::Config;
use crate::engine::event::{Event, EventKind};
use crate::engine::types::{AccountId, KeyId};
use crate::engine::venue::Venue;
use crate::engine::Engine;
use crate::journal::follow::{Limit, Reader};
use crate::journal::Watermarks;

/// Ids fetched from Redis at a time, and the pool size under which more are fetched.
const ID_BATCH: u32 = 16;
/// Questions waiting for the thread at most; more are refused (503) rather than queued.
const QUESTIONS: usize = 1024;
/// How often the thread looks for new events when nothing else wakes it.
const POLL: Duration = Duration::from_millis(5);

/// What the hot core asks the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    /// The owner of the account a key (by hash) belongs to.
    Key([u8; 32]),
    /// The owner of an account.
    Account(AccountId),
    /// The owner of the account of a key id.
    KeyId(KeyId),
    /// The live member a new account goes to: the one with the fewest accounts.
    NewAccount,
}

/// The registry's answer: a node id, `Ok(None)` when it knows of no such thing, `Err` when Redis
/// cannot be reached.
pub type Answer = Result<Option<String>, ()>;

type Asked = (Question, tokio::sync::oneshot::Sender<Answer>);

/// What the registry thread and the hot core share.
pub struct Shared {
    status: Arc<Status>,
    account_ids: Mutex<VecDeque<u32>>,
    key_ids: Mutex<VecDeque<u32>>,
    questions: SyncSender<Asked>,
}

impl Shared {
    /// Every event up to this sequence number is in Redis.
    pub fn registered(&self) -> u64 {
        self.status.registered.load(Ordering::Acquire)
    }

    /// An account id Redis handed out; `None` when the pool is empty (Redis away).
    pub fn account_id(&self) -> Option<AccountId> {
        self.account_ids.lock().ok()?.pop_front().map(AccountId)
    }

    /// A key id Redis handed out; `None` when the pool is empty (Redis away).
    pub fn key_id(&self) -> Option<KeyId> {
        self.key_ids.lock().ok()?.pop_front().map(KeyId)
    }

    /// Puts a question to the thread; `None` when too many are waiting.
    pub fn ask(&self, q: Question) -> Option<tokio::sync::oneshot::Receiver<Answer>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match self.questions.try_send((q, tx)) {
            Ok(()) => Some(rx),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
        }
    }
}

/// The registry thread; dropping it stops the thread.
pub struct Registry {
    shared: Arc<Shared>,
    _thread: super::Background,
}

/// The thread's own state.
struct Worker {
    client: redis::Client,
    con: Option<redis::Connection>,
    status: Arc<Status>,
    shared: Arc<Shared>,
    reader: Reader,
    /// Read from the journal and not yet in Redis.
    pending: Vec<Change>,
    /// The sequence number `pending` brings Redis up to.
    pending_seq: u64,
    /// Everything this node has published: written again after Redis was lost (it may have come
    /// back empty).
    all: Vec<Change>,
    /// Redis was lost since `all` was last written.
    lost: bool,
    /// `Status::losses` when this thread last looked.
    losses: u64,
}

/// One change to the registry.
#[derive(Debug, Clone, Copy)]
enum Change {
    Account(AccountId),
    Key { key: KeyId, account: AccountId, hash: [u8; 32] },
}

fn hex(hash: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Raises a counter of handed-out ids to at least `at_least`.
const RAISE: &str = r"local v = tonumber(redis.call('GET', KEYS[1]) or '0'); if v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end return 1";
/// The owner of the account of a key (by hash or by id).
const OWNER_OF_KEY: &str = r"local a = redis.call('HGET', KEYS[1], ARGV[1]); if not a then return false end; return redis.call('HGET', KEYS[2], a)";

impl Registry {
    /// Publishes what `engine` (the hot core's, after its replay) holds and starts the thread
    /// that publishes what comes after. Refuses when Redis cannot be reached or another node
    /// owns one of this node's accounts.
    pub fn start<V: Venue>(
        cfg: &Config,
        engine: &Engine<V>,
        marks: Arc<Watermarks>,
        status: Arc<Status>,
    ) -> Result<Registry, String> {
        let c = &cfg.cluster;
        let client = redis::Client::open(c.redis_url.as_str()).map_err(|e| format!("cluster.redis_url: {e}"))?;
        let redis_err = |e: redis::RedisError| format!("cluster: Redis at {}: {e}", c.redis_url);
        let mut con = connect(&client).map_err(redis_err)?;
        let accounts: Vec<u32> = engine.accounts().iter().map(|a| a.id.0).collect();
        if !accounts.is_empty() {
            let owners: Vec<Option<String>> =
                redis::cmd("HMGET").arg(key("owners")).arg(&accounts).query(&mut con).map_err(redis_err)?;
            if let Some((a, other)) =
                accounts.iter().zip(owners).find_map(|(a, o)| o.filter(|o| *o != c.node_id).map(|o| (a, o)))
            {
                return Err(format!(
                    "cluster: account {a} of this node's journal belongs to node {other:?} in the cluster; \
                     a node joins with a journal of its own cluster's accounts, or an empty one"
                ));
            }
        }
        let mut all = Vec::with_capacity(accounts.len() + engine.keys().len());
        all.extend(accounts.iter().map(|&a| Change::Account(AccountId(a))));
        all.extend(engine.keys().iter().map(|k| Change::Key { key: k.id, account: k.account, hash: k.hash }));
        publish_all(&mut con, &all, (0, 0)).map_err(redis_err)?;
        let (questions, asked) = std::sync::mpsc::sync_channel(QUESTIONS);
        status.registered.store(engine.last_seq(), Ordering::Release);
        let shared = Arc::new(Shared {
            status: status.clone(),
            account_ids: Mutex::default(),
            key_ids: Mutex::default(),
            questions,
        });
        let mut worker = Worker {
            client,
            con: Some(con),
            status,
            shared: shared.clone(),
            reader: Reader::new(&cfg.journal.dir, engine.last_seq() + 1, Limit::Durable(marks)),
            pending: Vec::new(),
            pending_seq: 0,
            all,
            lost: false,
            losses: 0,
        };
        worker.losses = worker.status.losses.load(Ordering::Relaxed);
        worker.refill();
        if worker.shared.account_ids.lock().map(|p| p.is_empty()).unwrap_or(true) {
            return Err(format!("cluster: Redis at {} did not hand out account ids", c.redis_url));
        }
        let thread = super::Background::spawn("sg-registry", move |stop| worker.run(&asked, stop))?;
        Ok(Registry { shared, _thread: thread })
    }

    /// What the hot core uses.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

/// Writes `changes` (idempotent: publishing one twice changes nothing). Who owns an account is
/// the replication's to record (`cluster::replicate`), with its epoch.
fn publish(con: &mut redis::Connection, changes: &[Change]) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for c in changes {
        match *c {
            Change::Account(_) => {}
            Change::Key { key: k, account, hash } => {
                pipe.cmd("HSET").arg(key("keys")).arg(hex(&hash)).arg(account.0).ignore();
                pipe.cmd("HSET").arg(key("key_accounts")).arg(k.0).arg(account.0).ignore();
            }
        }
    }
    pipe.query(con)
}

/// Writes every change of `all` and raises the id counters past every id this node holds or has
/// in its pools (`pooled`: the highest account and key ids).
fn publish_all(con: &mut redis::Connection, all: &[Change], pooled: (u32, u32)) -> redis::RedisResult<()> {
    for chunk in all.chunks(4096) {
        publish(con, chunk)?;
    }
    let (mut accounts, mut keys) = pooled;
    for c in all {
        match *c {
            Change::Account(a) => accounts = accounts.max(a.0),
            Change::Key { key, .. } => keys = keys.max(key.0),
        }
    }
    for (counter, highest) in [("next_account", accounts), ("next_key", keys)] {
        redis::Script::new(RAISE).key(key(counter)).arg(highest).invoke::<i64>(con)?;
    }
    Ok(())
}

impl Worker {
    fn run(mut self, asked: &Receiver<Asked>, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            match asked.recv_timeout(POLL) {
                Ok(q) => self.answer(q),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(q) = asked.try_recv() {
                self.answer(q);
            }
            let losses = self.status.losses.load(Ordering::Relaxed);
            if losses != self.losses {
                self.losses = losses;
                self.lost = true;
            }
            if self.lost {
                self.publish_again();
            }
            self.follow();
            self.refill();
        }
    }

    /// After Redis was lost: writes again everything this node published.
    fn publish_again(&mut self) {
        let highest = |pool: &Mutex<VecDeque<u32>>| pool.lock().ok().and_then(|p| p.back().copied()).unwrap_or(0);
        let mut pooled = (highest(&self.shared.account_ids), highest(&self.shared.key_ids));
        // Ids taken from the pools whose events are still on their way to Redis.
        for c in &self.pending {
            match *c {
                Change::Account(a) => pooled.0 = pooled.0.max(a.0),
                Change::Key { key, .. } => pooled.1 = pooled.1.max(key.0),
            }
        }
        let all = std::mem::take(&mut self.all);
        if self.call(|c| publish_all(c, &all, pooled)).is_ok() {
            self.lost = false;
            log::info!("cluster registry: published this node's {} accounts and keys again", all.len());
        }
        self.all = all;
    }

    /// Runs `f` on the connection, reconnecting first when the last call broke it.
    fn call<T>(&mut self, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T, ()> {
        if self.con.is_none() {
            self.con = connect(&self.client).ok();
        }
        let Some(con) = self.con.as_mut() else {
            self.lost = true;
            return Err(());
        };
        match f(con) {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.con = None;
                    self.lost = true;
                }
                log::debug!("cluster registry: {e}");
                Err(())
            }
        }
    }

    fn answer(&mut self, (q, reply): Asked) {
        let answer = match q {
            Question::Key(hash) => self.call(|c| {
                redis::Script::new(OWNER_OF_KEY).key(key("keys")).key(key("owners")).arg(hex(&hash)).invoke(c)
            }),
            Question::KeyId(k) => self.call(|c| {
                redis::Script::new(OWNER_OF_KEY).key(key("key_accounts")).key(key("owners")).arg(k.0).invoke(c)
            }),
            Question::Account(a) => self.call(|c| redis::cmd("HGET").arg(key("owners")).arg(a.0).query(c)),
            Question::NewAccount => {
                let live: Vec<String> =
                    self.status.members().into_iter().filter(|m| m.alive).map(|m| m.node_id).collect();
                let mut pipe = redis::pipe();
                for id in &live {
                    pipe.cmd("SCARD").arg(key(&format!("accounts:{id}")));
                }
                let counts: Result<Vec<u64>, ()> =
                    if live.is_empty() { Ok(Vec::new()) } else { self.call(|c| pipe.query(c)) };
                counts
                    .map(|counts| live.into_iter().zip(counts).min_by_key(|(id, n)| (*n, id.clone())).map(|(id, _)| id))
            }
        };
        let _ = reply.send(answer);
    }

    /// Publishes the events the journal made durable since the last call.
    fn follow(&mut self) {
        if self.pending.is_empty() {
            let mut changes = Vec::new();
            let read = self.reader.read(u64::MAX, 4096, |e: &Event, _| {
                match e.kind {
                    EventKind::AccountCreated { account, .. } => changes.push(Change::Account(account)),
                    EventKind::KeyAdded { key, account, hash, .. } => changes.push(Change::Key { key, account, hash }),
                    _ => {}
                }
                Ok(())
            });
            match read {
                Ok(0) => return,
                Ok(_) => {
                    self.pending = changes;
                    self.pending_seq = self.reader.next_seq() - 1;
                }
                Err(e) => {
                    log::error!("cluster registry: cannot read the journal: {e}");
                    return;
                }
            }
        }
        let pending = std::mem::take(&mut self.pending);
        let done = pending.is_empty() || self.call(|c| publish(c, &pending)).is_ok();
        if done {
            self.status.published.fetch_add(pending.len() as u64, Ordering::Relaxed);
            self.all.extend_from_slice(&pending);
            self.status.registered.store(self.pending_seq, Ordering::Release);
        } else {
            self.pending = pending;
        }
    }

    /// Fetches ids when a pool runs low.
    fn refill(&mut self) {
        for (counter, which) in [("next_account", 0), ("next_key", 1)] {
            let low = {
                let pool = if which == 0 { &self.shared.account_ids } else { &self.shared.key_ids };
                pool.lock().map(|p| p.len() < ID_BATCH as usize / 2).unwrap_or(false)
            };
            if !low {
                continue;
            }
            let Ok(last) = self.call(|c| redis::cmd("INCRBY").arg(key(counter)).arg(ID_BATCH).query::<u32>(c)) else {
                return;
            };
            let pool = if which == 0 { &self.shared.account_ids } else { &self.shared.key_ids };
            if let Ok(mut p) = pool.lock() {
                p.extend(last + 1 - ID_BATCH..=last);
            }
        }
    }
}
