//! Membership of a cluster of identical nodes that share one Redis (`[cluster]`).
//!
//! A node joins at start, on the main thread, before it serves anything: it checks that its
//! symbols and tiers are the cluster's (the first node to join records them), takes the lease of
//! its `node_id` (refused while another live node holds it) and publishes the addresses of its
//! listeners. A side thread then renews the lease every third of its length and reads the other
//! members and whether their leases are alive; `/ready`, `/metrics` and `GET /admin/cluster`
//! show what it last read. Redis is never touched by the hot core. A standalone node (no
//! `cluster.redis_url`) starts none of this.
//!
//! What lives in Redis, under the `signalgate:` prefix (one cluster per Redis database):
//! `config` (the symbols and tiers, as JSON), `members` (a hash of node id → its listeners) and
//! `lease:{node_id}` (a token that expires unless renewed).

pub mod failover;
pub mod forward;
pub mod market;
pub mod registry;
pub mod replicate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Ack, Config};
use crate::engine::event::Event;
use crate::engine::types::AccountId;
use crate::json::Writer;

/// Key prefix of everything the cluster keeps in Redis.
const PREFIX: &str = "signalgate:";
/// How long a Redis call may take before the side thread counts Redis as down.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// A connection to Redis whose calls fail after [`REDIS_TIMEOUT`] rather than hang.
fn connect_to(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(REDIS_TIMEOUT)?;
    con.set_read_timeout(Some(REDIS_TIMEOUT))?;
    con.set_write_timeout(Some(REDIS_TIMEOUT))?;
    Ok(con)
}

/// Where a member's listeners are, as the other nodes reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listeners {
    /// The public API.
    pub http: String,
    /// The admin API.
    pub admin: String,
    /// The WebSocket stream.
    pub ws: String,
}

/// A member as last read from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its `node_id`.
    pub node_id: String,
    /// Its listeners.
    pub listeners: Listeners,
    /// Whether its lease was alive.
    pub alive: bool,
}

/// What the cluster thread last saw, read by the executors (never while it holds the lock for
/// long: it swaps in a whole new list).
#[derive(Debug)]
pub struct Status {
    node_id: String,
    redis_up: AtomicBool,
    redis_errors: AtomicU64,
    lease_renewals: AtomicU64,
    members: Mutex<Vec<Member>>,
    /// Times a cluster thread found Redis away or without this node's lease (it may have lost
    /// what the nodes wrote): the registry then writes this node's part again.
    losses: AtomicU64,
    /// This node runs the cluster's quote simulator (it holds the `simulator` lease).
    simulating: AtomicBool,
    /// Every event of this node's journal up to this sequence number is in the registry.
    registered: AtomicU64,
    /// Changes published to the registry (accounts and keys).
    published: AtomicU64,
    /// What answers wait for.
    ack: Ack,
    /// Every event of this node's journal up to this sequence number is in Redis's streams.
    replicated: AtomicU64,
    /// Events written to the streams.
    replicated_events: AtomicU64,
    /// Batches Redis refused because another node owned one of their accounts.
    refusals: AtomicU64,
    /// Checkpoints that replaced an account's history in its stream.
    checkpoints: AtomicU64,
    /// This node found that another node took some of its accounts: it must stop.
    stale: AtomicBool,
    /// The accounts other nodes took from this node's previous run (`moved:{node_id}` when it
    /// joined), until [`failover::release_moved`] has let them go: a lease that runs out
    /// meanwhile does not count them as taken from this run.
    inherited_moves: Mutex<Vec<u32>>,
    /// Until when (nanoseconds on [`Status::clock`]) this node surely holds its lease: it was
    /// renewed by a call that started `lease_ms` before. Past it, other nodes may have taken its
    /// accounts, and it acts for none.
    lease_until: AtomicU64,
    /// How long a lease lasts.
    lease: Duration,
    /// Accounts taken for this node whose history the hot core has not journaled yet.
    adopting: AtomicU64,
    /// When the status was made: what `lease_until` counts from.
    born: Instant,
    /// Events of this node's journal that Redis never had, of accounts other nodes took while
    /// this one was away: kept in the journal, never merged, shown for an operator.
    unreplicated: Mutex<Vec<Unreplicated>>,
    /// For each account taken from another node: the cluster-wide sequence number its stream
    /// gave each event it brought (what that node's stream clients saw) and the one under which
    /// this node journaled it, sorted, so that those clients resume here (16 bytes an event).
    brought: Mutex<HashMap<AccountId, Vec<(u64, u64)>>>,
}

/// Events of one account that this node journaled and Redis never had, before another node took
/// the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreplicated {
    /// The account.
    pub account: AccountId,
    /// How many events.
    pub events: u64,
    /// The first and last of them (this node's sequence numbers).
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
}

impl Status {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether the last call to Redis succeeded.
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }

    /// Whether this node runs the cluster's quote simulator.
    pub fn simulating(&self) -> bool {
        self.simulating.load(Ordering::Relaxed)
    }

    /// Redis was found away by a thread other than the cluster thread.
    fn note_loss(&self) {
        self.losses.fetch_add(1, Ordering::Relaxed);
    }

    fn set_members(&self, members: Vec<Member>) {
        if let Ok(mut m) = self.members.lock() {
            *m = members;
        }
    }

    /// The members, as last read (this node included).
    pub fn members(&self) -> Vec<Member> {
        self.members.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Events durable in this node's journal and not yet in the registry, when `durable` is.
    fn registry_lag(&self, durable: u64) -> u64 {
        durable.saturating_sub(self.registered.load(Ordering::Relaxed))
    }

    /// Redis's streams have this node's journal up to this event.
    pub fn replicated(&self) -> u64 {
        self.replicated.load(Ordering::Acquire)
    }

    /// Events durable on this machine and not yet in Redis's streams, when `local` is.
    fn replication_lag(&self, local: u64) -> u64 {
        local.saturating_sub(self.replicated.load(Ordering::Relaxed))
    }

    /// Another node took some of this node's accounts (its lease ran out while it was cut off or
    /// paused): it must not act for any account any more, and stops.
    pub fn stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// Whether this node may act for its accounts now: its lease surely holds and it is not
    /// stale.
    pub fn acting(&self) -> bool {
        let now = self.born.elapsed().as_nanos() as u64;
        now < self.lease_until.load(Ordering::Acquire) && !self.stale()
    }

    /// The lease was renewed (or taken) by a call that started at `started`.
    fn renewed(&self, started: Instant) {
        let until = started.saturating_duration_since(self.born) + self.lease;
        self.lease_until.fetch_max(until.as_nanos() as u64, Ordering::AcqRel);
    }

    /// Whether accounts taken for this node are still on their way to its hot core: a request
    /// forwarded here for a key it does not know yet may be theirs.
    pub fn adopting(&self) -> bool {
        self.adopting.load(Ordering::Acquire) > 0
    }

    /// An account taken for this node reached its hot core (journaled or refused).
    pub fn adopted(&self) {
        self.adopting.fetch_sub(1, Ordering::AcqRel);
    }

    /// Notes where the events an adoption brought are in this node's journal: `(cluster-wide
    /// sequence number there, sequence number here)`.
    pub fn note_brought(&self, account: AccountId, seqs: impl Iterator<Item = (u64, u64)>) {
        let mut seqs: Vec<(u64, u64)> = seqs.collect();
        seqs.sort_unstable();
        if let Ok(mut b) = self.brought.lock() {
            b.insert(account, seqs);
        }
    }

    /// This node's sequence number of an event of `account` that another node journaled under
    /// the cluster-wide `seq`, when the account came here with it.
    pub fn brought_seq(&self, account: AccountId, seq: u64) -> Option<u64> {
        let b = self.brought.lock().ok()?;
        let seqs = b.get(&account)?;
        seqs.binary_search_by_key(&seq, |&(theirs, _)| theirs).ok().map(|i| seqs[i].1)
    }

    fn note_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// See `Status::inherited_moves`.
    fn inherited_moves(&self) -> Vec<u32> {
        self.inherited_moves.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// [`failover::release_moved`] has let the inherited moves go.
    fn inherited_moves_released(&self) {
        if let Ok(mut m) = self.inherited_moves.lock() {
            m.clear();
        }
    }

    fn note_unreplicated(&self, account: AccountId, seq: u64) {
        let Ok(mut list) = self.unreplicated.lock() else { return };
        match list.iter_mut().find(|u| u.account == account) {
            Some(u) => {
                u.events += 1;
                u.last_seq = seq;
            }
            None => {
                log::warn!(
                    "cluster: account {account} moved to another node while this one was away; its events from seq {seq} on \
                     were never replicated: they stay in this node's journal and are not merged (GET /admin/cluster)"
                );
                list.push(Unreplicated { account, events: 1, first_seq: seq, last_seq: seq });
            }
        }
    }

    /// Whether `e` is one of the [`Unreplicated`] events.
    pub fn is_unreplicated(&self, e: &Event) -> bool {
        let Some(account) = e.kind.account() else { return false };
        let Ok(list) = self.unreplicated.lock() else { return false };
        list.iter().any(|u| u.account == account && (u.first_seq..=u.last_seq).contains(&e.seq))
    }

    /// What [`Unreplicated`] events this node holds.
    pub fn unreplicated(&self) -> Vec<Unreplicated> {
        self.unreplicated.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `"cluster"` for `/ready` and `GET /admin/cluster`: Redis, each member's liveness, and how
    /// far the registry and the replication are behind the journal's `durable` and `local`
    /// events.
    pub fn write_json(&self, (durable, local): (u64, u64), w: &mut Writer<'_>) {
        w.begin_object();
        w.key("node_id").str(&self.node_id);
        w.key("redis").str(if self.redis_up() { "ok" } else { "unavailable" });
        w.key("stale").bool(self.stale());
        w.key("acting").bool(self.acting());
        w.key("ack").str(self.ack.as_str());
        w.key("simulator").bool(self.simulating());
        w.key("registry_lag_events").u64(self.registry_lag(durable));
        w.key("replicated_seq").u64(self.replicated.load(Ordering::Relaxed));
        w.key("replication_lag_events").u64(self.replication_lag(local));
        w.key("unreplicated").begin_array();
        for u in self.unreplicated() {
            w.begin_object();
            w.key("account").u64(u64::from(u.account.0));
            w.key("events").u64(u.events);
            w.key("first_seq").u64(u.first_seq);
            w.key("last_seq").u64(u.last_seq);
            w.end_object();
        }
        w.end_array();
        w.key("members").begin_array();
        for m in self.members() {
            w.begin_object();
            w.key("node_id").str(&m.node_id);
            w.key("alive").bool(m.alive);
            w.key("http").str(&m.listeners.http);
            w.key("admin").str(&m.listeners.admin);
            w.key("ws").str(&m.listeners.ws);
            w.end_object();
        }
        w.end_array();
        w.end_object();
    }

    /// Prometheus lines (`durable` and `local`: the journal's marks).
    pub fn render_metrics(&self, (durable, local): (u64, u64), out: &mut Vec<u8>) {
        use std::io::Write as _;
        let members = self.members();
        let _ = writeln!(out, "# HELP signalgate_cluster_redis_up Whether the last call to Redis succeeded.");
        let _ = writeln!(out, "# TYPE signalgate_cluster_redis_up gauge");
        let _ = writeln!(out, "signalgate_cluster_redis_up {}", u8::from(self.redis_up()));
        let _ = writeln!(out, "# HELP signalgate_cluster_redis_errors_total Calls to Redis that failed.");
        let _ = writeln!(out, "# TYPE signalgate_cluster_redis_errors_total counter");
        let _ = writeln!(out, "signalgate_cluster_redis_errors_total {}", self.redis_errors.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP signalgate_cluster_lease_renewals_total Renewals of this node's lease.");
        let _ = writeln!(out, "# TYPE signalgate_cluster_lease_renewals_total counter");
        let _ =
            writeln!(out, "signalgate_cluster_lease_renewals_total {}", self.lease_renewals.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP signalgate_cluster_member_up Whether a member's lease was alive when last read.");
        let _ = writeln!(out, "# TYPE signalgate_cluster_member_up gauge");
        for m in &members {
            let _ = writeln!(out, "signalgate_cluster_member_up{{node=\"{}\"}} {}", m.node_id, u8::from(m.alive));
        }
        let _ =
            writeln!(out, "# HELP signalgate_cluster_registered_seq The journal is in the registry up to this event.");
        let _ = writeln!(out, "# TYPE signalgate_cluster_registered_seq gauge");
        let _ = writeln!(out, "signalgate_cluster_registered_seq {}", self.registered.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP signalgate_cluster_registry_lag_events Durable events not yet in the registry.");
        let _ = writeln!(out, "# TYPE signalgate_cluster_registry_lag_events gauge");
        let _ = writeln!(out, "signalgate_cluster_registry_lag_events {}", self.registry_lag(durable));
        let _ = writeln!(
            out,
            "# HELP signalgate_cluster_registry_changes_total Accounts and keys published to the registry."
        );
        let _ = writeln!(out, "# TYPE signalgate_cluster_registry_changes_total counter");
        let _ = writeln!(out, "signalgate_cluster_registry_changes_total {}", self.published.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP signalgate_cluster_replicated_seq Redis's streams have the journal up to this event."
        );
        let _ = writeln!(out, "# TYPE signalgate_cluster_replicated_seq gauge");
        let _ = writeln!(out, "signalgate_cluster_replicated_seq {}", self.replicated.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP signalgate_cluster_replication_lag_events Events durable on this node and not yet in Redis's streams."
        );
        let _ = writeln!(out, "# TYPE signalgate_cluster_replication_lag_events gauge");
        let _ = writeln!(out, "signalgate_cluster_replication_lag_events {}", self.replication_lag(local));
        let _ = writeln!(out, "# HELP signalgate_cluster_replicated_events_total Events written to Redis's streams.");
        let _ = writeln!(out, "# TYPE signalgate_cluster_replicated_events_total counter");
        let _ = writeln!(
            out,
            "signalgate_cluster_replicated_events_total {}",
            self.replicated_events.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP signalgate_cluster_replication_refusals_total Batches Redis refused: another node owned an account."
        );
        let _ = writeln!(out, "# TYPE signalgate_cluster_replication_refusals_total counter");
        let _ =
            writeln!(out, "signalgate_cluster_replication_refusals_total {}", self.refusals.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP signalgate_cluster_unreplicated_events Events of accounts that moved away which Redis never had."
        );
        let _ = writeln!(out, "# TYPE signalgate_cluster_unreplicated_events gauge");
        let _ = writeln!(
            out,
            "signalgate_cluster_unreplicated_events {}",
            self.unreplicated().iter().map(|u| u.events).sum::<u64>()
        );
        let _ = writeln!(
            out,
            "# HELP signalgate_cluster_checkpoints_total Checkpoints that replaced an account's history in its stream."
        );
        let _ = writeln!(out, "# TYPE signalgate_cluster_checkpoints_total counter");
        let _ = writeln!(out, "signalgate_cluster_checkpoints_total {}", self.checkpoints.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP signalgate_cluster_stale Whether another node took accounts of this node.");
        let _ = writeln!(out, "# TYPE signalgate_cluster_stale gauge");
        let _ = writeln!(out, "signalgate_cluster_stale {}", u8::from(self.stale()));
    }
}

/// The symbols and tiers every member must share, as recorded in Redis by the first.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Shared {
    symbols: serde_json::Value,
    tiers: serde_json::Value,
}

impl Shared {
    fn of(cfg: &Config) -> Shared {
        Shared {
            symbols: serde_json::to_value(&cfg.symbols).unwrap_or_default(),
            tiers: serde_json::to_value(&cfg.tiers).unwrap_or_default(),
        }
    }
}

/// Renews the lease when it still holds this node's token; 0 when another holds it (or none).
const RENEW: &str =
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Takes the simulator lease for this node, or renews it; 1 when this node holds it.
const SIMULATOR: &str = r"local h = redis.call('GET', KEYS[1]); if h == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 elseif not h then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 else return 0 end";
/// Takes the lease again after it ran out: 1 when taken, 0 when another node holds it, -1 when
/// other nodes took accounts of this node meanwhile (`moved:{node_id}` holds an account besides
/// those taken from its previous run, ARGV[3] on).
const RETAKE: &str = r"
local inherited = {}
for i = 3, #ARGV do inherited[ARGV[i]] = true end
for _, a in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if not inherited[a] then return -1 end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0";
/// Lets the lease go when it still holds this node's token.
const RELEASE: &str =
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// This node's membership: the lease it holds and the thread that renews it. Dropping it stops
/// the thread and lets the lease go, so a restarted node can take its id again at once.
pub struct Membership {
    status: Arc<Status>,
    _thread: Background,
}

/// A thread of the cluster's that runs until it is dropped: it sets the flag the thread watches,
/// wakes it and waits for it.
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    fn spawn(name: &str, f: impl FnOnce(&AtomicBool) + Send + 'static) -> Result<Background, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let watched = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(&watched))
            .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
        Ok(Background { stop, thread: Some(thread) })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// How a node reaches Redis and what it keeps there.
struct Lease {
    client: redis::Client,
    key: String,
    token: String,
    lease: Duration,
    node_id: String,
    /// Its entry in `members`: its listeners, as JSON.
    entry: String,
    /// Its symbols and tiers, as JSON (the cluster's: it checked them when it joined).
    shared: String,
    /// It runs a quote simulator (`market.simulator`): it stands for the cluster's.
    simulates: bool,
}

impl Lease {
    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        connect_to(&self.client)
    }
}

impl Membership {
    /// Joins the cluster of `cfg.cluster` with the listeners that were bound. Refuses (with the
    /// reason) when Redis cannot be reached, when the cluster's symbols or tiers differ from
    /// this node's, or when a live node holds this `node_id`.
    pub fn join(cfg: &Config, http: SocketAddr, admin: SocketAddr, ws: SocketAddr) -> Result<Membership, String> {
        let c = &cfg.cluster;
        let client = redis::Client::open(c.redis_url.as_str())
            .map_err(|e| format!("cluster.redis_url {:?}: {e}", c.redis_url))?;
        let host = |a: SocketAddr| format!("{}:{}", c.address, a.port());
        let listeners = Listeners { http: host(http), admin: host(admin), ws: host(ws) };
        let lease = Lease {
            client,
            key: key(&format!("lease:{}", c.node_id)),
            token: crate::auth::generate_admin_token().map_err(|e| e.to_string())?,
            lease: Duration::from_millis(c.lease_ms),
            node_id: c.node_id.clone(),
            entry: serde_json::to_string(&listeners).map_err(|e| e.to_string())?,
            shared: serde_json::to_string(&Shared::of(cfg)).map_err(|e| e.to_string())?,
            simulates: cfg.market.simulator,
        };
        let unreachable = |e: redis::RedisError| {
            format!("cluster: Redis at {} cannot be reached ({e}); a cluster node needs it to start", c.redis_url)
        };
        let mut con = lease.connect().map_err(unreachable)?;
        check_shared(&mut con, &lease.shared, cfg).map_err(|e| match e {
            Refusal::Redis(e) => unreachable(e),
            Refusal::Config(why) => why,
        })?;
        let ids: Vec<String> = redis::cmd("HKEYS").arg(key("members")).query(&mut con).map_err(unreachable)?;
        let number = crate::config::node_number(&c.node_id);
        if let Some(other) = ids.iter().find(|id| **id != c.node_id && crate::config::node_number(id) == number) {
            return Err(format!(
                "cluster.node_id {:?} gives order ids from the same range ({number}) as member {other:?}: choose another id",
                c.node_id
            ));
        }
        // A node that just died (this one, restarted by its supervisor) holds the lease until it
        // runs out: wait that long. A live node renews it, and keeps it.
        let patience = lease.lease + lease.lease / 3;
        let deadline = Instant::now() + patience;
        let mut told = false;
        let joined = loop {
            let asked = Instant::now();
            let taken: Option<String> = redis::cmd("SET")
                .arg(&lease.key)
                .arg(&lease.token)
                .arg("NX")
                .arg("PX")
                .arg(c.lease_ms)
                .query(&mut con)
                .map_err(unreachable)?;
            if taken.is_some() {
                break asked;
            }
            if Instant::now() >= deadline {
                let holder: Option<String> =
                    redis::cmd("HGET").arg(key("members")).arg(&c.node_id).query(&mut con).ok();
                return Err(format!(
                    "cluster.node_id {:?} is held by a live node ({}): it renewed its lease for {} ms while this node waited; every node needs its own id",
                    c.node_id,
                    holder.unwrap_or_else(|| "listeners unknown".into()),
                    patience.as_millis()
                ));
            }
            if !told {
                log::warn!(
                    "cluster: node id {:?} is held; waiting up to {patience:?} for a node that died to let it go",
                    c.node_id
                );
                told = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        publish(&mut con, &lease).map_err(unreachable)?;
        let replicated = replicate::replicated_of(&mut con, &c.node_id).map_err(unreachable)?;
        // What other nodes took from this node's previous run: its start lets it go.
        let inherited: Vec<u32> =
            redis::cmd("SMEMBERS").arg(key(&format!("moved:{}", c.node_id))).query(&mut con).map_err(unreachable)?;
        let status = Arc::new(Status {
            node_id: c.node_id.clone(),
            redis_up: AtomicBool::new(true),
            redis_errors: AtomicU64::new(0),
            lease_renewals: AtomicU64::new(0),
            members: Mutex::new(Vec::new()),
            losses: AtomicU64::new(0),
            simulating: AtomicBool::new(false),
            registered: AtomicU64::new(0),
            published: AtomicU64::new(0),
            ack: c.ack,
            replicated: AtomicU64::new(replicated),
            replicated_events: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            inherited_moves: Mutex::new(inherited),
            unreplicated: Mutex::new(Vec::new()),
            brought: Mutex::new(HashMap::new()),
            lease_until: AtomicU64::new(0),
            lease: lease.lease,
            born: Instant::now(),
            adopting: AtomicU64::new(0),
        });
        status.renewed(joined);
        let mut con = Some(con);
        refresh_members(&mut con, &lease, &status);
        elect_simulator(&mut con, &lease, &status);
        let thread = {
            let status = status.clone();
            Background::spawn("sg-cluster", move |stop| renew_loop(lease, con, &status, stop))?
        };
        log::info!("cluster: joined as {:?} through Redis at {}", c.node_id, c.redis_url);
        Ok(Membership { status, _thread: thread })
    }

    /// The last event of this node's journal that Redis had when the node joined.
    pub fn replicated(&self) -> u64 {
        self.status.replicated()
    }

    /// What the cluster thread last saw.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }
}

enum Refusal {
    Redis(redis::RedisError),
    Config(String),
}

impl From<redis::RedisError> for Refusal {
    fn from(e: redis::RedisError) -> Self {
        Refusal::Redis(e)
    }
}

/// Records this node's symbols and tiers as the cluster's unless some are recorded already, and
/// refuses when those differ.
fn check_shared(con: &mut redis::Connection, text: &str, cfg: &Config) -> Result<(), Refusal> {
    let ours = Shared::of(cfg);
    let _: Option<String> = redis::cmd("SET").arg(key("config")).arg(text).arg("NX").query(con)?;
    let recorded: String = redis::cmd("GET").arg(key("config")).query(con)?;
    let theirs: Shared = serde_json::from_str(&recorded)
        .map_err(|e| Refusal::Config(format!("cluster: the configuration recorded in Redis is unreadable ({e})")))?;
    let differs = |what: &str| {
        Refusal::Config(format!(
            "cluster: this node's {what} differ from the cluster's (every node needs the same [[symbols]] and [tiers]; \
             the cluster's are in Redis under {PREFIX}config)"
        ))
    };
    if theirs.symbols != ours.symbols {
        return Err(differs("symbols"));
    }
    if theirs.tiers != ours.tiers {
        return Err(differs("tiers"));
    }
    Ok(())
}

/// Publishes this node's listeners in `members` (and the cluster's symbols and tiers, when Redis
/// lost them).
fn publish(con: &mut redis::Connection, lease: &Lease) -> redis::RedisResult<()> {
    redis::pipe()
        .cmd("HSET")
        .arg(key("members"))
        .arg(&lease.node_id)
        .arg(&lease.entry)
        .ignore()
        .cmd("SET")
        .arg(key("config"))
        .arg(&lease.shared)
        .arg("NX")
        .ignore()
        .query(con)
}

/// Renews the lease every third of its length and reads the members, until stopped; then lets
/// the lease go.
fn renew_loop(lease: Lease, mut con: Option<redis::Connection>, status: &Status, stop: &AtomicBool) {
    let every = lease.lease / 3;
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now < next {
            std::thread::park_timeout(next - now);
            continue;
        }
        next += every;
        let started = Instant::now();
        let renewed: redis::RedisResult<i64> = call(&mut con, &lease, status, |c| {
            redis::Script::new(RENEW).key(&lease.key).arg(&lease.token).arg(lease.lease.as_millis() as u64).invoke(c)
        });
        match renewed {
            Ok(1) => {
                status.lease_renewals.fetch_add(1, Ordering::Relaxed);
                status.renewed(started);
            }
            Ok(_) => {
                // The lease ran out (this node was paused or cut off longer than the lease, or
                // Redis restarted empty). Take it back and publish this node again, unless
                // another node took some of its accounts meanwhile: then this node is stale.
                status.losses.fetch_add(1, Ordering::Relaxed);
                let inherited = status.inherited_moves();
                let taken: redis::RedisResult<i64> = call(&mut con, &lease, status, |c| {
                    let taken: i64 = redis::Script::new(RETAKE)
                        .key(&lease.key)
                        .key(key(&format!("moved:{}", lease.node_id)))
                        .arg(&lease.token)
                        .arg(lease.lease.as_millis() as u64)
                        .arg(&inherited)
                        .invoke(c)?;
                    if taken == 1 {
                        publish(c, &lease)?;
                    }
                    Ok(taken)
                });
                match taken {
                    Ok(1) => {
                        status.renewed(started);
                        log::info!(
                            "cluster: lease taken again (it had run out, or Redis had lost it) and this node published"
                        )
                    }
                    Ok(-1) => {
                        log::error!("cluster: this node's lease ran out and other nodes took some of its accounts");
                        status.note_stale();
                    }
                    Ok(_) => log::error!(
                        "cluster: another node holds this node's id now; check cluster.node_id of every node"
                    ),
                    Err(_) => {}
                }
            }
            Err(_) => {}
        }
        refresh_members(&mut con, &lease, status);
        elect_simulator(&mut con, &lease, status);
    }
    let _: redis::RedisResult<i64> =
        call(&mut con, &lease, status, |c| redis::Script::new(RELEASE).key(&lease.key).arg(&lease.token).invoke(c));
    if status.simulating() {
        let _: redis::RedisResult<i64> = call(&mut con, &lease, status, |c| {
            redis::Script::new(RELEASE).key(key("simulator")).arg(&lease.token).invoke(c)
        });
    }
}

/// Runs `f` on the connection (reconnecting first if the last call broke it); keeps
/// `status.redis_up` and the error count, and logs when Redis goes away and comes back.
fn call<T>(
    con: &mut Option<redis::Connection>,
    lease: &Lease,
    status: &Status,
    f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
) -> redis::RedisResult<T> {
    let result = match con {
        Some(c) => f(c),
        None => lease.connect().and_then(|mut c| {
            let r = f(&mut c);
            *con = Some(c);
            r
        }),
    };
    let was_up = status.redis_up.swap(result.is_ok(), Ordering::Relaxed);
    match &result {
        Err(e) => {
            status.redis_errors.fetch_add(1, Ordering::Relaxed);
            status.losses.fetch_add(1, Ordering::Relaxed);
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
                *con = None;
            }
            if was_up {
                log::error!("cluster: Redis is unavailable ({e}); the node keeps trading the accounts it owns");
            }
        }
        Ok(_) if !was_up => log::info!("cluster: Redis is back"),
        Ok(_) => {}
    }
    result
}

/// Takes or keeps the simulator lease when this node runs a simulator: one node feeds the cluster.
fn elect_simulator(con: &mut Option<redis::Connection>, lease: &Lease, status: &Status) {
    if !lease.simulates {
        return;
    }
    let held: redis::RedisResult<i64> = call(con, lease, status, |c| {
        redis::Script::new(SIMULATOR)
            .key(key("simulator"))
            .arg(&lease.token)
            .arg(lease.lease.as_millis() as u64)
            .invoke(c)
    });
    let now = held.is_ok_and(|h| h == 1);
    if status.simulating.swap(now, Ordering::Relaxed) != now {
        log::info!("cluster: this node {} the cluster's quote simulator", if now { "runs" } else { "no longer runs" });
    }
}

/// Reads the members and whether each lease is alive.
fn refresh_members(con: &mut Option<redis::Connection>, lease: &Lease, status: &Status) {
    if let Ok(members) = call(con, lease, status, read_members) {
        status.set_members(members);
    }
}

/// The members, by id, and whether each lease is alive.
fn read_members(c: &mut redis::Connection) -> redis::RedisResult<Vec<Member>> {
    let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(key("members")).query(c)?;
    let mut pipe = redis::pipe();
    for (id, _) in &all {
        pipe.cmd("EXISTS").arg(key(&format!("lease:{id}")));
    }
    let alive: Vec<bool> = if all.is_empty() { Vec::new() } else { pipe.query(c)? };
    let mut members: Vec<Member> = all
        .into_iter()
        .zip(alive)
        .filter_map(|((node_id, entry), alive)| {
            let listeners = serde_json::from_str(&entry).ok()?;
            Some(Member { node_id, listeners, alive })
        })
        .collect();
    members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(members)
}
