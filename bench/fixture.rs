//! A node in a box for in-process measurements: the real request life cycle (`node::serve` with
//! the public API's routes: JSON parse → auth → rate limit → risk → order → journal append →
//! paper fill → answer encoding) without sockets.
//! Its journal is a real one, in a temporary directory (in memory, /dev/shm, when there is one),
//! with `fsync = "never"` unless asked: an append is a copy into the segment's mapping, and
//! nothing waits for a disk. Shared by the allocation and no-panic tests and the `signal_path` and
//! `journal_path` benchmarks.

use std::cell::RefCell;

use signalgate::api::{Method, Public, Request, Response};
use signalgate::auth::hash_key;
use signalgate::config::{Config, TopologyConfig};
use signalgate::engine::account::{AccountName, LimitOverrides, Roles};
use signalgate::engine::market::Quote;
use signalgate::engine::types::{SymbolId, SECOND};
use signalgate::journal::FsyncPolicy;
use signalgate::node::Node;

/// The node's default topology as this process found it before any of its threads was pinned
/// (a pinned thread sees only its own core, and the default would put everything there).
fn topology() -> TopologyConfig {
    static FIRST: std::sync::OnceLock<TopologyConfig> = std::sync::OnceLock::new();
    FIRST.get_or_init(TopologyConfig::default).clone()
}

/// Pins the calling thread as the node pins its hot executor (`topology.hot`, by default core 0);
/// the journal's threads go where the node puts them (the first fan-out core, core 1).
pub fn pin_as_the_hot_core() {
    let hot = topology().hot[0];
    if !signalgate::cores::pin_current_thread(hot) {
        eprintln!("could not pin to core {hot}; measuring unpinned");
    }
}

pub struct Fixture {
    pub node: RefCell<Node>,
    pub routes: Public,
    /// The journal's directory, when the fixture made it (removed when dropped).
    pub dir: Option<tempfile::TempDir>,
    /// `Authorization` of each account, in order; signal `i` goes to account `i % len`.
    pub auth: Vec<String>,
    pub bodies: Vec<Vec<u8>>,
    pub resp: Response,
    pub now: u64,
}

impl Fixture {
    /// One account that remembers 256 orders; see [`Fixture::with_accounts`].
    pub fn new(bodies: usize) -> Self {
        Self::with_accounts(bodies, 1, 256)
    }

    /// `bodies` signals cycle through buys, sells and targets on two symbols; every fourth one
    /// carries a fresh `signal_id`, so idempotency records are written too. `accounts` accounts,
    /// each remembering `orders_per_account` finished orders. The journal goes to a new temporary
    /// directory, unsynced.
    pub fn with_accounts(bodies: usize, accounts: usize, orders_per_account: usize) -> Self {
        // In memory when the host has it (/dev/shm): the in-process figures leave the disk and its
        // writeback out, as `journal_path` puts them in.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
        let dir = dir.expect("a temporary directory for the journal");
        let mut f = Self::in_dir(bodies, accounts, orders_per_account, dir.path(), FsyncPolicy::Never);
        f.dir = Some(dir);
        f
    }

    /// As [`Fixture::with_accounts`], with the journal in `dir` (empty) under `fsync`.
    pub fn in_dir(
        bodies: usize,
        accounts: usize,
        orders_per_account: usize,
        dir: &std::path::Path,
        fsync: FsyncPolicy,
    ) -> Self {
        let mut cfg = Config { topology: topology(), ..Config::default() };
        cfg.engine.orders_per_account = orders_per_account;
        cfg.engine.idempotency_capacity = 1024;
        cfg.journal.dir = dir.to_path_buf();
        cfg.journal.fsync = fsync;
        let now = 1_800_000_000 * SECOND;
        let (mut node, _) =
            Node::open(&cfg, "unused-admin-token".into(), now, false, None).expect("the fixture's node");
        let overrides = LimitOverrides {
            requests_per_minute: Some(u32::MAX),
            max_orders_per_second: Some(u32::MAX),
            max_order_notional: Some(i64::MAX / 4),
            max_position_notional: Some(i64::MAX / 4),
            max_gross_exposure: Some(i64::MAX / 4),
            max_daily_loss: Some(0),
            ..LimitOverrides::default()
        };
        let auth = (0..accounts)
            .map(|i| {
                let name = AccountName::new(&format!("bench-{i}")).unwrap();
                let cash = 1_000_000_000 * 100_000_000;
                let account = node.open_account(name, "enterprise", cash, overrides, now).unwrap();
                let key = format!("sg_{i:064x}");
                node.add_key(account, hash_key(key.as_bytes()), Roles::default(), now).unwrap();
                format!("Bearer {key}")
            })
            .collect();
        let shapes = [
            r#"{"symbol":"BTC-USD","action":"buy","qty":"0.0100"}"#,
            r#"{"symbol":"BTC-USD","action":"sell","qty":"0.0100"}"#,
            r#"{"symbol":"ETH-USD","action":"target","target":"1.5"}"#,
            r#"{"symbol":"ETH-USD","action":"target","target":"-0.5"}"#,
        ];
        let bodies = (0..bodies)
            .map(|i| {
                let s = shapes[i % shapes.len()];
                if i % 4 == 3 {
                    format!("{},\"signal_id\":\"bench-{i}\"}}", &s[..s.len() - 1]).into_bytes()
                } else {
                    s.as_bytes().to_vec()
                }
            })
            .collect();
        let node = RefCell::new(node);
        let mut f = Fixture {
            node,
            routes: Public::default(),
            dir: None,
            auth,
            bodies,
            resp: Response::with_capacity(4096),
            now,
        };
        f.quote();
        f
    }

    /// Fresh quotes for both symbols.
    pub fn quote(&mut self) {
        for (sym, mid) in [(0u16, 6_500_000i64), (1, 320_000)] {
            let q = Quote {
                symbol: SymbolId(sym),
                bid: mid - 1,
                ask: mid + 1,
                bid_size: 1_000_000,
                ask_size: 1_000_000,
                ts: self.now,
            };
            self.node.borrow_mut().apply_quote(q, self.now);
        }
    }

    /// Serves signal body number `i`; returns the status.
    pub fn signal(&mut self, i: usize) -> u16 {
        self.now += 1_000_000;
        // Moved out for the call (no copy): the request borrows them while `serve` needs `self`.
        let (bodies, auth) = (std::mem::take(&mut self.bodies), std::mem::take(&mut self.auth));
        let mut req = Request::new(Method::Post, "/v1/signals");
        req.authorization = Some(auth[i % auth.len()].as_bytes());
        req.content_type = Some(b"application/json");
        req.body = &bodies[i % bodies.len()];
        let status = self.serve(&req, self.now);
        (self.bodies, self.auth) = (bodies, auth);
        status
    }

    /// Serves one request through the request life cycle, as HTTP does, under `fsync = "never"`
    /// or `"interval"` (where events are durable once appended); returns the status. When the
    /// writer outruns the preparation of the next segment, its records wait in memory and the
    /// answer waits for them: the node's periodic housekeeping moves them into the segment once
    /// it is ready, and this loop stands in for the node's timer.
    pub fn serve(&mut self, req: &Request<'_>, now: u64) -> u16 {
        let node = &self.node;
        {
            let serve = signalgate::node::serve(node, &self.routes, Ok(req), &mut self.resp, now);
            let mut serve = std::pin::pin!(serve);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            while std::future::Future::poll(serve.as_mut(), &mut cx).is_pending() {
                std::thread::sleep(std::time::Duration::from_micros(100));

                node.borrow_mut().housekeeping(now);
            }
        }
        self.resp.status
    }
}
