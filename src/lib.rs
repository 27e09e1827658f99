//! # signalgate
//!
//! A single-node, low-latency trading appliance: traders send signals over HTTP (or
//! TradingView-style webhooks); the node authenticates them, applies pre-trade risk checks,
//! turns them into orders in microseconds and executes them against a venue.
//!
//! A tour, from the outside in:
//! - [`server`] starts the node: it checks the [`config`], binds listeners, and runs one pinned
//!   glommio executor per core of the `[topology]`.
//! - [`http`] adapts hyper 1 to glommio's sockets; [`node`] is the hot core's state and
//!   [`api`] turns requests into engine commands and answers — without allocating on the
//!   signal path.
//! - [`engine`] is sans-I/O: commands in, events out, single writer. [`venue`] is where
//!   orders go (the [`venue::PaperVenue`] simulator first).
//! - [`json`] and [`fixed`] read and write the wire format without floats or heap.
#![warn(missing_docs)]

pub mod alloc;
pub mod api;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod cores;
pub mod engine;
pub mod error;
pub mod fixed;
pub mod history;
pub mod http;
pub mod journal;
pub mod json;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod postgres;
pub mod quote_sim;
pub mod rate_limit;
pub mod server;
pub mod shutdown;
pub mod time;
pub mod tls;
pub mod tune;
pub mod venue;
pub mod venue_link;
pub mod ws;
