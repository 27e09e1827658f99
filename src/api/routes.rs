//! The public routes: routing, authentication, rate limiting, and one handler per route.

use std::time::Instant;

use super::body::{decimal, BodyKind, OrderFields};
use super::error::{ApiError, Detail};
use super::{render, Method, Pending, Request, Response};
use crate::auth::{hash_key, key_from_headers};
use crate::engine::account::KeyRecord;
use crate::engine::event::EventKind;
use crate::engine::market::Quote;
use crate::engine::order::OrderEvent;
use crate::engine::types::{AccountId, Nanos, OrderId, Tif};
use crate::engine::{Intent, SignalSpec};
use crate::journal::Refusal;
use crate::json::{JsonStr, Reader, Value, Writer};
use crate::metrics::Route;
use crate::node::Node;

type Result<'a, T = ()> = std::result::Result<T, ApiError<'a>>;

const MISSING_KEY: ApiError<'static> = ApiError::new(
    401,
    "auth.missing_key",
    "missing API key: send 'Authorization: Bearer <key>', 'X-API-Key: <key>' or a \"passphrase\" field",
);
const INVALID_KEY: ApiError<'static> = ApiError::new(401, "auth.invalid_key", "unknown API key");
const REVOKED_KEY: ApiError<'static> = ApiError::new(401, "auth.key_revoked", "this API key was revoked");
const FORBIDDEN_FEED: ApiError<'static> =
    ApiError::new(403, "auth.forbidden", "this key lacks the feed role needed to send market data");
const OVERLOADED: ApiError<'static> = ApiError::with(503, "node.overloaded", Detail::RetryAfter(1));
/// History routes on a node without PostgreSQL.
const HISTORY_OFF: ApiError<'static> =
    ApiError::new(501, "history.unavailable", "trade history needs PostgreSQL (postgres.url); this node keeps none");

/// Commands that would change state while the journal cannot write, and answers that would show
/// state it has not made durable.
pub const JOURNAL_UNAVAILABLE: ApiError<'static> = ApiError::with(
    503,
    "journal.unavailable",
    Detail::Unavailable("the journal cannot write, so nothing was changed or sent", 1),
);

/// The same while the disk holding the journal is full.
pub const JOURNAL_FULL: ApiError<'static> = ApiError::with(
    503,
    "journal.full",
    Detail::Unavailable("the disk holding the journal is full, so nothing was changed or sent", 1),
);

/// The answer to a command the journal refuses.
pub fn journal_refused(r: Refusal) -> ApiError<'static> {
    match r {
        Refusal::Full => JOURNAL_FULL,
        Refusal::Failing | Refusal::Closed => JOURNAL_UNAVAILABLE,
    }
}

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

impl Node {
    /// Serves one public API request into `resp`; returns the route it matched (for metrics).
    pub fn handle(&mut self, req: &Request<'_>, resp: &mut Response, now: Nanos) -> Route {
        resp.reset();
        let (route, result) = self.dispatch(req, resp, now);
        if let Err(e) = result {
            resp.error(&e);
            if e.status == 503 {
                self.metrics.overloaded += 1;
            }
        }
        if req.method == Method::Head {
            resp.body.clear();
        }
        // A history query is counted once the history thread has answered it.
        if resp.history.is_none() {
            self.metrics.count(route, resp.status);
        }
        route
    }

    fn dispatch<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> (Route, Result<'a>) {
        let path = req.path;
        let get = matches!(req.method, Method::Get | Method::Head);
        let m = req.method;
        let (route, r) = match path {
            "/health" if get => (Route::Health, self.health(resp, now)),
            "/ready" if get => (Route::Ready, self.ready(resp)),
            "/metrics" if get => (Route::Metrics, self.render_metrics(resp)),
            "/health" | "/ready" | "/metrics" => (Route::Unmatched, Err(ApiError::method_not_allowed("GET, HEAD"))),
            _ if self.inflight > self.max_inflight => (Route::Unmatched, Err(OVERLOADED)),
            _ if !get && !self.journal.accepting() => {
                self.metrics.journal_rejected += 1;
                (Route::Unmatched, Err(journal_refused(self.journal.refusal().unwrap_or(Refusal::Failing))))
            }
            "/v1/signals" if m == Method::Post => (Route::Signals, self.post_signal(req, resp, now)),
            "/v1/signals" => (Route::Signals, Err(ApiError::method_not_allowed("POST"))),
            "/v1/orders" if m == Method::Post => (Route::OrderCreate, self.post_order(req, resp, now)),
            "/v1/orders" if get => (Route::OrderList, self.list_orders(req, resp, now)),
            "/v1/orders" => (Route::OrderList, Err(ApiError::method_not_allowed("GET, POST"))),
            "/v1/positions" if get => (Route::Positions, self.positions(req, resp, now)),
            "/v1/positions" => (Route::Positions, Err(ApiError::method_not_allowed("GET"))),
            "/v1/account" if get => (Route::Account, self.account(req, resp, now)),
            "/v1/account" => (Route::Account, Err(ApiError::method_not_allowed("GET"))),
            "/v1/account/halt" if m == Method::Post => (Route::Halt, self.halt(req, resp, now)),
            "/v1/account/halt" => (Route::Halt, Err(ApiError::method_not_allowed("POST"))),
            "/v1/account/resume" if m == Method::Post => (Route::Resume, self.resume(req, resp, now)),
            "/v1/account/resume" => (Route::Resume, Err(ApiError::method_not_allowed("POST"))),
            "/v1/trades" if get => (Route::Trades, self.trades(req, resp, now)),
            "/v1/trades" => (Route::Trades, Err(ApiError::method_not_allowed("GET"))),
            "/v1/performance" if get => (Route::Performance, self.performance(req, resp, now)),
            "/v1/performance" => (Route::Performance, Err(ApiError::method_not_allowed("GET"))),
            "/v1/market/ticks" if m == Method::Post => (Route::Ticks, self.post_ticks(req, resp, now)),
            "/v1/market/ticks" => (Route::Ticks, Err(ApiError::method_not_allowed("POST"))),
            _ => self.dispatch_with_params(req, resp, now),
        };
        (route, r)
    }

    fn dispatch_with_params<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> (Route, Result<'a>) {
        let get = matches!(req.method, Method::Get | Method::Head);
        if let Some(id) = req.path.strip_prefix("/v1/orders/") {
            return match req.method {
                _ if get => (Route::OrderGet, self.get_order(req, id, resp, now)),
                Method::Delete => (Route::OrderCancel, self.cancel_order(req, id, resp, now)),
                _ => (Route::OrderGet, Err(ApiError::method_not_allowed("GET, DELETE"))),
            };
        }
        if let Some(symbol) = req.path.strip_prefix("/v1/positions/").and_then(|s| s.strip_suffix("/close")) {
            return match req.method {
                Method::Post => (Route::PositionClose, self.close_position(req, symbol, resp, now)),
                _ => (Route::PositionClose, Err(ApiError::method_not_allowed("POST"))),
            };
        }
        if let Some(symbol) = req.path.strip_prefix("/v1/market/").and_then(|s| s.strip_suffix("/candles")) {
            return match req.method {
                _ if get => (Route::Candles, self.candles(req, symbol, resp, now)),
                _ => (Route::Candles, Err(ApiError::method_not_allowed("GET"))),
            };
        }
        if let Some(symbol) = req.path.strip_prefix("/v1/market/").and_then(|s| s.strip_suffix("/quote")) {
            return match req.method {
                _ if get => (Route::Quote, self.get_quote(req, symbol, resp, now)),
                _ => (Route::Quote, Err(ApiError::method_not_allowed("GET"))),
            };
        }
        (Route::Unmatched, Err(ApiError::NOT_FOUND))
    }

    // ----- authentication and limits -----

    /// Finds the key (headers first, then a body `passphrase`) and counts the request against
    /// the key's per-minute limit.
    fn authenticate<'a>(
        &mut self,
        req: &Request<'a>,
        passphrase: Option<JsonStr<'a>>,
        resp: &mut Response,
        now: Nanos,
    ) -> Result<'a, KeyRecord> {
        let key = key_from_headers(req.authorization, req.x_api_key)
            .or(passphrase.map(|p| p.raw()))
            .filter(|k| !k.is_empty())
            .ok_or(MISSING_KEY)?;
        let record = *self.engine.key_by_hash(&hash_key(key)).ok_or(INVALID_KEY)?;
        if record.revoked {
            return Err(REVOKED_KEY);
        }
        resp.authenticated = true;
        let limit = self.engine.account(record.account).map_or(0, |a| a.limits.requests_per_minute);
        let Some(limiter) = self.limiters.get_mut(record.id.0 as usize - 1) else {
            return Err(INVALID_KEY);
        };
        let admission = limiter.admit(now, limit);
        resp.rate = Some(admission);
        if !admission.allowed {
            return Err(ApiError::with(429, "rate.limited", Detail::RetryAfter(admission.retry_after_secs)));
        }
        Ok(record)
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
                415,
                "request.unsupported_media_type",
                "send the body as application/json (or text/plain, as TradingView does)",
            ))
        }
    }

    fn run_signal<'a>(
        &mut self,
        account: crate::engine::types::AccountId,
        spec: &SignalSpec,
        now: Nanos,
    ) -> Result<'a, crate::engine::SignalOutcome> {
        let outcome = self.engine.signal(account, spec, now);
        self.after_command();
        outcome.map_err(ApiError::reject)
    }

    // ----- trading -----

    /// The shared path of signals and orders: body → auth → engine command → outcome.
    fn submit<'a>(
        &mut self,
        req: &Request<'a>,
        kind: BodyKind,
        resp: &mut Response,
        now: Nanos,
    ) -> Result<'a, (SignalSpec, crate::engine::SignalOutcome, AccountId, Instant)> {
        Self::check_content_type(req)?;
        let fields = OrderFields::parse(req.body, kind)?;
        let parsed_at = Instant::now();
        let key = self.authenticate(req, fields.passphrase, resp, now)?;
        let spec = fields.resolve(kind, self.engine.symbols())?;
        let outcome = self.run_signal(key.account, &spec, now)?;
        Ok((spec, outcome, key.account, parsed_at))
    }

    fn post_signal<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
        let (spec, outcome, account, parsed_at) = self.submit(req, BodyKind::Signal, resp, now)?;
        resp.status = if outcome.answer.order.is_some() && !outcome.replayed { 201 } else { 200 };
        resp.idempotent_replay = outcome.replayed;
        resp.pending = Some(Pending::Signal { account, answer: outcome.answer, signal_id: spec.signal_id, parsed_at });
        Ok(())
    }

    fn post_order<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
        let (_, outcome, _, parsed_at) = self.submit(req, BodyKind::Order, resp, now)?;
        // An order body always carries a positive quantity, so the engine placed an order or
        // refused it.
        let id = outcome.answer.order.map(|o| o.id).ok_or(ApiError::new(500, "internal", "no order was placed"))?;
        resp.status = 201;
        resp.pending = Some(Pending::Order { id, parsed_at: Some(parsed_at) });
        Ok(())
    }

    /// Renders the answer left in `resp.pending`, now that the venue has seen what the request
    /// sent it. Does nothing for requests answered at once.
    pub fn complete(&mut self, resp: &mut Response) {
        let Some(pending) = resp.pending.take() else { return };
        let (order, parsed_at) = match pending {
            Pending::Signal { account, answer, signal_id, parsed_at } => {
                let answer = self.engine.refresh_answer(account, &answer);
                render::signal_answer(&mut resp.body, self.engine.symbols(), signal_id.as_ref(), &answer);
                (answer.order.map(|o| o.id), Some(parsed_at))
            }
            Pending::Order { id, parsed_at } => {
                if let Err(e) = self.write_order(id, resp) {
                    resp.error(&e);
                }
                (Some(id), parsed_at)
            }
        };
        // A replayed signal placed nothing now: it has no signal-to-order time.
        let handed = order.filter(|_| !resp.idempotent_replay).and_then(|id| self.engine.venue().handed_at(id));
        if let (Some(handed), Some(parsed)) = (handed, parsed_at) {
            let ns = handed.saturating_duration_since(parsed).as_nanos() as u64;
            self.metrics.record_signal_to_order(ns);
            resp.signal_to_order_ns = Some(ns);
        }
    }

    fn write_order<'a>(&self, id: OrderId, resp: &mut Response) -> Result<'a> {
        let o = self.engine.order(id).ok_or(ApiError::new(404, "order.not_found", "no such order"))?;
        render::order(&mut Writer::new(&mut resp.body), &self.engine, o);
        Ok(())
    }

    /// `GET /v1/trades`: validated here, answered by the history thread (`history`).
    fn trades<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
        use crate::history::{Query, Trades, TRADE_FIELDS};
        let key = self.authenticate(req, None, resp, now)?;
        if self.history.is_none() {
            return Err(HISTORY_OFF);
        }
        let symbol = history_param(req, "symbol")?;
        if let Some(s) = &symbol {
            if self.engine.symbols().find(s).is_none() {
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
        resp.history = Some(Query::Trades(Trades { account: key.account.0, symbol, from, to, limit, cursor, fields }));
        Ok(())
    }

    /// `GET /v1/performance?period=1d|7d|30d|90d`, answered by the history thread.
    fn performance<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
        use crate::history::{Performance, Query};
        let key = self.authenticate(req, None, resp, now)?;
        if self.history.is_none() {
            return Err(HISTORY_OFF);
        }
        let days = match req.query_param("period") {
            None | Some("30d") => 30,
            Some("1d") => 1,
            Some("7d") => 7,
            Some("90d") => 90,
            Some(_) => return Err(ApiError::invalid("period", "must be 1d, 7d, 30d or 90d")),
        };
        resp.history = Some(Query::Performance(Performance { account: key.account.0, days }));
        Ok(())
    }

    /// `GET /v1/market/{symbol}/candles?interval=1m|1h|1d&from=&to=`, answered by the history
    /// thread.
    fn candles<'a>(&mut self, req: &Request<'a>, symbol: &'a str, resp: &mut Response, now: Nanos) -> Result<'a> {
        use crate::history::{Candles, Query};
        self.authenticate(req, None, resp, now)?;
        let spec = self.engine.symbols().find(symbol).ok_or(ApiError::with(
            404,
            "symbol.unknown",
            Detail::TextWith("unknown symbol: ", symbol),
        ))?;
        if self.history.is_none() {
            return Err(HISTORY_OFF);
        }
        let interval = match req.query_param("interval") {
            None | Some("1m") => "1m",
            Some("1h") => "1h",
            Some("1d") => "1d",
            Some(_) => return Err(ApiError::invalid("interval", "must be 1m, 1h or 1d")),
        };
        let (from, to) = (history_param(req, "from")?, history_param(req, "to")?);
        resp.history = Some(Query::Candles(Candles { symbol: spec.name.clone(), interval, from, to }));
        Ok(())
    }

    fn list_orders<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
        let key = self.authenticate(req, None, resp, now)?;
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
        let account = self.engine.account(key.account).ok_or(INVALID_KEY)?;
        // Newest first. Ids grow with time; the open list is small, the history may be long, and
        // open orders may sit out of order in the history (they are kept when it wraps), so the
        // two are merged: open orders from the open list, finished ones from the history.
        let mut open = account.open_orders.clone();
        open.sort_unstable_by(|a, b| b.cmp(a));
        let mut open = open.into_iter().peekable();
        let engine = &self.engine;
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
            .map_err(|_| ApiError::with(404, "order.not_found", Detail::TextWith("no such order: ", id)))
    }

    fn get_order<'a>(&mut self, req: &Request<'a>, id: &'a str, resp: &mut Response, now: Nanos) -> Result<'a> {
        let key = self.authenticate(req, None, resp, now)?;
        let id = Self::parse_order_id(id)?;
        match self.engine.order(id) {
            Some(o) if o.account == key.account => self.write_order(id, resp),
            _ => Err(ApiError::new(404, "order.not_found", "no such order")),
        }
    }

    fn cancel_order<'a>(&mut self, req: &Request<'a>, id: &'a str, resp: &mut Response, now: Nanos) -> Result<'a> {
        let key = self.authenticate(req, None, resp, now)?;
        let id = Self::parse_order_id(id)?;
        let r = self.engine.cancel_order(key.account, id, now);
        self.after_command();
        r.map_err(ApiError::reject)?;
        resp.pending = Some(Pending::Order { id, parsed_at: None });
        Ok(())
    }

    fn positions<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
        let key = self.authenticate(req, None, resp, now)?;
        let account = self.engine.account(key.account).ok_or(INVALID_KEY)?;
        render::positions(&mut Writer::new(&mut resp.body), &self.engine, account);
        Ok(())
    }

    fn close_position<'a>(
        &mut self,
        req: &Request<'a>,
        symbol: &'a str,
        resp: &mut Response,
        now: Nanos,
    ) -> Result<'a> {
        let key = self.authenticate(req, None, resp, now)?;
        let spec = self.engine.symbols().find(symbol).ok_or(ApiError::with(
            404,
            "symbol.unknown",
            Detail::TextWith("unknown symbol: ", symbol),
        ))?;
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
        let outcome = self.run_signal(key.account, &spec, now)?;
        resp.status = if outcome.answer.order.is_some() { 201 } else { 200 };
        resp.pending =
            Some(Pending::Signal { account: key.account, answer: outcome.answer, signal_id: None, parsed_at });
        Ok(())
    }

    fn account<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
        let key = self.authenticate(req, None, resp, now)?;
        let account = self.engine.account(key.account).ok_or(INVALID_KEY)?;
        render::account(&mut Writer::new(&mut resp.body), &self.engine, account);
        Ok(())
    }

    fn halt<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
        let key = self.authenticate(req, None, resp, now)?;
        let r = self.engine.halt(key.account, now);
        // The cancels the kill switch just asked for (they reach the venue once journaled).
        let canceled = self
            .engine
            .events()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::OrderUpdated { event: OrderEvent::CancelRequest, .. }));
        let canceled = canceled.count();
        self.after_command();
        r.map_err(ApiError::reject)?;
        let account = self.engine.account(key.account).ok_or(INVALID_KEY)?;
        let mut w = Writer::new(&mut resp.body);
        w.begin_object();
        w.key("state").str(account.state.as_str());
        w.key("canceled_orders").u64(canceled as u64);
        w.end_object();
        Ok(())
    }

    fn resume<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
        Self::check_content_type(req)?;
        // Optional body: {"mode": "active" | "reducing"}.
        let mut reducing = false;
        if !req.body.trim_ascii().is_empty() {
            let err = |e| ApiError::with(400, "json.malformed", Detail::Syntax(e, req.body));
            let mut r = Reader::new(req.body);
            r.begin_object().map_err(err)?;
            while let Some(k) = r.next_key().map_err(err)? {
                if k.plain() != Some("mode") {
                    return Err(ApiError::with(
                        400,
                        "request.unknown_field",
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
        let key = self.authenticate(req, None, resp, now)?;
        let r = self.engine.resume(key.account, reducing, now);
        self.after_command();
        r.map_err(ApiError::reject)?;
        let account = self.engine.account(key.account).ok_or(INVALID_KEY)?;
        let mut w = Writer::new(&mut resp.body);
        w.begin_object().key("state").str(account.state.as_str()).end_object();
        Ok(())
    }

    // ----- market data -----

    fn get_quote<'a>(&mut self, req: &Request<'a>, symbol: &'a str, resp: &mut Response, now: Nanos) -> Result<'a> {
        self.authenticate(req, None, resp, now)?;
        resp.no_store = true;
        let spec = self.engine.symbols().find(symbol).ok_or(ApiError::with(
            404,
            "symbol.unknown",
            Detail::TextWith("unknown symbol: ", symbol),
        ))?;
        let q = self.engine.quote(spec.id).ok_or(ApiError::with(
            404,
            "market.no_quote",
            Detail::TextWith("no quote yet for ", symbol),
        ))?;
        render::quote(&mut Writer::new(&mut resp.body), self.engine.symbols(), q);
        Ok(())
    }

    /// `POST /v1/market/ticks`: `{"ticks":[{symbol,bid,ask,bid_size?,ask_size?,ts?}]}` or a bare
    /// array. Every tick is checked before any is applied, so a bad batch changes nothing.
    fn post_ticks<'a>(&mut self, req: &Request<'a>, resp: &mut Response, now: Nanos) -> Result<'a> {
        Self::check_content_type(req)?;
        let key = self.authenticate(req, None, resp, now)?;
        if !key.roles.feed {
            return Err(FORBIDDEN_FEED);
        }
        let count = self.read_ticks(req.body, now, false)?;
        self.read_ticks(req.body, now, true)?;
        let mut w = Writer::new(&mut resp.body);
        w.begin_object().key("accepted").u64(count as u64).end_object();
        Ok(())
    }

    /// Reads the tick batch; applies it when `apply` is set. Returns the number of ticks.
    fn read_ticks<'a>(&mut self, doc: &'a [u8], now: Nanos, apply: bool) -> Result<'a, usize> {
        let err = |e| ApiError::with(400, "json.malformed", Detail::Syntax(e, doc));
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
            let q = self.read_tick(&mut r, doc, now)?;
            if apply {
                self.apply_quote(q, now);
            }
            n += 1;
        }
        if wrapped {
            if let Some(k) = r.next_key().map_err(err)? {
                let name = k.plain().unwrap_or("?");
                return Err(ApiError::with(
                    400,
                    "request.unknown_field",
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

    fn read_tick<'a>(&self, r: &mut Reader<'a>, doc: &'a [u8], now: Nanos) -> Result<'a, Quote> {
        let err = |e| ApiError::with(400, "json.malformed", Detail::Syntax(e, doc));
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
                        400,
                        "request.unknown_field",
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
        let spec = self.engine.symbols().find(name).ok_or(ApiError::with(
            422,
            "symbol.unknown",
            Detail::TextWith("unknown symbol: ", name),
        ))?;
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
            return Err(ApiError::new(422, "market.invalid_quote", "a quote needs 0 < bid <= ask"));
        }
        if bid_size < 0 || ask_size < 0 {
            return Err(ApiError::new(422, "market.invalid_quote", "sizes must not be negative"));
        }
        let quote = Quote { symbol: spec.id, bid, ask, bid_size, ask_size, ts };
        if !quote.is_valid(spec) {
            return Err(ApiError::new(
                422,
                "market.invalid_quote",
                "a price above the symbol's highest (its largest order would be worth over 1000000000)",
            ));
        }
        Ok(quote)
    }

    // ----- operations -----

    fn health<'a>(&mut self, resp: &mut Response, now: Nanos) -> Result<'a> {
        resp.no_store = true;
        let mut w = Writer::new(&mut resp.body);
        w.begin_object();
        w.key("status").str("ok");
        w.key("node").str(&self.name);
        w.key("version").str(env!("CARGO_PKG_VERSION"));
        w.key("uptime_s").u64(now.saturating_sub(self.started_at) / 1_000_000_000);
        w.end_object();
        Ok(())
    }

    fn ready<'a>(&mut self, resp: &mut Response) -> Result<'a> {
        resp.no_store = true;
        let mut w = Writer::new(&mut resp.body);
        w.begin_object();
        let refusal = self.journal.refusal();
        let journal_ok = refusal.is_none();
        w.key("ready").bool(!self.draining && journal_ok);
        if self.draining {
            w.key("reason").str("draining");
            resp.status = 503;
        } else if let Some(r) = refusal {
            w.key("reason").str(journal_refused(r).code);
            resp.status = 503;
        }
        w.key("journal").str(if journal_ok { "ok" } else { "unavailable" });
        w.key("fsync").str(self.journal.policy().as_str());
        w.key("last_seq").u64(self.engine.last_seq());
        w.key("durable_seq").u64(self.journal.durable());
        // Snapshots only bound how much a restart replays: failing ones leave the node ready.
        if !self.snapshots.running() {
            w.key("snapshots").str("off");
        } else if self.snapshots.failing() {
            w.key("snapshots").str("failing");
            w.key("snapshot_error").str(&self.snapshots.last_error());
        } else {
            w.key("snapshots").str("ok");
        }
        // PostgreSQL only keeps history: the node stays ready while it is away.
        match &self.offload {
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
            }
        }
        w.end_object();
        Ok(())
    }

    fn render_metrics<'a>(&mut self, resp: &mut Response) -> Result<'a> {
        resp.no_store = true;
        resp.content_type = "text/plain; version=0.0.4";
        let g = self.gauges();
        self.metrics.render(&g, &mut resp.body);
        if let Some(o) = &self.offload {
            o.render_metrics(crate::clock::now(), &mut resp.body);
        }
        if let Some(ws) = &self.ws {
            ws.render_metrics(&mut resp.body);
        }
        Ok(())
    }
}
