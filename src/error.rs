//! Every error the node answers with, in one place: [`Code`] lists each stable code with its
//! HTTP status and usual message (HTTP, the admin API, history, the WebSocket stream), and
//! [`ApiError`] is an error answer, `{"error":{"code":"…","message":"…"}}`, written without
//! allocating (the message is rendered straight into the answer buffer). `docs/api.md` and
//! `docs/ws.md` list every code (a test checks both ways, and that no code is spelled anywhere
//! else).

use crate::engine::risk::{Reject, RejectCode};
use crate::fixed::DecimalError;
use crate::journal::Refusal;
use crate::json::{SyntaxError, Writer};

/// Declares [`Code`]: variant, code, HTTP status, usual message.
macro_rules! codes {
    ($($(#[doc = $doc:literal])* $name:ident => $text:literal, $status:literal, $message:literal;)*) => {
        /// A stable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $($(#[doc = $doc])* $name,)*
            /// A refusal of the engine (the risk table, an order's or an account's state), under
            /// the engine's own code.
            Engine(RejectCode),
        }

        impl Code {
            /// Every code but the engine's (those are [`RejectCode::ALL`]).
            pub const OWN: &'static [Code] = &[$(Code::$name),*];

            /// The code as clients see it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$name => $text,)*
                    Code::Engine(r) => r.as_str(),
                }
            }

            /// The HTTP status it is answered with (a few places answer another, documented).
            pub const fn status(self) -> u16 {
                match self {
                    $(Code::$name => $status,)*
                    Code::Engine(r) => r.status(),
                }
            }

            /// The usual message.
            pub const fn message(self) -> &'static str {
                match self {
                    $(Code::$name => $message,)*
                    Code::Engine(_) => "refused: see the risk table",
                }
            }
        }
    };
}

codes! {
    /// The body is not valid JSON.
    JsonMalformed => "json.malformed", 400, "malformed JSON";
    /// Not an HTTP request at all (the WebSocket listener).
    RequestMalformed => "request.malformed", 400, "not an HTTP request";
    /// A field the route does not know.
    RequestUnknownField => "request.unknown_field", 400, "unknown field";
    /// A required field is absent.
    RequestMissingField => "request.missing_field", 400, "a required field is missing";
    /// A field appears twice.
    RequestDuplicateField => "request.duplicate_field", 400, "a field appears twice";
    /// A field or query parameter of the wrong type or value.
    RequestInvalidField => "request.invalid_field", 400, "a field or parameter has the wrong type or value";
    /// Not a decimal the symbol allows.
    RequestInvalidNumber => "request.invalid_number", 400, "not a decimal the symbol allows";
    /// The connection failed while the body was read.
    RequestBodyUnreadable => "request.body_unreadable", 400, "the request body could not be read";
    /// The body (or a WebSocket upgrade) did not arrive in time.
    RequestTimeout => "request.timeout", 408, "the request did not arrive in time";
    /// A body over `http.max_body_bytes` (431: a WebSocket upgrade over its bounds).
    RequestTooLarge => "request.too_large", 413, "the request body is larger than the limit (http.max_body_bytes)";
    /// A `Content-Type` other than JSON or plain text.
    RequestUnsupportedMediaType => "request.unsupported_media_type", 415, "send the body as application/json (or text/plain, as TradingView does)";
    /// No key in the headers or body.
    AuthMissingKey => "auth.missing_key", 401, "missing API key: send 'Authorization: Bearer <key>', 'X-API-Key: <key>' or a \"passphrase\" field";
    /// An unknown key.
    AuthInvalidKey => "auth.invalid_key", 401, "unknown API key";
    /// A revoked key.
    AuthKeyRevoked => "auth.key_revoked", 401, "this API key was revoked";
    /// The key lacks the role.
    AuthForbidden => "auth.forbidden", 403, "this key lacks the feed role needed to send market data";
    /// A WebSocket message before the `auth` message.
    AuthRequired => "auth.required", 401, "send an auth message first";
    /// No WebSocket `auth` message in time.
    AuthTimeout => "auth.timeout", 401, "no auth message in time";
    /// A missing or wrong admin token.
    AdminUnauthorized => "admin.unauthorized", 401, "send the admin token as 'Authorization: Bearer <token>'";
    /// Over the key's requests per minute.
    RateLimited => "rate.limited", 429, "too many requests";
    /// No such path.
    RouteNotFound => "route.not_found", 404, "no such route";
    /// The path exists for other methods.
    RouteMethodNotAllowed => "route.method_not_allowed", 405, "method not allowed here";
    /// No such key (admin).
    KeyNotFound => "key.not_found", 404, "no such key";
    /// No quote yet for the symbol.
    MarketNoQuote => "market.no_quote", 404, "no quote yet for this symbol";
    /// A tick that is not a quote.
    MarketInvalidQuote => "market.invalid_quote", 422, "a quote needs 0 < bid <= ask";
    /// More than `http.max_inflight` requests in progress.
    NodeOverloaded => "node.overloaded", 503, "too many requests in progress";
    /// More than `http.max_connections` connections, or no descriptor left.
    NodeTooManyConnections => "node.too_many_connections", 503, "the node is at its connection limit; retry later";
    /// History cannot be answered now (501: this node keeps none).
    HistoryUnavailable => "history.unavailable", 503, "history cannot be answered now; try again later";
    /// The disk holding the journal is full.
    JournalFull => "journal.full", 503, "the disk holding the journal is full, so nothing was changed or sent";
    /// The journal cannot write.
    JournalUnavailable => "journal.unavailable", 503, "the journal cannot write, so nothing was changed or sent";
    /// The answer needs Redis (a cluster node's registry), which cannot be reached.
    ClusterUnavailable => "cluster.unavailable", 503, "the cluster's Redis cannot be reached, so nothing was changed";
    /// The node that owns the account cannot be reached.
    ClusterOwnerUnavailable => "cluster.owner_unavailable", 503, "the node that owns this account cannot be reached (a signal with a signal_id is safe to send again)";
    /// The session with a FIX venue is down (or logging on).
    VenueUnavailable => "venue.unavailable", 503, "the session with the venue is down, so nothing was placed";
    /// The venue refused the order (the order's `reject_reason` says why).
    VenueRejected => "venue.rejected", 422, "the venue refused the order";
    /// A request forwarded to a cluster node that does not hold its key (the account moved).
    ClusterMisdirected => "cluster.misdirected", 421, "this node does not hold the account of this key; ask the cluster for its owner again";
    /// A cluster node whose lease lapsed cannot tell whether it still owns the account.
    ClusterNotOwner => "cluster.not_owner", 503, "this node's cluster lease lapsed, so it cannot act for the account now; nothing was changed";
    /// A plain HTTP request on the WebSocket listener.
    WsUpgradeRequired => "ws.upgrade_required", 426, "this is a WebSocket endpoint: send Connection: Upgrade and Upgrade: websocket";
    /// No valid `Sec-WebSocket-Key`.
    WsBadHandshake => "ws.bad_handshake", 400, "Sec-WebSocket-Key is missing or not 16 bytes in base64";
    /// The key has its tier's WebSocket connections open already.
    WsTooManyConnections => "ws.too_many_connections", 429, "this key has as many WebSocket connections as its tier allows";
    /// `ws.max_connections` authenticated streams are open.
    WsNodeFull => "ws.node_full", 503, "the node has as many authenticated WebSocket connections as ws.max_connections";
    /// A second `auth` message.
    WsAlreadyAuthenticated => "ws.already_authenticated", 400, "this connection is already authenticated";
    /// A channel that does not exist.
    WsUnknownChannel => "ws.unknown_channel", 400, "unknown channel";
    /// An unauthenticated connection closed to make room.
    WsEvicted => "ws.evicted", 503, "unauthenticated for too long while others waited; reconnect and authenticate";
    /// A bug.
    Internal => "internal", 500, "an internal error: please report it with the request";
}

impl Code {
    /// A WebSocket close reason: the code, then its message.
    pub fn reason(self) -> String {
        format!("{}: {}", self.as_str(), self.message())
    }

    /// Every code, the engine's too.
    pub fn all() -> impl Iterator<Item = Code> {
        Code::OWN.iter().copied().chain(RejectCode::ALL.into_iter().map(Code::Engine))
    }
}

/// An error answer.
#[derive(Debug, Clone, Copy)]
pub struct ApiError<'a> {
    /// HTTP status: the code's, but for the few places `docs/api.md` names.
    pub status: u16,
    /// Stable code.
    pub code: Code,
    /// What to say.
    pub detail: Detail<'a>,
    /// For 405: the methods the route allows.
    pub allow: Option<&'static str>,
}

/// The message of an error answer.
#[derive(Debug, Clone, Copy)]
pub enum Detail<'a> {
    /// A fixed message.
    Text(&'static str),
    /// Malformed JSON in `doc`.
    Syntax(SyntaxError, &'a [u8]),
    /// A field problem: `"<field> <problem>"`.
    Field(&'a str, &'static str),
    /// A field that holds a bad number.
    Number(&'static str, &'a [u8], DecimalError),
    /// An engine rejection.
    Reject(Reject),
    /// Retry after this many seconds.
    RetryAfter(u32),
    /// Why, then retry after this many seconds.
    Unavailable(&'static str, u32),
    /// A fixed message followed by a value from the request.
    TextWith(&'static str, &'a str),
    /// An order the venue refused, and why.
    VenueRefused(u64, &'static str),
}

impl<'a> ApiError<'a> {
    /// An error with its code's usual message.
    pub const fn of(code: Code) -> Self {
        ApiError { status: code.status(), code, detail: Detail::Text(code.message()), allow: None }
    }

    /// An error with a message of its own.
    pub const fn new(code: Code, message: &'static str) -> Self {
        ApiError { status: code.status(), code, detail: Detail::Text(message), allow: None }
    }

    /// An error with a detail.
    pub const fn with(code: Code, detail: Detail<'a>) -> Self {
        ApiError { status: code.status(), code, detail, allow: None }
    }

    /// The same error answered with another status than its code's (where `docs/api.md` says so).
    pub const fn at(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// An engine rejection.
    pub const fn reject(r: Reject) -> Self {
        ApiError::with(Code::Engine(r.code), Detail::Reject(r))
    }

    /// A missing required field.
    pub const fn missing(field: &'static str) -> Self {
        ApiError::with(Code::RequestMissingField, Detail::Field(field, "is required"))
    }

    /// A field of the wrong type or value.
    pub const fn invalid(field: &'a str, problem: &'static str) -> Self {
        ApiError::with(Code::RequestInvalidField, Detail::Field(field, problem))
    }

    /// A bad number.
    pub const fn number(field: &'static str, raw: &'a [u8], e: DecimalError) -> Self {
        ApiError::with(Code::RequestInvalidNumber, Detail::Number(field, raw, e))
    }

    /// No route.
    pub const NOT_FOUND: ApiError<'static> = ApiError::of(Code::RouteNotFound);

    /// A route that exists for other methods.
    pub const fn method_not_allowed(allow: &'static str) -> Self {
        let mut e = ApiError::of(Code::RouteMethodNotAllowed);
        e.allow = Some(allow);
        e
    }

    /// Writes the JSON body.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        w.begin_object().key("error").begin_object();
        w.key("code").str(self.code.as_str());
        w.key("message");
        match self.detail {
            Detail::Text(t) => {
                w.str(t);
            }
            Detail::Syntax(e, doc) => {
                let (line, column) = e.line_column(doc);
                w.begin_string()
                    .string_part("malformed JSON at line ")
                    .string_int(line as i64)
                    .string_part(", column ")
                    .string_int(column as i64)
                    .string_part(" (byte ")
                    .string_int(e.at as i64)
                    .string_part("): expected ")
                    .string_part(e.expected)
                    .end_string();
            }
            Detail::Field(field, problem) => {
                w.begin_string().string_part(field).string_part(" ").string_part(problem).end_string();
            }
            Detail::Number(field, raw, e) => {
                w.begin_string().string_part(field).string_part(" ");
                w.string_part(std::str::from_utf8(&raw[..raw.len().min(64)]).unwrap_or("(not UTF-8)"));
                w.string_part(" ").string_part(e.describe()).end_string();
            }
            Detail::Reject(r) => r.write_message(&mut w),
            Detail::RetryAfter(secs) => {
                w.begin_string().string_part("retry after ").string_int(i64::from(secs)).string_part(" s").end_string();
            }
            Detail::Unavailable(why, secs) => {
                w.begin_string().string_part(why).string_part("; retry after ");
                w.string_int(i64::from(secs)).string_part(" s").end_string();
            }
            Detail::TextWith(t, v) => {
                w.begin_string().string_part(t).string_part(v).end_string();
            }
            Detail::VenueRefused(order, why) => {
                w.begin_string().string_part("the venue refused order ").string_int(order as i64);
                w.string_part(": ").string_part(why).end_string();
            }
        }
        w.end_object().end_object();
    }
}

/// A request without a key.
pub const MISSING_KEY: ApiError<'static> = ApiError::of(Code::AuthMissingKey);
/// A key the node does not know.
pub const INVALID_KEY: ApiError<'static> = ApiError::of(Code::AuthInvalidKey);
/// A revoked key.
pub const REVOKED_KEY: ApiError<'static> = ApiError::of(Code::AuthKeyRevoked);

/// Commands that would change state while the journal cannot write, and answers that would show
/// state it has not made durable.
pub const JOURNAL_UNAVAILABLE: ApiError<'static> =
    ApiError::with(Code::JournalUnavailable, Detail::Unavailable(Code::JournalUnavailable.message(), 1));

/// The same while the disk holding the journal is full.
pub const JOURNAL_FULL: ApiError<'static> =
    ApiError::with(Code::JournalFull, Detail::Unavailable(Code::JournalFull.message(), 1));

/// A request whose events the journal never made durable: the node stopped first.
pub const JOURNAL_STOPPED: ApiError<'static> = ApiError::with(
    Code::JournalUnavailable,
    Detail::Unavailable("the node stopped before the journal could write this request; nothing was sent", 1),
);

/// The session with the venue is down.
pub const VENUE_UNAVAILABLE: ApiError<'static> =
    ApiError::with(Code::VenueUnavailable, Detail::Unavailable(Code::VenueUnavailable.message(), 1));

/// A cluster node's registry in Redis cannot be reached.
pub const CLUSTER_UNAVAILABLE: ApiError<'static> =
    ApiError::with(Code::ClusterUnavailable, Detail::Unavailable(Code::ClusterUnavailable.message(), 1));

/// The owner of the account cannot be reached.
pub const OWNER_UNAVAILABLE: ApiError<'static> =
    ApiError::with(Code::ClusterOwnerUnavailable, Detail::Unavailable(Code::ClusterOwnerUnavailable.message(), 1));

/// A request forwarded here for a key this node does not hold: its sender's idea of the owner is
/// out of date.
pub const MISDIRECTED: ApiError<'static> = ApiError::new(Code::ClusterMisdirected, Code::ClusterMisdirected.message());

/// A cluster node whose lease lapsed may no longer own the account.
pub const NOT_OWNER: ApiError<'static> =
    ApiError::with(Code::ClusterNotOwner, Detail::Unavailable(Code::ClusterNotOwner.message(), 1));

/// A history query the history thread could not take.
pub const HISTORY_BUSY: ApiError<'static> =
    ApiError::with(Code::HistoryUnavailable, Detail::Unavailable("too many history queries are waiting", 1));

/// The answer to a command the journal refuses.
pub fn journal_refused(r: Refusal) -> ApiError<'static> {
    match r {
        Refusal::Full => JOURNAL_FULL,
        Refusal::Failing | Refusal::Closed => JOURNAL_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(e: ApiError<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        e.write(&mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn every_detail_renders_valid_json() {
        let doc = b"{\n\"a\" 1}";
        let v =
            render(ApiError::with(Code::JsonMalformed, Detail::Syntax(SyntaxError { at: 6, expected: "':'" }, doc)));
        assert_eq!(v["error"]["code"], "json.malformed");
        assert_eq!(v["error"]["message"], "malformed JSON at line 2, column 5 (byte 6): expected ':'");
        let v = render(ApiError::number("qty", b"1.\"23", DecimalError::TooManyDecimals));
        assert_eq!(v["error"]["message"], "qty 1.\"23 has more decimals than allowed");
        let v = render(ApiError::missing("symbol"));
        assert_eq!(v["error"]["message"], "symbol is required");
        let v = render(ApiError::with(Code::RateLimited, Detail::RetryAfter(7)));
        assert_eq!(v["error"]["message"], "retry after 7 s");
        let v = render(ApiError::with(Code::JournalUnavailable, Detail::Unavailable("cannot write", 1)));
        assert_eq!(v["error"]["message"], "cannot write; retry after 1 s");
    }

    /// The codes the error tables of the docs list: `docs/api.md`'s first column, `docs/ws.md`'s
    /// refused upgrades (second column) and the codes its close reasons start with.
    fn documented() -> std::collections::BTreeSet<String> {
        let cell_codes = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .filter(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'))
                .filter(|c| c.contains('.') || *c == "internal")
                .map(str::to_string)
                .collect()
        };
        let mut out = std::collections::BTreeSet::new();
        let api = include_str!("../docs/api.md");
        let table = &api[api.find("## Error codes").expect("docs/api.md has its error codes")..];
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            out.extend(cell_codes(row.split('|').nth(1).unwrap_or("")));
        }
        let ws = include_str!("../docs/ws.md");
        for row in ws.lines().filter(|l| l.starts_with("| ")) {
            let cells: Vec<&str> = row.split('|').collect();
            // Refused upgrades: | status | `code` | when |; close codes: | code | reason |.
            let first = cells.get(1).map_or("", |c| c.trim());
            if first.starts_with('`') {
                // Errors on an open stream: | `code` | when |.
                out.extend(cell_codes(first));
            } else if first.len() == 3 && cells.len() == 5 {
                out.extend(cell_codes(cells[2]));
            } else if first.len() == 4 && first.starts_with('4') || first == "1013" {
                out.extend(cell_codes(cells.get(2).copied().unwrap_or("")).into_iter().filter(|c| c.contains('.')));
            }
        }
        out
    }

    #[test]
    fn every_code_is_documented_and_every_documented_code_exists() {
        let documented = documented();
        let known: std::collections::BTreeSet<String> = Code::all().map(|c| c.as_str().to_string()).collect();
        let undocumented: Vec<&String> = known.difference(&documented).collect();
        assert!(undocumented.is_empty(), "codes missing from docs/api.md and docs/ws.md: {undocumented:?}");
        let unknown: Vec<&String> = documented.difference(&known).collect();
        assert!(unknown.is_empty(), "documented codes the node never answers with: {unknown:?}");
        assert!(known.len() > 50, "{known:?}");
    }

    #[test]
    fn no_code_is_spelled_outside_its_one_place() {
        let known: Vec<&str> = Code::all().map(Code::as_str).collect();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.clone()];
        let mut spelled = Vec::new();
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            // The codes live here and in the engine's refusals.
            if p.ends_with("error.rs") || p.ends_with("engine/risk.rs") || p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // Tests spell codes as clients see them.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            for (n, line) in code.lines().enumerate() {
                for c in &known {
                    if line.contains(&format!("\"{c}\"")) {
                        spelled.push(format!("{}:{}: {c}", p.display(), n + 1));
                    }
                }
            }
        }
        assert!(spelled.is_empty(), "codes spelled outside src/error.rs (use Code): {spelled:?}");
    }
}
