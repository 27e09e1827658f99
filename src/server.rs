//! Starting and stopping a node: configuration checks, the data directory lock, listeners,
//! one glommio executor per core of the topology, signals, and the start-up banner.
//!
//! Listeners are bound here, on the main thread, before any executor starts, so that a busy
//! port is a clear start-up error rather than a log line from a thread.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use socket2::{Domain, Socket, Type};

use crate::api;
use crate::auth::{generate_admin_token, generate_key, hash_key};
use crate::config::Config;
use crate::http::{serve, Acceptor, HttpOptions};
use crate::journal::{self, FsyncPolicy};
use crate::node::{symbol_table, Node, Simulator};
use crate::notify::Notifier;
use crate::quote_sim::QuoteSimulator;
use crate::shutdown::Shutdown;

/// What the node printed at start, for people and for tests that parse it.
#[derive(Debug, Clone)]
pub struct Started {
    /// Bound public address.
    pub http: SocketAddr,
    /// Bound admin address.
    pub admin: SocketAddr,
    /// Bound WebSocket address.
    pub ws: SocketAddr,
}

pub use crate::cores::host_cores;

/// How long a start waits for its port to be let go by a node that just died.
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(5);

fn bind(addr: &str, backlog: i32, what: &str) -> Result<StdListener, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{what}: bad address {addr:?}: {e}"))?;
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(|e| format!("{what}: socket: {e}"))?;
    // SO_REUSEADDR lets a restarted node bind while old connections linger in TIME_WAIT; no
    // SO_REUSEPORT, so two nodes can never silently share a port.
    socket.set_reuse_address(true).map_err(|e| format!("{what}: {e}"))?;
    // A node killed a moment ago may still hold its listener: the kernel releases an io_uring
    // instance, and the accept it had waiting on the socket, after the process is gone (in 5 of
    // 20 immediate restarts after kill -9 here). Wait for that, within a bound; a node that is
    // alive keeps the port and this start fails with the reason.
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    let mut told = false;
    loop {
        match socket.bind(&addr.into()) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                if !told {
                    log::warn!("{what}: {addr} is in use; waiting up to {PORT_RELEASE_WAIT:?} for it to be released");
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("{what}: cannot listen on {addr}: {e}")),
        }
    }
    socket.listen(backlog).map_err(|e| format!("{what}: listen on {addr}: {e}"))?;
    socket.set_nonblocking(true).map_err(|e| format!("{what}: {e}"))?;
    Ok(socket.into())
}

/// Descriptors the node needs besides its connections: journal segments and snapshots, io_uring
/// rings and eventfds, listeners, the PostgreSQL connections, the journal tails of the followers.
/// (An idle node holds 25; this leaves room for snapshots, PostgreSQL and resumes from the files.)
const DESCRIPTORS_BESIDES_CONNECTIONS: u64 = 128;

/// Raises the open-file limit to its hard limit and, when even that cannot hold every connection
/// the caps allow, lowers the caps to fit and says so: a node that runs out of descriptors can
/// neither accept nor refuse, and leaves clients hanging.
fn fit_connections_to_open_files(cfg: &mut Config) -> Result<(), String> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Ok(());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    let caps =
        [cfg.http.max_connections, cfg.admin.max_connections, cfg.ws.max_connections, cfg.ws.max_unauthenticated];
    let wanted: u64 = caps.iter().map(|&c| c as u64).sum();
    let limit = lim.rlim_cur;
    if wanted + DESCRIPTORS_BESIDES_CONNECTIONS <= limit {
        return Ok(());
    }
    let room = limit.saturating_sub(DESCRIPTORS_BESIDES_CONNECTIONS);
    if room < 64 {
        return Err(format!(
            "the open-file limit is {limit}: too low to serve connections (at least {} needed; raise it, e.g. LimitNOFILE=)",
            DESCRIPTORS_BESIDES_CONNECTIONS + 64
        ));
    }
    let fit = |c: usize| ((c as u64 * room / wanted) as usize).max(c.min(4));
    cfg.http.max_connections = fit(cfg.http.max_connections);
    cfg.admin.max_connections = fit(cfg.admin.max_connections);
    cfg.ws.max_connections = fit(cfg.ws.max_connections);
    cfg.ws.max_unauthenticated = fit(cfg.ws.max_unauthenticated).max(cfg.topology.fanout.len());
    log::warn!(
        "the open-file limit ({limit}, hard limit {}) cannot hold the configured connections ({wanted} and {} more descriptors): \
         lowered http.max_connections to {}, admin.max_connections to {}, ws.max_connections to {}, ws.max_unauthenticated to {}; \
         raise the limit (LimitNOFILE= in the unit, ulimit -n) to serve them all",
        lim.rlim_max,
        DESCRIPTORS_BESIDES_CONNECTIONS,
        cfg.http.max_connections,
        cfg.admin.max_connections,
        cfg.ws.max_connections,
        cfg.ws.max_unauthenticated
    );
    Ok(())
}

/// Takes the data directory's lock file, so two nodes never share one directory.
fn lock_data_dir(cfg: &Config) -> Result<File, String> {
    let dir = &cfg.journal.dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("journal.dir {}: cannot create: {e}", dir.display()))?;
    let path = dir.join("LOCK");
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("journal.dir: cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(format!("journal.dir {}: another node is running with this data directory", dir.display()))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(format!("journal.dir: cannot lock {}: {e}", path.display()))
        }
    }
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

/// The demo account, as start-up found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Demo {
    /// `[demo] enabled = false`.
    Off,
    /// Created now; its key is printed.
    Created(u32),
    /// Rebuilt from the journal; it got a new key (keys are kept only as hashes), printed.
    Rekeyed(u32),
}

/// Start options that are not configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Cut a damaged journal back to its last good record instead of refusing to start.
    pub repair_journal: bool,
}

/// What is wrong with `cfg` on this host: [`Config::validate`], and the PostgreSQL connection
/// strings (their TLS settings and root certificate files included).
pub fn validate(cfg: &Config) -> Vec<crate::config::ConfigError> {
    let mut errors = cfg.validate(&host_cores());
    for (key, url) in [("postgres.url", &cfg.postgres.url), ("postgres.read_url", &cfg.postgres.read_url)] {
        if let Err(e) =
            Some(url).filter(|u| !u.is_empty()).map(|u| crate::postgres::connect::Target::parse(u)).transpose()
        {
            let message = format!("is not a valid connection string: {e}");
            errors.push(crate::config::ConfigError { key: key.into(), message });
        }
    }
    errors
}

/// Runs a node until SIGTERM or SIGINT; returns once it has drained.
pub fn run(mut cfg: Config, opts: RunOptions) -> Result<(), String> {
    let errors = validate(&cfg);
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(format!("invalid configuration:\n  {}", list.join("\n  ")));
    }
    if cfg.journal.dir.is_relative() {
        // io_uring opens a relative path against no directory at all: `Config::load` resolves
        // every path once, against the working directory at start.
        return Err(format!(
            "journal.dir {} is relative; resolve it first (Config::resolve_paths)",
            cfg.journal.dir.display()
        ));
    }
    fit_connections_to_open_files(&mut cfg)?;
    let _lock = lock_data_dir(&cfg)?;
    if cfg.postgres.migrate {
        // PostgreSQL is never needed to trade: a failure is logged and the node starts anyway.
        match crate::postgres::migrate_blocking(&cfg.postgres.url) {
            Ok(report) => log::info!("postgres: {}", crate::postgres::summary(&report).replace('\n', "; ")),
            Err(e) => log::error!("postgres: schema migration failed: {e}; the node starts without it"),
        }
    }
    let public = bind(&cfg.http.addr, cfg.http.backlog, "http.addr")?;
    let admin = bind(&cfg.admin.addr, cfg.http.backlog, "admin.addr")?;
    let ws_listener = bind(&cfg.ws.addr, cfg.http.backlog, "ws.addr")?;
    let started = Started {
        http: public.local_addr().map_err(|e| e.to_string())?,
        admin: admin.local_addr().map_err(|e| e.to_string())?,
        ws: ws_listener.local_addr().map_err(|e| e.to_string())?,
    };
    if !started.admin.ip().is_loopback() {
        log::warn!(
            "admin.addr {}: the admin API listens off loopback over plain HTTP (admin.allow_non_loopback); \
             its token crosses the network in clear unless a TLS proxy is in front",
            started.admin
        );
    }
    let generated_token = cfg.admin.token.is_empty();
    let admin_token =
        if generated_token { generate_admin_token().map_err(|e| e.to_string())? } else { cfg.admin.token.clone() };
    let banner_token = admin_token.clone();
    let demo_key = if cfg.demo.enabled { Some(generate_key().map_err(|e| e.to_string())?) } else { None };

    let notifier = Notifier::from_env();
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    {
        let (stop, notifier) = (stop.clone(), notifier.clone());
        std::thread::Builder::new()
            .name("sg-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    log::info!("signal {sig} received: draining");
                    stop.store(true, Ordering::Release);
                    notifier.stopping();
                }
            })
            .map_err(|e| e.to_string())?;
    }

    let hot_core = cfg.topology.hot[0];
    log::info!(
        "topology: hot core {:?}, fan-out core(s) {:?}, pinned: {}, host cores: {:?}",
        cfg.topology.hot,
        cfg.topology.fanout,
        cfg.topology.pin,
        host_cores()
    );
    // A cluster node joins before it builds its state: a refusal (Redis away, a taken node id,
    // other symbols) stops the start before anything is served.
    let membership = cfg
        .cluster
        .enabled()
        .then(|| crate::cluster::Membership::join(&cfg, started.http, started.admin, started.ws))
        .transpose()?;
    let demo_hash = demo_key.as_ref().map(|k| hash_key(k.as_bytes()));
    // This thread builds the hot core's state and feeds, the hot executor runs them: their large
    // tables take their page faults when they are made, not during a signal.
    crate::alloc::map_large_blocks_on_this_thread();
    // Under `ack = "replicated"` nothing is acknowledged before Redis has it.
    let replicated = membership
        .as_ref()
        .filter(|_| cfg.cluster.ack == crate::config::Ack::Replicated)
        .map(crate::cluster::Membership::replicated);
    let (mut node, mut public_api, demo, (directory, stats)) =
        build_node(&cfg, opts, admin_token, demo_hash, replicated)?;
    // A cluster node publishes its accounts and keys, then follows its journal into the registry,
    // and takes quotes from the cluster's one stream of them.
    let (_registry, _market, cluster, quotes_in, _replicator, _failover, adoptions) = match &membership {
        Some(m) => {
            // Accounts other nodes took while this one was away are let go of first: neither the
            // registry nor the replication sees them as this node's.
            crate::cluster::failover::release_moved(&cfg, &mut node, &m.status())?;
            let registry =
                crate::cluster::registry::Registry::start(&cfg, &node.engine, node.journal.watermarks(), m.status())?;
            let offload = public_api.offload.clone();
            let offloaded = offload.clone().map(|o| Arc::new(move || o.prune_floor()) as _);
            let replicator = crate::cluster::replicate::Replicator::start(
                &cfg,
                &node.engine,
                node.journal.watermarks(),
                m.status(),
                offloaded,
            )?;
            let (market, quotes_in) =
                crate::cluster::market::Market::start(&cfg.cluster.redis_url, cfg.symbols.len(), m.status())?;
            let handle = crate::cluster::forward::Handle { status: m.status(), registry: registry.shared() };
            node.cluster = Some(Arc::new(crate::cluster::forward::Gateway::new(
                handle.clone(),
                market.publisher(),
                replicator.shared(),
            )));
            public_api.cluster = Some(m.status());
            if let Some(offload) = &offload {
                // What this node journaled for accounts that moved away, and Redis never had,
                // is not merged into the cluster's history.
                let status = m.status();
                offload.exclude(Arc::new(move |e| status.is_unreplicated(e)));
            }
            let held = node.engine.accounts().iter().map(|a| a.id).collect();
            let import = offload.map(|o| Arc::new(move |account, history| o.import(account, history)) as _);
            let (failover, adoptions) = crate::cluster::failover::Failover::start(&cfg, m.status(), held, import)?;
            (
                Some(registry),
                Some(market),
                Some(handle),
                Some(quotes_in),
                Some(replicator),
                Some(failover),
                Some(adoptions),
            )
        }
        None => (None, None, None, None, None, None, None),
    };
    let offload = public_api.offload.clone();
    let snapshot_health = node.snapshots.clone();
    let marks = node.journal.watermarks();
    let (hot_links, fanout_links): (Vec<_>, Vec<_>) =
        (0..cfg.topology.fanout.len()).map(|i| crate::ws::links(stats.clone(), i)).unzip();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let hot = {
        let cfg = cfg.clone();
        let stop = stop.clone();
        let listeners = (public.into_raw_fd(), admin.into_raw_fd());
        let notifier = notifier.clone();
        executor(&cfg, "sg-hot")
            .spawn(move || async move {
                pin_if_asked(&cfg, hot_core, "hot");
                crate::alloc::map_large_blocks_on_this_thread();
                let cluster = (quotes_in, adoptions);
                hot_main(cfg, (node, public_api, cluster), listeners, hot_links, stop, notifier, ready_tx).await;
            })
            .map_err(|e| format!("cannot start the hot executor on core {hot_core}: {e}"))?
    };
    // Every fan-out executor serves the stream and reads the journal behind the hot core; the
    // first accepts the connections and hands each to the executor serving the fewest.
    let intakes = crate::ws::intakes(ws_listener.into_raw_fd(), cfg.topology.fanout.len());
    let mut fanouts = Vec::new();
    let each = cfg.topology.fanout.iter().zip(intakes).zip(fanout_links);
    for ((&core, intake), links) in each {
        let ws = crate::ws::Serve {
            intake,
            directory: directory.clone(),
            marks: marks.clone(),
            links,
            stats: stats.clone(),
            cluster: cluster.clone(),
        };
        let (cfg2, stop) = (cfg.clone(), stop.clone());
        let handle = executor(&cfg, "sg-fanout")
            .spawn(move || async move {
                pin_if_asked(&cfg2, core, "fan-out");
                crate::ws::serve(cfg2, ws, stop).await;
            })
            .map_err(|e| format!("cannot start a fan-out executor on core {core}: {e}"))?;
        fanouts.push(handle);
    }

    // Declared before the followers so that they stop first: the offloader's last batch reads
    // what the snapshot thread may not prune yet.
    let mut _snapshots = None;
    let mut _offloader = None;
    match ready_rx.recv() {
        Ok(Ok(())) => {
            // After the replay (which cut any torn tail): the followers read what the writer adds.
            let core = follower_core(&cfg);
            let replicated = membership.as_ref().map(crate::cluster::Membership::status);
            _snapshots = spawn_snapshots(&cfg, marks.clone(), offload.clone(), replicated, snapshot_health)
                .map_err(|e| format!("cannot start the snapshot thread: {e}"))?;
            if let Some(shared) = offload {
                _offloader = Some(
                    crate::postgres::offload::Offloader::spawn(&cfg, shared, core)
                        .map_err(|e| format!("cannot start the offload thread: {e}"))?,
                );
            }
            let shown_token = generated_token.then_some(banner_token.as_str());
            print_banner(&cfg, &started, shown_token, demo, demo_key.as_deref());
        }
        Ok(Err(e)) => {
            stop.store(true, Ordering::Release);
            return Err(e);
        }
        Err(_) => {
            stop.store(true, Ordering::Release);
            let _ = hot.join();
            return Err("the hot executor stopped during start-up".into());
        }
    }
    let hot_result = hot.join();
    stop.store(true, Ordering::Release);
    for f in fanouts {
        let _ = f.join();
    }
    if membership.as_ref().is_some_and(|m| m.status().stale()) {
        return Err("cluster: stopped because another node took accounts of this node (see the log)".into());
    }
    match hot_result {
        Ok(()) => {
            log::info!("stopped cleanly");
            Ok(())
        }
        Err(e) => Err(format!("the hot executor failed: {e}")),
    }
}

/// Starts the snapshot thread (unless snapshots are off): it prunes only what PostgreSQL has,
/// when there is one, and what Redis has, on a cluster node.
fn spawn_snapshots(
    cfg: &Config,
    marks: Arc<journal::Watermarks>,
    offload: Option<Arc<crate::postgres::offload::Shared>>,
    replicated: Option<Arc<crate::cluster::Status>>,
    health: Arc<journal::snapshot::Health>,
) -> std::io::Result<Option<journal::snapshot::Follower>> {
    let settings = journal::snapshot::Settings {
        dir: cfg.journal.dir.clone(),
        every_events: cfg.journal.snapshot_every_events,
        keep_covered_segments: cfg.journal.keep_covered_segments,
        on_start: follower_core(cfg).map(|core| {
            Arc::new(move || {
                crate::cores::pin_current_thread(core);
            }) as Arc<dyn Fn() + Send + Sync>
        }),
    };
    let engine_cfg = cfg.clone();
    let engine = move || crate::node::follower_engine(&engine_cfg);
    let prune_floor = move || {
        let offloaded = offload.as_ref().map_or(u64::MAX, |o| o.prune_floor());
        offloaded.min(replicated.as_ref().map_or(u64::MAX, |s| s.replicated()))
    };
    journal::snapshot::Follower::spawn(settings, engine, marks, prune_floor, health)
}

fn executor(cfg: &Config, name: &str) -> LocalExecutorBuilder {
    let mut b = LocalExecutorBuilder::new(Placement::Unbound).name(name).io_memory(cfg.topology.io_memory_kib * 1024);
    if cfg.topology.spin_before_park_us > 0 {
        b = b.spin_before_park(Duration::from_micros(cfg.topology.spin_before_park_us));
    }
    b
}

fn pin_if_asked(cfg: &Config, core: usize, role: &str) {
    if !cfg.topology.pin {
        log::info!("{role} executor running unpinned");
        return;
    }
    if crate::cores::pin_current_thread(core) {
        log::info!("{role} executor pinned to core {core}");
    } else {
        log::warn!("{role} executor could not be pinned to core {core}; running unpinned");
    }
}

/// What the fan-out executors start from: the keys and tiers after start-up (their hubs read the
/// journal from there) and the stream's counters.
type StreamStart = (crate::ws::hub::Directory, Arc<crate::ws::WsStats>);

/// Builds the hot core's state from the data directory: replays the journal (blocking file I/O,
/// done here on the main thread so that no executor ever waits on it) and opens it for
/// appending, gives the demo account its key, and hands the venue back the open orders.
fn build_node(
    cfg: &Config,
    opts: RunOptions,
    admin_token: String,
    demo_hash: Option<[u8; 32]>,
    replicated: Option<u64>,
) -> Result<(Node, api::Public, Demo, StreamStart), String> {
    let now = crate::clock::now();
    let replay_started = std::time::Instant::now();
    let (mut node, replayed) = Node::open(cfg, admin_token, now, opts.repair_journal, replicated)?;
    log::info!(
        "journal: rebuilt state up to seq {} ({} events replayed) in {:.3} s; {} accounts, {} open orders",
        replayed.last_seq,
        replayed.events,
        replay_started.elapsed().as_secs_f64(),
        node.engine.accounts().len(),
        node.engine.accounts().iter().map(|a| a.open_orders.len()).sum::<usize>()
    );
    let demo = match demo_hash {
        Some(hash) => match node.create_demo(cfg, hash, now) {
            Some((id, true)) => Demo::Created(id.0),
            Some((id, false)) => Demo::Rekeyed(id.0),
            None => return Err("the demo account could not be created (check [demo])".into()),
        },
        None => Demo::Off,
    };
    // The paper venue keeps its book in memory: give it back the open orders the journal holds;
    // a FIX venue resumes its session and asks about the orders whose fate it does not know.
    node.engine.recover_venue(now);
    node.after_command();
    let marks = node.journal.watermarks();
    let offload =
        (!cfg.postgres.url.is_empty()).then(|| Arc::new(crate::postgres::offload::Shared::new(marks.clone())));
    // History from PostgreSQL when there is one, from the journal's recent events otherwise.
    let history = crate::history::History::spawn(cfg, offload.clone(), marks, follower_core(cfg))
        .map_err(|e| format!("cannot start the history thread: {e}"))?;
    let stats = Arc::new(crate::ws::WsStats::new(cfg.topology.fanout.len()));
    let public = api::Public { history: Some(history), offload, ws: Some(stats.clone()), cluster: None };
    let directory = crate::ws::hub::Directory::of(&node.engine);
    Ok((node, public, demo, (directory, stats)))
}

/// The core the follower threads (snapshots, offload, history, the journal's own) run on when
/// the topology pins: the first fan-out core.
fn follower_core(cfg: &Config) -> Option<usize> {
    cfg.topology.pin.then(|| cfg.topology.fanout[0])
}

/// Drains the node once it finds that another node took some of its accounts: it must not act
/// for them, and its next start leaves them to their owner.
async fn stop_when_stale(cluster: Arc<dyn crate::node::Cluster>, shutdown: Shutdown) {
    while !shutdown.is_triggered() {
        if cluster.stale() {
            log::error!("cluster: another node took accounts of this node; it stops");
            shutdown.trigger();
            break;
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

/// Batches of quotes from the cluster's stream, in its order.
type ClusterQuotes = tokio::sync::mpsc::Receiver<Vec<crate::engine::market::Quote>>;

async fn hot_main(
    cfg: Config,
    (node, public_api, (quotes_in, adoptions)): (Node, api::Public, (Option<ClusterQuotes>, Option<Adoptions>)),
    (public_fd, admin_fd): (RawFd, RawFd),
    ws_links: Vec<crate::ws::HotLinks>,
    stop: Arc<AtomicBool>,
    notifier: Notifier,
    ready: mpsc::Sender<Result<(), String>>,
) {
    // SAFETY: both descriptors come from `into_raw_fd` on listeners this process bound; ownership
    // moves here exactly once.
    let (public, admin) = unsafe {
        (Acceptor::from_raw_fd(public_fd, "public listener"), Acceptor::from_raw_fd(admin_fd, "admin listener"))
    };
    let public_addr = public.local_addr().ok();
    let node = Rc::new(RefCell::new(node));
    let public_api = Rc::new(public_api);
    let shutdown = Shutdown::new();
    let ex = glommio::executor();
    let http_queue = ex.create_task_queue(Shares::Static(1000), Latency::Matters(Duration::from_millis(1)), "http");
    let background = ex.create_task_queue(Shares::Static(100), Latency::NotImportant, "background");
    let spawn_bg = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
        glommio::spawn_local_into(f, background).map(|t| t.detach())
    };
    let _ = spawn_bg(Box::pin({
        let (shutdown, stop) = (shutdown.clone(), stop.clone());
        async move { shutdown.follow(stop).await }
    }));
    if cfg.market.simulator {
        let _ = spawn_bg(Box::pin(simulate_quotes(cfg.clone(), node.clone(), shutdown.clone())));
    }
    let _ = spawn_bg(Box::pin(housekeeping(cfg.clone(), node.clone(), shutdown.clone())));
    if let Some(quotes) = quotes_in {
        let _ = spawn_bg(Box::pin(apply_cluster_quotes(node.clone(), quotes, shutdown.clone())));
    }
    if let (Some(moved), Some(status)) = (adoptions, public_api.cluster.clone()) {
        let _ = spawn_bg(Box::pin(adopt_accounts(node.clone(), moved, status, shutdown.clone())));
    }
    let cluster = node.borrow().cluster.clone();
    if let Some(cluster) = cluster {
        if cfg.cluster.ack == crate::config::Ack::Replicated {
            let _ =
                glommio::spawn_local_into(crate::node::follow_replication(node.clone(), cluster.clone()), http_queue)
                    .map(|t| t.detach());
        }
        let _ = spawn_bg(Box::pin(stop_when_stale(cluster, shutdown.clone())));
    }
    let ws_sides: Result<Vec<_>, _> = ws_links
        .into_iter()
        .map(|links| {
            let side = crate::ws::hot_side(node.clone(), public_api.clone(), links, shutdown.clone());
            glommio::spawn_local_into(side, http_queue)
        })
        .collect();
    // Under `always`, answers and venue calls wait for the journal's syncs.
    let syncs = if cfg.journal.fsync == FsyncPolicy::Always {
        glommio::spawn_local_into(crate::node::follow_syncs(node.clone()), http_queue).map(Some)
    } else {
        Ok(None)
    };
    let opts = HttpOptions {
        max_body_bytes: cfg.http.max_body_bytes,
        header_read_timeout: Duration::from_millis(cfg.http.header_read_timeout_ms),
        body_read_timeout: Duration::from_millis(cfg.http.body_read_timeout_ms),
        write_timeout: Duration::from_millis(cfg.http.write_timeout_ms),
        max_connections: cfg.http.max_connections,
        shutdown_grace: Duration::from_millis(cfg.http.shutdown_grace_ms),
    };
    let admin_opts = HttpOptions { max_connections: cfg.admin.max_connections, ..opts };
    // A FIX venue's connection, on this core: its reports are journaled like requests' events.
    let link = match (cfg.venue.kind == "fix").then(|| crate::venue_link::Link::new(&cfg.venue)) {
        None => Ok(None),
        Some(Ok(link)) => glommio::spawn_local_into(link.run(node.clone(), shutdown.clone()), http_queue)
            .map(Some)
            .map_err(|e| e.to_string()),
        Some(Err(e)) => Err(e),
    };
    let link = match link {
        Ok(link) => link,
        Err(e) => {
            let _ = ready.send(Err(format!("the FIX venue cannot start: {e}")));
            return;
        }
    };
    let admin_api = Rc::new(api::Admin { cluster: public_api.cluster.clone() });
    let public_task =
        glommio::spawn_local_into(serve(public, node.clone(), public_api, opts, shutdown.clone()), http_queue);
    let admin_task =
        glommio::spawn_local_into(serve(admin, node.clone(), admin_api, admin_opts, shutdown.clone()), background);
    let (Ok(public_task), Ok(admin_task), Ok(syncs), Ok(ws_sides)) = (public_task, admin_task, syncs, ws_sides) else {
        let _ = ready.send(Err("cannot spawn the HTTP and journal tasks".into()));
        return;
    };
    let _ = ready.send(Ok(()));
    // Listeners are bound and the state is built: tell systemd, then prove liveness from here on.
    notifier.ready(&format!("serving on {}", public_addr.map_or(cfg.http.addr.clone(), |a| a.to_string())));
    if let Some(every) = notifier.watchdog_interval() {
        // In the HTTP task queue on purpose: if requests stall the hot core, this stalls too,
        // the pings stop and systemd restarts the node.
        let stop = stop.clone();
        let pings = async move {
            while !stop.load(Ordering::Acquire) {
                notifier.watchdog();
                glommio::timer::sleep(every).await;
            }
        };
        let _ = glommio::spawn_local_into(pings, http_queue).map(|t| t.detach());
    }
    shutdown.wait().await;
    node.borrow_mut().draining = true;
    public_task.await;
    admin_task.await;
    for side in ws_sides {
        side.await;
    }
    // The session logs out before the journal closes: what the venue reports meanwhile is kept.
    if let Some(link) = link {
        link.await;
    }
    // The requests are answered: the journal syncs what it holds, cuts its segment back, and
    // stops its threads (which ends the task following its syncs).
    node.borrow_mut().journal.close();
    if let Some(syncs) = syncs {
        syncs.await;
    }
}

async fn simulate_quotes(cfg: Config, node: Rc<RefCell<Node>>, shutdown: Shutdown) {
    let table = symbol_table(&cfg);
    let mut sim = QuoteSimulator::new(
        cfg.market.seed,
        cfg.symbols.iter().zip(table.all()).map(|(s, spec)| {
            (spec.clone(), s.initial_price.parse(s.price_decimals).unwrap_or(spec.tick * 100), s.volatility_bps)
        }),
    );
    let interval = Duration::from_millis(cfg.market.interval_ms);
    while !shutdown.is_triggered() {
        let now = crate::clock::now();
        let cluster = node.borrow().cluster.clone();
        match cluster.as_ref().map_or(Simulator::Local, |c| c.simulator()) {
            Simulator::Local => {
                for i in 0..sim.len() {
                    let q = sim.next(i, now);
                    let mut node = node.borrow_mut();
                    // While the journal cannot write, market data is not taken either: every
                    // event waiting in memory is one more that could be lost.
                    if node.journal.accepting() {
                        node.apply_quote(q, now);
                    }
                }
            }
            Simulator::Cluster => {
                let quotes = (0..sim.len()).map(|i| sim.next(i, now)).collect();
                if let Some(c) = cluster {
                    // Applied here as they come back from the stream, like every node's.
                    let _ = c.publish_quotes(quotes).await;
                }
            }
            Simulator::Idle => {}
        }
        glommio::timer::sleep(interval).await;
    }
}

/// Applies the cluster's quotes in the stream's order.
async fn apply_cluster_quotes(node: Rc<RefCell<Node>>, mut quotes: ClusterQuotes, shutdown: Shutdown) {
    loop {
        let next = futures_lite::future::or(async { quotes.recv().await }, async {
            shutdown.wait().await;
            None
        });
        let Some(batch) = next.await else { break };
        let now = crate::clock::now();
        let mut node = node.borrow_mut();
        if node.journal.accepting() {
            for q in batch {
                node.apply_quote(q, now);
            }
        }
    }
}

/// Accounts that moved here from a node that died, with their history.
type Adoptions = crate::cluster::failover::Adoptions;

/// Journals each account that moves here, rebuilt from its history, and serves it from then on.
async fn adopt_accounts(
    node: Rc<RefCell<Node>>,
    mut moved: Adoptions,
    status: Arc<crate::cluster::Status>,
    shutdown: Shutdown,
) {
    loop {
        let next = futures_lite::future::or(async { moved.recv().await }, async {
            shutdown.wait().await;
            None
        });
        let Some(a) = next.await else { break };
        while !node.borrow().journal.accepting() && !shutdown.is_triggered() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let mut n = node.borrow_mut();
        if a.from == status.node_id() && n.engine.account(a.account).is_some() {
            // Looked for at start as taken for this node and missing, but made here since.
            status.adopted();
            continue;
        }
        let started = std::time::Instant::now();
        // `AccountAdopted`, then each event brought, in order.
        let marker = n.engine.last_seq() + 1;
        match n.engine.adopt(a.account, a.epoch, &a.history, crate::clock::now()) {
            Ok(()) => {
                let here = (marker + 1..).zip(&a.seqs).filter(|(_, &seq)| seq > 0).map(|(here, &seq)| (seq, here));
                status.note_brought(a.account, here);
                n.after_command();
                n.keys_changed();
                log::info!(
                    "cluster: account {} of node {:?} is served here now (epoch {}, {} events replayed in {:?})",
                    a.account,
                    a.from,
                    a.epoch,
                    a.history.len(),
                    started.elapsed()
                );
            }
            Err(e) => log::error!("cluster: account {} of node {:?} cannot be served here: {e}", a.account, a.from),
        }
        status.adopted();
    }
}

async fn housekeeping(cfg: Config, node: Rc<RefCell<Node>>, shutdown: Shutdown) {
    // Venue latency needs finer polling than day rollovers and expiries do.
    let every = if cfg.venue.latency_us > 0 {
        Duration::from_micros(cfg.venue.latency_us.clamp(100, 100_000))
    } else {
        Duration::from_millis(100)
    };
    while !shutdown.is_triggered() {
        node.borrow_mut().housekeeping(crate::clock::now());
        // Events waiting in memory for a segment are copied in (and their answers sent) within a
        // millisecond of one being ready.
        let waiting = node.borrow().journal.pending_bytes() > 0;
        glommio::timer::sleep(if waiting { Duration::from_millis(1) } else { every }).await;
    }
}

/// The start-up banner on stdout: where the node listens and, for the embedded default, the
/// demo key with a ready-to-paste request. Printed only once the node is ready.
fn print_banner(cfg: &Config, s: &Started, admin_token: Option<&str>, demo: Demo, key: Option<&str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "signalgate {} ready (node {:?}, data dir {})",
        env!("CARGO_PKG_VERSION"),
        cfg.node.name,
        cfg.journal.dir.display()
    );
    let _ = writeln!(out, "http:  http://{}", s.http);
    let _ = writeln!(out, "admin: http://{}", s.admin);
    let _ = writeln!(out, "ws:    ws://{}/v1/ws", s.ws);
    if let Some(token) = admin_token {
        let _ = writeln!(out, "admin token (generated, set admin.token to keep one): {token}");
    }
    if let (Demo::Created(account) | Demo::Rekeyed(account), Some(key)) = (demo, key) {
        if demo == Demo::Rekeyed(account) {
            let _ = writeln!(
                out,
                "demo account {account} rebuilt from the journal; its earlier key is revoked and it gets a new one"
            );
        }
        let _ = writeln!(out, "demo account {account} API key (shown once): {key}");
        let _ = writeln!(
                out,
                "try: curl -s -X POST http://{}/v1/signals -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{{\"symbol\":\"BTC-USD\",\"action\":\"buy\",\"qty\":\"0.01\"}}'",
            s.http
        );
    }
    let _ = out.flush();
}
