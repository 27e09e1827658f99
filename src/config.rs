//! Node configuration: one TOML file, environment overrides, and validation that names the
//! offending key.
//!
//! With no file at all the defaults are the *embedded* node: two demo symbols, the quote
//! simulator, the paper venue and a demo account. `SIGNALGATE_<SECTION>_<KEY>` overrides any key
//! of a section (`SIGNALGATE_HTTP_ADDR=0.0.0.0:8080`); values are read as TOML when they parse
//! as such (numbers, booleans, arrays) and as strings otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::account::{LimitOverrides, RiskLimits};
use crate::fixed::{parse_decimal, MONEY_DECIMALS};

/// A decimal written as a TOML string (`"0.01"`) or number (`0.01`, `5`); parsed exactly later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Decimal(pub String);

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
        }
        Ok(Decimal(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            // Rust prints the shortest text that reads back as the same f64: "0.01" stays "0.01".
            Raw::F(f) => f.to_string(),
        }))
    }
}

impl Decimal {
    fn new(s: &str) -> Self {
        Decimal(s.to_string())
    }

    /// The value with `decimals` implied decimals, or an explanation.
    pub fn parse(&self, decimals: u8) -> Result<i64, String> {
        parse_decimal(self.0.as_bytes(), decimals).map_err(|e| format!("{:?} {}", self.0, e.describe()))
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Identity and logging.
    pub node: NodeConfig,
    /// The public HTTP API.
    pub http: HttpConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// The data directory.
    pub journal: JournalConfig,
    /// Cores and executors.
    pub topology: TopologyConfig,
    /// Node-wide risk settings.
    pub risk: RiskConfig,
    /// Engine memory bounds.
    pub engine: EngineSection,
    /// Where orders go.
    pub venue: VenueConfig,
    /// Market data.
    pub market: MarketConfig,
    /// The demo account created at start.
    pub demo: DemoConfig,
    /// PostgreSQL for history.
    pub postgres: PostgresConfig,
    /// The WebSocket stream.
    pub ws: WsConfig,
    /// Membership of a cluster of identical nodes sharing Redis (none: a standalone node).
    pub cluster: ClusterConfig,
    /// Tradable symbols.
    pub symbols: Vec<SymbolConfig>,
    /// Tiers by name; the defaults `free`, `pro` and `enterprise` are kept unless redefined.
    pub tiers: BTreeMap<String, TierConfig>,
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Name shown in logs and `/health`.
    pub name: String,
    /// Log filter (`error`, `warn`, `info`, `debug`, or an env_logger spec); `RUST_LOG` wins.
    pub log: String,
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address of the public API.
    pub addr: String,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Time allowed to send a request's headers (and for an idle keep-alive connection's next
    /// request).
    pub header_read_timeout_ms: u64,
    /// Time allowed to send a request's body once its headers are in (64 KiB in 5 s is at least
    /// 13 KiB/s); a later body gets 408 and the connection is closed.
    pub body_read_timeout_ms: u64,
    /// Time an answer may wait for the client to read it before the connection is closed.
    pub write_timeout_ms: u64,
    /// Connections at once; more get 503 and are closed.
    pub max_connections: usize,
    /// Requests in progress at once; more get 503 with `Retry-After`.
    pub max_inflight: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// Listen backlog.
    pub backlog: i32,
}

/// `[ws]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Listen address of the WebSocket stream (`GET /v1/ws`), served by the fan-out cores.
    pub addr: String,
    /// Authenticated WebSocket connections at once, node-wide; more get 503 (4029 on the
    /// `auth` message path).
    pub max_connections: usize,
    /// Unauthenticated connections (in their handshake, or waiting for their `auth` message) at
    /// once, node-wide; at the bound a new one closes the oldest (1013).
    pub max_unauthenticated: usize,
    /// Bytes a connection may have waiting to be sent; beyond, it is closed (4008).
    pub queue_bytes: usize,
    /// Most messages in one frame.
    pub frame_messages: usize,
    /// Most bytes in one frame (a single larger message still goes alone).
    pub frame_bytes: usize,
    /// Seconds between server pings.
    pub ping_secs: u64,
    /// Seconds without a pong after a ping before the connection is closed.
    pub pong_timeout_secs: u64,
    /// Seconds a connection that did not authenticate in its upgrade request has for its
    /// `auth` message.
    pub auth_timeout_secs: u64,
    /// Largest client message; larger ones close the connection (1009).
    pub max_message_bytes: usize,
    /// Account events kept in memory for `resume_from`.
    pub resume_events: usize,
    /// Events a resume may read back from the journal beyond that window (read on the fan-out
    /// core while its streams wait, so kept small).
    pub resume_journal_events: u64,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address of the admin API (keep it private).
    pub addr: String,
    /// Bearer token for the admin API; empty = a random one is made and printed at start.
    pub token: String,
    /// Admin connections at once (its own budget, apart from the public API's).
    pub max_connections: usize,
    /// Accept an `addr` that is not a loopback address. The admin API is plain HTTP and every
    /// request carries the token: off a loopback address, anyone on the path can read it.
    pub allow_non_loopback: bool,
}

/// `[journal]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// The node's data directory (locked while the node runs).
    pub dir: PathBuf,
    /// When to fdatasync: `always`, `interval` or `never` (see `docs/durability.md`).
    pub fsync: crate::journal::FsyncPolicy,
    /// Time between background syncs under `fsync = "interval"`.
    pub fsync_interval_ms: u64,
    /// A new segment starts once the current one is this large.
    pub segment_bytes: u64,
    /// A snapshot is written after this many events (0: never).
    pub snapshot_every_events: u64,
    /// Delete segments wholly covered by the newest snapshot, keeping this many of them
    /// (-1: keep every segment).
    pub keep_covered_segments: i64,
}

/// `[topology]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologyConfig {
    /// Cores of the hot path (HTTP, engine, venue). One core for now.
    pub hot: Vec<usize>,
    /// Cores reserved for fan-out (WebSocket streams).
    pub fanout: Vec<usize>,
    /// Pin executors to their cores (turn off to run many nodes on a small machine).
    pub pin: bool,
    /// Memory glommio registers with io_uring per executor, in KiB.
    pub io_memory_kib: usize,
    /// Spin this long before parking an idle executor (0 = park at once).
    pub spin_before_park_us: u64,
}

/// `[risk]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// Largest distance of a limit price from the mid, in basis points.
    pub price_collar_bps: u32,
    /// Oldest quote a market order may be priced from.
    pub max_quote_age_ms: u64,
}

/// `[engine]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Signal ids remembered at most (oldest dropped first when full).
    pub idempotency_capacity: usize,
    /// How long a signal id is remembered.
    pub idempotency_ttl_secs: u64,
    /// Orders remembered per account (open orders are always kept).
    pub orders_per_account: usize,
}

/// `[venue]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VenueConfig {
    /// Which venue: `paper` (the built-in simulator) or `fix` (a FIX 4.4 counterparty).
    pub kind: String,
    /// `paper`: slippage of market orders, basis points.
    pub slippage_bps: u32,
    /// `paper`: fee, basis points of notional.
    pub fee_bps: u32,
    /// `paper`: simulated venue latency, microseconds.
    pub latency_us: u64,
    /// `fix`: the venue's host name or address.
    pub host: String,
    /// `fix`: the venue's port.
    pub port: u16,
    /// `fix`: SenderCompID (49), this side.
    pub sender_comp_id: String,
    /// `fix`: TargetCompID (56), the venue.
    pub target_comp_id: String,
    /// `fix`: HeartBtInt (108), seconds.
    pub heartbeat_secs: u64,
    /// `fix`: Account (1) sent on every order; empty: none.
    pub account: String,
    /// `fix`: TLS to the venue.
    pub tls: bool,
    /// `fix`: PEM file of the certificate authorities the venue's certificate must chain to;
    /// empty: the system's.
    pub tls_ca_file: String,
    /// `fix`: the name the venue's certificate must carry; empty: `host`.
    pub tls_server_name: String,
    /// `fix`: first wait before reconnecting, milliseconds; it doubles after each failure up
    /// to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    /// `fix`: longest wait before reconnecting, milliseconds.
    pub reconnect_max_ms: u64,
    /// `fix`: how long the venue has to answer a Logon, milliseconds.
    pub logon_timeout_ms: u64,
    /// `fix`: how long the answer to a signal or order waits for the venue's first word on the
    /// order (after which it shows the order as `pending_new`), milliseconds.
    pub answer_timeout_ms: u64,
}

/// `[market]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketConfig {
    /// Run the built-in quote simulator.
    pub simulator: bool,
    /// Milliseconds between simulated quotes of each symbol.
    pub interval_ms: u64,
    /// Seed of the simulator's random walk.
    pub seed: u64,
}

/// `[postgres]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string (`postgresql://user:password@host:port/db` or `host=… user=… dbname=…`);
    /// empty = no PostgreSQL (the embedded default). When set, the journal is offloaded there.
    pub url: String,
    /// Apply the schema migrations (`schema/`) at start.
    pub migrate: bool,
    /// Most events in one offload batch (one transaction).
    pub batch_events: usize,
    /// Longest an offload batch waits to fill before it is written (ms).
    pub batch_ms: u64,
    /// A read replica of `url` (same forms) that serves the history API; empty = the primary.
    pub read_url: String,
    /// Replication lag beyond which history reads go to the primary instead (ms).
    pub read_max_lag_ms: u64,
    /// Connections the history reads keep to each database (not counting the offloader's one).
    pub read_pool_size: usize,
    /// Longest a history query may take (ms): the server stops it then (`statement_timeout`).
    pub read_timeout_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: String::new(),
            migrate: false,
            batch_events: 50_000,
            batch_ms: 100,
            read_url: String::new(),
            read_max_lag_ms: 5_000,
            read_pool_size: 4,
            read_timeout_ms: 5_000,
        }
    }
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Redis (`redis://host:port/db`) shared by the cluster's nodes; empty = a standalone node
    /// (the embedded default), which needs no Redis.
    pub redis_url: String,
    /// This node's id, unique in the cluster: 1–64 letters, digits, `-`, `_` or `.`.
    pub node_id: String,
    /// The host (name or IP) the other nodes reach this node's listeners at.
    pub address: String,
    /// How long a node stays a member without renewing its lease (ms); it renews every third.
    /// The accounts of a node whose lease ran out move to the live nodes.
    pub lease_ms: u64,
    /// When an answer may be sent: once its events are durable on this node and in Redis
    /// (`replicated`), or on this node only (`local`: faster; a failover loses what Redis did not
    /// have yet).
    pub ack: Ack,
    /// Redis replicas that must have an event before it counts as replicated (`WAIT`); 0: the
    /// Redis primary alone.
    pub redis_replicas: u32,
    /// Events of an account in its Redis stream after which the stream is replaced by a
    /// checkpoint of the account (or twice the last checkpoint's events, when that is more): what
    /// a node that takes the account over reads.
    pub checkpoint_events: usize,
}

/// `cluster.ack`: what an answer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ack {
    /// Durable on this node and in Redis.
    Replicated,
    /// Durable on this node.
    Local,
}

impl Ack {
    /// The name used in config and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Ack::Replicated => "replicated",
            Ack::Local => "local",
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            node_id: String::new(),
            address: String::new(),
            lease_ms: 2_000,
            ack: Ack::Replicated,
            redis_replicas: 0,
            checkpoint_events: 4096,
        }
    }
}

impl ClusterConfig {
    /// Whether the node is a member of a cluster.
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }

    /// Where this node's order ids start (0 on a standalone node). Each node of a cluster gives
    /// ids from a range of its own, `ORDER_ID_SPAN` wide and numbered after its id, so ids stay
    /// unique when accounts move between nodes; with 8,191 numbers every id stays below 2^53,
    /// exact in any JSON reader.
    pub fn order_id_base(&self) -> u64 {
        if self.enabled() {
            node_base(&self.node_id)
        } else {
            0
        }
    }
}

/// Where the ranges of cluster node `node_id` start: its order ids, and the sequence numbers its
/// events carry in PostgreSQL.
pub fn node_base(node_id: &str) -> u64 {
    u64::from(node_number(node_id)) * crate::engine::ORDER_ID_SPAN
}

/// The number of a cluster node's order id range, 1–8191, derived from its id (FNV-1a): two
/// members with the same number are refused at join.
pub fn node_number(node_id: &str) -> u16 {
    let hash = node_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (hash % 8191) as u16 + 1
}

/// `[demo]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Create a demo account and print its key at start.
    pub enabled: bool,
    /// Its name.
    pub name: String,
    /// Its tier.
    pub tier: String,
    /// Its starting cash.
    pub cash: Decimal,
}

/// `[[symbols]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymbolConfig {
    /// Name, e.g. `BTC-USD` (letters, digits, `-`, `_`, `.`, `/`; at most 32 bytes).
    pub name: String,
    /// Decimals of prices.
    pub price_decimals: u8,
    /// Decimals of quantities.
    pub qty_decimals: u8,
    /// Price increment.
    pub tick: Decimal,
    /// Quantity increment.
    pub lot: Decimal,
    /// Largest quantity of one order.
    pub max_order_qty: Decimal,
    /// Starting price of the simulator.
    #[serde(default = "default_initial_price")]
    pub initial_price: Decimal,
    /// Standard step of the simulator's random walk, basis points.
    #[serde(default = "default_volatility")]
    pub volatility_bps: u32,
    /// Its name at a FIX venue (Symbol, 55); empty: `name`.
    #[serde(default)]
    pub venue_symbol: String,
}

fn default_initial_price() -> Decimal {
    Decimal::new("100")
}

fn default_volatility() -> u32 {
    2
}

/// `[tiers.NAME]` — money values are decimals in the account currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// API requests per key per minute.
    pub requests_per_minute: u32,
    /// Largest notional of one order.
    pub max_order_notional: Decimal,
    /// Largest notional of a position in one symbol.
    pub max_position_notional: Decimal,
    /// Largest gross exposure.
    pub max_gross_exposure: Decimal,
    /// Orders per second per account.
    pub max_orders_per_second: u32,
    /// Daily loss that halts the account ("0" = none).
    pub max_daily_loss: Decimal,
    /// Open orders at once.
    pub max_open_orders: u32,
    /// Gross exposure per unit of equity.
    #[serde(default = "default_leverage")]
    pub leverage: u32,
    /// WebSocket connections per key at once.
    #[serde(default = "default_ws_connections")]
    pub ws_connections: u32,
}

fn default_ws_connections() -> u32 {
    10
}

fn default_leverage() -> u32 {
    1
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node: NodeConfig::default(),
            http: HttpConfig::default(),
            admin: AdminConfig::default(),
            journal: JournalConfig::default(),
            topology: TopologyConfig::default(),
            risk: RiskConfig::default(),
            engine: EngineSection::default(),
            venue: VenueConfig::default(),
            market: MarketConfig::default(),
            demo: DemoConfig::default(),
            postgres: PostgresConfig::default(),
            ws: WsConfig::default(),
            cluster: ClusterConfig::default(),
            symbols: default_symbols(),
            tiers: default_tiers(),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { name: "signalgate".into(), log: "info".into() }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 5_000,
            write_timeout_ms: 10_000,
            max_connections: 10_000,
            max_inflight: 4096,
            shutdown_grace_ms: 8_000,
            backlog: 1024,
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            addr: "127.0.0.1:8082".into(),
            max_connections: 20_000,
            max_unauthenticated: 1024,
            queue_bytes: 1 << 20,
            frame_messages: 64,
            frame_bytes: 16 * 1024,
            ping_secs: 20,
            pong_timeout_secs: 10,
            auth_timeout_secs: 5,
            max_message_bytes: 64 * 1024,
            resume_events: 100_000,
            resume_journal_events: 200_000,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: "127.0.0.1:8081".into(),
            token: String::new(),
            max_connections: 256,
            allow_non_loopback: false,
        }
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            dir: PathBuf::from("signalgate-data"),
            fsync: crate::journal::FsyncPolicy::Interval,
            fsync_interval_ms: 10,
            segment_bytes: 64 * 1024 * 1024,
            snapshot_every_events: 1_000_000,
            keep_covered_segments: -1,
        }
    }
}

impl Default for TopologyConfig {
    fn default() -> Self {
        let cores = core_affinity::get_core_ids().map_or(1, |c| c.len());
        TopologyConfig {
            hot: vec![0],
            fanout: vec![if cores > 1 { 1 } else { 0 }],
            pin: true,
            io_memory_kib: 1024,
            spin_before_park_us: 0,
        }
    }
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig { price_collar_bps: 500, max_quote_age_ms: 5_000 }
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection { idempotency_capacity: 100_000, idempotency_ttl_secs: 86_400, orders_per_account: 10_000 }
    }
}

impl Default for VenueConfig {
    fn default() -> Self {
        VenueConfig {
            kind: "paper".into(),
            slippage_bps: 2,
            fee_bps: 5,
            latency_us: 0,
            host: String::new(),
            port: 0,
            sender_comp_id: String::new(),
            target_comp_id: String::new(),
            heartbeat_secs: 30,
            account: String::new(),
            tls: false,
            tls_ca_file: String::new(),
            tls_server_name: String::new(),
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
            logon_timeout_ms: 10_000,
            answer_timeout_ms: 2_000,
        }
    }
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig { simulator: true, interval_ms: 100, seed: 42 }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { enabled: true, name: "demo".into(), tier: "pro".into(), cash: Decimal::new("100000") }
    }
}

fn default_symbols() -> Vec<SymbolConfig> {
    vec![
        SymbolConfig {
            name: "BTC-USD".into(),
            price_decimals: 2,
            qty_decimals: 4,
            tick: Decimal::new("0.01"),
            lot: Decimal::new("0.0001"),
            max_order_qty: Decimal::new("50"),
            initial_price: Decimal::new("65000"),
            volatility_bps: 2,
            venue_symbol: String::new(),
        },
        SymbolConfig {
            name: "ETH-USD".into(),
            price_decimals: 2,
            qty_decimals: 3,
            tick: Decimal::new("0.01"),
            lot: Decimal::new("0.001"),
            max_order_qty: Decimal::new("500"),
            initial_price: Decimal::new("3200"),
            volatility_bps: 3,
            venue_symbol: String::new(),
        },
    ]
}

#[allow(clippy::too_many_arguments)]
fn tier(rpm: u32, order: &str, position: &str, gross: &str, ops: u32, loss: &str, open: u32, ws: u32) -> TierConfig {
    TierConfig {
        requests_per_minute: rpm,
        max_order_notional: Decimal::new(order),
        max_position_notional: Decimal::new(position),
        max_gross_exposure: Decimal::new(gross),
        max_orders_per_second: ops,
        max_daily_loss: Decimal::new(loss),
        max_open_orders: open,
        leverage: 1,
        ws_connections: ws,
    }
}

fn default_tiers() -> BTreeMap<String, TierConfig> {
    BTreeMap::from([
        ("free".to_string(), tier(60, "1000", "5000", "10000", 2, "500", 10, 5)),
        ("pro".to_string(), tier(1200, "50000", "100000", "250000", 20, "10000", 100, 50)),
        ("enterprise".to_string(), tier(60_000, "1000000", "5000000", "20000000", 500, "250000", 1000, 10_000)),
    ])
}

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, e.g. `http.addr` or `symbols[1].tick`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// `path` without `.` components, and with each `..` taking away the component before it (no
/// file system access: a symbolic link is kept as written).
fn normalize(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Sections that environment variables may override.
const ENV_SECTIONS: &[&str] = &[
    "node", "http", "admin", "journal", "topology", "risk", "engine", "venue", "market", "demo", "postgres", "ws",
    "cluster",
];

/// Prefix of overriding environment variables.
pub const ENV_PREFIX: &str = "SIGNALGATE_";

impl Config {
    /// Reads `path` (or nothing, for the embedded default) and applies `env` overrides
    /// (`(name, value)` pairs; only `SIGNALGATE_*` ones are looked at). Syntax and type errors
    /// come back as one [`ConfigError`] each.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Vec<ConfigError>> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| {
                vec![ConfigError { key: p.display().to_string(), message: format!("cannot read the file: {e}") }]
            })?,
            None => String::new(),
        };
        let mut config = Self::from_toml(&text, env)?;
        let cwd = std::env::current_dir().map_err(|e| {
            vec![ConfigError {
                key: "journal.dir".into(),
                message: format!("cannot read the working directory to resolve relative paths against: {e}"),
            }]
        })?;
        config.resolve_paths(&cwd);
        Ok(config)
    }

    /// Makes every path of the configuration absolute, against `base` (the working directory at
    /// start). Done once, when the configuration is loaded, so that nothing later depends on the
    /// working directory: io_uring opens a relative path against no directory at all (EBADF),
    /// and the banner and logs show where the files really are.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if !self.journal.dir.as_os_str().is_empty() && self.journal.dir.is_relative() {
            self.journal.dir = normalize(&base.join(&self.journal.dir));
        }
    }

    /// Parses TOML text and applies environment overrides.
    pub fn from_toml(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, Vec<ConfigError>> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            vec![ConfigError { key: "(file)".into(), message: e.to_string().trim_end().to_string() }]
        })?;
        let mut errors = Vec::new();
        let mut overridden = Vec::new();
        // (section, key, raw text) of overrides read as non-string TOML, for the retry below.
        let mut typed = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            let lower = rest.to_ascii_lowercase();
            let Some((section, key)) = lower.split_once('_') else {
                errors.push(ConfigError { key: name.clone(), message: "expected SIGNALGATE_<SECTION>_<KEY>".into() });
                continue;
            };
            if !ENV_SECTIONS.contains(&section) {
                errors.push(ConfigError {
                    key: name.clone(),
                    message: format!("unknown section {section:?}; sections: {}", ENV_SECTIONS.join(", ")),
                });
                continue;
            }
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value.clone()));
            let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => {
                    if !parsed.is_str() {
                        typed.push((section.to_string(), key.to_string(), value.clone()));
                    }
                    t.insert(key.to_string(), parsed);
                    overridden.push(name);
                }
                _ => errors.push(ConfigError { key: name, message: format!("[{section}] is not a table in the file") }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let first: Result<Config, toml::de::Error> = toml::Value::Table(table.clone()).try_into();
        // A value that reads as a number or boolean may be meant as text (an all-digit token):
        // when the typed reading does not fit, try those overrides as plain strings.
        let retried = first.or_else(|e| {
            if typed.is_empty() {
                return Err(e);
            }
            for (section, key, raw) in &typed {
                if let Some(toml::Value::Table(t)) = table.get_mut(section) {
                    t.insert(key.clone(), toml::Value::String(raw.clone()));
                }
            }
            toml::Value::Table(table).try_into().map_err(|_: toml::de::Error| e)
        });
        let mut config: Config = retried.map_err(|e: toml::de::Error| {
            let mut message = e.message().to_string();
            if !overridden.is_empty() {
                message.push_str(&format!(" (environment overrides applied: {})", overridden.join(", ")));
            }
            vec![ConfigError { key: "(file)".into(), message }]
        })?;
        for (name, t) in default_tiers() {
            config.tiers.entry(name).or_insert(t);
        }
        Ok(config)
    }

    /// The checks of `[venue] kind = "fix"`.
    fn validate_fix(&self, err: &mut impl FnMut(&str, String)) {
        let v = &self.venue;
        // FIX text values: printable ASCII, no `=` or SOH, as counterparties expect.
        let fix_text = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic());
        if v.host.is_empty() {
            err("venue.host", "is required for a FIX venue".into());
        }
        if v.port == 0 {
            err("venue.port", "is required for a FIX venue".into());
        }
        for (key, value) in [("venue.sender_comp_id", &v.sender_comp_id), ("venue.target_comp_id", &v.target_comp_id)] {
            if !fix_text(value) {
                err(key, "is required for a FIX venue: 1 to 64 printable ASCII characters".into());
            }
        }
        if !v.account.is_empty() && !fix_text(&v.account) {
            err("venue.account", "must be 1 to 64 printable ASCII characters".into());
        }
        if !(1..=3_600).contains(&v.heartbeat_secs) {
            err("venue.heartbeat_secs", "must be from 1 to 3600".into());
        }
        if v.reconnect_min_ms == 0 || v.reconnect_min_ms > v.reconnect_max_ms {
            err("venue.reconnect_min_ms", "must be positive and at most venue.reconnect_max_ms".into());
        }
        if v.logon_timeout_ms < 100 {
            err("venue.logon_timeout_ms", "must be at least 100".into());
        }
        if v.answer_timeout_ms > 60_000 {
            err("venue.answer_timeout_ms", "must be at most 60000".into());
        }
        if !v.tls && (!v.tls_ca_file.is_empty() || !v.tls_server_name.is_empty()) {
            err("venue.tls", "tls_ca_file and tls_server_name need tls = true".into());
        }
        if !v.tls_ca_file.is_empty() && !std::path::Path::new(&v.tls_ca_file).is_file() {
            err("venue.tls_ca_file", format!("{:?} is not a file", v.tls_ca_file));
        }
        for (i, s) in self.symbols.iter().enumerate() {
            if !s.venue_symbol.is_empty() && !fix_text(&s.venue_symbol) {
                err(&format!("symbols[{i}].venue_symbol"), "must be 1 to 64 printable ASCII characters".into());
            }
        }
        if self.cluster.enabled() {
            err(
                "venue.kind",
                "a FIX venue needs a standalone node: a cluster moves accounts between nodes, and their \
                 orders' session with the venue would not follow"
                    .into(),
            );
        }
    }

    /// The venue's name of each symbol, in the symbols' order.
    pub fn venue_symbols(&self) -> Vec<String> {
        self.symbols
            .iter()
            .map(|s| if s.venue_symbol.is_empty() { s.name.clone() } else { s.venue_symbol.clone() })
            .collect()
    }

    /// Every semantic problem, each naming its key. `cores` are the ids of the host's cores.
    pub fn validate(&self, cores: &[usize]) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut err = |key: &str, message: String| errs.push(ConfigError { key: key.to_string(), message });
        if let Err(e) = self.http.addr.parse::<SocketAddr>() {
            err("http.addr", format!("{:?} is not an IP:port address ({e})", self.http.addr));
        }
        match self.admin.addr.parse::<SocketAddr>() {
            Err(e) => err("admin.addr", format!("{:?} is not an IP:port address ({e})", self.admin.addr)),
            Ok(a) if !a.ip().is_loopback() && !self.admin.allow_non_loopback => err(
                "admin.addr",
                format!(
                    "{a} is not a loopback address, and the admin API is plain HTTP with the token in every request: \
                     keep it on 127.0.0.1 and reach it through an SSH tunnel or a TLS proxy, or set \
                     admin.allow_non_loopback = true to accept that risk"
                ),
            ),
            Ok(_) => {}
        }
        if self.http.addr == self.admin.addr && !self.http.addr.ends_with(":0") {
            err("admin.addr", "must differ from http.addr".into());
        }
        if !self.admin.token.is_empty() && self.admin.token.len() < 16 {
            err("admin.token", "must be at least 16 characters (or empty to generate one)".into());
        }
        if self.http.max_body_bytes == 0 {
            err("http.max_body_bytes", "must be positive".into());
        }
        if self.http.max_connections == 0 {
            err("http.max_connections", "must be positive".into());
        }
        if self.http.max_inflight == 0 {
            err("http.max_inflight", "must be positive".into());
        }
        for (key, v) in [
            ("http.header_read_timeout_ms", self.http.header_read_timeout_ms),
            ("http.body_read_timeout_ms", self.http.body_read_timeout_ms),
            ("http.write_timeout_ms", self.http.write_timeout_ms),
        ] {
            if !(1..=600_000).contains(&v) {
                err(key, "must be between 1 and 600000".into());
            }
        }
        if self.http.shutdown_grace_ms > 9_000 {
            err("http.shutdown_grace_ms", "must be at most 9000 so the node exits within 10 s of SIGTERM".into());
        }
        if self.journal.dir.as_os_str().is_empty() {
            err("journal.dir", "must not be empty".into());
        }
        if self.journal.fsync == crate::journal::FsyncPolicy::Interval
            && !(1..=60_000).contains(&self.journal.fsync_interval_ms)
        {
            err("journal.fsync_interval_ms", "must be between 1 and 60000".into());
        }
        if !(1 << 20..=1 << 40).contains(&self.journal.segment_bytes) {
            err("journal.segment_bytes", "must be between 1 MiB (1048576) and 1 TiB".into());
        }
        if self.postgres.migrate && self.postgres.url.is_empty() {
            err("postgres.migrate", "needs postgres.url".into());
        }
        // The connection strings themselves: `server::validate`, which knows PostgreSQL.
        if !self.postgres.read_url.is_empty() && self.postgres.url.is_empty() {
            err("postgres.read_url", "needs postgres.url (the primary it replicates)".into());
        }
        if !(100..=3_600_000).contains(&self.postgres.read_max_lag_ms) {
            err("postgres.read_max_lag_ms", "must be between 100 and 3600000".into());
        }
        if !(1..=256).contains(&self.postgres.read_pool_size) {
            err("postgres.read_pool_size", "must be between 1 and 256".into());
        }
        if !(100..=600_000).contains(&self.postgres.read_timeout_ms) {
            err("postgres.read_timeout_ms", "must be between 100 and 600000".into());
        }
        if !(1..=1_000_000).contains(&self.postgres.batch_events) {
            err("postgres.batch_events", "must be between 1 and 1000000".into());
        }
        if !(1..=60_000).contains(&self.postgres.batch_ms) {
            err("postgres.batch_ms", "must be between 1 and 60000".into());
        }
        self.validate_cluster(&mut err);
        if let Err(e) = self.ws.addr.parse::<SocketAddr>() {
            err("ws.addr", format!("{:?} is not an IP:port address ({e})", self.ws.addr));
        }
        if !self.ws.addr.ends_with(":0") && (self.ws.addr == self.http.addr || self.ws.addr == self.admin.addr) {
            err("ws.addr", "must differ from http.addr and admin.addr".into());
        }
        for (key, v) in [
            ("admin.max_connections", self.admin.max_connections),
            ("ws.max_connections", self.ws.max_connections),
            ("ws.max_unauthenticated", self.ws.max_unauthenticated),
            ("ws.frame_messages", self.ws.frame_messages),
            ("ws.resume_events", self.ws.resume_events),
        ] {
            if v == 0 {
                err(key, "must be positive".into());
            }
        }
        if !(4096..=1 << 30).contains(&self.ws.queue_bytes) {
            err("ws.queue_bytes", "must be between 4096 and 1 GiB".into());
        }
        if !(512..=1 << 24).contains(&self.ws.frame_bytes) {
            err("ws.frame_bytes", "must be between 512 and 16 MiB".into());
        }
        if !(256..=1 << 24).contains(&self.ws.max_message_bytes) {
            err("ws.max_message_bytes", "must be between 256 and 16 MiB".into());
        }
        for (key, v) in [
            ("ws.ping_secs", self.ws.ping_secs),
            ("ws.pong_timeout_secs", self.ws.pong_timeout_secs),
            ("ws.auth_timeout_secs", self.ws.auth_timeout_secs),
        ] {
            if !(1..=3600).contains(&v) {
                err(key, "must be between 1 and 3600".into());
            }
        }
        if self.journal.keep_covered_segments < -1 {
            err("journal.keep_covered_segments", "must be -1 (keep all) or a count".into());
        }
        match self.topology.hot.len() {
            1 => {}
            0 => err("topology.hot", "needs one core".into()),
            _ => err("topology.hot", "one hot core is supported for now (accounts are not sharded yet)".into()),
        }
        if self.topology.fanout.is_empty() {
            err("topology.fanout", "needs at least one core".into());
        }
        for (key, list) in [("topology.hot", &self.topology.hot), ("topology.fanout", &self.topology.fanout)] {
            for c in list {
                if !cores.contains(c) {
                    err(key, format!("core {c} does not exist on this host (cores: {cores:?})"));
                }
            }
        }
        if self.topology.io_memory_kib < 64 {
            err("topology.io_memory_kib", "must be at least 64".into());
        }
        if self.risk.max_quote_age_ms == 0 {
            err("risk.max_quote_age_ms", "must be positive".into());
        }
        if self.engine.idempotency_capacity == 0 {
            err("engine.idempotency_capacity", "must be positive".into());
        }
        if self.engine.orders_per_account == 0 {
            err("engine.orders_per_account", "must be positive".into());
        }
        match self.venue.kind.as_str() {
            "paper" => {}
            "fix" => self.validate_fix(&mut err),
            other => err("venue.kind", format!("{other:?} is not a known venue; known: \"paper\", \"fix\"")),
        }
        if self.venue.fee_bps > 10_000 || self.venue.slippage_bps > 10_000 {
            err("venue", "fee_bps and slippage_bps must be at most 10000".into());
        }
        if self.market.interval_ms == 0 {
            err("market.interval_ms", "must be positive".into());
        }
        if self.symbols.is_empty() {
            err("symbols", "define at least one [[symbols]]".into());
        }
        if self.symbols.len() > usize::from(u16::MAX) {
            err("symbols", "too many symbols".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.symbols.iter().enumerate() {
            let k = |f: &str| format!("symbols[{i}].{f}");
            if s.name.is_empty()
                || s.name.len() > 32
                || !s.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            {
                err(&k("name"), format!("{:?}: use 1–32 letters, digits, '-', '_', '.', '/'", s.name));
            }
            if !names.insert(s.name.as_str()) {
                err(&k("name"), format!("{:?} is defined twice", s.name));
            }
            if u16::from(s.price_decimals) + u16::from(s.qty_decimals) > u16::from(MONEY_DECIMALS) {
                err(
                    &k("qty_decimals"),
                    format!("price_decimals + qty_decimals must be at most {MONEY_DECIMALS} so notionals are exact"),
                );
                continue;
            }
            for (field, value, decimals) in [
                ("tick", &s.tick, s.price_decimals),
                ("lot", &s.lot, s.qty_decimals),
                ("max_order_qty", &s.max_order_qty, s.qty_decimals),
                ("initial_price", &s.initial_price, s.price_decimals),
            ] {
                match value.parse(decimals) {
                    Ok(v) if v > 0 => {}
                    Ok(_) => err(&k(field), "must be positive".into()),
                    Err(e) => err(&k(field), format!("{e} (decimals: {decimals})")),
                }
            }
        }
        for (name, t) in &self.tiers {
            let k = |f: &str| format!("tiers.{name}.{f}");
            for (field, value) in [
                ("max_order_notional", &t.max_order_notional),
                ("max_position_notional", &t.max_position_notional),
                ("max_gross_exposure", &t.max_gross_exposure),
                ("max_daily_loss", &t.max_daily_loss),
            ] {
                match value.parse(MONEY_DECIMALS) {
                    Ok(v) if v >= 0 => {}
                    Ok(_) => err(&k(field), "must not be negative".into()),
                    Err(e) => err(&k(field), e),
                }
            }
            if t.max_open_orders == 0 {
                err(&k("max_open_orders"), "must be positive".into());
            }
            if t.leverage == 0 {
                err(&k("leverage"), "must be positive".into());
            }
        }
        if self.demo.enabled {
            if !self.tiers.contains_key(&self.demo.tier) {
                err("demo.tier", format!("{:?} is not a tier", self.demo.tier));
            }
            match self.demo.cash.parse(MONEY_DECIMALS) {
                Ok(c) if !(0..=crate::engine::types::MAX_START_CASH).contains(&c) => {
                    err("demo.cash", "must be between 0 and 10000000000".into())
                }
                Ok(_) => {}
                Err(e) => err("demo.cash", e),
            }
            if self.demo.name.is_empty() || self.demo.name.len() > 64 {
                err("demo.name", "must be 1–64 bytes".into());
            }
        }
        errs
    }
}

impl Config {
    fn validate_cluster(&self, err: &mut impl FnMut(&str, String)) {
        let c = &self.cluster;
        if !c.enabled() {
            for (key, set) in [("cluster.node_id", !c.node_id.is_empty()), ("cluster.address", !c.address.is_empty())] {
                if set {
                    err(key, "needs cluster.redis_url (a standalone node has no cluster)".into());
                }
            }
            return;
        }
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(c.redis_url.as_str()) {
            err("cluster.redis_url", format!("{:?} is not a Redis URL ({e})", c.redis_url));
        }
        let id_ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        if c.node_id.is_empty() || c.node_id.len() > 64 || !c.node_id.bytes().all(id_ok) {
            err("cluster.node_id", "must be 1–64 letters, digits, '-', '_' or '.', unique in the cluster".into());
        }
        if c.address.is_empty() || c.address.contains([':', '/', ' ']) && c.address.parse::<std::net::IpAddr>().is_err()
        {
            err("cluster.address", "must be the host name or IP address the other nodes reach this node at".into());
        }
        if !(300..=60_000).contains(&c.lease_ms) {
            err("cluster.lease_ms", "must be between 300 and 60000".into());
        }
        if !(16..=1 << 24).contains(&c.checkpoint_events) {
            err("cluster.checkpoint_events", "must be between 16 and 16777216".into());
        }
        if c.redis_replicas > 64 {
            err("cluster.redis_replicas", "must be at most 64".into());
        }
        if self.demo.enabled {
            err("demo.enabled", "must be false on a cluster node: create accounts through the admin API".into());
        }
        if self.admin.token.is_empty() {
            err(
                "admin.token",
                "must be set on a cluster node, the same on every node: nodes forward admin requests to each other"
                    .into(),
            );
        }
    }
}

impl TierConfig {
    /// The tier's limits in engine units (call after [`Config::validate`]).
    pub fn limits(&self) -> RiskLimits {
        let money = |d: &Decimal| d.parse(MONEY_DECIMALS).unwrap_or(0);
        RiskLimits {
            requests_per_minute: self.requests_per_minute,
            max_order_notional: money(&self.max_order_notional),
            max_position_notional: money(&self.max_position_notional),
            max_gross_exposure: money(&self.max_gross_exposure),
            max_orders_per_second: self.max_orders_per_second,
            max_daily_loss: money(&self.max_daily_loss),
            max_open_orders: self.max_open_orders,
            leverage: self.leverage,
        }
    }
}

/// Parses an account's `limits` object (admin API): the same keys as a tier, all optional.
pub fn parse_limit_overrides(v: &serde_json::Value) -> Result<LimitOverrides, String> {
    let Some(obj) = v.as_object() else {
        return Err("limits must be an object".into());
    };
    let mut o = LimitOverrides::default();
    for (k, v) in obj {
        let count = || -> Result<u32, String> {
            v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| format!("limits.{k} must be a whole number"))
        };
        let money = || -> Result<i64, String> {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return Err(format!("limits.{k} must be a decimal string or number")),
            };
            match parse_decimal(text.as_bytes(), MONEY_DECIMALS) {
                Ok(m) if m >= 0 => Ok(m),
                Ok(_) => Err(format!("limits.{k} must not be negative")),
                Err(e) => Err(format!("limits.{k} {}", e.describe())),
            }
        };
        match k.as_str() {
            "requests_per_minute" => o.requests_per_minute = Some(count()?),
            "max_orders_per_second" => o.max_orders_per_second = Some(count()?),
            "max_open_orders" => o.max_open_orders = Some(count()?.max(1)),
            "leverage" => o.leverage = Some(count()?.max(1)),
            "max_order_notional" => o.max_order_notional = Some(money()?),
            "max_position_notional" => o.max_position_notional = Some(money()?),
            "max_gross_exposure" => o.max_gross_exposure = Some(money()?),
            "max_daily_loss" => o.max_daily_loss = Some(money()?),
            _ => return Err(format!("limits.{k} is not a known limit")),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn cluster_nodes_give_order_ids_from_ranges_of_their_own() {
        let c = Config::from_toml("", env(&[])).unwrap();
        assert_eq!(c.cluster.order_id_base(), 0, "a standalone node counts from 1");
        let numbers: Vec<u16> = ["a", "b", "c", "node-1", "node-2"].iter().map(|id| node_number(id)).collect();
        assert!(numbers.iter().all(|n| (1..=8191).contains(n)), "{numbers:?}");
        let mut distinct = numbers.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), numbers.len(), "{numbers:?}");
        let c = Config::from_toml(
            "",
            env(&[("SIGNALGATE_CLUSTER_REDIS_URL", "redis://127.0.0.1/"), ("SIGNALGATE_CLUSTER_NODE_ID", "b")]),
        )
        .unwrap();
        let base = c.cluster.order_id_base();
        assert_eq!(base, u64::from(node_number("b")) << 40);
        assert!(base + crate::engine::ORDER_ID_SPAN <= 1 << 53, "exact in JSON");
    }

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::from_toml("", env(&[])).unwrap();
        assert_eq!(c.validate(&[0, 1]), vec![]);
        assert_eq!(c.symbols.len(), 2);
        assert_eq!(c.tiers.len(), 3);
    }

    #[test]
    fn relative_paths_are_resolved_against_the_working_directory() {
        let mut c = Config::from_toml("[journal]\ndir = \"./data/../node-1/.\"\n", env(&[])).unwrap();
        c.resolve_paths(Path::new("/srv/sg"));
        assert_eq!(c.journal.dir, PathBuf::from("/srv/sg/node-1"));
        let mut c = Config::from_toml("", env(&[("SIGNALGATE_JOURNAL_DIR", "/var/lib/x")])).unwrap();
        c.resolve_paths(Path::new("/srv/sg"));
        assert_eq!(c.journal.dir, PathBuf::from("/var/lib/x"), "an absolute path stays as it is");
        // `load` resolves against the process's working directory, file or no file.
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.journal.dir, std::env::current_dir().unwrap().join("signalgate-data"));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "[journal]\ndir = \"rel/dir\"\n").unwrap();
        let c = Config::load(Some(file.path()), env(&[])).unwrap();
        assert_eq!(c.journal.dir, std::env::current_dir().unwrap().join("rel/dir"));
    }

    #[test]
    fn the_example_file_is_valid_and_complete() {
        let text = include_str!("../signalgate.example.toml");
        let c = Config::from_toml(text, env(&[])).unwrap();
        assert_eq!(c.validate(&[0, 1]), vec![]);
    }

    #[test]
    fn environment_overrides_keys() {
        let c = Config::from_toml(
            "[http]\naddr = \"127.0.0.1:1\"\n",
            env(&[
                ("SIGNALGATE_HTTP_ADDR", "0.0.0.0:9000"),
                ("SIGNALGATE_ADMIN_TOKEN", "0123456789abcdef0123"),
                ("SIGNALGATE_JOURNAL_DIR", "/tmp/x"),
                ("SIGNALGATE_TOPOLOGY_HOT", "[1]"),
                ("SIGNALGATE_TOPOLOGY_PIN", "false"),
                ("SIGNALGATE_MARKET_SIMULATOR", "false"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.addr, "0.0.0.0:9000");
        assert_eq!(c.admin.token, "0123456789abcdef0123");
        assert_eq!(c.journal.dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.topology.hot, vec![1]);
        assert!(!c.topology.pin);
        assert!(!c.market.simulator);
        let c = Config::from_toml(
            "",
            env(&[("SIGNALGATE_ADMIN_TOKEN", "12345678901234567890"), ("SIGNALGATE_NODE_NAME", "true")]),
        )
        .unwrap();
        assert_eq!(c.admin.token, "12345678901234567890", "an all-digit token stays text");
        assert_eq!(c.node.name, "true");
        let e = Config::from_toml("", env(&[("SIGNALGATE_HTTP_MAX_BODY_BYTES", "lots")])).unwrap_err();
        assert!(e[0].message.contains("SIGNALGATE_HTTP_MAX_BODY_BYTES"), "{e:?}");
    }

    #[test]
    fn unknown_keys_and_sections_are_named() {
        let e = Config::from_toml("[http]\nadress = \"x\"\n", env(&[])).unwrap_err();
        assert!(e[0].message.contains("adress"), "{e:?}");
        let e = Config::from_toml("[htp]\n", env(&[])).unwrap_err();
        assert!(e[0].message.contains("htp"), "{e:?}");
        let e = Config::from_toml("", env(&[("SIGNALGATE_NOPE_X", "1")])).unwrap_err();
        assert_eq!(e[0].key, "SIGNALGATE_NOPE_X");
        let e = Config::from_toml("", env(&[("SIGNALGATE_HTTP_ADRES", "1")])).unwrap_err();
        assert!(e[0].message.contains("adres") && e[0].message.contains("SIGNALGATE_HTTP_ADRES"), "{e:?}");
        let e = Config::from_toml("[http]\nmax_body_bytes = \"big\"\n", env(&[])).unwrap_err();
        assert!(e[0].message.contains("invalid type"), "{e:?}");
    }

    #[test]
    fn validate_names_each_bad_key() {
        let text = r#"
            [http]
            addr = "nowhere"
            [topology]
            hot = [7]
            [[symbols]]
            name = "X"
            price_decimals = 2
            qty_decimals = 2
            tick = "0.001"
            lot = "0.01"
            max_order_qty = "-1"
            [tiers.vip]
            requests_per_minute = 1
            max_order_notional = "abc"
            max_position_notional = "1"
            max_gross_exposure = "1"
            max_orders_per_second = 1
            max_daily_loss = "0"
            max_open_orders = 1
        "#;
        let c = Config::from_toml(text, env(&[])).unwrap();
        let keys: Vec<String> = c.validate(&[0, 1]).into_iter().map(|e| e.key).collect();
        for k in
            ["http.addr", "topology.hot", "symbols[0].tick", "symbols[0].max_order_qty", "tiers.vip.max_order_notional"]
        {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        assert!(c.tiers.contains_key("free"), "default tiers are kept");
    }

    #[test]
    fn ws_settings_are_checked_and_overridable() {
        let c = Config::from_toml("", env(&[("SIGNALGATE_WS_ADDR", "0.0.0.0:9100")])).unwrap();
        assert_eq!(c.ws.addr, "0.0.0.0:9100");
        assert!(c.validate(&[0, 1]).is_empty());
        let text = "[ws]\naddr = \"127.0.0.1:8080\"\nqueue_bytes = 10\nping_secs = 0\n";
        let c = Config::from_toml(text, env(&[])).unwrap();
        let keys: Vec<String> = c.validate(&[0, 1]).into_iter().map(|e| e.key).collect();
        for k in ["ws.addr", "ws.queue_bytes", "ws.ping_secs"] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        let e = Config::from_toml("[ws]\nbogus = 1\n", env(&[])).unwrap_err();
        assert!(e[0].message.contains("bogus"), "{e:?}");
    }

    #[test]
    fn decimals_may_be_strings_or_numbers() {
        let c = Config::from_toml("[demo]\ncash = 2500.5\n", env(&[])).unwrap();
        assert_eq!(c.demo.cash.parse(2), Ok(250_050));
        let c = Config::from_toml("[demo]\ncash = 7\n", env(&[])).unwrap();
        assert_eq!(c.demo.cash.parse(0), Ok(7));
    }

    #[test]
    fn limit_overrides_parse_and_explain() {
        let o =
            parse_limit_overrides(&serde_json::json!({"requests_per_minute": 100000, "max_order_notional": "2500.5"}))
                .unwrap();
        assert_eq!(o.requests_per_minute, Some(100_000));
        assert_eq!(o.max_order_notional, Some(250_050_000_000));
        assert!(parse_limit_overrides(&serde_json::json!({"nope": 1})).unwrap_err().contains("limits.nope"));
        assert!(parse_limit_overrides(&serde_json::json!({"max_daily_loss": "-1"})).is_err());
        assert!(parse_limit_overrides(&serde_json::json!([])).is_err());
    }
}
