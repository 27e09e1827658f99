//! The HTTP API as plain functions: a [`Request`] view in, a [`Response`] out.
//!
//! Nothing here knows about sockets or hyper: the [`crate::http`] glue fills a `Request` from
//! hyper's parts and copies the `Response` back. That keeps every route testable in-process and
//! lets the signal route run without allocating (the answer is written into a reused buffer).

pub mod admin;
pub mod body;
pub mod render;
mod routes;

pub use crate::error::{ApiError, Detail};
pub use crate::node::request::{Answer, Later, Method, Pending, Request, Response, JSON};
pub use admin::Admin;
pub use routes::Public;
