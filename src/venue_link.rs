//! The connection to a FIX venue, on the hot core: it connects (over TLS when asked), hands the
//! venue what it reads, writes what the venue sends, lets the session's clock run, and
//! reconnects with backoff after a drop. The venue itself ([`crate::venue::FixVenue`]) is
//! sans-I/O; every byte it acts on reaches it through here, and every execution it reports is
//! journaled by the node like any other command's events.
//!
//! Nothing is written with a sequence number the journal does not cover: before each write the
//! connection waits until the event that reserved the session's outgoing numbers is durable
//! (at once, but for the first write of each block; see [`crate::venue::fix::session`]).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::config::VenueConfig;
use crate::node::Node;
use crate::shutdown::Shutdown;
use crate::venue::FixVenue;

/// How often the session's clock runs (heartbeats, test requests, reconciliation).
const TICK: Duration = Duration::from_millis(100);
/// The system's certificate authorities, when `venue.tls_ca_file` names none.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How the connection is made.
pub struct Link {
    host: String,
    port: u16,
    tls: Option<(futures_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    connect_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

impl Link {
    /// The link `[venue]` describes; an error says what is wrong with its TLS settings.
    pub fn new(v: &VenueConfig) -> Result<Link, String> {
        let tls = if v.tls {
            let roots = crate::tls::roots(if v.tls_ca_file.is_empty() { SYSTEM_ROOTS } else { &v.tls_ca_file })
                .map_err(|e| format!("venue.tls_ca_file: {e}"))?;
            let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("venue.tls: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = if v.tls_server_name.is_empty() { &v.host } else { &v.tls_server_name };
            let name = rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|e| format!("venue.tls_server_name: {name:?}: {e}"))?;
            Some((futures_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Link {
            host: v.host.clone(),
            port: v.port,
            tls,
            connect_timeout: Duration::from_millis(v.logon_timeout_ms),
            reconnect_min: Duration::from_millis(v.reconnect_min_ms),
            reconnect_max: Duration::from_millis(v.reconnect_max_ms),
        })
    }

    /// Keeps the session up until shutdown, then logs out.
    pub async fn run(self, node: Rc<RefCell<Node>>, shutdown: Shutdown) {
        let mut wait = self.reconnect_min;
        while !shutdown.is_triggered() {
            match self.connect().await {
                Ok(Stream::Plain(s)) => {
                    if converse(&node, s, &shutdown).await {
                        wait = self.reconnect_min;
                    }
                }
                Ok(Stream::Tls(s)) => {
                    if converse(&node, *s, &shutdown).await {
                        wait = self.reconnect_min;
                    }
                }
                Err(e) => log::warn!("fix: cannot connect to {}:{}: {e}", self.host, self.port),
            }
            lost(&node);
            if shutdown.is_triggered() {
                break;
            }
            log::info!("fix: reconnecting in {wait:?}");
            futures_lite::future::or(glommio::timer::sleep(wait), async {
                shutdown.wait().await;
            })
            .await;
            wait = (wait * 2).min(self.reconnect_max);
        }
    }

    async fn connect(&self) -> Result<Stream, String> {
        let (host, port) = (self.host.clone(), self.port);
        // Names resolve off the hot core.
        let addr: SocketAddr = glommio::executor()
            .spawn_blocking(move || {
                std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)).map(|mut a| a.next())
            })
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the name resolves to no address")?;
        let stream = TcpStream::connect_timeout(addr, self.connect_timeout).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        log::info!("fix: connected to {addr}");
        match &self.tls {
            None => Ok(Stream::Plain(stream)),
            Some((connector, name)) => {
                let handshake = connector.connect(name.clone(), stream);
                let timed = futures_lite::future::or(async { Some(handshake.await) }, async {
                    glommio::timer::sleep(self.connect_timeout).await;
                    None
                });
                match timed.await {
                    Some(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
                    Some(Err(e)) => Err(format!("TLS: {e}")),
                    None => Err("TLS: the handshake did not complete in time".into()),
                }
            }
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

fn fix(node: &mut Node) -> &mut FixVenue {
    node.engine.venue_mut().inner_mut().fix_mut().expect("the link runs only with a FIX venue")
}

/// Lets the venue act (on what it received, or on time passing) and journals what it reported.
fn act(node: &RefCell<Node>) {
    let mut n = node.borrow_mut();
    if n.journal.accepting() {
        n.engine.poll_venue(crate::clock::now());
        n.after_command();
    }
}

fn lost(node: &RefCell<Node>) {
    fix(&mut node.borrow_mut()).disconnected();
    act(node);
}

/// One connection's life: logon, messages both ways, the session's clock, until the connection
/// drops, the session ends or the node shuts down (then it logs out). Whether the session was
/// logged on at some point (the backoff starts over).
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(node: &Rc<RefCell<Node>>, stream: S, shutdown: &Shutdown) -> bool {
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    fix(&mut node.borrow_mut()).connected(crate::clock::now());
    act(node);
    let logons = fix(&mut node.borrow_mut()).status().counters.logons;
    let reader = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => {
                    log::warn!("fix: the venue closed the connection");
                    break;
                }
                Err(e) => {
                    log::warn!("fix: reading from the venue failed: {e}");
                    break;
                }
                Ok(n) => {
                    fix(&mut node.borrow_mut()).received(&buf[..n]);
                    act(node);
                    if fix(&mut node.borrow_mut()).broken() {
                        break;
                    }
                }
            }
        }
    };
    let ticker = async {
        loop {
            glommio::timer::sleep(TICK).await;
            act(node);
        }
    };
    let stop = async {
        shutdown.wait().await;
        fix(&mut node.borrow_mut()).logout(crate::clock::now());
        act(node);
        // The venue answers the Logout (and the writer sends ours meanwhile), or time is up.
        glommio::timer::sleep(Duration::from_secs(1)).await;
    };
    let writer = write_output(node, &mut wr);
    futures_lite::future::or(futures_lite::future::or(reader, writer), futures_lite::future::or(ticker, stop)).await;
    let _ = wr.close().await;
    fix(&mut node.borrow_mut()).status().counters.logons > logons
}

/// Writes what the venue sends as it appears, until the connection fails or the session ends
/// (after writing its last words).
async fn write_output<W: AsyncWrite + Unpin>(node: &RefCell<Node>, wr: &mut W) {
    let mut bytes: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut orders = Vec::with_capacity(1024);
    loop {
        std::future::poll_fn(|cx| {
            let mut n = node.borrow_mut();
            if n.venue_output_waiting() {
                Poll::Ready(())
            } else {
                n.wait_for_venue_output(cx.waker());
                Poll::Pending
            }
        })
        .await;
        // The numbers these messages carry are covered by a durable reservation.
        let reserved_at = node.borrow().engine.venue_reserved_at();
        if !crate::node::wait_durable(node, reserved_at).await {
            return;
        }
        let broken = {
            let mut n = node.borrow_mut();
            let f = fix(&mut n);
            f.take_output(&mut bytes, &mut orders);
            f.broken()
        };
        if !bytes.is_empty() {
            if let Err(e) = wr.write_all(&bytes).await {
                log::warn!("fix: writing to the venue failed: {e}");
                return;
            }
            if let Err(e) = wr.flush().await {
                log::warn!("fix: writing to the venue failed: {e}");
                return;
            }
            fix(&mut node.borrow_mut()).written(&mut orders, Instant::now());
            bytes.clear();
        }
        if broken {
            return;
        }
    }
}
