//! The WebSocket protocol: what clients and the node say to each other (see `docs/ws.md`).
//!
//! Binary mode (the default): a client frame is `u16 version ‖ rkyv(ClientMsg)`; a server frame
//! is `u16 version ‖ u16 count` followed by `count` entries of `u32 length ‖ rkyv(ServerMsg)`.
//! Integers are little-endian and the archives use the same rkyv format as the journal
//! (little-endian, unaligned, 32-bit offsets), so they are read in place and validated first.
//! JSON mode (`?format=json`): a client frame is one JSON object, a server frame a JSON array of
//! messages.

use serde::{Deserialize, Deserializer, Serialize};

use crate::engine::event::EventKind;

/// The protocol version this node speaks.
pub const VERSION: u16 = 1;
/// Bytes before the first entry of a binary server frame.
pub const FRAME_HEADER: usize = 4;

/// Close codes the node uses besides the standard ones.
pub mod close {
    /// Authentication failed or timed out.
    pub const AUTH: u16 = 4001;
    /// The key was revoked while connected.
    pub const REVOKED: u16 = 4003;
    /// The client did not read fast enough.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Too many connections for the key or the node.
    pub const TOO_MANY: u16 = 4029;
    /// No pong within the timeout after a ping.
    pub const PONG_TIMEOUT: u16 = 4000;
    /// Unsupported data (wrong frame kind, unknown version).
    pub const UNSUPPORTED: u16 = 1003;
    /// A message that does not decode.
    pub const INVALID: u16 = 1007;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// A protocol violation (unmasked frame, bad opcode).
    pub const PROTOCOL: u16 = 1002;
    /// The node is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The node lost events it would have sent (the client should resume).
    pub const INTERNAL: u16 = 1011;
    /// An unauthenticated connection closed to make room for new ones: reconnect and
    /// authenticate at once.
    pub const TRY_AGAIN: u16 = 1013;
}

pub use msgs::{ClientMsg, ServerBody};

// In a private module so that the resolver types rkyv derives for the enums (whose fields carry
// no docs) stay private.
mod msgs {
    use super::*;

    /// What a client sends.
    #[derive(
        Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Serialize, Deserialize,
    )]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    pub enum ClientMsg {
        /// Authenticates a connection whose upgrade request carried no key (within 5 s).
        Auth {
            /// The API key.
            key: String,
        },
        /// Subscribes to channels: `quotes:<SYMBOL>` and `account`.
        Subscribe {
            /// The channels.
            channels: Vec<String>,
            /// Send the account events after this sequence number first.
            #[serde(default)]
            resume_from: Option<u64>,
        },
        /// Stops channels.
        Unsubscribe {
            /// The channels.
            channels: Vec<String>,
        },
        /// A signal, with the body of `POST /v1/signals`; answered by `signal_result`.
        Signal {
            /// Echoed in the answer.
            request_id: u64,
            /// The signal's JSON body (in JSON mode an object or a string).
            #[serde(deserialize_with = "super::json_text")]
            body: String,
        },
        /// Answered by `pong` with the same id.
        Ping {
            /// Echoed.
            #[serde(default)]
            id: u64,
        },
    }

    /// The kinds of server message.
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum ServerBody {
        /// The connection is authenticated.
        Welcome {
            /// Protocol version.
            version: u16,
            /// Node name.
            node: String,
            /// The key's account.
            account: u32,
            /// The key's id.
            key: u32,
            /// Symbols, for the ids in events.
            symbols: Vec<SymbolInfo>,
        },
        /// Channels now streaming.
        Subscribed {
            /// The channels.
            channels: Vec<String>,
        },
        /// Channels stopped.
        Unsubscribed {
            /// The channels.
            channels: Vec<String>,
        },
        /// The account events after `from` up to `upto` were sent (`count` of them); live ones follow.
        Resumed {
            /// As asked.
            from: u64,
            /// The last sequence number covered.
            upto: u64,
            /// Events sent.
            count: u64,
        },
        /// The events after `from` are no longer all available: refetch state over REST.
        ResumeFailed {
            /// As asked.
            from: u64,
            /// Oldest sequence number the node can still resume after.
            oldest: u64,
            /// Why.
            reason: String,
        },
        /// A journaled event: a quote, or one of the account's own.
        Event {
            /// What happened.
            event: EventKind,
        },
        /// A position after a fill (same `seq` as the fill).
        Position {
            /// Account.
            account: u32,
            /// Symbol id.
            symbol: u16,
            /// Signed quantity (quantity units).
            qty: i64,
            /// Signed cost of the open quantity (money units).
            cost: i64,
            /// Realized P&L so far, fees not included (money units).
            realized: i64,
            /// Fees paid in the symbol (money units).
            fees: i64,
        },
        /// The answer to a `signal`, as `POST /v1/signals` would give it.
        SignalResult {
            /// From the request.
            request_id: u64,
            /// HTTP status.
            status: u16,
            /// HTTP body (JSON).
            body: String,
        },
        /// The answer to a `ping`.
        Pong {
            /// From the ping.
            id: u64,
        },
        /// A request could not be served; the connection stays open.
        Error {
            /// Stable code.
            code: String,
            /// What went wrong.
            message: String,
        },
    }
}

/// Accepts a JSON string as is, or any other JSON value as its text.
fn json_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        v => Ok(v.to_string()),
    }
}

/// A symbol, as the welcome message lists it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Serialize)]
pub struct SymbolInfo {
    /// Id used in events.
    pub id: u16,
    /// Name.
    pub name: String,
    /// Decimals of prices.
    pub price_decimals: u8,
    /// Decimals of quantities.
    pub qty_decimals: u8,
}

/// What the node sends: the node's last sequence number when it was made (the event's own for
/// events), its engine time in ns, and the message.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Serialize)]
pub struct ServerMsg {
    /// Node sequence number.
    pub seq: u64,
    /// Engine time (ns since the Unix epoch).
    pub ts: u64,
    /// The message.
    #[serde(flatten)]
    pub body: ServerBody,
}

/// Appends `msg` as one binary entry (`u32 length ‖ archive`) to `out`.
pub fn encode_entry(out: &mut Vec<u8>, msg: &ServerMsg) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let buf = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Panic>(msg, std::mem::take(out))
        .unwrap_or_else(|never| match never {});
    *out = buf;
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends `msg` as JSON to `out`.
pub fn encode_json(out: &mut Vec<u8>, msg: &ServerMsg) {
    // Writing JSON into a Vec fails only for maps with non-string keys, which these have none of.
    let _ = serde_json::to_writer(&mut *out, msg);
}

/// Decodes a binary server frame.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<ServerMsg>, String> {
    let header = frame.get(..FRAME_HEADER).ok_or("frame shorter than its header")?;
    let version = u16::from_le_bytes([header[0], header[1]]);
    if version != VERSION {
        return Err(format!("protocol version {version}, expected {VERSION}"));
    }
    let count = u16::from_le_bytes([header[2], header[3]]) as usize;
    let mut msgs = Vec::with_capacity(count);
    let mut rest = &frame[FRAME_HEADER..];
    for _ in 0..count {
        let len =
            rest.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or("entry cut short")?;
        let body = rest.get(4..4 + len).ok_or("entry cut short")?;
        msgs.push(rkyv::from_bytes::<ServerMsg, rkyv::rancor::Error>(body).map_err(|e| e.to_string())?);
        rest = &rest[4 + len..];
    }
    if !rest.is_empty() {
        return Err("bytes after the last entry".into());
    }
    Ok(msgs)
}

/// A binary client frame for `msg`.
pub fn encode_client(msg: &ClientMsg) -> Vec<u8> {
    let out = VERSION.to_le_bytes().to_vec();
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Panic>(msg, out).unwrap_or_else(|never| match never {})
}

/// Why a client frame was refused: the close code and reason to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Close code.
    pub code: u16,
    /// Reason (at most 123 bytes, as a close frame allows).
    pub reason: String,
}

impl Refused {
    fn new(code: u16, reason: impl Into<String>) -> Refused {
        let mut reason = reason.into();
        if reason.len() > 120 {
            let mut end = 120;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Refused { code, reason }
    }
}

/// Decodes a binary client frame, validating the archive first.
pub fn decode_client(frame: &[u8]) -> Result<ClientMsg, Refused> {
    let Some((v, body)) = frame.split_first_chunk::<2>() else {
        return Err(Refused::new(close::INVALID, "message shorter than its version"));
    };
    let version = u16::from_le_bytes(*v);
    if version != VERSION {
        return Err(Refused::new(close::UNSUPPORTED, format!("protocol version {version} is not supported (1)")));
    }
    rkyv::from_bytes::<ClientMsg, rkyv::rancor::Error>(body)
        .map_err(|e| Refused::new(close::INVALID, format!("malformed message: {e}")))
}

/// Parses a JSON client frame.
pub fn decode_client_json(text: &[u8]) -> Result<ClientMsg, Refused> {
    serde_json::from_slice(text).map_err(|e| Refused::new(close::INVALID, format!("malformed message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::market::Quote;
    use crate::engine::types::SymbolId;

    #[test]
    fn client_messages_round_trip_in_both_modes() {
        let msgs = [
            ClientMsg::Auth { key: "k".into() },
            ClientMsg::Subscribe { channels: vec!["account".into(), "quotes:BTC-USD".into()], resume_from: Some(7) },
            ClientMsg::Unsubscribe { channels: vec!["account".into()] },
            ClientMsg::Signal { request_id: 3, body: r#"{"symbol":"BTC-USD"}"#.into() },
            ClientMsg::Ping { id: 9 },
        ];
        for m in msgs {
            assert_eq!(decode_client(&encode_client(&m)).unwrap(), m);
            assert_eq!(decode_client_json(&serde_json::to_vec(&m).unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn a_json_signal_body_may_be_an_object() {
        let m = decode_client_json(br#"{"type":"signal","request_id":1,"body":{"symbol":"ETH-USD","action":"buy"}}"#);
        assert_eq!(
            m.unwrap(),
            ClientMsg::Signal { request_id: 1, body: r#"{"symbol":"ETH-USD","action":"buy"}"#.into() }
        );
    }

    #[test]
    fn bad_client_frames_are_refused_with_a_code() {
        assert_eq!(decode_client(&[]).unwrap_err().code, close::INVALID);
        assert_eq!(decode_client(&[2, 0, 1, 2, 3]).unwrap_err().code, close::UNSUPPORTED);
        let mut good = encode_client(&ClientMsg::Ping { id: 1 });
        good.truncate(good.len() - 3);
        assert_eq!(decode_client(&good).unwrap_err().code, close::INVALID);
        for junk in [&[1u8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..], &[1, 0, 9, 9, 9, 9, 9, 9, 9]] {
            assert_eq!(decode_client(junk).unwrap_err().code, close::INVALID);
        }
        assert_eq!(decode_client_json(b"{\"type\":\"nope\"}").unwrap_err().code, close::INVALID);
        assert_eq!(decode_client_json(b"{\"type\":\"ping\",\"extra\":1}").unwrap_err().code, close::INVALID);
    }

    #[test]
    fn server_frames_decode_to_what_was_encoded() {
        let quote = Quote { symbol: SymbolId(1), bid: 10, ask: 12, bid_size: 1, ask_size: 2, ts: 5 };
        let msgs = vec![
            ServerMsg { seq: 4, ts: 5, body: ServerBody::Event { event: EventKind::Quote(quote) } },
            ServerMsg { seq: 4, ts: 6, body: ServerBody::Pong { id: 2 } },
        ];
        let mut frame = VERSION.to_le_bytes().to_vec();
        frame.extend_from_slice(&2u16.to_le_bytes());
        for m in &msgs {
            encode_entry(&mut frame, m);
        }
        assert_eq!(decode_frame(&frame).unwrap(), msgs);
        let mut json = Vec::new();
        encode_json(&mut json, &msgs[1]);
        assert_eq!(String::from_utf8(json).unwrap(), r#"{"seq":4,"ts":6,"type":"pong","id":2}"#);
    }
}
