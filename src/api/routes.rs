//! The public routes: routing, authentication, rate limiting, and one handler per route.

use std::time::Instant;

use std::sync::Arc;

use super::body::{decimal, BodyKind, OrderFields};
use super::{render, Later, Method, Pending, Request, Response};
use crate::engine::event::EventKind;
use crate::engine::market::Quote;
use crate::engine::order::{OrderEvent, OrderStatus};
use crate::engine::risk::RejectCode;
use crate::engine::types::{AccountId, Nanos, OrderId, Tif};
use crate::engine::{Intent, SignalSpec};
use crate::error::Code;
use crate::error::{journal_refused, ApiError, Detail, INVALID_KEY};
use crate::history::{Candles, History, Performance, Query, Trades, TRADE_FIELDS};
use crate::journal::Refusal;
use crate::json::{Reader, Value, Writer};
use crate::metrics::Route;
use crate::node::request::Answer;
use crate::node::{Node, Routes};
use crate::postgres::offload;
use crate::ws::WsStats;

type Result<'a, T = ()> = std::result::Result<T, ApiError<'a>>;

const FORBIDDEN_FEED: ApiError<'static> =
    ApiError::new(Code::AuthForbidden, "this key lacks the feed role needed to send market data");
const OVERLOADED: ApiError<'static> = ApiError::with(Code::NodeOverloaded, Detail::RetryAfter(1));
/// History routes on a node without PostgreSQL.
const HISTORY_OFF: ApiError<'static> =
    ApiError::new(Code::HistoryUnavailable, "this node keeps no trade history").at(501);

/// Largest `limit` of `GET /v1/orders`.
const MAX_LIST: usize = 1000;

/// A text parameter of a history query: 1 to 64 printable characters, with the `:` and `+` of
/// RFC 3339 times decoded when a client percent-encoded them.
fn history_param<'a>(req: &Request<'a>, name: &'static str) -> Result<'a, Option<String>> {
    match req.query_param(name) {
        None => Ok(None),
        Some(v) if v.is_empty() || v.len() > 64 || !v.bytes().all(|b| b.is_ascii_graphic()) => {
            Err(ApiError::invalid(name, "must be 1 to 64 printable characters"))
        }
        Some(v) => Ok(Some(v.replace("%3A", ":").replace("%3a", ":").replace("%2B", "+").replace("%2b", "+"))),
    }
}

/// The public API: its routes, with what they need beside the node (the history thread, and
/// what `/ready` and `/metrics` report of the offloader and the stream).
#[derive(Default)]
pub struct Public {
    /// The history thread.
    pub history: Option<History>,
    /// Where the offload to PostgreSQL stands (when `postgres.url` is set).
    pub offload: Option<Arc<offload::Shared>>,
    /// The WebSocket stream's counters.
    pub ws: Option<Arc<WsStats>>,
    /// The cluster as its thread last saw it (a cluster node only).
    pub cluster: Option<Arc<crate::cluster::Status>>,
}

impl Routes for Public {
    fn route(&self, node: &mut Node, req: &Request<'_>, resp: &mut Response, now: Nanos) -> Route {
        resp.reset();
        let (route, result) = dispatch(self, node, req, resp, now);
        if let Err(e) = result {
            resp.error(&e);
            if e.status == 503 {
                node.metrics.overloaded += 1;
            }
        }
        if req.method == Method::Head {
            resp.body.clear();
        }
        // A history query is counted once the history thread has answered it, a forwarded one
        // once the node that serves it has.
        if resp.later.is_none() && resp.elsewhere.is_none() {
            node.metrics.count(route, resp.status);
        }
        route
    }

    fn complete(&self, node: &mut Node, resp: &mut Response) {
        complete(node, resp);
    }

    fn counted(&self) -> bool {
        true
    }

    fn unrouted(&self) -> Route {
        Route::Unmatched
    }
}

impl Public {
    /// Hands `query` to the history thread; its answer comes later.
    fn ask(&self, route: Route, query: Query, resp: &mut Response) -> Result<'static> {
        let history = self.history.as_ref().ok_or(HISTORY_OFF)?;
        let waiting = history.ask(query);
        let answer = Box::pin(async move {
            match waiting {
                Some(rx) => rx.await.ok(),
                None => None,
            }
        });
        resp.later = Some(Later { route, answer });
        Ok(())
    }
}

fn dispatch<'a>(
    api: &Public,
    node: &mut Node,
    req: &Request<'a>,
    resp: &mut Response,
    now: Nanos,
) -> (Route, Result<'a>) {
    let path = req.path;
    let get = matches!(req.method, Method::Get | Method::Head);
    let m = req.method;
    let (route, r) = match path {
        "/health" if get => (Route::Health, health(node, resp, now)),
        "/ready" if get => (Route::Ready, ready(api, node, resp)),
        "/metrics" if get => (Route::Metrics, render_metrics(api, node, resp)),
        "/health" | "/ready" | "/metrics" => (Route::Unmatched, Err(ApiError::method_not_allowed("GET, HEAD"))),
        _ if node.inflight > node.max_inflight => (Route::Unmatched, Err(OVERLOADED)),
        _ if !get && !node.journal.accepting() => {
            node.metrics.journal_rejected += 1;
            (Route::Unmatched, Err(journal_refused(node.journal.refusal().unwrap_or(Refusal::Failing))))
        }
        "/v1/signals" if m == Method::Post => (Route::Signals, post_signal(node, req, resp, now)),
        "/v1/signals" => (Route::Signals, Err(ApiError::method_not_allowed("POST"))),
        "/v1/orders" if m == Method::Post => (Route::OrderCreate, post_order(node, req, resp, now)),
        "/v1/orders" if get => (Route::OrderList, list_orders(node, req, resp, now)),
        "/v1/orders" => (Route::OrderList, Err(ApiError::method_not_allowed("GET, POST"))),
        "/v1/positions" if get => (Route::Positions, positions(node, req, resp, now)),
        "/v1/positions" => (Route::Positions, Err(ApiError::method_not_allowed("GET"))),
        "/v1/account" if get => (Route::Account, account(node, req, resp, now)),
        "/v1/account" => (Route::Account, Err(ApiError::method_not_allowed("GET"))),
        "/v1/account/halt" if m == Method::Post => (Route::Halt, halt(node, req, resp, now)),
        "/v1/account/halt" => (Route::Halt, Err(ApiError::method_not_allowed("POST"))),
        "/v1/account/resume" if m == Method::Post => (Route::Resume, resume(node, req, resp, now)),
        "/v1/account/resume" => (Route::Resume, Err(ApiError::method_not_allowed("POST"))),
        "/v1/trades" if get => (Route::Trades, trades(api, node, req, resp, now)),
        "/v1/trades" => (Route::Trades, Err(ApiError::method_not_allowed("GET"))),
        "/v1/performance" if get => (Route::Performance, performance(api, node, req, resp, now)),
        "/v1/performance" => (Route::Performance, Err(ApiError::method_not_allowed("GET"))),
        "/v1/market/ticks" if m == Method::Post => (Route::Ticks, post_ticks(node, req, resp, now)),
        "/v1/market/ticks" => (Route::Ticks, Err(ApiError::method_not_allowed("POST"))),
        _ => dispatch_with_params(api, node, req, resp, now),
    };
    (route, r)
}

fn dispatch_with_params<'a>(
    api: &Public,
    node: &mut Node,
    req: &Request<'a>,
    resp: &mut Response,
    now: Nanos,
) -> (Route, Result<'a>) {
    let get = matches!(req.method, Method::Get | Method::Head);
    if let Some(id) = req.path.strip_prefix("/v1/orders/") {
        return match req.method {
            _ if get => (Route::OrderGet, get_order(node, req, id, resp, now)),
            Method::Delete => (Route::OrderCancel, cancel_order(node, req, id, resp, now)),
            _ => (Route::OrderGet, Err(ApiError::method_not_allowed("GET, DELETE"))),
        };
    }
    if let Some(symbol) = req.path.strip_prefix("/v1/positions/").and_then(|s| s.strip_suffix("/close")) {
        return match req.method {
            Method::Post => (Route::PositionClose, close_position(node, req, symbol, resp, now)),
            _ => (Route::PositionClose, Err(ApiError::method_not_allowed("POST"))),
        };
    }
    if let Some(symbol) = req.path.strip_prefix("/v1/market/").and_then(|s| s.strip_suffix("/candles")) {
        return match req.method {
            _ if get => (Route::Candles, candles(api, node, req, symbol, resp, now)),
            _ => (Route::Candles, Err(ApiError::method_not_allowed("GET"))),
        };
    }
    if let Some(symbol) = req.path.strip_prefix("/v1/market/").and_then(|s| s.strip_suffix("/quote")) {
        return match req.method {
            _ if get => (Route::Quote, get_quote(node, req, symbol, resp, now)),
            _ => (Route::Quote, Err(ApiError::method_not_allowed("GET"))),
        };
    }
    (Route::Unmatched, Err(ApiError::NOT_FOUND))
}

fn check_content_type<'a>(req: &Request<'a>) -> Result<'a> {
    let Some(ct) = req.content_type else { return Ok(()) };
    let essence = ct.split(|b| *b == b';').next().unwrap_or(b"");
    let essence = essence.trim_ascii();
    if essence.eq_ignore_ascii_case(b"application/json")
        || essence.eq_ignore_ascii_case(b"text/plain")
        || essence.is_empty()
    {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::RequestUnsupportedMediaType,
            "send the body as application/json (or text/plain, as TradingView does)",
        ))
    }
}

fn run_signal<'a>(
    node: &mut Node,
    account: crate::engine::types::AccountId,
    spec: &SignalSpec,
    now: Nanos,
) -> Result<'a, crate::engine::SignalOutcome> {
    let outcome = node.engine.signal(account, spec, now);
    node.after_command();
    outcome.map_err(ApiError::reject)
}

// ----- trading -----

/// The shared path of signals and orders: body → auth → engine command → outcome.
fn submit<'a>(
    node: &mut Node,
    req: &Request<'a>,
    kind: BodyKind,
    resp: &mut Response,
    now: Nanos,
) -> Result<'a, (SignalSpec, crate::engine::SignalOutcome, AccountId, Instant)> {
    check_content_type(req)?;
    let fields = OrderFields::parse(req.body, kind)?;
    let parsed_at = Instant::now();
    let key = node.authenticate(req, fields.passphrase, resp, now)?;
    let spec = fields.resolve(kind, node.engine.symbols())?;
    if !node.venue_available() {
        return Err(crate::error::VENUE_UNAVAILABLE);
    }
    let outcome = run_signal(node, key.account, &spec, now)?;
    Ok((spec, outcome, key.account, parsed_at))
}

fn post_signal<'a>(node: &mut Node, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
    let (spec, outcome, account, parsed_at) = submit(node, req, BodyKind::Signal, resp, now)?;
    resp.status = if outcome.answer.order.is_some() && !outcome.replayed { 201 } else { 200 };
    resp.idempotent_replay = outcome.replayed;
    resp.pending = Some(Pending::Signal { account, answer: outcome.answer, signal_id: spec.signal_id, parsed_at });
    Ok(())
}

fn post_order<'a>(node: &mut Node, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
    let (_, outcome, _, parsed_at) = submit(node, req, BodyKind::Order, resp, now)?;
    // An order body always carries a positive quantity, so the engine placed an order or
    // refused it.
    let id = outcome.answer.order.map(|o| o.id).ok_or(ApiError::new(Code::Internal, "no order was placed"))?;
    resp.status = 201;
    resp.pending = Some(Pending::Order { id, parsed_at: Some(parsed_at) });
    Ok(())
}

/// Renders the answer left in `resp.pending`, now that the venue has seen what the request
/// sent it. Does nothing for requests answered at once.
fn complete(node: &mut Node, resp: &mut Response) {
    let Some(pending) = resp.pending.take() else { return };
    let (order, parsed_at) = match pending {
        Pending::Signal { account, answer, signal_id, parsed_at } => {
            let answer = node.engine.refresh_answer(account, &answer);
            render::signal_answer(&mut resp.body, node.engine.symbols(), signal_id.as_ref(), &answer);
            (answer.order.map(|o| o.id), Some(parsed_at))
        }
        Pending::Order { id, parsed_at } => {
            if let Err(e) = write_order(node, id, resp) {
                resp.error(&e);
            }
            (Some(id), parsed_at)
        }
    };
    // An order the venue refused: the answer is the refusal, with why.
    if let Some(id) = order.filter(|_| !resp.idempotent_replay) {
        let refused = node.engine.order(id).filter(|o| o.status == OrderStatus::Rejected);
        if let Some(reason) = refused.and_then(|_| node.engine.venue_reason(id)) {
            resp.error(&ApiError::with(Code::VenueRejected, Detail::VenueRefused(id.0, reason.text())));
        }
    }
    // A replayed signal placed nothing now: it has no signal-to-order time.
    let handed = order.filter(|_| !resp.idempotent_replay).and_then(|id| node.engine.venue().handed_at(id));
    if let (Some(handed), Some(parsed)) = (handed, parsed_at) {
        let ns = handed.saturating_duration_since(parsed).as_nanos() as u64;
        node.metrics.record_signal_to_order(ns);
        resp.signal_to_order_ns = Some(ns);
    }
}

fn write_order<'a>(node: &Node, id: OrderId, resp: &mut Response) -> Result<'a> {
    let o = node.engine.order(id).ok_or(ApiError::new(Code::Engine(RejectCode::OrderNotFound), "no such order"))?;
    render::order(&mut Writer::new(&mut resp.body), &node.engine, o);
    Ok(())
}

/// `GET /v1/trades`: validated here, answered by the history thread (`history`).
fn trades<'a>(api: &Public, node: &mut Node, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
    let key = node.authenticate(req, None, resp, now)?;
    if api.history.is_none() {
        return Err(HISTORY_OFF);
    }
    let symbol = history_param(req, "symbol")?;
    if let Some(s) = &symbol {
        if node.engine.symbols().find(s).is_none() {
            return Err(ApiError::invalid("symbol", "is not a configured symbol"));
        }
    }
    let limit = match req.query_param("limit") {
        None => 100,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_LIST as u32).contains(&n) => n,
            _ => return Err(ApiError::invalid("limit", "must be a whole number from 1 to 1000")),
        },
    };
    let cursor = match req.query_param("cursor") {
        None => None,
        Some(v) => {
            let parsed = v.split_once('.').and_then(|(t, s)| Some((t.parse().ok()?, s.parse().ok()?)));
            Some(parsed.ok_or(ApiError::invalid("cursor", "must be a next_cursor from an earlier page"))?)
        }
    };
    let fields = match req.query_param("fields") {
        None => u16::MAX,
        Some(list) => {
            let mut bits = 0u16;
            for f in list.split(',') {
                let i = TRADE_FIELDS.iter().position(|n| *n == f).ok_or(ApiError::invalid(
                    "fields",
                    "must be a comma-separated list of ts, seq, order_id, symbol, side, qty, price, notional, fee, realized_pnl",
                ))?;
                bits |= 1 << i;
            }
            bits
        }
    };
    let (from, to) = (history_param(req, "from")?, history_param(req, "to")?);
    let query = Query::Trades(Trades { account: key.account.0, symbol, from, to, limit, cursor, fields });
    api.ask(Route::Trades, query, resp)
}

/// `GET /v1/performance?period=1d|7d|30d|90d`, answered by the history thread.
fn performance<'a>(api: &Public, node: &mut Node, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
    let key = node.authenticate(req, None, resp, now)?;
    if api.history.is_none() {
        return Err(HISTORY_OFF);
    }
    let days = match req.query_param("period") {
        None | Some("30d") => 30,
        Some("1d") => 1,
        Some("7d") => 7,
        Some("90d") => 90,
        Some(_) => return Err(ApiError::invalid("period", "must be 1d, 7d, 30d or 90d")),
    };
    api.ask(Route::Performance, Query::Performance(Performance { account: key.account.0, days }), resp)
}

/// `GET /v1/market/{symbol}/candles?interval=1m|1h|1d|1w&from=&to=`, answered by the history
/// thread.
fn candles<'a>(
    api: &Public,
    node: &mut Node,
    req: &Request<'a>,
    symbol: &'a str,
    resp: &mut Response,
    now: Nanos,
) -> Result<'a> {
    node.authenticate(req, None, resp, now)?;
    let spec = node.engine.symbols().find(symbol).ok_or(
        ApiError::with(Code::Engine(RejectCode::UnknownSymbol), Detail::TextWith("unknown symbol: ", symbol)).at(404),
    )?;
    if api.history.is_none() {
        return Err(HISTORY_OFF);
    }
    let interval = match req.query_param("interval") {
        None | Some("1m") => "1m",
        Some("1h") => "1h",
        Some("1d") => "1d",
        Some("1w") => "1w",
        Some(_) => return Err(ApiError::invalid("interval", "must be 1m, 1h, 1d or 1w")),
    };
    let (from, to) = (history_param(req, "from")?, history_param(req, "to")?);
    api.ask(Route::Candles, Query::Candles(Candles { symbol: spec.name.clone(), interval, from, to }), resp)
}

fn list_orders<'a>(node: &mut Node, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
    let key = node.authenticate(req, None, resp, now)?;
    let open_only = match req.query_param("status") {
        None | Some("open") => true,
        Some("all") => false,
        Some(_) => return Err(ApiError::invalid("status", "must be \"open\" or \"all\"")),
    };
    let limit = match req.query_param("limit") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST).contains(&n) => n,
            _ => return Err(ApiError::invalid("limit", "must be a whole number from 1 to 1000")),
        },
    };
    let account = node.engine.account(key.account).ok_or(INVALID_KEY)?;
    // Newest first. Ids grow with time; the open list is small, the history may be long, and
    // open orders may sit out of order in the history (they are kept when it wraps), so the
    // two are merged: open orders from the open list, finished ones from the history.
    let mut open = account.open_orders.clone();
    open.sort_unstable_by(|a, b| b.cmp(a));
    let mut open = open.into_iter().peekable();
    let engine = &node.engine;
    let mut done = account
        .recent_orders
        .iter()
        .rev()
        .copied()
        .filter(|id| !open_only && engine.order(*id).is_some_and(|o| !o.status.is_open()))
        .peekable();
    let mut w = Writer::new(&mut resp.body);
    w.begin_object().key("orders").begin_array();
    for _ in 0..limit {
        let next = match (open.peek(), done.peek()) {
            (Some(a), Some(b)) if a > b => open.next(),
            (Some(_), None) => open.next(),
            (_, Some(_)) => done.next(),
            (None, None) => break,
        };
        if let Some(o) = next.and_then(|id| engine.order(id)) {
            render::order(&mut w, engine, o);
        }
    }
    w.end_array().end_object();
    Ok(())
}

fn parse_order_id<'a>(id: &'a str) -> Result<'a, OrderId> {
    id.parse::<u64>()
        .map(OrderId)
        .map_err(|_| ApiError::with(Code::Engine(RejectCode::OrderNotFound), Detail::TextWith("no such order: ", id)))
}

fn get_order<'a>(node: &mut Node, req: &Request<'a>, id: &'a str, resp: &mut Response, now: Nanos) -> Result<'a> {
    let key = node.authenticate(req, None, resp, now)?;
    let id = parse_order_id(id)?;
    match node.engine.order(id) {
        Some(o) if o.account == key.account => write_order(node, id, resp),
        _ => Err(ApiError::new(Code::Engine(RejectCode::OrderNotFound), "no such order")),
    }
}

fn cancel_order<'a>(node: &mut Node, req: &Request<'a>, id: &'a str, resp: &mut Response, now: Nanos) -> Result<'a> {
    let key = node.authenticate(req, None, resp, now)?;
    let id = parse_order_id(id)?;
    let r = node.engine.cancel_order(key.account, id, now);
    node.after_command();
    r.map_err(ApiError::reject)?;
    resp.pending = Some(Pending::Order { id, parsed_at: None });
    Ok(())
}

fn positions<'a>(node: &mut Node, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
    let key = node.authenticate(req, None, resp, now)?;
    let account = node.engine.account(key.account).ok_or(INVALID_KEY)?;
    render::positions(&mut Writer::new(&mut resp.body), &node.engine, account);
    Ok(())
}

fn close_position<'a>(
    node: &mut Node,
    req: &Request<'a>,
    symbol: &'a str,
    resp: &mut Response,
    now: Nanos,
) -> Result<'a> {
    let key = node.authenticate(req, None, resp, now)?;
    let spec = node.engine.symbols().find(symbol).ok_or(
        ApiError::with(Code::Engine(RejectCode::UnknownSymbol), Detail::TextWith("unknown symbol: ", symbol)).at(404),
    )?;
    let spec = SignalSpec {
        symbol: spec.id,
        intent: Intent::Close,
        order_type: crate::engine::types::OrderType::Market,
        limit_price: 0,
        tif: Tif::Ioc,
        strategy: Default::default(),
        signal_id: None,
    };
    let parsed_at = Instant::now();
    let outcome = run_signal(node, key.account, &spec, now)?;
    resp.status = if outcome.answer.order.is_some() { 201 } else { 200 };
    resp.pending = Some(Pending::Signal { account: key.account, answer: outcome.answer, signal_id: None, parsed_at });
    Ok(())
}

fn account<'a>(node: &mut Node, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
    let key = node.authenticate(req, None, resp, now)?;
    let account = node.engine.account(key.account).ok_or(INVALID_KEY)?;
    render::account(&mut Writer::new(&mut resp.body), &node.engine, account);
    Ok(())
}

fn halt<'a>(node: &mut Node, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
    let key = node.authenticate(req, None, resp, now)?;
    let r = node.engine.halt(key.account, now);
    // The cancels the kill switch just asked for (they reach the venue once journaled).
    let canceled = node
        .engine
        .events()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::OrderUpdated { event: OrderEvent::CancelRequest, .. }));
    let canceled = canceled.count();
    node.after_command();
    r.map_err(ApiError::reject)?;
    let account = node.engine.account(key.account).ok_or(INVALID_KEY)?;
    let mut w = Writer::new(&mut resp.body);
    w.begin_object();
    w.key("state").str(account.state.as_str());
    w.key("canceled_orders").u64(canceled as u64);
    w.end_object();
    Ok(())
}

fn resume<'a>(node: &mut Node, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
    check_content_type(req)?;
    // Optional body: {"mode": "active" | "reducing"}.
    let mut reducing = false;
    if !req.body.trim_ascii().is_empty() {
        let err = |e| ApiError::with(Code::JsonMalformed, Detail::Syntax(e, req.body));
        let mut r = Reader::new(req.body);
        r.begin_object().map_err(err)?;
        while let Some(k) = r.next_key().map_err(err)? {
            if k.plain() != Some("mode") {
                return Err(ApiError::with(
                    Code::RequestUnknownField,
                    Detail::TextWith("unknown field (expected: mode): ", k.plain().unwrap_or("?")),
                ));
            }
            reducing = match r.value().map_err(err)? {
                Value::Str(s) if s.plain() == Some("reducing") => true,
                Value::Str(s) if s.plain() == Some("active") => false,
                _ => return Err(ApiError::invalid("mode", "must be \"active\" or \"reducing\"")),
            };
        }
        r.end().map_err(err)?;
    }
    let key = node.authenticate(req, None, resp, now)?;
    let r = node.engine.resume(key.account, reducing, now);
    node.after_command();
    r.map_err(ApiError::reject)?;
    let account = node.engine.account(key.account).ok_or(INVALID_KEY)?;
    let mut w = Writer::new(&mut resp.body);
    w.begin_object().key("state").str(account.state.as_str()).end_object();
    Ok(())
}

// ----- market data -----

fn get_quote<'a>(node: &mut Node, req: &Request<'a>, symbol: &'a str, resp: &mut Response, now: Nanos) -> Result<'a> {
    node.authenticate(req, None, resp, now)?;
    resp.no_store = true;
    let spec = node.engine.symbols().find(symbol).ok_or(
        ApiError::with(Code::Engine(RejectCode::UnknownSymbol), Detail::TextWith("unknown symbol: ", symbol)).at(404),
    )?;
    let q = node
        .engine
        .quote(spec.id)
        .ok_or(ApiError::with(Code::MarketNoQuote, Detail::TextWith("no quote yet for ", symbol)))?;
    render::quote(&mut Writer::new(&mut resp.body), node.engine.symbols(), q);
    Ok(())
}

/// `POST /v1/market/ticks`: `{"ticks":[{symbol,bid,ask,bid_size?,ask_size?,ts?}]}` or a bare
/// array. Every tick is checked before any is applied, so a bad batch changes nothing.
fn post_ticks<'a>(node: &mut Node, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
    check_content_type(req)?;
    let key = node.authenticate(req, None, resp, now)?;
    if !key.roles.feed {
        return Err(FORBIDDEN_FEED);
    }
    let count = read_ticks(node, req.body, now, None)?;
    let mut answer = Vec::new();
    Writer::new(&mut answer).begin_object().key("accepted").u64(count as u64).end_object();
    let Some(cluster) = node.cluster.clone() else {
        read_ticks(node, req.body, now, Some(&mut |n, q| n.apply_quote(q, now)))?;
        resp.body.extend_from_slice(&answer);
        return Ok(());
    };
    // On a cluster node the ticks go to every node in the cluster's one order (this one applies
    // them as they come back): the answer waits until Redis has them.
    let mut quotes = Vec::with_capacity(count);
    read_ticks(node, req.body, now, Some(&mut |_, q| quotes.push(q)))?;
    let published = cluster.publish_quotes(quotes);
    let answer = Box::pin(async move {
        Some(match published.await {
            Ok(()) => Answer { status: 200, body: answer, cache_control: None, etag: None },
            Err(e) => {
                let mut body = Vec::new();
                e.write(&mut body);
                Answer { status: e.status, body, cache_control: None, etag: None }
            }
        })
    });
    resp.later = Some(Later { route: Route::Ticks, answer });
    Ok(())
}

/// Where read ticks go: applied, or collected for the cluster.
type TickSink<'s> = dyn FnMut(&mut Node, Quote) + 's;

/// Reads the tick batch and hands each tick to `sink`, if any. Returns the number of ticks.
fn read_ticks<'a>(
    node: &mut Node,
    doc: &'a [u8],
    now: Nanos,
    mut sink: Option<&mut TickSink<'_>>,
) -> Result<'a, usize> {
    let err = |e| ApiError::with(Code::JsonMalformed, Detail::Syntax(e, doc));
    let mut r = Reader::new(doc);
    let wrapped = match r.value().map_err(err)? {
        Value::Array => false,
        Value::Object => true,
        _ => return Err(ApiError::invalid("ticks", "must be an array")),
    };
    if wrapped {
        r.begin_object().map_err(err)?;
        match r.next_key().map_err(err)? {
            Some(k) if k.plain() == Some("ticks") => {}
            _ => return Err(ApiError::missing("ticks")),
        }
        if r.value().map_err(err)? != Value::Array {
            return Err(ApiError::invalid("ticks", "must be an array"));
        }
    }
    r.begin_array().map_err(err)?;
    let mut n = 0;
    while r.next_element().map_err(err)? {
        let q = read_tick(node, &mut r, doc, now)?;
        if let Some(sink) = sink.as_mut() {
            sink(node, q);
        }
        n += 1;
    }
    if wrapped {
        if let Some(k) = r.next_key().map_err(err)? {
            let name = k.plain().unwrap_or("?");
            return Err(ApiError::with(
                Code::RequestUnknownField,
                Detail::TextWith("unknown field (expected: ticks): ", name),
            ));
        }
    }
    r.end().map_err(err)?;
    if n == 0 {
        return Err(ApiError::invalid("ticks", "must not be empty"));
    }
    Ok(n)
}

fn read_tick<'a>(node: &Node, r: &mut Reader<'a>, doc: &'a [u8], now: Nanos) -> Result<'a, Quote> {
    let err = |e| ApiError::with(Code::JsonMalformed, Detail::Syntax(e, doc));
    let (mut symbol, mut bid, mut ask, mut bid_size, mut ask_size, mut ts) = (None, None, None, None, None, None);
    r.begin_object().map_err(err)?;
    while let Some(k) = r.next_key().map_err(err)? {
        let v = r.value().map_err(err)?;
        let slot = match k.plain() {
            Some("symbol") => &mut symbol,
            Some("bid") => &mut bid,
            Some("ask") => &mut ask,
            Some("bid_size") => &mut bid_size,
            Some("ask_size") => &mut ask_size,
            Some("ts") => &mut ts,
            other => {
                return Err(ApiError::with(
                    Code::RequestUnknownField,
                    Detail::TextWith(
                        "unknown tick field (expected: symbol, bid, ask, bid_size, ask_size, ts): ",
                        other.unwrap_or("?"),
                    ),
                ))
            }
        };
        if matches!(v, Value::Object | Value::Array) {
            return Err(ApiError::invalid("tick field", "must be a string or a number"));
        }
        *slot = Some(v);
    }
    let name = match symbol {
        Some(Value::Str(s)) => s.plain().ok_or(ApiError::invalid("symbol", "must not contain escapes"))?,
        Some(_) => return Err(ApiError::invalid("symbol", "must be a string")),
        None => return Err(ApiError::missing("symbol")),
    };
    let spec = node
        .engine
        .symbols()
        .find(name)
        .ok_or(ApiError::with(Code::Engine(RejectCode::UnknownSymbol), Detail::TextWith("unknown symbol: ", name)))?;
    let (pd, qd) = (spec.price_decimals, spec.qty_decimals);
    let bid = decimal(bid, "bid", pd)?.ok_or(ApiError::missing("bid"))?;
    let ask = decimal(ask, "ask", pd)?.ok_or(ApiError::missing("ask"))?;
    let bid_size = decimal(bid_size, "bid_size", qd)?.unwrap_or(spec.max_order_qty);
    let ask_size = decimal(ask_size, "ask_size", qd)?.unwrap_or(spec.max_order_qty);
    let ts = match ts {
        None => now,
        Some(Value::Num(n)) => std::str::from_utf8(n)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(ApiError::invalid("ts", "must be nanoseconds since the Unix epoch"))?,
        Some(_) => return Err(ApiError::invalid("ts", "must be nanoseconds since the Unix epoch")),
    };
    if bid <= 0 || ask <= 0 || bid > ask {
        return Err(ApiError::new(Code::MarketInvalidQuote, "a quote needs 0 < bid <= ask"));
    }
    if bid_size < 0 || ask_size < 0 {
        return Err(ApiError::new(Code::MarketInvalidQuote, "sizes must not be negative"));
    }
    let quote = Quote { symbol: spec.id, bid, ask, bid_size, ask_size, ts };
    if !quote.is_valid(spec) {
        return Err(ApiError::new(
            Code::MarketInvalidQuote,
            "a price above the symbol's highest (its largest order would be worth over 1000000000)",
        ));
    }
    Ok(quote)
}

// ----- operations -----

fn health<'a>(node: &mut Node, resp: &mut Response, now: Nanos) -> Result<'a> {
    resp.no_store = true;
    let mut w = Writer::new(&mut resp.body);
    w.begin_object();
    w.key("status").str("ok");
    w.key("node").str(&node.name);
    w.key("version").str(env!("CARGO_PKG_VERSION"));
    w.key("uptime_s").u64(now.saturating_sub(node.started_at) / 1_000_000_000);
    w.end_object();
    Ok(())
}

fn ready<'a>(api: &Public, node: &mut Node, resp: &mut Response) -> Result<'a> {
    resp.no_store = true;
    let mut w = Writer::new(&mut resp.body);
    w.begin_object();
    let refusal = node.journal.refusal();
    let journal_ok = refusal.is_none();
    w.key("ready").bool(!node.draining && journal_ok);
    if node.draining {
        w.key("reason").str("draining");
        resp.status = 503;
    } else if let Some(r) = refusal {
        w.key("reason").str(journal_refused(r).code.as_str());
        resp.status = 503;
    }
    // A FIX venue: orders go out only while its session is logged on.
    if let Some(f) = node.engine.venue().inner().fix() {
        let s = f.status();
        if s.state != "active" && resp.status == 200 {
            w.key("reason").str(Code::VenueUnavailable.as_str());
            resp.status = 503;
        }
        w.key("venue").str("fix");
        w.key("venue_session").str(s.state);
        w.key("venue_reconciling").u64(s.reconciling as u64);
    } else {
        w.key("venue").str("paper");
    }
    w.key("journal").str(if journal_ok { "ok" } else { "unavailable" });
    w.key("fsync").str(node.journal.policy().as_str());
    w.key("last_seq").u64(node.engine.last_seq());
    w.key("durable_seq").u64(node.journal.durable());
    w.key("stable_seq").u64(node.journal.stable());
    // Snapshots only bound how much a restart replays: failing ones leave the node ready.
    if !node.snapshots.running() {
        w.key("snapshots").str("off");
    } else if node.snapshots.failing() {
        w.key("snapshots").str("failing");
        w.key("snapshot_error").str(&node.snapshots.last_error());
    } else {
        w.key("snapshots").str("ok");
    }
    // PostgreSQL only keeps history: the node stays ready while it is away.
    match &api.offload {
        None => {
            w.key("postgres").str("off");
        }
        Some(o) => {
            let s = o.status(crate::clock::now());
            let ok = s.state == crate::postgres::offload::State::Ok;
            w.key("postgres").str(if ok { "ok" } else { "degraded" });
            if !ok {
                let reason = match s.reason {
                    crate::postgres::offload::Reason::None => "postgres.connecting",
                    r => r.as_str(),
                };
                w.key("postgres_reason").str(reason);
            }
            w.key("offload_lag_events").u64(s.lag_events);
            w.key("offload_lag_ms").u64((s.lag_seconds * 1000.0) as u64);
            // Where history reads go: the replica while it is up and close enough.
            if let Some((replica, lag_ms)) = api.history.as_ref().and_then(|h| h.replica()) {
                let history = if replica == crate::history::Replica::Ok { "replica" } else { "primary" };
                w.key("history").str(history);
                if replica != crate::history::Replica::None {
                    w.key("replica").str(replica.as_str());
                    w.key("replica_lag_ms").u64(lag_ms);
                }
            }
        }
    }
    // The cluster's state: a node stays up without Redis, and says whether it acts for its accounts.
    if let Some(c) = &api.cluster {
        w.key("cluster");
        c.write_json((node.journal.durable(), node.journal.local()), &mut w);
    }
    w.end_object();
    Ok(())
}

fn render_metrics<'a>(api: &Public, node: &mut Node, resp: &mut Response) -> Result<'a> {
    resp.no_store = true;
    resp.content_type = "text/plain; version=0.0.4";
    let g = node.gauges();
    node.metrics.render(&g, &mut resp.body);
    if let Some(f) = node.engine.venue().inner().fix() {
        crate::metrics::render_fix(&mut resp.body, &f.status(), f.round_trip());
    }
    if let Some(o) = &api.offload {
        o.render_metrics(crate::clock::now(), &mut resp.body);
    }
    if let Some(ws) = &api.ws {
        ws.render_metrics(&mut resp.body);
    }
    if let Some(c) = &api.cluster {
        c.render_metrics((node.journal.durable(), node.journal.local()), &mut resp.body);
        node.metrics.render_forwarding(&mut resp.body);
    }
    Ok(())
}
