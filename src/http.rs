//! hyper 1 (HTTP/1.1) on glommio: the socket adapter, a timer, the accept loop with its
//! connection cap, body limits and deadlines, and graceful shutdown.
//!
//! Everything here is I/O: a request's life cycle is [`crate::node::serve`], and what it *means*
//! is decided by the routes it is handed (the API's). A connection task borrows the node only for
//! the synchronous calls of that life cycle.
//!
//! Hostile clients are bounded: headers, bodies and writes each have a deadline, a request counts
//! as in flight only once its body is in, and at the connection cap a new connection evicts the
//! oldest one that has not yet shown a valid key, so anonymous connections cannot keep out a
//! trader who has.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::io::Write as _;
use std::os::fd::{FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::{AcceptedTcpStream, TcpListener, TcpStream};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;

use crate::error::ApiError;
use crate::error::Code;
use crate::node::request::{Method, Request, Response};
use crate::node::{Node, Routes};
use crate::shutdown::Shutdown;

/// Bytes read from the socket per call: a request's headers and a signal body fit easily.
const READ_CHUNK: usize = 4096;

/// Adapts a futures-io stream to hyper's I/O traits.
///
/// hyper hands over uninitialised buffer space; rather than zeroing all of it on every read
/// (measured at 3% of the hot core under load), the socket is read into a small buffer of our
/// own and only the bytes received are copied on.
pub struct Io<S> {
    stream: S,
    chunk: Box<[u8; READ_CHUNK]>,
    /// How long a write may wait for the client to read (none: forever).
    write_timeout: Option<Duration>,
    /// Armed when a write first has to wait; cleared by any progress.
    stalled: Option<glommio::timer::Timer>,
}

impl<S> Io<S> {
    /// Wraps a stream.
    pub fn new(stream: S) -> Self {
        Io { stream, chunk: Box::new([0; READ_CHUNK]), write_timeout: None, stalled: None }
    }

    /// Wraps a stream whose writes fail with `TimedOut` after waiting `limit` for the client to
    /// read: a client that never reads its answers does not hold its connection forever.
    pub fn with_write_timeout(stream: S, limit: Duration) -> Self {
        Io { write_timeout: Some(limit), ..Io::new(stream) }
    }

    /// `Pending` from a write: arms the deadline, or reports that it passed.
    fn write_waits(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(limit) = self.write_timeout else { return Poll::Pending };
        let timer = self.stalled.get_or_insert_with(|| glommio::timer::Timer::new(limit));
        match Pin::new(timer).poll(cx) {
            Poll::Ready(_) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client did not read its answer in time")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for Io<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(READ_CHUNK);
        match Pin::new(&mut this.stream).poll_read(cx, &mut this.chunk[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&this.chunk[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for Io<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => this.write_waits(cx),
            done => {
                this.stalled = None;
                done
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // glommio reports NotConnected when the peer already left: that is a clean close.
        match Pin::new(&mut self.stream).poll_close(cx) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// hyper's timer on glommio's timers (hyper needs one for the header-read timeout).
#[derive(Clone, Copy, Debug)]
pub struct GlommioTimer;

/// A sleep that registers its glommio timer only when first polled. hyper arms a header-read
/// timeout for every request but polls it only when the headers are not all there yet; under load
/// they usually are, and the timer never touches the reactor.
struct LocalSleep {
    deadline: Instant,
    timer: Option<glommio::timer::Timer>,
}

// SAFETY: hyper requires `Send + Sync` sleeps, but ours never leave the executor thread: an
// HTTP/1 connection is driven by one `spawn_local` task that is never sent elsewhere, and the
// sleep is created, polled and dropped by that task only.
unsafe impl Send for LocalSleep {}
// SAFETY: as above; no shared reference to the sleep exists outside its task.
unsafe impl Sync for LocalSleep {}

impl Future for LocalSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let timer = match &mut this.timer {
            Some(t) => t,
            None => {
                let now = Instant::now();
                if now >= this.deadline {
                    return Poll::Ready(());
                }
                this.timer.insert(glommio::timer::Timer::new(this.deadline - now))
            }
        };
        Pin::new(timer).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for LocalSleep {}

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LocalSleep { deadline, timer: None })
    }
}

/// HTTP settings.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Time allowed for a request's headers.
    pub header_read_timeout: Duration,
    /// Time allowed for a request's body, once its headers are in.
    pub body_read_timeout: Duration,
    /// Time a write may wait for the client to read.
    pub write_timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight work.
    pub shutdown_grace: Duration,
}

/// A listener's open connections, oldest first.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: BTreeMap<u64, Admitted>,
}

/// What a listener keeps of one of its connections.
struct Admitted {
    /// Set once a request on it showed a valid key (or, on the admin listener, the token).
    trusted: Rc<Cell<bool>>,
    /// Ends the connection at once.
    evict: Shutdown,
}

impl Connections {
    /// Makes room for one more connection under `cap`: when full, evicts the oldest connection
    /// that never showed a valid key. `None`: every connection is a trusted one, so the new one
    /// is refused; `Some(true)`: one was evicted.
    fn make_room(&mut self, cap: usize) -> Option<bool> {
        if self.open.len() < cap {
            return Some(false);
        }
        let oldest_anonymous = self.open.iter().find(|(_, c)| !c.trusted.get()).map(|(id, _)| *id);
        let evicted = oldest_anonymous.and_then(|id| self.open.remove(&id))?;
        evicted.evict.trigger();
        Some(true)
    }

    fn admit(&mut self) -> (u64, Rc<Cell<bool>>, Shutdown) {
        self.next_id += 1;
        let (trusted, evict) = (Rc::new(Cell::new(false)), Shutdown::new());
        self.open.insert(self.next_id, Admitted { trusted: trusted.clone(), evict: evict.clone() });
        (self.next_id, trusted, evict)
    }
}

/// Accepts connections until `shutdown` fires, then stops accepting, lets in-flight requests
/// finish (up to the grace period) and returns.
pub async fn serve<R: Routes + 'static>(
    mut listener: Acceptor,
    node: Rc<RefCell<Node>>,
    routes: Rc<R>,
    opts: HttpOptions,
    shutdown: Shutdown,
) {
    let conns = Rc::new(RefCell::new(Connections::default()));
    // Connections of the public API count in `/metrics`; the admin API's do not.
    let counted = routes.counted();
    while let Some(stream) = listener.next(&shutdown).await.map(AcceptedTcpStream::bind_to_executor) {
        match conns.borrow_mut().make_room(opts.max_connections) {
            Some(false) => {}
            Some(true) => node.borrow_mut().metrics.connections_evicted += 1,
            None => {
                node.borrow_mut().metrics.connections_refused += 1;
                glommio::spawn_local(refuse(stream)).detach();
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let (id, trusted, evict) = conns.borrow_mut().admit();
        if counted {
            node.borrow_mut().connections += 1;
        }
        let (node, routes, conns, shutdown) = (node.clone(), routes.clone(), conns.clone(), shutdown.clone());
        glommio::spawn_local(async move {
            connection(stream, node.clone(), routes, opts, (shutdown, evict), trusted).await;
            conns.borrow_mut().open.remove(&id);
            if counted {
                node.borrow_mut().connections -= 1;
            }
        })
        .detach();
    }
    let what = listener.what.clone();
    drop(listener);
    let deadline = Instant::now() + opts.shutdown_grace;
    let open = || conns.borrow().open.len();
    while open() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if open() > 0 {
        log::warn!("{what}: {} connection(s) still open after the grace period", open());
    }
}

/// A listening socket and its accept loop.
///
/// When the process is out of descriptors (EMFILE, ENFILE), a connection cannot be accepted and
/// would wait in the backlog until its client gives up. The acceptor keeps one descriptor in
/// reserve for that moment: it lets it go, accepts the waiting connection, answers it
/// `503 node.too_many_connections` and closes it, then takes the reserve back. Failures are
/// logged at most once a second, with their count.
pub struct Acceptor {
    listener: TcpListener,
    fd: RawFd,
    what: String,
    failures: u64,
    reported: Option<Instant>,
}

/// The descriptor kept in reserve for refusing connections when the process has no other
/// (`/dev/null`, opened once; −1 while an acceptor has let it go).
static RESERVE: AtomicI32 = AtomicI32::new(-1);

fn open_reserve() -> RawFd {
    // SAFETY: a C string literal and plain flags.
    unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }
}

impl Acceptor {
    /// Takes over a bound, listening, non-blocking socket.
    ///
    /// # Safety
    /// `fd` must be such a socket, owned by the caller and given up here (as by `into_raw_fd`).
    pub unsafe fn from_raw_fd(fd: RawFd, what: &str) -> Acceptor {
        if RESERVE.load(Ordering::Acquire) < 0 {
            let fd = open_reserve();
            if RESERVE.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire).is_err() && fd >= 0 {
                // SAFETY: our own descriptor, opened just now and not shared.
                libc::close(fd);
            }
        }
        // SAFETY: the caller's promise, passed on.
        Acceptor { listener: TcpListener::from_raw_fd(fd), fd, what: what.to_string(), failures: 0, reported: None }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr().map_err(io::Error::from)
    }

    /// The next connection, not yet bound to an executor (it may be handed to another), or
    /// `None` once `shutdown` fires. A failed accept is counted, reported and retried.
    pub async fn next(&mut self, shutdown: &Shutdown) -> Option<AcceptedTcpStream> {
        loop {
            let accepted = futures_lite::future::or(async { Some(self.listener.shared_accept().await) }, async {
                shutdown.wait().await;
                None
            });
            let e = match accepted.await? {
                Ok(s) => return Some(s),
                Err(e) => io::Error::from(e),
            };
            let out_of_descriptors = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
            let refused = out_of_descriptors && self.refuse_with_reserve();
            self.failures += 1;
            if self.reported.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                let how = if refused { "; the waiting connection was refused" } else { "" };
                log::warn!("{}: accept failed {} time(s) in the last second: {e}{how}", self.what, self.failures);
                self.failures = 0;
                self.reported = Some(Instant::now());
            }
            if !refused {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// Refuses one waiting connection with the reserve descriptor; `false` when there was none
    /// (another acceptor has it, or nothing was waiting).
    fn refuse_with_reserve(&mut self) -> bool {
        let reserve = RESERVE.swap(-1, Ordering::AcqRel);
        if reserve < 0 {
            return false;
        }
        const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 96\r\n\r\n{\"error\":{\"code\":\"node.too_many_connections\",\"message\":\"the node is out of descriptors; retry\"}}";
        // SAFETY: `reserve` is ours to close; `self.fd` is the listening socket (non-blocking, so
        // accept4 returns at once); the accepted descriptor is written once and closed here.
        let accepted = unsafe {
            libc::close(reserve);
            let conn = libc::accept4(
                self.fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            );
            if conn >= 0 {
                libc::send(conn, REFUSAL.as_ptr().cast(), REFUSAL.len(), libc::MSG_NOSIGNAL);
                libc::close(conn);
            }
            conn >= 0
        };
        RESERVE.store(open_reserve(), Ordering::Release);
        accepted
    }
}

/// Answers 503 and closes: the connection cap is reached. A client that does not read the answer
/// within a second is dropped anyway.
async fn refuse(stream: TcpStream) {
    let _ = futures_lite::future::or(write_refusal(stream), glommio::timer::sleep(Duration::from_secs(1))).await;
}

async fn write_refusal(mut stream: TcpStream) {
    let mut body = Vec::new();
    ApiError::new(Code::NodeTooManyConnections, "the node is at its connection limit; retry later").write(&mut body);
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.close().await;
}

/// Serves one connection until it ends, the node shuts down (gracefully: in-flight requests
/// finish), or the listener evicts it to make room (at once).
async fn connection<R: Routes + 'static>(
    stream: TcpStream,
    node: Rc<RefCell<Node>>,
    routes: Rc<R>,
    opts: HttpOptions,
    (shutdown, evict): (Shutdown, Shutdown),
    trusted: Rc<Cell<bool>>,
) {
    // One answer buffer per connection, reused by every request on it.
    let answer = Rc::new(RefCell::new(Response::with_capacity(4096)));
    let service = service_fn(move |req| {
        let (node, routes, answer, trusted) = (node.clone(), routes.clone(), answer.clone(), trusted.clone());
        async move { Ok::<_, Infallible>(handle(req, &node, &answer, &*routes, &opts, &trusted).await) }
    });
    let conn = http1::Builder::new()
        .timer(GlommioTimer)
        .header_read_timeout(opts.header_read_timeout)
        .keep_alive(true)
        .serve_connection(Io::with_write_timeout(stream, opts.write_timeout), service);
    let mut conn = std::pin::pin!(conn);
    let finished = futures_lite::future::or(async { Some(Some(conn.as_mut().await)) }, async {
        futures_lite::future::or(
            async {
                shutdown.wait().await;
                Some(None)
            },
            async {
                evict.wait().await;
                None
            },
        )
        .await
    })
    .await;
    let result = match finished {
        Some(Some(r)) => r,
        Some(None) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        None => return,
    };
    if let Err(e) = result {
        if !e.is_incomplete_message() {
            log::debug!("connection ended: {e}");
        }
    }
}

const TOO_LARGE: ApiError<'static> =
    ApiError::new(Code::RequestTooLarge, "the request body is larger than the limit (http.max_body_bytes)");
const BODY_TOO_SLOW: ApiError<'static> = ApiError::new(
    Code::RequestTimeout,
    "the request body did not arrive within http.body_read_timeout_ms of its headers",
);

/// Turns a hyper request into the node's view of it, reads its body within the limits, serves it
/// through the request life cycle ([`crate::node::serve`]), and turns the answer back.
async fn handle<R: Routes>(
    req: hyper::Request<Incoming>,
    node: &RefCell<Node>,
    answer: &RefCell<Response>,
    routes: &R,
    opts: &HttpOptions,
    trusted: &Cell<bool>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The body is read before the request counts as in flight: a client that sends it slowly (or
    // never) holds its own connection until the deadline, not a slot that traders need.
    let body = if declared.is_some_and(|n| n > opts.max_body_bytes as u64) {
        Err(TOO_LARGE)
    } else {
        let read = read_body(body, opts.max_body_bytes);
        let late = glommio::timer::sleep(opts.body_read_timeout);
        match futures_lite::future::or(async { Some(read.await) }, async {
            late.await;
            None
        })
        .await
        {
            Some(read) => read.map_err(|e| e.unwrap_or(TOO_LARGE)),
            None => Err(BODY_TOO_SLOW),
        }
    };
    // Taken out of the connection's slot (a move, no copy) while the request may wait for the
    // journal, and put back for the next request.
    let slot = answer;
    let mut answer = std::mem::take(&mut *slot.borrow_mut());
    let header = |name: &str| parts.headers.get(name).map(HeaderValue::as_bytes);
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::new(Method::parse(parts.method.as_str()), path_and_query);
    request.authorization = header("authorization");
    request.x_api_key = header("x-api-key");
    request.content_type = header("content-type");
    request.if_none_match = header("if-none-match");
    request.forwarded = header(crate::node::request::FORWARDED_HEADER).is_some();
    let request = match &body {
        Ok(bytes) => {
            request.body = bytes;
            Ok(&request)
        }
        Err(e) => Err(*e),
    };
    crate::node::serve(node, routes, request, &mut answer, crate::clock::now()).await;
    if answer.authenticated {
        trusted.set(true);
    }
    let response = to_hyper(&answer);
    *slot.borrow_mut() = answer;
    response
}

/// Reads a body of at most `limit` bytes. A body that arrives in one frame (the usual case) is
/// used as it is, without the copy and buffer list of a general collect. `Err(None)`: too large.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, Option<ApiError<'static>>> {
    let unreadable = || Some(ApiError::new(Code::RequestBodyUnreadable, "the request body could not be read"));
    let mut first: Option<Bytes> = None;
    let mut rest: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| unreadable())?.into_data() else { continue };
        // Once a second frame arrived, `rest` holds the first one too.
        let so_far = rest.as_ref().map_or_else(|| first.as_ref().map_or(0, Bytes::len), |r| r.len());
        if so_far + data.len() > limit {
            return Err(None);
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut joined = bytes::BytesMut::with_capacity(f.len() + data.len());
                joined.extend_from_slice(f);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(r)) => r.extend_from_slice(&data),
        }
    }
    Ok(match rest {
        Some(r) => r.freeze(),
        None => first.unwrap_or_default(),
    })
}

fn to_hyper(r: &Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::copy_from_slice(&r.body)));
    *out.status_mut() = hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    *out.headers_mut() = hyper::HeaderMap::with_capacity(8);
    let h = out.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    let num = |v: u64| HeaderValue::from(v);
    if let Some(s) = r.retry_after {
        h.insert(hyper::header::RETRY_AFTER, num(u64::from(s)));
    }
    if let Some(a) = r.rate {
        h.insert(HeaderName::from_static("x-ratelimit-limit"), num(u64::from(a.limit)));
        h.insert(HeaderName::from_static("x-ratelimit-remaining"), num(u64::from(a.remaining)));
        h.insert(HeaderName::from_static("x-ratelimit-reset"), num(u64::from(a.reset_secs)));
    }
    if let Some(ns) = r.signal_to_order_ns {
        // Milliseconds with microsecond precision: "s2o;dur=0.004" is 4 µs.
        let micros = ns / 1_000;
        let mut text = [0u8; 48];
        let mut w = &mut text[..];
        let _ = write!(w, "s2o;dur={}.{:03}", micros / 1_000, micros % 1_000);
        let len = 48 - w.len();
        if let Ok(v) = HeaderValue::from_bytes(&text[..len]) {
            h.insert(HeaderName::from_static("server-timing"), v);
        }
    }
    if r.idempotent_replay {
        h.insert(HeaderName::from_static("idempotent-replay"), HeaderValue::from_static("true"));
    }
    if let Some(c) = r.cache_control {
        h.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static(c));
        // The answer is per key: a shared cache must key on it.
        h.insert(hyper::header::VARY, HeaderValue::from_static("Authorization, X-API-Key"));
    } else if r.no_store {
        h.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Some(tag) = r.etag.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
        h.insert(hyper::header::ETAG, tag);
    }
    if let Some(allow) = r.allow {
        h.insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    }
    if r.close {
        h.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    out
}
