//! A small blocking client for the node's WebSocket stream, over tungstenite: what the tests and
//! the bench harness use, and a starting point for Rust clients.
//!
//! ```no_run
//! use signalgate::ws::client::{Client, Incoming};
//! use signalgate::ws::protocol::ClientMsg;
//! let mut c = Client::connect("127.0.0.1:8082".parse().unwrap(), "", Some("sk_...")).unwrap();
//! c.send(&ClientMsg::Subscribe { channels: vec!["quotes:BTC-USD".into()], resume_from: None }).unwrap();
//! while let Ok(Incoming::Messages(msgs)) = c.recv() {
//!     for m in msgs {
//!         println!("{} {:?}", m.seq, m.body);
//!     }
//! }
//! ```

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::protocol::{decode_frame, encode_client, ClientMsg, ServerMsg};

/// A connected client.
pub struct Client {
    ws: WebSocket<TcpStream>,
    json: bool,
}

/// What [`Client::recv`] got.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A binary frame's messages.
    Messages(Vec<ServerMsg>),
    /// A JSON frame's messages.
    Json(Vec<serde_json::Value>),
    /// The node closed the stream with this code and reason.
    Closed(u16, String),
}

/// Why a connection was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The node refused the upgrade: status and body.
    Refused(u16, String),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(status, body) => write!(f, "refused with {status}: {body}"),
            ConnectError::Other(e) => f.write_str(e),
        }
    }
}

impl Client {
    /// Opens `ws://addr/v1/ws?query` (`query` without `?`, e.g. `format=json`), sending `key` in
    /// an `X-API-Key` header when given.
    pub fn connect(addr: SocketAddr, query: &str, key: Option<&str>) -> Result<Client, ConnectError> {
        let other = |e: &dyn std::fmt::Display| ConnectError::Other(e.to_string());
        let url = if query.is_empty() { format!("ws://{addr}/v1/ws") } else { format!("ws://{addr}/v1/ws?{query}") };
        let mut req = url.into_client_request().map_err(|e| other(&e))?;
        if let Some(k) = key {
            req.headers_mut().insert("x-api-key", k.parse().map_err(|e| other(&e))?);
        }
        let stream = TcpStream::connect(addr).map_err(|e| other(&e))?;
        let _ = stream.set_nodelay(true);
        let config = WebSocketConfig::default().read_buffer_size(64 * 1024).write_buffer_size(0);
        match tungstenite::client::client_with_config(req, stream, Some(config)) {
            Ok((ws, _)) => Ok(Client { ws, json: query.split('&').any(|p| p == "format=json") }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
                Err(ConnectError::Refused(resp.status().as_u16(), body))
            }
            Err(e) => Err(other(&e)),
        }
    }

    /// Sends a message (binary, or JSON text on a `format=json` connection).
    pub fn send(&mut self, msg: &ClientMsg) -> Result<(), String> {
        let m = if self.json {
            Message::text(serde_json::to_string(msg).map_err(|e| e.to_string())?)
        } else {
            Message::binary(encode_client(msg))
        };
        self.ws.send(m).map_err(|e| e.to_string())
    }

    /// Sends a raw frame as is (for testing what the node does with bad input).
    pub fn send_raw(&mut self, m: Message) -> Result<(), String> {
        self.ws.send(m).map_err(|e| e.to_string())
    }

    /// Waits for the next frame with messages (answering pings on the way).
    pub fn recv(&mut self) -> Result<Incoming, String> {
        loop {
            match self.ws.read() {
                Ok(Message::Binary(b)) => return decode_frame(&b).map(Incoming::Messages),
                Ok(Message::Text(t)) => {
                    return serde_json::from_str(t.as_str()).map(Incoming::Json).map_err(|e| e.to_string())
                }
                Ok(Message::Close(c)) => {
                    let (code, reason) = c.map_or((1005, String::new()), |c| (u16::from(c.code), c.reason.to_string()));
                    return Ok(Incoming::Closed(code, reason));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(Incoming::Closed(1006, "connection closed".into()))
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Waits at most `timeout` for each read from now on.
    pub fn set_timeout(&mut self, timeout: Duration) {
        let _ = self.ws.get_mut().set_read_timeout(Some(timeout));
    }

    /// Closes the stream normally.
    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "".into() }));
        let _ = self.ws.flush();
    }

    /// The socket (to stop reading from it, or drop it without a close frame).
    pub fn socket(&mut self) -> &mut TcpStream {
        self.ws.get_mut()
    }
}
