//! No input makes the node panic: arbitrary bodies, paths, headers and methods go through the
//! real request handler (in process), and every answer is a well-formed JSON error or success.

use proptest::prelude::*;
use signalgate::api::{Method, Request};

#[path = "../bench/fixture.rs"]
#[allow(dead_code)]
mod fixture;

const PATHS: &[&str] = &[
    "/v1/signals",
    "/v1/orders",
    "/v1/orders?status=all&limit=3",
    "/v1/orders/1",
    "/v1/orders/18446744073709551616",
    "/v1/positions",
    "/v1/positions/BTC-USD/close",
    "/v1/account",
    "/v1/account/halt",
    "/v1/account/resume",
    "/v1/market/BTC-USD/quote",
    "/v1/market/ticks",
    "/health",
    "/nope",
];

fn json_fragments() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"symbol\"",
        "\"BTC-USD\"",
        "\"ETH-USD\"",
        "\"action\"",
        "\"buy\"",
        "\"sell\"",
        "\"close\"",
        "\"target\"",
        "\"qty\"",
        "\"0.01\"",
        "-1",
        "1e309",
        "\"NaN\"",
        "null",
        "true",
        "\"limit_price\"",
        "\"65000.00\"",
        "\"ticks\"",
        "\"bid\"",
        "\"ask\"",
        "\"mode\"",
        "\"reducing\"",
        "\"signal_id\"",
        "\"\\u00e9\"",
        "\"\\ud800\"",
        "0",
        "99999999999999999999999",
        "\"tif\"",
        "\"day\"",
        "\"notional\"",
        "\"side\"",
    ]);
    prop::collection::vec(pieces, 0..24).prop_map(|v| v.concat().into_bytes())
}

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![json_fragments(), prop::collection::vec(any::<u8>(), 0..128)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_request_gets_a_json_answer(
        path in prop::sample::select(PATHS),
        method in prop::sample::select(vec![Method::Get, Method::Post, Method::Put, Method::Delete, Method::Head, Method::Other]),
        body in bodies(),
        with_key in any::<bool>(),
        content_type in prop::sample::select(vec![None, Some(&b"application/json"[..]), Some(b"text/plain"), Some(b"image/png"), Some(b"\xff")]),
    ) {
        let mut f = fixture::Fixture::new(1);
        let auth = f.auth[0].clone();
        let mut req = Request::new(method, path);
        req.body = &body;
        req.content_type = content_type;
        if with_key {
            req.authorization = Some(auth.as_bytes());
        }
        let status = f.serve(&req, f.now + 1);
        prop_assert!((200..600).contains(&status));
        if method != Method::Head {
            let v: serde_json::Value = serde_json::from_slice(&f.resp.body).map_err(|e| TestCaseError::fail(format!("{e}: {:?}", String::from_utf8_lossy(&f.resp.body))))?;
            if status >= 400 {
                prop_assert!(v["error"]["code"].as_str().is_some_and(|c| !c.is_empty()));
                prop_assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
            }
        }
    }
}
