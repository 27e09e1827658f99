//! Where orders go after risk: the venues, implementations of the engine's [`Venue`] port.
//!
//! A venue is sans-I/O like the engine: it receives orders and quotes with the current time and
//! reports executions into a buffer the engine hands it. A venue that talks to the outside world
//! reports asynchronously, through later calls, instead of at once.

pub mod fix;
mod gate;
mod paper;

pub use gate::Gated;
pub use paper::{PaperConfig, PaperVenue};

pub use crate::engine::venue::{Execution, NoVenue, Venue};
