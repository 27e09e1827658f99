//! A node in a box for in-process measurements: the real `Node::handle` path (JSON parse → auth →
//! rate limit → risk → order → journal encoding → paper fill → answer encoding) without sockets
//! or disk. Shared by the allocation test and the `signal_path` benchmark.

use signalgate::api::{Method, Request, Response};
use signalgate::auth::hash_key;
use signalgate::config::Config;
use signalgate::engine::account::{AccountName, LimitOverrides, Roles};
use signalgate::engine::market::Quote;
use signalgate::engine::types::{SymbolId, SECOND};
use signalgate::node::Node;

pub struct Fixture {
    pub node: Node,
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
    /// each remembering `orders_per_account` finished orders.
    pub fn with_accounts(bodies: usize, accounts: usize, orders_per_account: usize) -> Self {
        let mut cfg = Config::default();
        cfg.engine.orders_per_account = orders_per_account;
        cfg.engine.idempotency_capacity = 1024;
        let now = 1_800_000_000 * SECOND;
        let mut node = Node::new(&cfg, "unused-admin-token".into(), now);
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
        let mut f = Fixture { node, auth, bodies, resp: Response::with_capacity(4096), now };
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
            self.node.apply_quote(q, self.now);
        }
        self.journal_written();
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

    /// Serves one request as the HTTP layer does — handle, journal, complete, journal — and
    /// returns the status.
    pub fn serve(&mut self, req: &Request<'_>, now: u64) -> u16 {
        self.node.handle(req, &mut self.resp, now);
        self.journal_written();
        self.node.complete(&mut self.resp);
        self.journal_written();
        self.resp.status
    }

    /// Stands in for the journal writer, as if every pending event were written at once: takes
    /// the encoded batch, and tells the node it is durable (which releases the held orders to
    /// the venue). What is measured is everything but the disk.
    pub fn journal_written(&mut self) {
        if let Some((buf, last)) = self.node.journal.take() {
            self.node.journal.give_back(buf);
            self.node.journal.mark_written(last);
            self.node.on_durable(last, self.now);
        }
    }
}
