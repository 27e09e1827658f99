//! Whole requests through the API, the way `http::handle` hands them to the node after hyper has
//! parsed the request line and headers: any method, path, query, headers and body, on the public
//! and the admin API, against a node with an account, a key and a quote. Its journal is a real
//! one in a temporary directory, unsynced (`fsync = "never"`): each command's events are durable
//! once appended, and its orders reach the paper venue at once.
//!
//! Input: byte 0 picks the method, the API and which credentials go along; the path (with its
//! query) runs to the first newline; the rest is the body.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use signalgate::api::{Admin, Method, Public, Request, Response};
use signalgate::config::Config;
use signalgate::engine::market::Quote;
use signalgate::engine::types::SymbolId;
use signalgate::journal::FsyncPolicy;
use signalgate::node::Node;

const KEY: &str = "sg_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const ADMIN: &str = "fuzz-admin-token-0123456789";
const START: u64 = 1_800_000_000_000_000_000;
/// The public API without history or status sources: the routes the hot core serves.
const PUBLIC: Public = Public { history: None, offload: None, ws: None, cluster: None };
const ADMIN_ROUTES: Admin = Admin { cluster: None };
/// Requests before the node starts over, so that what admin requests create stays bounded.
const RESET_EVERY: u32 = 20_000;

struct Harness {
    node: RefCell<Node>,
    _dir: tempfile::TempDir,
    now: u64,
    served: u32,
    answer: Response,
}

fn fresh() -> Harness {
    let dir = tempfile::tempdir().expect("a temporary directory for the journal");
    let mut cfg = Config::default();
    cfg.engine.orders_per_account = 200;
    cfg.engine.idempotency_capacity = 1000;
    cfg.demo.tier = "enterprise".into();
    cfg.journal.dir = dir.path().to_path_buf();
    cfg.journal.fsync = FsyncPolicy::Never;
    let (mut node, _) = Node::open(&cfg, ADMIN.into(), START, false, None).expect("the node");
    node.create_demo(&cfg, signalgate::auth::hash_key(KEY.as_bytes()), START).expect("the demo account");
    for (symbol, bid) in [(0, 6_500_000), (1, 320_000)] {
        node.apply_quote(
            Quote { symbol: SymbolId(symbol), bid, ask: bid + 10, bid_size: 1_000_000, ask_size: 1_000_000, ts: START },
            START,
        );
    }
    Harness { node: RefCell::new(node), _dir: dir, now: START, served: 0, answer: Response::default() }
}

fuzz_target!(|data: &[u8]| {
    thread_local! { static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) }; }
    let Some((&control, rest)) = data.split_first() else { return };
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else { return };
    let method = [Method::Get, Method::Post, Method::Delete, Method::Put, Method::Head, Method::Other]
        [usize::from(control & 7) % 6];
    let admin = control & 8 != 0;
    let bearer_key = format!("Bearer {KEY}");
    let bearer_admin = format!("Bearer {ADMIN}");
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        if h.as_ref().is_none_or(|h| h.served >= RESET_EVERY) {
            *h = Some(fresh());
        }
        let h = h.as_mut().expect("a harness");
        h.served += 1;
        // 100 ms a request: rate limits and quote ages move as they would.
        h.now += 100_000_000;
        let mut req = Request::new(method, path);
        req.body = body;
        match (admin, control >> 4 & 3) {
            (true, 0) => req.authorization = Some(bearer_admin.as_bytes()),
            (false, 0) => req.authorization = Some(bearer_key.as_bytes()),
            (_, 1) => req.x_api_key = Some(KEY.as_bytes()),
            (_, 2) => req.authorization = Some(b"Bearer sg_wrong"),
            _ => {}
        }
        if control & 0x40 != 0 {
            req.content_type = Some(b"application/json");
        }
        let answer = &mut h.answer;
        // The request life cycle as HTTP runs it; under `fsync = "never"` nothing in it waits.
        if admin {
            futures_lite::future::block_on(signalgate::node::serve(&h.node, &ADMIN_ROUTES, Ok(&req), answer, h.now));
        } else {
            futures_lite::future::block_on(signalgate::node::serve(&h.node, &PUBLIC, Ok(&req), answer, h.now));
        }
        assert!((200..600).contains(&answer.status), "{}", answer.status);
        assert!(
            answer.status != 500,
            "a 500 is a bug: {} {path} -> {}",
            method_name(method),
            String::from_utf8_lossy(&answer.body)
        );
        if answer.status >= 400 && method != Method::Head {
            let v: serde_json::Value = serde_json::from_slice(&answer.body).expect("error answers are JSON");
            assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string(), "{v}");
        }
    });
});

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Other => "OTHER",
    }
}
