//! Time as the node counts it: nanoseconds since the Unix epoch. Only `clock` reads the wall
//! clock; everything else is handed the time in these units.

/// Nanoseconds since the Unix epoch.
pub type Nanos = u64;

/// Nanoseconds in one second.
pub const SECOND: Nanos = 1_000_000_000;
/// Nanoseconds in one day.
pub const DAY: Nanos = 86_400 * SECOND;
