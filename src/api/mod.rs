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

#[cfg(test)]
mod tests {
    /// Every error code the API layer can answer with is listed in docs/api.md.
    #[test]
    fn every_error_code_is_documented() {
        let doc = include_str!("../../docs/api.md");
        let sources = [
            include_str!("routes.rs"),
            include_str!("admin.rs"),
            include_str!("body.rs"),
            include_str!("../error.rs"),
            include_str!("../http.rs"),
            include_str!("../history/mod.rs"),
            include_str!("../history/postgres.rs"),
            include_str!("../history/recent.rs"),
        ];
        let mut codes = Vec::new();
        for src in sources {
            for (i, _) in src.match_indices("\"") {
                let rest = &src[i + 1..];
                let Some(end) = rest.find('"') else { continue };
                let word = &rest[..end];
                let (family, name) = word.split_once('.').unwrap_or(("", ""));
                let families = [
                    "json", "request", "auth", "admin", "rate", "route", "symbol", "order", "account", "key", "market",
                    "node", "journal", "history",
                ];
                if families.contains(&family)
                    && !name.is_empty()
                    && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
                {
                    codes.push(word);
                }
            }
        }
        codes.sort();
        codes.dedup();
        assert!(codes.len() >= 20, "{codes:?}");
        for code in codes {
            assert!(doc.contains(&format!("`{code}`")), "{code} is not in docs/api.md");
        }
    }
}
