//! What the node is asked and how it answers, whatever the protocol: a [`Request`] view in
//! (HTTP, or a WebSocket `signal` message dressed as one), a [`Response`] out. Nothing here
//! knows about sockets: `http` fills a `Request` from hyper's parts and copies the `Response`
//! back; the WebSocket stream does the same with its messages.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use crate::engine::event::SignalAnswer;
use crate::engine::types::{AccountId, OrderId, SignalKey};
use crate::error::{ApiError, Detail};
use crate::metrics::Route;
use crate::rate_limit::Admission;

/// HTTP methods the API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD (answered like GET, without a body)
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// Anything else.
    Other,
}

impl Method {
    /// From the method's text.
    pub fn parse(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }
}

/// A request as the API sees it; everything borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Method.
    pub method: Method,
    /// Path, without the query.
    pub path: &'a str,
    /// Query string, without `?` (empty when none).
    pub query: &'a str,
    /// `Authorization` header.
    pub authorization: Option<&'a [u8]>,
    /// `X-API-Key` header.
    pub x_api_key: Option<&'a [u8]>,
    /// `Content-Type` header.
    pub content_type: Option<&'a [u8]>,
    /// `If-None-Match` header.
    pub if_none_match: Option<&'a [u8]>,
    /// Forwarded by another node of the cluster (`X-Signalgate-Forwarded`): served here or
    /// refused, never forwarded again.
    pub forwarded: bool,
    /// The body.
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// A request with no headers and no body.
    pub fn new(method: Method, path: &'a str) -> Self {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        Request {
            method,
            path,
            query,
            authorization: None,
            x_api_key: None,
            content_type: None,
            if_none_match: None,
            forwarded: false,
            body: b"",
        }
    }

    /// The value of query parameter `name` (first occurrence; no percent-decoding needed for
    /// the parameters the API defines).
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// An answer being built; reused from request to request.
#[derive(Debug, Default)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body (or Prometheus text for `/metrics`).
    pub body: Vec<u8>,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// `Retry-After` seconds.
    pub retry_after: Option<u32>,
    /// Rate-limit headers.
    pub rate: Option<Admission>,
    /// Signal-to-order time for `Server-Timing`.
    pub signal_to_order_ns: Option<u64>,
    /// Adds `Idempotent-Replay: true`.
    pub idempotent_replay: bool,
    /// `Cache-Control: no-store`.
    pub no_store: bool,
    /// `Allow` header for 405 answers.
    pub allow: Option<&'static str>,
    /// An answer to render once the request's events are durable and the venue has seen them.
    pub pending: Option<Pending>,
    /// An answer another thread gives (a history query's); it replaces this response.
    pub later: Option<Later>,
    /// What the request names is held by another node of the cluster: the answer is that node's.
    pub elsewhere: Option<Elsewhere>,
    /// The answer waits until the cluster's registry in Redis has what it shows (an admin change
    /// on a cluster node).
    pub registered: bool,
    /// `Cache-Control` other than `no-store`.
    pub cache_control: Option<&'static str>,
    /// `ETag`, quoted.
    pub etag: Option<String>,
    /// The request showed a valid key (or the admin token): its connection is a trader's.
    pub authenticated: bool,
    /// Close the connection after this answer.
    pub close: bool,
}

/// The answer of a request that sent orders or cancels to the venue. The venue sees them only
/// after the journal has them, so the answer is rendered then ([`crate::node::Routes::complete`]),
/// showing what the venue did.
#[derive(Debug, Clone, Copy)]
pub enum Pending {
    /// A signal's answer.
    Signal {
        /// The account.
        account: AccountId,
        /// The answer as the engine gave it.
        answer: SignalAnswer,
        /// The client's signal id, echoed back.
        signal_id: Option<SignalKey>,
        /// When the request was parsed, for the signal-to-order time.
        parsed_at: Instant,
    },
    /// One order, as `GET /v1/orders/{id}` shows it.
    Order {
        /// The order.
        id: OrderId,
        /// When the request was parsed, for a new order's signal-to-order time.
        parsed_at: Option<Instant>,
    },
}

impl Pending {
    /// The order the answer shows, if any.
    pub fn order(&self) -> Option<OrderId> {
        match *self {
            Pending::Signal { answer, .. } => answer.order.map(|o| o.id),
            Pending::Order { id, .. } => Some(id),
        }
    }
}

/// The header a cluster node marks the requests it forwards with (its value: the node's id).
pub const FORWARDED_HEADER: &str = "x-signalgate-forwarded";

/// What a request names that this node does not hold, for the cluster to serve elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elsewhere {
    /// A public request with a key (by hash) this node does not hold: the key's owner serves it.
    Key([u8; 32]),
    /// An admin request about an account this node does not own.
    Account(AccountId),
    /// An admin request about a key this node does not hold.
    KeyId(crate::engine::types::KeyId),
    /// A new account, made on the live member with the fewest accounts.
    NewAccount,
    /// What every member holds (the list of accounts).
    Everyone,
}

/// `Content-Type` of JSON answers.
pub const JSON: &str = "application/json";

impl Response {
    /// A response with a body buffer of `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::fresh(Vec::with_capacity(capacity))
    }

    /// Clears it for the next request, keeping the buffer.
    pub fn reset(&mut self) {
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        *self = Self::fresh(body);
    }

    fn fresh(body: Vec<u8>) -> Self {
        Response { status: 200, body, content_type: JSON, ..Response::default() }
    }

    /// Turns it into an error answer.
    pub fn error(&mut self, e: &ApiError<'_>) {
        self.status = e.status;
        self.body.clear();
        self.content_type = JSON;
        e.write(&mut self.body);
        if e.status == 405 {
            self.allow = e.allow;
        }
        if let Detail::RetryAfter(secs) | Detail::Unavailable(_, secs) = e.detail {
            self.retry_after = Some(secs);
        }
    }
}

/// An answer another thread gives (the history thread's), awaited by [`crate::node::serve`]
/// without blocking the core.
pub struct Later {
    /// The route, for the metrics.
    pub route: Route,
    /// The answer; `None` when the other thread could not take the question (too busy).
    pub answer: Pin<Box<dyn Future<Output = Option<Answer>>>>,
}

impl fmt::Debug for Later {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Later").field("route", &self.route).finish_non_exhaustive()
    }
}

/// A finished answer from another thread.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Vec<u8>,
    /// `Cache-Control` (successful answers).
    pub cache_control: Option<&'static str>,
    /// `ETag` (successful answers), quoted.
    pub etag: Option<String>,
}
