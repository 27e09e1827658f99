//! The wall clock, read in one place: the engine is handed time, never reads it.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::types::Nanos;

/// Nanoseconds since the Unix epoch.
pub fn now() -> Nanos {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as Nanos)
}
