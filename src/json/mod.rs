//! A small JSON reader and writer that never allocate.
//!
//! The hot path reads flat request objects and writes flat answers; `serde_json` would allocate
//! for error messages and read decimals through `f64`. This module owns the byte-level grammar
//! only: it knows nothing of signals or orders.

mod reader;
mod writer;

pub use reader::{JsonStr, Reader, SyntaxError, Value};
pub use writer::Writer;
