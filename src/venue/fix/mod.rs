//! FIX 4.4, the protocol brokers and exchanges take orders in: [`codec`] reads and writes its
//! tag=value messages without allocating, [`session`] keeps a session (logon, heartbeats,
//! sequence numbers, gaps), and [`FixVenue`] turns orders into messages and the venue's
//! reports into executions.
//!
//! The codec is our own. The Rust FIX crates either build a message as maps of owned fields
//! (allocations per message, on the hot core) or are young and unsettled; a FIX 4.4 order-entry
//! client needs a small, fixed part of the standard, written here and fuzzed
//! (`fuzz/fuzz_targets/fix_messages.rs`).

pub mod codec;
pub mod session;
mod venue;

pub use venue::{FixSettings, FixVenue};
