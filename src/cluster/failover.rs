//! Failover: the accounts of a node that died move to the live ones, and a node that comes back
//! leaves them there.
//!
//! A thread of its own (`sg-failover`) reads the members and their leases every
//! [`CHECK`]. Once a member's lease has run out, each of its accounts goes to one live member,
//! the same one whichever node decides (the highest of a hash of account and node id), and
//! that member takes it with one script: only while the old owner's lease is still gone, it
//! raises the account's epoch (the fencing token every write to the account's stream names),
//! records the new owner, and notes the account in `moved:{old owner}`. It then reads the
//! account's stream, its whole history, and hands it to the hot core, which journals it again
//! (`EventKind::AccountAdopted`) and serves the account from then on; the old owner's writes
//! are refused by Redis from the moment the epoch moved.
//!
//! A node takes nothing unless its own lease holds and Redis has answered it for a whole lease:
//! after Redis was away, every live node first renews its lease, so none is taken for dead.
//!
//! A node that comes back finds its moved accounts at start ([`release_moved`]): it journals
//! `EventKind::AccountReleased` for each, so its requests go to the new owner, and the events
//! of theirs that Redis never had are reported by the replication, never merged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{connect_to as connect, key, Member, Status};
use crate::config::Config;
use crate::engine::event::Event;
use crate::engine::types::AccountId;
use crate::journal::format::{self, Version};
use crate::node::Node;

/// How often the thread looks for members whose lease ran out.
const CHECK: Duration = Duration::from_millis(100);
/// Accounts being handed to the hot core at most.
const QUEUE: usize = 64;

/// Takes an account for this node while its old owner's lease is gone: raises its epoch,
/// records the new owner, moves it between the owners' sets, notes it as moved and, with
/// PostgreSQL, as having events to import; the new epoch, or nothing when the account is not
/// the old owner's any more or its lease is back. KEYS: owners, epochs, lease:{old},
/// accounts:{old}, accounts:{new}, moved:{old}, pg_pending; ARGV: account, old node id, new
/// node id, 1 with PostgreSQL.
const TAKE: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return false end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return false end
local epoch = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SMOVE', KEYS[4], KEYS[5], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[1])
if ARGV[4] == '1' then redis.call('SADD', KEYS[7], ARGV[1]) end
return epoch";

/// Takes an account out of `pg_pending` while this node owns it. KEYS: owners, pg_pending; ARGV:
/// account, node id.
const IMPORTED: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('SREM', KEYS[2], ARGV[1]) end";

/// An entry of an account's stream: the node that journaled the event or made the checkpoint
/// (`None` for an entry written before streams named it), and the event as that node wrote it.
pub type Entry = (Option<String>, Event);

/// Hands the offload an account's stream, so that PostgreSQL gets the events of its earlier
/// owners that their offload had not committed; the receiver gets the rows written, or why not.
pub type Import = Arc<dyn Fn(AccountId, Vec<Entry>) -> Imported + Send + Sync>;

/// Where an import's outcome arrives: the rows written, or why not.
pub type Imported = std::sync::mpsc::Receiver<Result<usize, String>>;

/// How long an import may take before it is asked again.
const IMPORT_WAIT: Duration = Duration::from_secs(30);
/// Pause after an import failed.
const IMPORT_RETRY: Duration = Duration::from_secs(1);

/// An account moved to this node: its epoch here and its history.
#[derive(Debug)]
pub struct Adoption {
    /// The account.
    pub account: AccountId,
    /// Its new epoch.
    pub epoch: u64,
    /// The node that owned it.
    pub from: String,
    /// Its events there, in order, from its creation (or its oldest checkpoint kept).
    pub history: Vec<Event>,
    /// The cluster-wide sequence number of each event of `history` (0 for a checkpoint's).
    pub seqs: Vec<u64>,
}

/// Adoptions on their way to the hot core.
pub type Adoptions = tokio::sync::mpsc::Receiver<Adoption>;

/// The failover thread; dropping it stops the thread.
pub struct Failover {
    _thread: super::Background,
}

impl Failover {
    /// Starts the thread; what it takes arrives on the receiver, for the hot core, which holds
    /// the accounts `held` now.
    /// With PostgreSQL, `import` writes there what the earlier owners of the accounts taken had
    /// not (see [`Import`]): they stay in `pg_pending` until it did, and their streams keep every
    /// event meanwhile.
    pub fn start(
        cfg: &Config,
        status: Arc<Status>,
        held: Vec<AccountId>,
        import: Option<Import>,
    ) -> Result<(Failover, Adoptions), String> {
        let client =
            redis::Client::open(cfg.cluster.redis_url.as_str()).map_err(|e| format!("cluster.redis_url: {e}"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let lease = Duration::from_millis(cfg.cluster.lease_ms);
        let thread = super::Background::spawn("sg-failover", move |stop| {
            let mut watch = Watch {
                client,
                con: None,
                status,
                up_since: None,
                lease,
                adopted: tx,
                taken: Vec::new(),
                held: Some(held),
                import,
                importing: None,
                import_after: Instant::now(),
            };
            while !stop.load(Ordering::Acquire) {
                watch.check(stop);
                watch.import_pending();
                std::thread::park_timeout(CHECK);
            }
        })?;
        Ok((Failover { _thread: thread }, rx))
    }
}

struct Watch {
    client: redis::Client,
    con: Option<redis::Connection>,
    status: Arc<Status>,
    /// Since when Redis has answered without a break.
    up_since: Option<Instant>,
    lease: Duration,
    adopted: tokio::sync::mpsc::Sender<Adoption>,
    /// Accounts taken for this node whose history it has not read yet: account, epoch, the node
    /// it was taken from, when.
    taken: Vec<(AccountId, u64, String, Instant)>,
    /// The accounts the hot core held at start, until the first check looked for those it lacks.
    held: Option<Vec<AccountId>>,
    import: Option<Import>,
    /// The account whose import runs, and since when.
    importing: Option<(AccountId, Imported, Instant)>,
    /// No import is started before this.
    import_after: Instant,
}

impl Watch {
    fn check(&mut self, stop: &AtomicBool) {
        if self.con.is_none() {
            self.con = connect(&self.client).ok();
        }
        let Some(con) = self.con.as_mut() else {
            self.up_since = None;
            return;
        };
        let members = match super::read_members(con) {
            Ok(m) => m,
            Err(_) => {
                self.con = None;
                self.up_since = None;
                return;
            }
        };
        let up_since = *self.up_since.get_or_insert_with(Instant::now);
        let me = self.status.node_id().to_string();
        let live: Vec<&str> = members.iter().filter(|m| m.alive).map(|m| m.node_id.as_str()).collect();
        let dead: Vec<&Member> = members.iter().filter(|m| !m.alive).collect();
        // Taking needs this node's own lease, and every live node time to renew since Redis came
        // back (or since this thread started).
        let ready = live.contains(&me.as_str()) && up_since.elapsed() >= self.lease && self.status.acting();
        self.status.set_members(members.clone());
        if let Some(held) = self.held.take() {
            // Accounts taken for this node by a run of it that died before it had them.
            if let Err(e) = self.find_orphans(&held) {
                self.held = Some(held);
                log::error!("cluster: cannot read this node's accounts: {e}");
                self.con = None;
                return;
            }
        }
        let Some(con) = self.con.as_mut() else { return };
        if !ready || dead.is_empty() {
            self.hand_over();
            return;
        }
        for d in dead {
            let accounts: Vec<u32> =
                match redis::cmd("SMEMBERS").arg(key(&format!("accounts:{}", d.node_id))).query(con) {
                    Ok(a) => a,
                    Err(_) => {
                        self.con = None;
                        return;
                    }
                };
            let mine: Vec<AccountId> =
                accounts.into_iter().filter(|&a| taker(a, &live) == Some(me.as_str())).map(AccountId).collect();
            if mine.is_empty() || stop.load(Ordering::Acquire) {
                continue;
            }
            // Counted from before the take: a request forwarded here once Redis names this node
            // the owner finds it counted (until the hot core has the account).
            self.status.adopting.fetch_add(mine.len() as u64, Ordering::AcqRel);
            let script = redis::Script::new(TAKE);
            for (i, &account) in mine.iter().enumerate() {
                let epoch: redis::RedisResult<Option<u64>> = script
                    .key(key("owners"))
                    .key(key("epochs"))
                    .key(key(&format!("lease:{}", d.node_id)))
                    .key(key(&format!("accounts:{}", d.node_id)))
                    .key(key(&format!("accounts:{me}")))
                    .key(key(&format!("moved:{}", d.node_id)))
                    .key(key("pg_pending"))
                    .arg(account.0)
                    .arg(&d.node_id)
                    .arg(&me)
                    .arg(u8::from(self.import.is_some()))
                    .invoke(con);
                match epoch {
                    Ok(Some(epoch)) => self.taken.push((account, epoch, d.node_id.clone(), Instant::now())),
                    Ok(None) => self.status.adopted(),
                    Err(e) => {
                        for _ in i..mine.len() {
                            self.status.adopted();
                        }
                        log::error!("cluster: account {account} of node {:?} could not be taken: {e}", d.node_id);
                        self.con = None;
                        return;
                    }
                }
            }
        }
        self.hand_over();
    }

    /// Notes for the hand-over the accounts Redis gives this node that `held` (the hot core's,
    /// at start) lacks.
    fn find_orphans(&mut self, held: &[AccountId]) -> redis::RedisResult<()> {
        let Some(con) = self.con.as_mut() else { return Ok(()) };
        let me = self.status.node_id().to_string();
        let mine: Vec<u32> = redis::cmd("SMEMBERS").arg(key(&format!("accounts:{me}"))).query(con)?;
        for a in mine.into_iter().map(AccountId).filter(|a| !held.contains(a)) {
            let epoch: Option<u64> = redis::cmd("HGET").arg(key("epochs")).arg(a.0).query(con)?;
            let owner: Option<String> = redis::cmd("HGET").arg(key("owners")).arg(a.0).query(con)?;
            if let (Some(epoch), Some(owner)) = (epoch, owner) {
                if owner == me {
                    self.status.adopting.fetch_add(1, Ordering::AcqRel);
                    self.taken.push((a, epoch, me.clone(), Instant::now()));
                }
            }
        }
        Ok(())
    }

    /// Reads the histories of the accounts taken, in one round trip, and hands them to the hot
    /// core; on a failure they are read again at the next check.
    fn hand_over(&mut self) {
        if self.taken.is_empty() {
            return;
        }
        let Some(con) = self.con.as_mut() else { return };
        let mut pipe = redis::pipe();
        for (account, ..) in &self.taken {
            pipe.cmd("XRANGE").arg(super::replicate::stream_key(*account)).arg("-").arg("+");
        }
        let replies: Vec<redis::Value> = match pipe.query(con) {
            Ok(r) => r,
            Err(e) => {
                log::error!("cluster: the histories of the accounts taken could not be read: {e}");
                self.con = None;
                return;
            }
        };
        for ((account, epoch, from, taken_at), reply) in std::mem::take(&mut self.taken).into_iter().zip(&replies) {
            let (history, seqs): (Vec<Event>, Vec<u64>) = match entries_of(reply) {
                Ok(entries) => replayable(entries).iter().map(|(node, e)| (*e, cluster_seq(node, e))).unzip(),
                Err(e) => {
                    // Nothing to rebuild it from: it stays unserved here, said loudly.
                    log::error!("cluster: account {account} of node {from:?} cannot be rebuilt: {e}");
                    self.status.adopted();
                    continue;
                }
            };
            log::warn!(
                "cluster: node {from:?} is gone; account {account} moves here (epoch {epoch}, {} events to rebuild it from, taken and read in {:?})",
                history.len(),
                taken_at.elapsed()
            );
            if self.adopted.blocking_send(Adoption { account, epoch, from, history, seqs }).is_err() {
                self.status.adopted();
            }
        }
    }

    /// Imports into PostgreSQL, one account at a time, the events of the accounts in
    /// `pg_pending` that this node owns (see [`Import`]); an account leaves the set once done.
    fn import_pending(&mut self) {
        let Some(import) = self.import.clone() else { return };
        if let Some((account, rx, since)) = &self.importing {
            let account = *account;
            let done = match rx.try_recv() {
                Ok(r) => r,
                Err(std::sync::mpsc::TryRecvError::Empty) if since.elapsed() < IMPORT_WAIT => return,
                Err(_) => Err("the offload did not answer".into()),
            };
            self.importing = None;
            match done {
                Ok(rows) => {
                    let Some(con) = self.con.as_mut() else { return };
                    // Unless the account moved on meanwhile: its next owner imports what this
                    // node's offload may not have.
                    let done: redis::RedisResult<()> = redis::Script::new(IMPORTED)
                        .key(key("owners"))
                        .key(key("pg_pending"))
                        .arg(account.0)
                        .arg(self.status.node_id())
                        .invoke(con);
                    match done {
                        Ok(()) => log::info!(
                            "cluster: account {account}: the events of its earlier owners that PostgreSQL lacked are there ({rows} rows)"
                        ),
                        Err(_) => self.con = None,
                    }
                }
                Err(e) => {
                    log::warn!("cluster: account {account}: its earlier owners' events are not in PostgreSQL yet ({e}); trying again");
                    self.import_after = Instant::now() + IMPORT_RETRY;
                }
            }
            return;
        }
        if Instant::now() < self.import_after {
            return;
        }
        let Some(con) = self.con.as_mut() else { return };
        let me = self.status.node_id();
        let next = (|| -> redis::RedisResult<Option<(AccountId, redis::Value)>> {
            let pending: Vec<u32> = redis::cmd("SMEMBERS").arg(key("pg_pending")).query(con)?;
            if pending.is_empty() {
                return Ok(None);
            }
            let owners: Vec<Option<String>> = redis::cmd("HMGET").arg(key("owners")).arg(&pending).query(con)?;
            let Some(account) =
                pending.iter().zip(owners).find(|(_, o)| o.as_deref() == Some(me)).map(|(a, _)| AccountId(*a))
            else {
                return Ok(None);
            };
            let stream =
                redis::cmd("XRANGE").arg(super::replicate::stream_key(account)).arg("-").arg("+").query(con)?;
            Ok(Some((account, stream)))
        })();
        match next {
            Ok(Some((account, stream))) => match entries_of(&stream) {
                Ok(entries) => self.importing = Some((account, import(account, replayable(entries)), Instant::now())),
                Err(e) => {
                    log::error!("cluster: account {account}: its stream cannot be read for PostgreSQL: {e}");
                    self.import_after = Instant::now() + IMPORT_RETRY;
                }
            },
            Ok(None) => {}
            Err(_) => self.con = None,
        }
    }
}

/// The live member an account of a dead node goes to: the same on every node that asks.
fn taker<'a>(account: u32, live: &[&'a str]) -> Option<&'a str> {
    live.iter().copied().max_by_key(|id| {
        let text = format!("{account}/{id}");
        text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    })
}

/// What rebuilds an account from its stream's entries: its creation or oldest checkpoint kept,
/// then every event after it, without the later checkpoints (whose events, numbered 0, say
/// again what the events before them did). Rebuilt from the oldest, the account brings every
/// event the stream kept: what its stream clients resume from, and what PostgreSQL may lack.
pub fn replayable(entries: Vec<Entry>) -> Vec<Entry> {
    let mut started = false;
    entries
        .into_iter()
        .filter(|(_, e)| {
            let keep = e.seq != 0 || !started;
            started |= e.seq != 0;
            keep
        })
        .collect()
}

/// The cluster-wide sequence number of a stream entry's event: what its node gave it, in that
/// node's range (0 for a checkpoint's, which no client ever saw).
fn cluster_seq(node: &Option<String>, e: &Event) -> u64 {
    match node {
        Some(node) if e.seq > 0 => crate::config::node_base(node) + e.seq,
        _ => 0,
    }
}

/// The entries of an `XRANGE` reply of an account's stream, in order, each event once: a batch
/// the replication wrote again after Redis had it but its answer was lost is in the stream
/// twice, and an owner's events under one epoch are numbered upwards, so an entry numbered no
/// higher than one before it of the same node and epoch is such a copy.
pub fn entries_of(reply: &redis::Value) -> Result<Vec<Entry>, String> {
    use redis::Value;
    let Value::Array(entries) = reply else { return Err("an account's stream is not a list of entries".into()) };
    let mut highest: std::collections::HashMap<(Option<String>, Vec<u8>), u64> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        // [id, [field, value, field, value, ...]]
        let fields = match entry {
            Value::Array(parts) => match parts.get(1) {
                Some(Value::Array(fields)) => fields.as_slice(),
                _ => &[],
            },
            _ => &[],
        };
        let field = |name: &[u8]| {
            fields.chunks(2).find_map(|f| match f {
                [Value::BulkString(k), Value::BulkString(v)] if k == name => Some(v),
                _ => None,
            })
        };
        let record = field(b"event").ok_or("a stream entry without its event")?;
        let node = field(b"node").map(|n| String::from_utf8_lossy(n).into_owned());
        let found = format::read_at(record, 0, Version::V2).map_err(|e| format!("a stream entry: {e}"))?;
        let event = format::decode(found.payload, Version::V2)?;
        if event.seq > 0 {
            let epoch = field(b"epoch").cloned().unwrap_or_default();
            let last = highest.entry((node.clone(), epoch)).or_insert(0);
            if event.seq <= *last {
                continue;
            }
            *last = event.seq;
        }
        out.push((node, event));
    }
    Ok(out)
}

/// At start, before the node serves anything or replicates: lets go of the accounts of its
/// journal that other nodes took while it was away (`moved:{node_id}` when it joined, kept in
/// its [`Status`]), journaling `AccountReleased` for each, and takes them out of
/// that set. Returns the accounts released. (An account another node owns that was never taken
/// from this one is refused by the registry.)
pub fn release_moved(cfg: &Config, node: &mut Node, status: &Status) -> Result<Vec<AccountId>, String> {
    let c = &cfg.cluster;
    let redis_err = |e: redis::RedisError| format!("cluster: Redis at {}: {e}", c.redis_url);
    let inherited = status.inherited_moves();
    let mut released = Vec::new();
    if inherited.is_empty() {
        return Ok(released);
    }
    let client = redis::Client::open(c.redis_url.as_str()).map_err(|e| format!("cluster.redis_url: {e}"))?;
    let mut con = connect(&client).map_err(redis_err)?;
    let accounts: Vec<u32> = node.engine.accounts().iter().map(|a| a.id.0).filter(|a| inherited.contains(a)).collect();
    if !accounts.is_empty() {
        let owners: Vec<Option<String>> =
            redis::cmd("HMGET").arg(key("owners")).arg(&accounts).query(&mut con).map_err(redis_err)?;
        let epochs: Vec<Option<u64>> =
            redis::cmd("HMGET").arg(key("epochs")).arg(&accounts).query(&mut con).map_err(redis_err)?;
        let now = crate::clock::now();
        for ((&a, owner), epoch) in accounts.iter().zip(owners).zip(epochs) {
            let Some(owner) = owner.filter(|o| *o != c.node_id) else { continue };
            log::warn!(
                "cluster: account {a} moved to node {owner:?} (epoch {}) while this node was away; this node lets it go",
                epoch.unwrap_or(0)
            );
            node.engine.release(AccountId(a), epoch.unwrap_or(0), now);
            node.after_command();
            released.push(AccountId(a));
        }
    }
    let _: () = redis::cmd("SREM")
        .arg(key(&format!("moved:{}", c.node_id)))
        .arg(&inherited)
        .query(&mut con)
        .map_err(redis_err)?;
    status.inherited_moves_released();
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_picks_the_same_taker_and_accounts_spread_over_the_live_nodes() {
        let live = ["a", "b", "c"];
        let mut counts = std::collections::HashMap::new();
        for account in 1..=300 {
            let t = taker(account, &live).unwrap();
            let mut reversed = live;
            reversed.reverse();
            assert_eq!(taker(account, &reversed), Some(t));
            *counts.entry(t).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&n| n > 60), "{counts:?}");
        assert_eq!(taker(1, &[]), None);
    }

    #[test]
    fn an_account_is_rebuilt_from_its_oldest_checkpoint_and_every_event_after_it() {
        use crate::engine::event::EventKind;
        use crate::engine::types::KeyId;
        let entry = |seq: u64| {
            let kind = EventKind::KeyRevoked { key: KeyId(seq as u32) };
            (Some("a".to_string()), Event { seq, ts: 0, kind })
        };
        // A checkpoint (two entries numbered 0), three events, a later checkpoint, one event.
        let stream: Vec<Entry> = [0, 0, 5, 6, 8, 0, 0, 9].into_iter().map(entry).collect();
        let kept: Vec<u64> = replayable(stream).iter().map(|(_, e)| e.seq).collect();
        assert_eq!(kept, [0, 0, 5, 6, 8, 9]);
        let seqs: Vec<u64> = replayable(vec![entry(0), entry(7)]).iter().map(|(n, e)| cluster_seq(n, e)).collect();
        assert_eq!(seqs, [0, crate::config::node_base("a") + 7]);
        assert_eq!(cluster_seq(&None, &entry(7).1), 0);
    }

    #[test]
    fn an_event_written_to_a_stream_twice_is_read_once() {
        use crate::engine::event::EventKind;
        use crate::engine::types::KeyId;
        use redis::Value;
        let bulk = |b: &[u8]| Value::BulkString(b.to_vec());
        let entry = |seq: u64, epoch: &str, node: &str| {
            let mut record = Vec::new();
            format::encode(&mut record, &Event { seq, ts: 0, kind: EventKind::KeyRevoked { key: KeyId(1) } });
            let fields = vec![
                bulk(b"seq"),
                bulk(seq.to_string().as_bytes()),
                bulk(b"epoch"),
                bulk(epoch.as_bytes()),
                bulk(b"node"),
                bulk(node.as_bytes()),
                bulk(b"event"),
                bulk(&record),
            ];
            Value::Array(vec![bulk(b"0-1"), Value::Array(fields)])
        };
        // Node a's batch 5, 6 written twice (its answer lost), then 7; node b under epoch 2,
        // numbering from its own journal; a checkpoint (0) twice stays.
        let stream = Value::Array(vec![
            entry(5, "1", "a"),
            entry(6, "1", "a"),
            entry(5, "1", "a"),
            entry(6, "1", "a"),
            entry(7, "1", "a"),
            entry(0, "2", "b"),
            entry(0, "2", "b"),
            entry(3, "2", "b"),
            entry(3, "2", "b"),
            entry(4, "2", "b"),
        ]);
        let read: Vec<(String, u64)> =
            entries_of(&stream).unwrap().into_iter().map(|(n, e)| (n.unwrap(), e.seq)).collect();
        let want = [("a", 5), ("a", 6), ("a", 7), ("b", 0), ("b", 0), ("b", 3), ("b", 4)];
        assert_eq!(read, want.map(|(n, s)| (n.to_string(), s)));
    }
}
