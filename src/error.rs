//! Error answers: `{"error":{"code":"…","message":"…"}}` with a stable code, written without
//! allocating (the message is rendered straight into the answer buffer).

use crate::engine::risk::Reject;
use crate::fixed::DecimalError;
use crate::journal::Refusal;
use crate::json::{SyntaxError, Writer};

/// An error answer.
#[derive(Debug, Clone, Copy)]
pub struct ApiError<'a> {
    /// HTTP status.
    pub status: u16,
    /// Stable code, listed in `docs/api.md`.
    pub code: &'static str,
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
}

impl<'a> ApiError<'a> {
    /// An error with a fixed message.
    pub const fn new(status: u16, code: &'static str, message: &'static str) -> Self {
        ApiError { status, code, detail: Detail::Text(message), allow: None }
    }

    /// An error with a detail.
    pub const fn with(status: u16, code: &'static str, detail: Detail<'a>) -> Self {
        ApiError { status, code, detail, allow: None }
    }

    /// An engine rejection.
    pub fn reject(r: Reject) -> Self {
        ApiError { status: r.code.status(), code: r.code.as_str(), detail: Detail::Reject(r), allow: None }
    }

    /// A missing required field.
    pub const fn missing(field: &'static str) -> Self {
        ApiError::with(400, "request.missing_field", Detail::Field(field, "is required"))
    }

    /// A field of the wrong type or value.
    pub const fn invalid(field: &'a str, problem: &'static str) -> Self {
        ApiError::with(400, "request.invalid_field", Detail::Field(field, problem))
    }

    /// A bad number.
    pub const fn number(field: &'static str, raw: &'a [u8], e: DecimalError) -> Self {
        ApiError::with(400, "request.invalid_number", Detail::Number(field, raw, e))
    }

    /// No route.
    pub const NOT_FOUND: ApiError<'static> = ApiError::new(404, "route.not_found", "no such route");

    /// A route that exists for other methods.
    pub const fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            status: 405,
            code: "route.method_not_allowed",
            detail: Detail::Text("method not allowed here"),
            allow: Some(allow),
        }
    }

    /// Writes the JSON body.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        w.begin_object().key("error").begin_object();
        w.key("code").str(self.code);
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
        }
        w.end_object().end_object();
    }
}

/// A request without a key.
pub const MISSING_KEY: ApiError<'static> = ApiError::new(
    401,
    "auth.missing_key",
    "missing API key: send 'Authorization: Bearer <key>', 'X-API-Key: <key>' or a \"passphrase\" field",
);
/// A key the node does not know.
pub const INVALID_KEY: ApiError<'static> = ApiError::new(401, "auth.invalid_key", "unknown API key");
/// A revoked key.
pub const REVOKED_KEY: ApiError<'static> = ApiError::new(401, "auth.key_revoked", "this API key was revoked");

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

/// A request whose events the journal never made durable: the node stopped first.
pub const JOURNAL_STOPPED: ApiError<'static> = ApiError::with(
    503,
    "journal.unavailable",
    Detail::Unavailable("the node stopped before the journal could write this request; nothing was sent", 1),
);

/// A history query the history thread could not take.
pub const HISTORY_BUSY: ApiError<'static> =
    ApiError::with(503, "history.unavailable", Detail::Unavailable("too many history queries are waiting", 1));

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
            render(ApiError::with(400, "json.malformed", Detail::Syntax(SyntaxError { at: 6, expected: "':'" }, doc)));
        assert_eq!(v["error"]["code"], "json.malformed");
        assert_eq!(v["error"]["message"], "malformed JSON at line 2, column 5 (byte 6): expected ':'");
        let v = render(ApiError::number("qty", b"1.\"23", DecimalError::TooManyDecimals));
        assert_eq!(v["error"]["message"], "qty 1.\"23 has more decimals than allowed");
        let v = render(ApiError::missing("symbol"));
        assert_eq!(v["error"]["message"], "symbol is required");
        let v = render(ApiError::with(429, "rate.limited", Detail::RetryAfter(7)));
        assert_eq!(v["error"]["message"], "retry after 7 s");
        let v = render(ApiError::with(503, "journal.unavailable", Detail::Unavailable("cannot write", 1)));
        assert_eq!(v["error"]["message"], "cannot write; retry after 1 s");
    }
}
