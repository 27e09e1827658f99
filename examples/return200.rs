//! The node's HTTP stack answering every request and doing nothing else: the same glommio
//! executor (pinned, vendored rings), the same hyper adapter, timer and connection settings as
//! the node's hot core, with no API, engine or journal behind them. By default it is nginx's
//! `return 200` written with the node's stack, so `signalgate-bench ceiling` shows how much of
//! nginx's rate the stack itself reaches before any signal is handled (BENCHMARKS.md). Its
//! options add, alone or together, what the node asks of the stack for a signal:
//!
//! - `--read-body`: the request body is read to its end (`BodyExt::collect`);
//! - `--polls N`: the answer waits N times for a wake-up from another task, as a signal waits for
//!   the journal (its order's write, then its fill's); with `--wait-us US` that task lets US µs
//!   pass before each batch it wakes, as a journal write takes time;
//! - `--answer`: a 201 with the node's headers (content type, rate-limit headers, Server-Timing)
//!   and a signal answer's body.
//!
//! ```text
//! cargo build --release --example return200
//! target/release/examples/return200 127.0.0.1:8099 0 &        # address, core [options]
//! target/release/signalgate-bench ceiling --target http://127.0.0.1:8099 --key any \
//!     --node-core 0 --cpu 1 --connections 50 --duration 10 --rounds 5
//! ```

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use signalgate::http::{GlommioTimer, Io};

#[global_allocator]
static GLOBAL: signalgate::alloc::Allocator = signalgate::alloc::Allocator;

/// A signal answer of the size the node sends.
const ANSWER: &[u8] = br#"{"signal_id":null,"order":{"id":"1234567","symbol":"BTC-USD","side":"buy","qty":"0.01","filled_qty":"0.01","avg_price":"30001.50","status":"filled"},"position":{"symbol":"BTC-USD","qty":"0.01","avg_price":"30001.50"}}"#;

#[derive(Clone, Copy, Default)]
struct Options {
    read_body: bool,
    polls: usize,
    /// Time the waker task lets pass before each batch it wakes.
    wait: Duration,
    answer: bool,
}

/// Answers waiting for the waker task, and the waker task itself when it has nothing to wake: the
/// journal writer's role, without a journal.
#[derive(Default)]
struct Queue {
    waiting: Vec<Waker>,
    waker_task: Option<Waker>,
}

type Waiting = Rc<RefCell<Queue>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = || -> ! {
        eprintln!("usage: return200 ADDR CORE [--read-body] [--polls N [--wait-us US]] [--answer]");
        std::process::exit(2);
    };
    let (Some(addr), Some(core)) = (args.next(), args.next().and_then(|c| c.parse::<usize>().ok())) else { usage() };
    let mut opts = Options::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--read-body" => opts.read_body = true,
            "--answer" => opts.answer = true,
            "--polls" => opts.polls = args.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| usage()),
            "--wait-us" => {
                opts.wait = Duration::from_micros(args.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| usage()))
            }
            _ => usage(),
        }
    }
    LocalExecutorBuilder::new(Placement::Fixed(core))
        .name("return200")
        .io_memory(1 << 20)
        .spawn(move || async move {
            let listener = match TcpListener::bind(&addr) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("return200: cannot listen on {addr}: {e}");
                    std::process::exit(1);
                }
            };
            println!("return200: listening on {addr}, core {core}");
            let waiting: Waiting = Rc::default();
            if opts.polls > 0 {
                glommio::spawn_local(wake_all(waiting.clone(), opts.wait)).detach();
            }
            loop {
                let Ok(stream) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let waiting = waiting.clone();
                glommio::spawn_local(async move {
                    let service = service_fn(move |req| answer(req, opts, waiting.clone()));
                    let _ = http1::Builder::new()
                        .timer(GlommioTimer)
                        .header_read_timeout(Duration::from_secs(10))
                        .keep_alive(true)
                        .serve_connection(Io::new(stream), service)
                        .await;
                })
                .detach();
            }
        })
        .and_then(|executor| executor.join())
        .unwrap_or_else(|e| {
            eprintln!("return200: cannot run on core {core}: {e}");
            std::process::exit(1);
        });
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    opts: Options,
    waiting: Waiting,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    if opts.read_body {
        let _ = req.into_body().collect().await;
    }
    for _ in 0..opts.polls {
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if registered {
                return std::task::Poll::Ready(());
            }
            registered = true;
            let mut q = waiting.borrow_mut();
            q.waiting.push(cx.waker().clone());
            if let Some(w) = q.waker_task.take() {
                w.wake();
            }
            std::task::Poll::Pending
        })
        .await;
    }
    if !opts.answer {
        return Ok(hyper::Response::new(Full::new(Bytes::new())));
    }
    let mut out = hyper::Response::new(Full::new(Bytes::copy_from_slice(ANSWER)));
    *out.status_mut() = hyper::StatusCode::CREATED;
    let h = out.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(HeaderName::from_static("x-ratelimit-limit"), HeaderValue::from(1_000_000u64));
    h.insert(HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(999_999u64));
    h.insert(HeaderName::from_static("x-ratelimit-reset"), HeaderValue::from(60u64));
    h.insert(HeaderName::from_static("server-timing"), HeaderValue::from_static("s2o;dur=0.004"));
    Ok(out)
}

/// Wakes the waiting answers in batches, as the journal writer wakes the requests a write
/// covered; sleeps while none wait.
async fn wake_all(waiting: Waiting, wait: Duration) {
    let mut batch = Vec::new();
    loop {
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
        std::future::poll_fn(|cx| {
            let mut q = waiting.borrow_mut();
            if q.waiting.is_empty() {
                q.waker_task = Some(cx.waker().clone());
                return std::task::Poll::Pending;
            }
            std::mem::swap(&mut batch, &mut q.waiting);
            std::task::Poll::Ready(())
        })
        .await;
        for w in batch.drain(..) {
            w.wake();
        }
        futures_lite::future::yield_now().await;
    }
}
