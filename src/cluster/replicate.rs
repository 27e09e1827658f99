//! The journal in Redis: every event of an account goes into a stream of that account's
//! (`signalgate:events:{account}`), written by one more journal follower on a thread of its
//! own, so that another node can rebuild the account when its owner dies.
//!
//! The follower reads what is durable on this machine ([`Limit::Local`]) and writes each batch
//! with one script that checks, per account, that this node owns it under the epoch it knows
//! (the fencing token a takeover raises): a node that lost an account can never add to its
//! stream. An account's first event records its owner and epoch 1. [`Shared::replicated`] says
//! how far Redis has the journal; under `cluster.ack = "replicated"` the journal acknowledges
//! nothing before that (see `journal::Options::confirmed`), so no answer, stream message or
//! venue order shows an event a failover could take back. With `cluster.redis_replicas` set,
//! a batch counts once that many Redis replicas have it too (`WAIT`).
//!
//! Redis keys (prefix `signalgate:`): `owners` (account → node id) and `epochs` (account →
//! epoch), `accounts:{node_id}`, `events:{account}` (fields `seq`, `epoch`, `node`: the node
//! that journaled it, `event`: the journal record), `checkpoints:{account}` and
//! `replicated:{node_id}` (the last sequence number Redis has of this node).
//!
//! A stream keeps the events since the checkpoint before the newest (about two checkpoints'
//! worth: what a stream client resumes from on the node that takes the account). With
//! PostgreSQL, a checkpoint drops only what the database has: the stream keeps the events since
//! a checkpoint this node's offload has passed, and all of an account whose earlier owners'
//! events a takeover has still to import (`pg_pending`, see `failover`). A node that dies before
//! its offload caught up thus leaves every event of its accounts in Redis for the node that
//! takes them, which rebuilds the account from the oldest checkpoint kept and imports what
//! PostgreSQL lacks.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::{connect_to as connect, key, Status};
use crate::config::Config;
use crate::engine::event::{Adoptions, Event, EventKind};
use crate::engine::types::{AccountId, KeyId};
use crate::engine::venue::Venue;
use crate::engine::Engine;
use crate::journal::follow::{Follower, Limit, Start};
use crate::journal::{format, Watermarks};

/// Events written to Redis in one script call at most.
const BATCH: usize = 512;
/// How long the thread sleeps when the journal has nothing new (it is woken sooner by a write).
const IDLE: Duration = Duration::from_millis(100);
/// How long a `WAIT` for Redis replicas may take before the batch is tried again.
const WAIT_MS: u64 = 1_000;
/// Pause after Redis failed, before trying again.
const RETRY: Duration = Duration::from_millis(50);

/// Appends each event to its account's stream when this node owns the account under the epoch
/// given; returns the accounts it does not own. ARGV: node id, the batch's last sequence number,
/// the stream key prefix, then per event: account, epoch, sequence number, record.
const APPEND: &str = r"
local node, refused = ARGV[1], {}
for i = 4, #ARGV, 4 do
  local a, e = ARGV[i], ARGV[i + 1]
  if redis.call('HSETNX', KEYS[1], a, node) == 1 then
    redis.call('HSET', KEYS[2], a, e)
    redis.call('SADD', KEYS[4], a)
  end
  if redis.call('HGET', KEYS[1], a) == node and redis.call('HGET', KEYS[2], a) == e then
    redis.call('XADD', ARGV[3] .. a, '*', 'seq', ARGV[i + 2], 'epoch', e, 'node', node, 'event', ARGV[i + 3])
  else
    refused[#refused + 1] = a
  end
end
if #refused == 0 then redis.call('SET', KEYS[3], ARGV[2]) end
return refused";

/// Records this node as the owner of each account given (with its epoch) that has no owner
/// (Redis lost it); returns the accounts another node owns, or owns under another epoch. ARGV:
/// node id, then per account: account, epoch.
const CLAIM: &str = r"
local node, refused = ARGV[1], {}
for i = 2, #ARGV, 2 do
  local a, e = ARGV[i], ARGV[i + 1]
  if redis.call('HSETNX', KEYS[1], a, node) == 1 then
    redis.call('HSET', KEYS[2], a, e)
    redis.call('SADD', KEYS[3], a)
  elseif redis.call('HGET', KEYS[1], a) ~= node or redis.call('HGET', KEYS[2], a) ~= e then
    refused[#refused + 1] = a
  end
end
return refused";

/// Adds a checkpoint to an account's stream, when this node owns the account under the epoch
/// given, and trims the stream to the newest earlier checkpoint before which PostgreSQL has every
/// event (with no database: the one before the one just added, so that the events since it stay
/// for stream clients to resume from); 1 when written, 0 when this node does not own the
/// account (any more). The start of each checkpoint kept is listed in `checkpoints:{account}`
/// (`<entry id> <sequence number it covers> <node id>`). Another node's checkpoints can go once
/// the account is not in `pg_pending` (their events were imported when it moved here). KEYS:
/// owners, epochs, the stream, pg_pending, the checkpoint list; ARGV: node id, account, epoch,
/// the last sequence number the checkpoint covers, how far PostgreSQL has this node's journal
/// (-1: no database), then the checkpoint's records.
const CHECKPOINT: &str = r"
local node = ARGV[1]
if redis.call('HGET', KEYS[1], ARGV[2]) ~= node or redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return 0 end
local first = nil
for i = 6, #ARGV do
  local id = redis.call('XADD', KEYS[3], '*', 'seq', ARGV[4], 'epoch', ARGV[3], 'node', node, 'event', ARGV[i])
  if not first then first = id end
end
if not first then return 1 end
redis.call('RPUSH', KEYS[5], first .. ' ' .. ARGV[4] .. ' ' .. node)
if redis.call('SISMEMBER', KEYS[4], ARGV[2]) == 1 then return 1 end
local offloaded = tonumber(ARGV[5])
local starts = redis.call('LRANGE', KEYS[5], 0, -1)
for i = #starts - 1, 1, -1 do
  local id, covers, by = string.match(starts[i], '^(%S+) (%S+) (%S+)$')
  if offloaded < 0 or by ~= node or tonumber(covers) <= offloaded then
    redis.call('XTRIM', KEYS[3], 'MINID', id)
    redis.call('LTRIM', KEYS[5], i - 1, -1)
    return 1
  end
end
return 1";

/// The key of an account's stream.
pub fn stream_key(account: AccountId) -> String {
    key(&format!("events:{}", account.0))
}

/// The last sequence number of `node_id` that Redis has (0: none), read when the node joins.
pub fn replicated_of(con: &mut redis::Connection, node_id: &str) -> redis::RedisResult<u64> {
    let v: Option<u64> = redis::cmd("GET").arg(key(&format!("replicated:{node_id}"))).query(con)?;
    Ok(v.unwrap_or(0))
}

/// What the replication thread and the hot core share.
pub struct Shared {
    status: Arc<Status>,
    /// The hot core's task waiting for the replicated mark to move.
    waker: Mutex<Option<Waker>>,
    stopped: AtomicBool,
}

impl Shared {
    /// Redis has every event of this node's journal up to this sequence number.
    pub fn replicated(&self) -> u64 {
        self.status.replicated.load(Ordering::Acquire)
    }

    /// Resolves with [`Shared::replicated`] once it passes `after`; `None` once the thread stops.
    pub fn replicated_after(self: &Arc<Self>, after: u64) -> ReplicatedAfter {
        ReplicatedAfter { shared: self.clone(), after }
    }

    fn advance(&self, seq: u64) {
        self.status.replicated.fetch_max(seq, Ordering::AcqRel);
        if let Some(w) = self.waker.lock().ok().and_then(|mut w| w.take()) {
            w.wake();
        }
    }
}

/// See [`Shared::replicated_after`].
pub struct ReplicatedAfter {
    shared: Arc<Shared>,
    after: u64,
}

impl Future for ReplicatedAfter {
    type Output = Option<u64>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u64>> {
        let check = |s: &Shared| {
            let now = s.replicated();
            if now > self.after {
                Some(Some(now))
            } else if s.stopped.load(Ordering::Acquire) || s.status.stale() {
                Some(None)
            } else {
                None
            }
        };
        if let Some(done) = check(&self.shared) {
            return Poll::Ready(done);
        }
        if let Ok(mut w) = self.shared.waker.lock() {
            *w = Some(cx.waker().clone());
        }
        // Again, now that a wake cannot be missed.
        match check(&self.shared) {
            Some(done) => Poll::Ready(done),
            None => Poll::Pending,
        }
    }
}

/// The last sequence number of this node's journal that PostgreSQL has.
pub type Offloaded = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The replication thread; dropping it stops the thread.
pub struct Replicator {
    shared: Arc<Shared>,
    _thread: super::Background,
}

impl Replicator {
    /// Starts replicating the journal after what Redis had when the node joined, for the
    /// accounts `engine` (the hot core's, after its replay) holds and those the journal adds.
    pub fn start<V: Venue>(
        cfg: &Config,
        engine: &Engine<V>,
        marks: Arc<Watermarks>,
        status: Arc<Status>,
        offloaded: Option<Offloaded>,
    ) -> Result<Replicator, String> {
        let from = status.replicated.load(Ordering::Acquire);
        let c = &cfg.cluster;
        let client = redis::Client::open(c.redis_url.as_str()).map_err(|e| format!("cluster.redis_url: {e}"))?;
        let redis_err = |e: redis::RedisError| format!("cluster: Redis at {}: {e}", c.redis_url);
        let mut con = connect(&client).map_err(redis_err)?;
        let accounts: Vec<u32> = engine.accounts().iter().map(|a| a.id.0).collect();
        let epochs: Vec<Option<u64>> = if accounts.is_empty() {
            Vec::new()
        } else {
            redis::cmd("HMGET").arg(key("epochs")).arg(&accounts).query(&mut con).map_err(redis_err)?
        };
        let shared =
            Arc::new(Shared { status: status.clone(), waker: Mutex::new(None), stopped: AtomicBool::new(false) });
        let mut worker = Worker {
            losses: status.losses.load(Ordering::Relaxed),
            adoptions: Adoptions::default(),
            client,
            con: Some(con),
            node_id: c.node_id.clone(),
            replicas: c.redis_replicas,
            status,
            shared: shared.clone(),
            // What the node replayed before `from` was in Redis already; what came after is
            // written again from the journal.
            follower: Follower::start(
                &cfg.journal.dir,
                crate::node::follower_engine(cfg),
                Start::After(from),
                Limit::Local(marks.clone()),
            )?,
            since_checkpoint: HashMap::new(),
            checkpoint_script: redis::Script::new(CHECKPOINT),
            checkpoint_every: c.checkpoint_events,
            offloaded,
            marks,
            epochs: accounts.iter().zip(epochs).map(|(&a, e)| (AccountId(a), e.unwrap_or(1))).collect(),
            keys: engine.keys().iter().map(|k| (k.id, k.account)).collect(),
            script: redis::Script::new(APPEND),
            scratch: Vec::new(),
            batch: Vec::new(),
            told: false,
        };
        match worker.claim() {
            Ok(refused) if refused.is_empty() => {}
            Ok(refused) => {
                return Err(format!(
                    "cluster: accounts {refused:?} of this node's journal belong to another node, or to this one under a newer epoch"
                ))
            }
            Err(e) => return Err(redis_err(e)),
        }
        let thread = super::Background::spawn("sg-replicate", move |stop| {
            worker.run(stop);
            worker.shared.stopped.store(true, Ordering::Release);
            worker.shared.advance(0);
        })?;
        Ok(Replicator { shared, _thread: thread })
    }

    /// What the hot core and the status use.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

/// One event on its way to Redis.
struct Item {
    account: AccountId,
    epoch: u64,
    seq: u64,
    record: Vec<u8>,
}

/// The thread's own state.
struct Worker {
    client: redis::Client,
    con: Option<redis::Connection>,
    node_id: String,
    replicas: u32,
    status: Arc<Status>,
    shared: Arc<Shared>,
    /// The journal, read behind the hot core, with an engine of its own: what checkpoints are
    /// made from.
    follower: Follower,
    /// Events written to each account's stream since its last checkpoint, and the checkpoint's
    /// size.
    since_checkpoint: HashMap<AccountId, (usize, usize)>,
    checkpoint_script: redis::Script,
    checkpoint_every: usize,
    /// How far PostgreSQL has this node's journal, when it has a database.
    offloaded: Option<Offloaded>,
    marks: Arc<Watermarks>,
    /// The epoch under which this node owns each of its accounts.
    epochs: HashMap<AccountId, u64>,
    /// The account of each key (a revocation names only the key).
    keys: HashMap<KeyId, AccountId>,
    script: redis::Script,
    scratch: Vec<u8>,
    /// Read from the journal and not yet in Redis, with the last sequence number read.
    batch: Vec<Item>,
    /// Redis is known to be away (logged once).
    told: bool,
    /// `Status::losses` when this thread last looked.
    losses: u64,
    adoptions: Adoptions,
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) {
        let mut read_to = self.follower.next_seq() - 1;
        while !stop.load(Ordering::Acquire) {
            let losses = self.status.losses.load(Ordering::Relaxed);
            if losses != self.losses {
                // Redis was away, and may have come back empty: record this node's accounts again.
                match self.claim() {
                    Ok(refused) if refused.is_empty() => self.losses = losses,
                    Ok(refused) => self.lost(&refused),
                    Err(_) => {}
                }
            }
            if self.batch.is_empty() {
                match self.read() {
                    Ok(Some(last)) => read_to = last,
                    Ok(None) => {
                        self.marks.wait_local(read_to, IDLE);
                        continue;
                    }
                    Err(e) => {
                        log::error!("cluster replication: cannot read the journal: {e}");
                        std::thread::park_timeout(IDLE);
                        continue;
                    }
                }
            }
            if self.batch.is_empty() {
                // Nothing of an account (quotes only): nothing to write.
                self.shared.advance(read_to);
                continue;
            }
            match self.write(read_to) {
                Ok(()) => {
                    self.status.replicated_events.fetch_add(self.batch.len() as u64, Ordering::Relaxed);
                    for i in std::mem::take(&mut self.batch) {
                        self.since_checkpoint.entry(i.account).or_default().0 += 1;
                    }
                    self.shared.advance(read_to);
                    self.checkpoints();
                }
                Err(()) => std::thread::park_timeout(RETRY),
            }
        }
    }

    /// Reads what the journal made durable since the last call into `batch`; the last sequence
    /// number read, `None` when there was nothing new.
    fn read(&mut self) -> Result<Option<u64>, String> {
        let mut items = Vec::new();
        let Worker { epochs, keys, scratch, adoptions, status, follower, .. } = self;
        let n = follower.advance(u64::MAX, BATCH, |_, e: &Event| {
            match e.kind {
                EventKind::AccountAdopted { account, epoch, .. } => {
                    epochs.insert(account, epoch);
                }
                EventKind::AccountReleased { account, .. } => {
                    epochs.remove(&account);
                }
                _ => {}
            }
            if adoptions.imported(e) {
                // In the account's stream already (it was rebuilt from it).
                if let EventKind::KeyAdded { key, account, .. } = e.kind {
                    keys.insert(key, account);
                }
                return;
            }
            let Some(account) = account_of(e, keys) else { return };
            if let EventKind::AccountCreated { .. } = e.kind {
                epochs.insert(account, 1);
            }
            let Some(&epoch) = epochs.get(&account) else {
                // An event of an account another node took while this one was away, which
                // Redis never had: it stays in this node's journal, reported, never merged.
                status.note_unreplicated(account, e.seq);
                return;
            };
            scratch.clear();
            format::encode(scratch, e);
            items.push(Item { account, epoch, seq: e.seq, record: scratch.clone() });
        })?;
        self.batch = items;
        Ok((n > 0).then(|| self.follower.next_seq() - 1))
    }

    /// Writes `batch` (the journal read up to `last`) in one script call, then waits for the
    /// replicas; `Err` when Redis failed (the batch is tried again).
    fn write(&mut self, last: u64) -> Result<(), ()> {
        if self.con.is_none() {
            self.con = connect(&self.client).ok();
        }
        let Some(con) = self.con.as_mut() else {
            self.away("no connection".into());
            return Err(());
        };
        let mut call = self.script.prepare_invoke();
        call.key(key("owners"))
            .key(key("epochs"))
            .key(key(&format!("replicated:{}", self.node_id)))
            .key(key(&format!("accounts:{}", self.node_id)))
            .arg(&self.node_id)
            .arg(last)
            .arg(key("events:"));
        for i in &self.batch {
            call.arg(i.account.0).arg(i.epoch).arg(i.seq).arg(&i.record[..]);
        }
        let result: redis::RedisResult<Vec<u32>> = call.invoke(con).and_then(|refused| {
            if self.replicas > 0 {
                let had: u32 = redis::cmd("WAIT").arg(self.replicas).arg(WAIT_MS).query(con)?;
                if had < self.replicas {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::BusyLoadingError,
                        "fewer Redis replicas than cluster.redis_replicas have the events",
                    )));
                }
            }
            Ok(refused)
        });
        match result {
            Ok(refused) if refused.is_empty() => {
                if std::mem::take(&mut self.told) {
                    log::info!("cluster replication: Redis takes events again");
                }
                Ok(())
            }
            Ok(refused) => {
                self.status.refusals.fetch_add(1, Ordering::Relaxed);
                self.lost(&refused);
                Err(())
            }
            Err(e) => {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.con = None;
                }
                self.away(e.to_string());
                Err(())
            }
        }
    }

    /// Adds a checkpoint to the stream of each account that had `cluster.checkpoint_events`
    /// events (or twice its last checkpoint's) since its last checkpoint: the account as this
    /// node's follower engine has it, after every event the stream holds (see [`CHECKPOINT`] for
    /// what it trims). A failed write is tried again after the next batch.
    fn checkpoints(&mut self) {
        let due: Vec<AccountId> = self
            .since_checkpoint
            .iter()
            .filter(|(_, (since, size))| *since >= self.checkpoint_every.max(2 * size))
            .map(|(a, _)| *a)
            .collect();
        let covers = self.follower.next_seq() - 1;
        let offloaded = self.offloaded.as_ref().map_or(-1, |offloaded| offloaded() as i64);
        for account in due {
            let (Some(&epoch), Some(events)) = (self.epochs.get(&account), self.follower.engine().checkpoint(account))
            else {
                self.since_checkpoint.remove(&account);
                continue;
            };
            let Some(con) = self.con.as_mut() else { return };
            let mut call = self.checkpoint_script.prepare_invoke();
            call.key(key("owners"))
                .key(key("epochs"))
                .key(stream_key(account))
                .key(key("pg_pending"))
                .key(key(&format!("checkpoints:{}", account.0)))
                .arg(&self.node_id)
                .arg(account.0)
                .arg(epoch)
                .arg(covers)
                .arg(offloaded);
            for e in &events {
                self.scratch.clear();
                format::encode(&mut self.scratch, e);
                call.arg(&self.scratch[..]);
            }
            match call.invoke::<i64>(con) {
                Ok(1) => {
                    self.since_checkpoint.insert(account, (0, events.len()));
                    self.status.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => self.lost(&[account.0]),
                Err(e) => {
                    log::warn!("cluster replication: the checkpoint of account {account} was not written: {e}");
                    return;
                }
            }
        }
    }

    /// Records this node as the owner of its accounts where Redis has no owner for them; the
    /// accounts another node owns.
    fn claim(&mut self) -> redis::RedisResult<Vec<u32>> {
        if self.con.is_none() {
            self.con = Some(connect(&self.client)?);
        }
        let Some(con) = self.con.as_mut() else { return Ok(Vec::new()) };
        let mut refused = Vec::new();
        let all: Vec<(AccountId, u64)> = self.epochs.iter().map(|(&a, &e)| (a, e)).collect();
        let script = redis::Script::new(CLAIM);
        for chunk in all.chunks(BATCH) {
            let mut call = script.prepare_invoke();
            call.key(key("owners"))
                .key(key("epochs"))
                .key(key(&format!("accounts:{}", self.node_id)))
                .arg(&self.node_id);
            for (a, e) in chunk {
                call.arg(a.0).arg(e);
            }
            let r: Result<Vec<u32>, _> = call.invoke(con);
            match r {
                Ok(r) => refused.extend(r),
                Err(e) => {
                    self.con = None;
                    return Err(e);
                }
            }
        }
        Ok(refused)
    }

    /// Another node took `accounts`: this node must not act for them, and its answers for them
    /// must never be sent. It stops; at its next start it leaves them to their owner.
    fn lost(&self, accounts: &[u32]) {
        log::error!(
            "cluster replication: accounts {accounts:?} belong to another node now (this node's lease ran out); \
             this node stops rather than act for them"
        );
        self.status.note_stale();
        self.shared.advance(0);
    }

    fn away(&mut self, why: String) {
        if !std::mem::replace(&mut self.told, true) {
            log::error!(
                "cluster replication: Redis does not take events ({why}); answers wait under ack = \"replicated\""
            );
        }
    }
}

/// The account an event belongs to, keeping the keys the journal adds; `None` for events of no
/// account (quotes) and for the cluster's own markers.
fn account_of(e: &Event, keys: &mut HashMap<KeyId, AccountId>) -> Option<AccountId> {
    match e.kind {
        EventKind::KeyAdded { key, account, .. } => {
            keys.insert(key, account);
            Some(account)
        }
        EventKind::KeyRevoked { key } => keys.get(&key).copied(),
        EventKind::AccountAdopted { .. } | EventKind::AccountReleased { .. } => None,
        kind => kind.account(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_belongs_to_its_account_and_a_revocation_to_its_key_s() {
        let mut keys = HashMap::new();
        let ev = |kind| Event { seq: 1, ts: 0, kind };
        let created = ev(EventKind::AccountCreated {
            account: AccountId(7),
            name: crate::engine::account::AccountName::new("a").unwrap(),
            tier: 0,
            cash: 0,
            overrides: Default::default(),
        });
        assert_eq!(account_of(&created, &mut keys), Some(AccountId(7)));
        let added =
            ev(EventKind::KeyAdded { key: KeyId(3), account: AccountId(7), hash: [0; 32], roles: Default::default() });
        assert_eq!(account_of(&added, &mut keys), Some(AccountId(7)));
        assert_eq!(account_of(&ev(EventKind::KeyRevoked { key: KeyId(3) }), &mut keys), Some(AccountId(7)));
        assert_eq!(account_of(&ev(EventKind::KeyRevoked { key: KeyId(4) }), &mut keys), None);
    }
}
