//! WebSocket on the wire: the upgrade request and the frames (RFC 6455), with tungstenite's
//! frame header codec and accept-key derivation. The node writes frames into its own buffers so
//! that one event's bytes are copied, never re-encoded, for each subscriber.

use crate::error::Code;
use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Largest upgrade request.
pub const MAX_REQUEST: usize = 8 * 1024;

/// What an upgrade request asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Key`.
    pub ws_key: String,
    /// The API key from `Authorization: Bearer`, `X-API-Key` or `?key=`.
    pub api_key: Option<String>,
    /// `?format=json`.
    pub json: bool,
    /// `?resume_from=`.
    pub resume_from: Option<u64>,
    /// The query string without `key=` (what another node of the cluster is asked with).
    pub query: String,
    /// Forwarded by another node of the cluster (`X-Signalgate-Forwarded`): never sent on.
    pub forwarded: bool,
}

/// A refused upgrade: HTTP status, error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRefusal {
    /// Status.
    pub status: u16,
    /// Stable code.
    pub code: Code,
    /// Message.
    pub message: String,
    /// `Allow` header value for 405.
    pub allow: Option<&'static str>,
}

impl HttpRefusal {
    /// A refusal with the code's status.
    pub fn new(code: Code, message: impl Into<String>) -> HttpRefusal {
        HttpRefusal { status: code.status(), code, message: message.into(), allow: None }
    }

    /// The same refusal with another status (where `docs/ws.md` says so).
    pub fn at(mut self, status: u16) -> HttpRefusal {
        self.status = status;
        self
    }

    /// The HTTP response, closing the connection.
    pub fn response(&self) -> Vec<u8> {
        let body = serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}}).to_string();
        let reason = match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\n", self.status);
        if let Some(allow) = self.allow {
            out.push_str(&format!("allow: {allow}\r\n"));
        }
        if self.status == 426 {
            out.push_str("upgrade: websocket\r\nsec-websocket-version: 13\r\n");
        }
        if self.status == 503 {
            out.push_str("retry-after: 1\r\n");
        }
        out.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()));
        out.into_bytes()
    }
}

/// Parses an upgrade request from the bytes read so far: `Ok(None)` when it is not complete yet,
/// `Ok(Some((upgrade, length)))` when it is (the request took `length` bytes).
pub fn parse_upgrade(buf: &[u8]) -> Result<Option<(Upgrade, usize)>, HttpRefusal> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => {
            return Err(HttpRefusal::new(Code::RequestTooLarge, "the upgrade request is larger than 8 KiB").at(431))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpRefusal::new(Code::RequestTooLarge, "the upgrade request has more than 32 headers").at(431))
        }
        Err(e) => return Err(HttpRefusal::new(Code::RequestMalformed, format!("not an HTTP request: {e}"))),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/v1/ws" {
        return Err(HttpRefusal::new(Code::RouteNotFound, format!("no route {path}; the WebSocket is /v1/ws")));
    }
    if req.method != Some("GET") {
        let mut r = HttpRefusal::new(Code::RouteMethodNotAllowed, "use GET to open the WebSocket");
        r.allow = Some("GET");
        return Err(r);
    }
    let header = |name: &str| {
        req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(HttpRefusal::new(
            Code::WsUpgradeRequired,
            "this is a WebSocket endpoint: send Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HttpRefusal::new(Code::WsUpgradeRequired, "only WebSocket version 13 is supported"));
    }
    let ws_key = header("sec-websocket-key").map(str::trim).filter(|k| k.len() == 24).ok_or_else(|| {
        HttpRefusal::new(Code::WsBadHandshake, "Sec-WebSocket-Key is missing or not 16 bytes in base64")
    })?;
    let mut up = Upgrade { ws_key: ws_key.to_string(), ..Upgrade::default() };
    let auth = crate::auth::key_from_headers(
        header("authorization").map(str::as_bytes),
        header("x-api-key").map(str::as_bytes),
    );
    up.api_key = auth.and_then(|k| std::str::from_utf8(k).ok()).filter(|k| !k.is_empty()).map(str::to_string);
    up.forwarded = header(crate::node::request::FORWARDED_HEADER).is_some();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "key" {
            if !up.query.is_empty() {
                up.query.push('&');
            }
            up.query.push_str(pair);
        }
        match name {
            "key" if up.api_key.is_none() && !value.is_empty() => up.api_key = Some(value.to_string()),
            "key" => {}
            "format" => {
                up.json = match value {
                    "json" => true,
                    "binary" => false,
                    _ => {
                        return Err(HttpRefusal::new(Code::RequestInvalidField, "format must be binary or json"));
                    }
                }
            }
            "resume_from" => {
                up.resume_from = Some(value.parse().map_err(|_| {
                    HttpRefusal::new(Code::RequestInvalidField, "resume_from must be a sequence number")
                })?)
            }
            _ => {
                return Err(HttpRefusal::new(
                    Code::RequestInvalidField,
                    format!("unknown query parameter {name:?}; known: key, format, resume_from"),
                ))
            }
        }
    }
    Ok(Some((up, len)))
}

/// The `101 Switching Protocols` answer to `up`.
pub fn accept_response(up: &Upgrade) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        tungstenite::handshake::derive_accept_key(up.ws_key.as_bytes())
    )
    .into_bytes()
}

/// The kind of a data or control frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    Text,
    /// Binary.
    Binary,
    /// Continuation of a fragmented message.
    Continue,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

fn opcode(kind: Kind) -> OpCode {
    match kind {
        Kind::Text => OpCode::Data(Data::Text),
        Kind::Binary => OpCode::Data(Data::Binary),
        Kind::Continue => OpCode::Data(Data::Continue),
        Kind::Close => OpCode::Control(Control::Close),
        Kind::Ping => OpCode::Control(Control::Ping),
        Kind::Pong => OpCode::Control(Control::Pong),
    }
}

/// Appends an unmasked (server) frame header for a payload of `len` bytes.
pub fn write_header(out: &mut Vec<u8>, kind: Kind, len: usize) {
    let h = FrameHeader { opcode: opcode(kind), ..FrameHeader::default() };
    // Formatting into a Vec cannot fail.
    let _ = h.format(len as u64, out);
}

/// Appends a whole server frame.
pub fn write_frame(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
    write_header(out, kind, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason`.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    write_header(out, Kind::Close, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// A whole client frame: `opcode` (as on the wire), masked with `mask`. For clients and tests.
pub fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let h = FrameHeader { opcode: OpCode::from(opcode), mask: Some(mask), ..FrameHeader::default() };
    let mut out = Vec::with_capacity(payload.len() + 14);
    // Formatting into a Vec cannot fail.
    let _ = h.format(payload.len() as u64, &mut out);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// One client frame, unmasked in place.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Kind.
    pub kind: Kind,
    /// FIN bit.
    pub fin: bool,
    /// Payload.
    pub payload: &'a [u8],
}

/// Why client bytes are not an acceptable frame: the close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame(pub u16, pub &'static str);

/// Reads the client frame at the start of `buf`: `Ok(None)` when more bytes are needed,
/// `Ok(Some((frame, length)))` otherwise. Frames are unmasked in place; payloads over `max`
/// bytes are refused (1009) before they are read.
pub fn read_frame(buf: &mut [u8], max: usize) -> Result<Option<(Frame<'_>, usize)>, BadFrame> {
    let mut cursor = Cursor::new(&*buf);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(_) => return Err(BadFrame(1002, "malformed frame header")),
    };
    let start = cursor.position() as usize;
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(BadFrame(1002, "reserved bits set (no extension was agreed)"));
    }
    let kind = match header.opcode {
        OpCode::Data(Data::Text) => Kind::Text,
        OpCode::Data(Data::Binary) => Kind::Binary,
        OpCode::Data(Data::Continue) => Kind::Continue,
        OpCode::Control(Control::Close) => Kind::Close,
        OpCode::Control(Control::Ping) => Kind::Ping,
        OpCode::Control(Control::Pong) => Kind::Pong,
        _ => return Err(BadFrame(1002, "unknown opcode")),
    };
    let control = matches!(kind, Kind::Close | Kind::Ping | Kind::Pong);
    if control && (len > 125 || !header.is_final) {
        return Err(BadFrame(1002, "control frames must be whole and at most 125 bytes"));
    }
    if len > max as u64 {
        return Err(BadFrame(1009, "message too big"));
    }
    let Some(mask) = header.mask else {
        return Err(BadFrame(1002, "client frames must be masked"));
    };
    let end = start + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let payload = &mut buf[start..end];
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Some((Frame { kind, fin: header.is_final, payload: &buf[start..end] }, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut s = lines.join("\r\n");
        s.push_str("\r\n\r\n");
        s.into_bytes()
    }

    const GOOD: [&str; 5] = [
        "GET /v1/ws?format=json&resume_from=12 HTTP/1.1",
        "Host: x",
        "Connection: keep-alive, Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
    ];

    #[test]
    fn upgrade_requests_are_read_with_their_key_and_options() {
        let mut lines = GOOD.to_vec();
        lines.push("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==");
        lines.push("X-API-Key: sk_1");
        let buf = request(&lines);
        let (up, n) = parse_upgrade(&buf).unwrap().unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(up.api_key.as_deref(), Some("sk_1"));
        assert!(up.json);
        assert_eq!(up.resume_from, Some(12));
        let accept = String::from_utf8(accept_response(&up)).unwrap();
        assert!(accept.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{accept}");
        assert_eq!(parse_upgrade(&buf[..buf.len() - 2]).unwrap(), None);
    }

    #[test]
    fn bad_upgrade_requests_get_a_status_and_code() {
        let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
        let status = |lines: &[&str]| parse_upgrade(&request(lines)).unwrap_err().status;
        assert_eq!(status(&["GET /v1/nope HTTP/1.1", key]), 404);
        assert_eq!(status(&["POST /v1/ws HTTP/1.1", key]), 405);
        assert_eq!(status(&["GET /v1/ws HTTP/1.1", key]), 426);
        assert_eq!(status(&GOOD), 400);
        let mut lines = GOOD.to_vec();
        lines[0] = "GET /v1/ws?format=xml HTTP/1.1";
        lines.push(key);
        assert_eq!(status(&lines), 400);
        lines[0] = "GET /v1/ws?resume_from=x HTTP/1.1";
        assert_eq!(status(&lines), 400);
        lines[0] = "GET /v1/ws?colour=red HTTP/1.1";
        assert_eq!(status(&lines), 400);
        assert_eq!(parse_upgrade(b"\x16\x03\x01garbage\r\n\r\n").unwrap_err().status, 400);
        let mut long = b"GET /v1/ws HTTP/1.1\r\nX-Long: ".to_vec();
        long.resize(MAX_REQUEST, b'a');
        assert_eq!(parse_upgrade(&long).unwrap_err().status, 431);
    }

    fn masked(kind: u8, payload: &[u8]) -> Vec<u8> {
        client_frame(kind, payload, [1, 2, 3, 4])
    }

    #[test]
    fn client_frames_are_unmasked_and_checked() {
        let mut buf = masked(2, b"hello");
        let total = buf.len();
        let (f, n) = read_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!((f.kind, f.fin, f.payload, n), (Kind::Binary, true, &b"hello"[..], total));
        let mut part = masked(1, b"hello");
        part.pop();
        assert_eq!(read_frame(&mut part, 100).unwrap(), None);
        assert_eq!(read_frame(&mut masked(2, &[0; 200]), 100).unwrap_err().0, 1009);
        let mut unmasked = vec![0x82, 1, 0];
        assert_eq!(read_frame(&mut unmasked, 100).unwrap_err().0, 1002);
        assert_eq!(read_frame(&mut masked(3, b""), 100).unwrap_err().0, 1002);
        let mut big_ping = masked(9, &[0; 126]);
        assert_eq!(read_frame(&mut big_ping, 1000).unwrap_err().0, 1002);
    }

    #[test]
    fn server_frames_have_the_right_header() {
        let mut out = Vec::new();
        write_frame(&mut out, Kind::Binary, &[7; 300]);
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
        out.clear();
        write_close(&mut out, 4008, "slow consumer");
        assert_eq!(&out[..4], &[0x88, 15, 0x0f, 0xa8]);
    }
}
