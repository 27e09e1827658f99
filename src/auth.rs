//! API keys: how they are made, hashed and found in a request.
//!
//! A key is 32 random bytes from the OS, shown once as `sg_` + 64 hex digits; a cluster node
//! names itself in the keys it makes (`sg_<node_id>_` + 64 hex digits), so that nginx can send a
//! key's requests to the node that holds its account. The node keeps only its SHA-256; a
//! request's key is hashed and looked up, so a leaked state file or journal reveals no key.

use sha2::{Digest, Sha256};

/// Length of a key's text: `sg_` and 64 hex digits.
pub const KEY_LEN: usize = 3 + 64;

/// A new random key.
pub fn generate_key() -> std::io::Result<String> {
    generate_key_of(None)
}

/// A new random key, naming the cluster node that made it when there is one.
pub fn generate_key_of(node: Option<&str>) -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(std::io::Error::other)?;
    let mut key = String::with_capacity(KEY_LEN + node.map_or(0, |n| n.len() + 1));
    key.push_str("sg_");
    if let Some(n) = node {
        key.push_str(n);
        key.push('_');
    }
    for b in bytes {
        key.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        key.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    Ok(key)
}

/// A new random admin token (same form as a key, `sga_` prefix).
pub fn generate_admin_token() -> std::io::Result<String> {
    generate_key().map(|k| format!("sga_{}", &k[3..]))
}

/// SHA-256 of a key's text.
pub fn hash_key(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key a request presents in its headers: `Authorization: Bearer <key>` or `X-API-Key`.
pub fn key_from_headers<'a>(authorization: Option<&'a [u8]>, x_api_key: Option<&'a [u8]>) -> Option<&'a [u8]> {
    if let Some(v) = x_api_key {
        return Some(trim(v));
    }
    let v = authorization?;
    let (scheme, rest) = v.split_at(v.len().min(7));
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| trim(rest))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hex() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_LEN);
        assert!(a.starts_with("sg_") && a[3..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(hash_key(a.as_bytes()), hash_key(a.as_bytes()));
        assert_ne!(hash_key(a.as_bytes()), hash_key(b.as_bytes()));
        let c = generate_key_of(Some("node-1")).unwrap();
        assert!(c.starts_with("sg_node-1_") && c.len() == KEY_LEN + 7, "{c}");
    }

    #[test]
    fn headers_are_read_case_insensitively() {
        assert_eq!(key_from_headers(Some(b"Bearer abc"), None), Some(&b"abc"[..]));
        assert_eq!(key_from_headers(Some(b"bearer  abc "), None), Some(&b"abc"[..]));
        assert_eq!(key_from_headers(Some(b"Basic abc"), None), None);
        assert_eq!(key_from_headers(Some(b"Bearer x"), Some(b"y")), Some(&b"y"[..]));
        assert_eq!(key_from_headers(None, None), None);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
