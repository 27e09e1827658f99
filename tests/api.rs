//! The public API against the real binary: every route, every error answer, auth, rate limits,
//! idempotency and the kill switch.

mod support;

use serde_json::json;
use support::{bearer, Node, JSON};

fn signal(node: &Node, key: &str, body: &str) -> support::Resp {
    node.req("POST", "/v1/signals", &[("Authorization", &bearer(key)), JSON], body)
}

/// A BTC-USD limit price `fraction` of the current bid: an order at it rests, inside the collar.
fn resting_price(node: &Node, key: &str, fraction: f64) -> String {
    let q = node.req("GET", "/v1/market/BTC-USD/quote", &[("Authorization", &bearer(key))], "").json();
    let bid: f64 = q["bid"].as_str().unwrap().parse().unwrap();
    format!("{:.2}", (bid * fraction).floor())
}

#[test]
fn a_signal_becomes_a_filled_order_and_a_position() {
    let node = Node::start(&[]);
    let key = node.demo_key.clone();
    node.wait_for_quote(&key, "BTC-USD");
    let r = signal(&node, &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01","strategy":"s1"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    assert_eq!(v["signal_id"], json!(null));
    assert_eq!(v["order"]["symbol"], "BTC-USD");
    assert_eq!(v["order"]["side"], "buy");
    assert_eq!(v["order"]["qty"], "0.0100");
    assert_eq!(v["order"]["filled_qty"], "0.0100");
    assert_eq!(v["order"]["status"], "filled");
    assert!(v["order"]["avg_price"].as_str().unwrap().contains('.'));
    assert_eq!(v["position"]["qty"], "0.0100");
    let timing = r.header("server-timing").expect("Server-Timing");
    let ms: f64 = timing.strip_prefix("s2o;dur=").unwrap().parse().unwrap();
    assert!(ms >= 0.0 && timing.split('.').nth(1).unwrap().len() == 3, "{timing}");
    assert_eq!(r.header("x-ratelimit-limit"), Some("1200"));

    let id = v["order"]["id"].as_u64().unwrap();
    let auth = bearer(&key);
    let o = node.req("GET", &format!("/v1/orders/{id}"), &[("Authorization", &auth)], "");
    assert_eq!(o.status, 200);
    let o = o.json();
    assert_eq!(
        (o["order_type"].as_str(), o["tif"].as_str(), o["strategy"].as_str()),
        (Some("market"), Some("ioc"), Some("s1"))
    );
    let p = node.req("GET", "/v1/positions", &[("Authorization", &auth)], "").json();
    assert_eq!(p["positions"][0]["symbol"], "BTC-USD");
    assert_eq!(p["positions"][0]["qty"], "0.0100");
    let a = node.req("GET", "/v1/account", &[("Authorization", &auth)], "").json();
    assert_eq!(a["state"], "active");
    assert_eq!(a["tier"], "pro");
    assert!(a["fees"].as_str().unwrap() != "0.00");
}

#[test]
fn every_signal_action_and_target_idempotence() {
    let node = Node::start(&[]);
    let key = node.demo_key.clone();
    node.wait_for_quote(&key, "ETH-USD");
    let r = signal(&node, &key, r#"{"symbol":"ETH-USD","action":"target","target":"2"}"#);
    assert_eq!((r.status, r.json()["position"]["qty"].as_str()), (201, Some("2.000")));
    let r = signal(&node, &key, r#"{"symbol":"ETH-USD","action":"target","target":2}"#);
    assert_eq!(r.status, 200, "repeating a target places nothing");
    assert_eq!(r.json()["order"], json!(null));
    let r = signal(&node, &key, r#"{"symbol":"ETH-USD","action":"sell","qty":0.5}"#);
    assert_eq!(r.json()["position"]["qty"], "1.500");
    let r = signal(&node, &key, r#"{"symbol":"ETH-USD","action":"buy","notional":"100"}"#);
    assert_eq!(r.status, 201);
    let r = signal(&node, &key, r#"{"symbol":"ETH-USD","action":"close"}"#);
    assert_eq!((r.status, r.json()["position"]["qty"].as_str()), (201, Some("0.000")));
    let r = signal(&node, &key, r#"{"symbol":"ETH-USD","action":"close"}"#);
    assert_eq!((r.status, r.json()["order"].clone()), (200, json!(null)));
}

#[test]
fn targets_and_quotes_at_the_ends_of_the_number_range_are_refused_not_wrapped() {
    let node = Node::start(&[]);
    let key = node.demo_key.clone();
    node.wait_for_quote(&key, "BTC-USD");
    assert_eq!(signal(&node, &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#).status, 201);
    // i64::MIN in BTC-USD's units, while long: the difference does not fit an i64.
    for target in ["-922337203685477.5808", "922337203685477.5807"] {
        let r = signal(&node, &key, &format!(r#"{{"symbol":"BTC-USD","action":"target","target":"{target}"}}"#));
        assert_eq!((r.status, r.code().as_str()), (422, "risk.max_order_qty"), "{target}: {}", r.body);
        assert!(!r.body.contains("-922337203685477"), "no wrapped quantity in the message: {}", r.body);
    }
    let positions = node.req("GET", "/v1/positions", &[("Authorization", &bearer(&key))], "").json();
    assert_eq!(positions["positions"][0]["qty"], "0.0100", "{positions}");
    // A quote whose largest order would be worth more than any order may: refused.
    let tick = r#"{"ticks":[{"symbol":"BTC-USD","bid":"92233720368547758.06","ask":"92233720368547758.07"}]}"#;
    let r = node.req("POST", "/v1/market/ticks", &[JSON, ("Authorization", &bearer(&key))], tick);
    assert_eq!((r.status, r.code().as_str()), (422, "market.invalid_quote"), "{}", r.body);
    let r = node.req("GET", "/v1/account", &[("Authorization", &bearer(&key))], "");
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn the_same_signal_id_is_answered_once() {
    let node = Node::start(&[]);
    let key = node.demo_key.clone();
    node.wait_for_quote(&key, "BTC-USD");
    let body = r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01","signal_id":"tv-42"}"#;
    let first = signal(&node, &key, body);
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replay"), None);
    let again = signal(&node, &key, body);
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replay"), Some("true"));
    assert_eq!(again.json(), first.json());
    let orders = node.req("GET", "/v1/orders?status=all", &[("Authorization", &bearer(&key))], "").json();
    assert_eq!(orders["orders"].as_array().unwrap().len(), 1, "no second order");
}

#[test]
fn tradingview_webhooks_authenticate_with_a_passphrase() {
    let node = Node::start(&[]);
    let key = node.demo_key.clone();
    node.wait_for_quote(&key, "BTC-USD");
    let body = format!(r#"{{"passphrase":"{key}","symbol":"BTC-USD","action":"buy","qty":"0.001"}}"#);
    for ct in ["text/plain; charset=utf-8", "application/json"] {
        let r = node.req("POST", "/v1/signals", &[("Content-Type", ct)], &body);
        assert_eq!(r.status, 201, "{ct}: {}", r.body);
    }
    let r = node.req("POST", "/v1/signals", &[], &body);
    assert_eq!(r.status, 201, "no content type at all is accepted too");
    let r = node.req("POST", "/v1/signals", &[("Content-Type", "application/x-www-form-urlencoded")], &body);
    assert_eq!((r.status, r.code().as_str()), (415, "request.unsupported_media_type"));
    let bad = r#"{"passphrase":"sg_wrong","symbol":"BTC-USD","action":"buy","qty":"0.001"}"#;
    assert_eq!(node.req("POST", "/v1/signals", &[JSON], bad).code(), "auth.invalid_key");
}

#[test]
fn keys_are_checked_in_every_form() {
    let node = Node::start(&[]);
    let key = node.demo_key.clone();
    let body = r#"{"symbol":"BTC-USD","action":"close"}"#;
    let r = node.req("POST", "/v1/signals", &[JSON], body);
    assert_eq!((r.status, r.code().as_str()), (401, "auth.missing_key"));
    let r = node.req("POST", "/v1/signals", &[JSON, ("Authorization", "Bearer sg_nope")], body);
    assert_eq!((r.status, r.code().as_str()), (401, "auth.invalid_key"));
    let r = node.req("POST", "/v1/signals", &[JSON, ("X-API-Key", &key)], body);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = node.req("GET", "/v1/account", &[("Authorization", "Basic abc")], "");
    assert_eq!(r.code(), "auth.missing_key");
    // Revoked keys are refused with their own code.
    let (id, k2) = node.account("free", "1000", json!(null));
    let keys = node.admin("GET", &format!("/admin/accounts/{id}"), "").json();
    let key_id = keys["keys"][0]["key_id"].as_u64().unwrap();
    assert_eq!(node.req("GET", "/v1/account", &[("X-API-Key", &k2)], "").status, 200);
    assert_eq!(node.admin("DELETE", &format!("/admin/keys/{key_id}"), "").status, 200);
    let r = node.req("GET", "/v1/account", &[("X-API-Key", &k2)], "");
    assert_eq!((r.status, r.code().as_str()), (401, "auth.key_revoked"));
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let node = Node::start(&[]);
    let key = node.demo_key.clone();
    node.wait_for_quote(&key, "BTC-USD");
    let cases: &[(&str, u16, &str)] = &[
        (r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01""#, 400, "json.malformed"),
        (r#"{"symbol":"BTC-USD" "action":"buy"}"#, 400, "json.malformed"),
        ("", 400, "json.malformed"),
        (r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01","x":1}"#, 400, "request.unknown_field"),
        (r#"{"symbol":"BTC-USD","action":"buy"}"#, 400, "request.missing_field"),
        (r#"{"symbol":"BTC-USD","action":"buy","qty":"NaN"}"#, 400, "request.invalid_number"),
        (r#"{"symbol":"BTC-USD","action":"buy","qty":"-1"}"#, 400, "request.invalid_field"),
        (r#"{"symbol":"BTC-USD","action":"buy","qty":"0.000001"}"#, 400, "request.invalid_number"),
        (r#"{"symbol":"BTC-USD","action":"buy","qty":"99999999999999999999"}"#, 400, "request.invalid_number"),
        (r#"{"symbol":"BTC-USD","action":"buy","qty":1e400}"#, 400, "request.invalid_number"),
        (r#"{"symbol":"DOGE-USD","action":"buy","qty":"1"}"#, 422, "symbol.unknown"),
        (r#"{"symbol":"BTC-USD","action":"buy","qty":"1000"}"#, 422, "risk.max_order_qty"),
        (r#"{"symbol":"BTC-USD","action":"buy","qty":"10"}"#, 422, "risk.max_order_notional"),
        (r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01","limit_price":"1000"}"#, 422, "risk.price_collar"),
    ];
    let auth = bearer(&key);
    for (body, status, code) in cases {
        let r = node.req("POST", "/v1/signals", &[("Authorization", &auth), JSON], body);
        assert_eq!((r.status, r.code().as_str()), (*status, *code), "{body}: {}", r.body);
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(!msg.is_empty());
    }
    let malformed = node.req("POST", "/v1/signals", &[("Authorization", &auth), JSON], "{\"symbol\" 1}").json();
    assert!(malformed["error"]["message"].as_str().unwrap().contains("line 1, column 11"), "{malformed}");
    let orders = node.req("GET", "/v1/orders?status=all", &[("Authorization", &auth)], "").json();
    assert_eq!(orders["orders"], json!([]), "no order came from bad input");
    let r = node.req("GET", "/v1/market/DOGE-USD/quote", &[("Authorization", &auth)], "");
    assert_eq!((r.status, r.code().as_str()), (404, "symbol.unknown"), "unknown symbol in a route is 404");
    let r = node.req("GET", "/v1/nope", &[], "");
    assert_eq!((r.status, r.code().as_str()), (404, "route.not_found"));
    let r = node.req("PUT", "/v1/signals", &[], "");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = node.req("GET", "/v1/orders/xyz", &[("Authorization", &auth)], "");
    assert_eq!((r.status, r.code().as_str()), (404, "order.not_found"));
    let r = node.req("GET", "/v1/orders?status=maybe", &[("Authorization", &auth)], "");
    assert_eq!((r.status, r.code().as_str()), (400, "request.invalid_field"));
}

#[test]
fn orders_can_be_placed_listed_and_canceled() {
    let node = Node::start(&[]);
    let key = node.demo_key.clone();
    node.wait_for_quote(&key, "BTC-USD");
    let auth = bearer(&key);
    let q = node.req("GET", "/v1/market/BTC-USD/quote", &[("Authorization", &auth)], "");
    assert_eq!(q.header("cache-control"), Some("no-store"));
    let price = resting_price(&node, &key, 0.98);
    let body = format!(r#"{{"symbol":"BTC-USD","side":"buy","qty":"0.01","limit_price":"{price}","tif":"gtc"}}"#);
    let r = node.req("POST", "/v1/orders", &[("Authorization", &auth), JSON], &body);
    assert_eq!(r.status, 201, "{}", r.body);
    let o = r.json();
    assert_eq!(
        (o["status"].as_str(), o["order_type"].as_str(), o["limit_price"].as_str()),
        (Some("new"), Some("limit"), Some(price.as_str()))
    );
    let id = o["id"].as_u64().unwrap();
    let open = node.req("GET", "/v1/orders?status=open", &[("Authorization", &auth)], "").json();
    assert_eq!(open["orders"][0]["id"], id);
    let other = node.account("pro", "1000", json!(null)).1;
    let r = node.req("DELETE", &format!("/v1/orders/{id}"), &[("Authorization", &bearer(&other))], "");
    assert_eq!((r.status, r.code().as_str()), (404, "order.not_found"), "another account's order is invisible");
    let r = node.req("DELETE", &format!("/v1/orders/{id}"), &[("Authorization", &auth)], "");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("canceled")));
    let r = node.req("DELETE", &format!("/v1/orders/{id}"), &[("Authorization", &auth)], "");
    assert_eq!((r.status, r.code().as_str()), (409, "order.not_cancelable"));
    let open = node.req("GET", "/v1/orders", &[("Authorization", &auth)], "").json();
    assert_eq!(open["orders"], json!([]));
    let all = node.req("GET", "/v1/orders?status=all&limit=5", &[("Authorization", &auth)], "").json();
    assert_eq!(all["orders"].as_array().unwrap().len(), 1);
    // A position can be closed by symbol.
    signal(&node, &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.02"}"#);
    let r = node.req("POST", "/v1/positions/BTC-USD/close", &[("Authorization", &auth)], "");
    assert_eq!((r.status, r.json()["position"]["qty"].as_str()), (201, Some("0.0000")));
    let r = node.req("POST", "/v1/positions/NOPE/close", &[("Authorization", &auth)], "");
    assert_eq!((r.status, r.code().as_str()), (404, "symbol.unknown"));
}

#[test]
fn the_kill_switch_halts_and_resume_reopens() {
    let node = Node::start(&[]);
    let key = node.demo_key.clone();
    node.wait_for_quote(&key, "BTC-USD");
    let auth = bearer(&key);
    let price = resting_price(&node, &key, 0.97);
    let body = format!(r#"{{"symbol":"BTC-USD","action":"buy","qty":"0.01","limit_price":"{price}"}}"#);
    assert_eq!(signal(&node, &key, &body).status, 201);
    let r = node.req("POST", "/v1/account/halt", &[("Authorization", &auth)], "");
    assert_eq!(r.json(), json!({"state": "halted", "canceled_orders": 1}));
    let r = signal(&node, &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#);
    assert_eq!((r.status, r.code().as_str()), (422, "account.halted"));
    let r = node.req("POST", "/v1/account/resume", &[("Authorization", &auth), JSON], r#"{"mode":"reducing"}"#);
    assert_eq!(r.json()["state"], "reducing");
    let r = signal(&node, &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#);
    assert_eq!((r.status, r.code().as_str()), (422, "account.reduce_only"));
    let r = node.req("POST", "/v1/account/resume", &[("Authorization", &auth)], "");
    assert_eq!(r.json()["state"], "active");
    assert_eq!(signal(&node, &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#).status, 201);
    let r = node.req("POST", "/v1/account/resume", &[("Authorization", &auth), JSON], r#"{"mode":"sideways"}"#);
    assert_eq!(r.code(), "request.invalid_field");
}

#[test]
fn rate_limits_answer_429_with_headers() {
    let node = Node::start(&[]);
    let (_, key) = node.account("free", "1000", json!({"requests_per_minute": 3}));
    let mut conn = node.conn();
    let auth = bearer(&key);
    for left in [2, 1, 0] {
        let r = conn.send("GET", "/v1/account", &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(left.to_string().as_str()));
        let reset: u32 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset));
    }
    let r = conn.send("GET", "/v1/account", &[("Authorization", &auth)], b"");
    assert_eq!((r.status, r.code().as_str()), (429, "rate.limited"));
    let retry: u32 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    // Another key of the same node is not affected; raising the limit takes effect at once.
    assert_eq!(node.req("GET", "/v1/account", &[("Authorization", &bearer(&node.demo_key))], "").status, 200);
    let id = node.admin("GET", "/admin/accounts", "").json()["accounts"][1]["id"].as_u64().unwrap();
    let r = node.admin("PUT", &format!("/admin/accounts/{id}/limits"), r#"{"requests_per_minute": 1000}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(conn.send("GET", "/v1/account", &[("Authorization", &auth)], b"").status, 200);
}

#[test]
fn market_ticks_need_the_feed_role_and_move_the_quote() {
    let node = Node::start(&[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    let key = node.demo_key.clone();
    let auth = bearer(&key);
    let r = signal(&node, &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#);
    assert_eq!((r.status, r.code().as_str()), (422, "risk.stale_quote"), "no market data yet");
    let r = node.req("GET", "/v1/market/BTC-USD/quote", &[("Authorization", &auth)], "");
    assert_eq!((r.status, r.code().as_str()), (404, "market.no_quote"));
    let ticks = r#"{"ticks":[{"symbol":"BTC-USD","bid":"50000.00","ask":"50001.00","bid_size":"2","ask_size":"3"},{"symbol":"ETH-USD","bid":3000,"ask":3000.5}]}"#;
    let r = node.req("POST", "/v1/market/ticks", &[("Authorization", &auth), JSON], ticks);
    assert_eq!((r.status, r.json()["accepted"].as_u64()), (200, Some(2)), "{}", r.body);
    let q = node.req("GET", "/v1/market/BTC-USD/quote", &[("Authorization", &auth)], "").json();
    assert_eq!(
        (q["bid"].as_str(), q["ask"].as_str(), q["ask_size"].as_str()),
        (Some("50000.00"), Some("50001.00"), Some("3.0000"))
    );
    // A bad tick anywhere in the batch applies nothing.
    let bad = r#"[{"symbol":"BTC-USD","bid":"1","ask":"2"},{"symbol":"BTC-USD","bid":"5","ask":"4"}]"#;
    let r = node.req("POST", "/v1/market/ticks", &[("Authorization", &auth), JSON], bad);
    assert_eq!((r.status, r.code().as_str()), (422, "market.invalid_quote"));
    let q = node.req("GET", "/v1/market/BTC-USD/quote", &[("Authorization", &auth)], "").json();
    assert_eq!(q["bid"], "50000.00");
    // Keys without the feed role may not send ticks.
    let (_, trader) = node.account("pro", "1000", json!(null));
    let r = node.req("POST", "/v1/market/ticks", &[("Authorization", &bearer(&trader)), JSON], ticks);
    assert_eq!((r.status, r.code().as_str()), (403, "auth.forbidden"));
    // A resting limit order fills when a tick crosses it.
    let r = signal(&node, &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"1","limit_price":"49990.00"}"#);
    assert_eq!(r.json()["order"]["status"], "new");
    let id = r.json()["order"]["id"].as_u64().unwrap();
    let cross = r#"[{"symbol":"BTC-USD","bid":"49980.00","ask":"49985.00","ask_size":"0.4"}]"#;
    node.req("POST", "/v1/market/ticks", &[("Authorization", &auth), JSON], cross);
    let o = node.req("GET", &format!("/v1/orders/{id}"), &[("Authorization", &auth)], "").json();
    assert_eq!(
        (o["status"].as_str(), o["filled_qty"].as_str(), o["avg_price"].as_str()),
        (Some("partially_filled"), Some("0.4000"), Some("49985.00"))
    );
}

#[test]
fn the_admin_api_manages_accounts_keys_and_limits() {
    let node = Node::start(&[]);
    let r = support::Conn::open(node.admin).send("GET", "/admin/accounts", &[], b"");
    assert_eq!((r.status, r.code().as_str()), (401, "admin.unauthorized"));
    let r = support::Conn::open(node.admin).send("GET", "/admin/accounts", &[("Authorization", "Bearer wrong")], b"");
    assert_eq!(r.status, 401);
    let r = node.admin(
        "POST",
        "/admin/accounts",
        r#"{"name":"alice","tier":"enterprise","cash":"2500.50","limits":{"max_order_notional":"100"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let a = r.json();
    let id = a["id"].as_u64().unwrap();
    assert_eq!(
        (a["name"].as_str(), a["tier"].as_str(), a["cash"].as_str()),
        (Some("alice"), Some("enterprise"), Some("2500.50"))
    );
    assert_eq!(a["limits"]["max_order_notional"], "100.00");
    assert_eq!(a["limits"]["requests_per_minute"], 60000, "the rest comes from the tier");
    let r = node.admin("POST", &format!("/admin/accounts/{id}/keys"), r#"{"roles":["feed"]}"#);
    assert_eq!(r.status, 201);
    let k = r.json();
    let key = k["key"].as_str().unwrap();
    assert!(key.starts_with("sg_") && key.len() >= 64 + 3, "32 random bytes at least");
    assert_eq!(k["roles"], json!(["trade", "feed"]));
    let listed = node.admin("GET", "/admin/accounts", "").json();
    assert_eq!(listed["accounts"].as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(key), "keys are never shown again");
    assert_eq!(node.req("GET", "/v1/account", &[("X-API-Key", key)], "").json()["name"], "alice");
    let r = node.admin("PUT", &format!("/admin/accounts/{id}/limits"), r#"{"limits":{"max_order_notional":"5000"}}"#);
    assert_eq!(r.json()["limits"]["max_order_notional"], "5000.00");
    for (method, path, body, status, code) in [
        ("POST", "/admin/accounts", r#"{"name":"x","tier":"gold"}"#, 400, "request.invalid_field"),
        ("POST", "/admin/accounts", r#"{"tier":"free"}"#, 400, "request.missing_field"),
        ("POST", "/admin/accounts", r#"{"name":"x","colour":1}"#, 400, "request.unknown_field"),
        ("POST", "/admin/accounts", r#"{"name":"x","cash":"-5"}"#, 400, "request.invalid_number"),
        ("POST", "/admin/accounts", r#"{"name":"#, 400, "json.malformed"),
        ("POST", "/admin/accounts/999/keys", "{}", 404, "account.not_found"),
        ("POST", &format!("/admin/accounts/{id}/keys"), r#"{"roles":["root"]}"#, 400, "request.invalid_field"),
        ("PUT", &format!("/admin/accounts/{id}/limits"), r#"{"bogus":1}"#, 400, "request.invalid_field"),
        ("DELETE", "/admin/keys/999", "", 404, "key.not_found"),
        ("PATCH", "/admin/accounts", "", 405, "route.method_not_allowed"),
    ] {
        let r = node.admin(method, path, body);
        assert_eq!((r.status, r.code().as_str()), (status, code), "{method} {path} {body}: {}", r.body);
    }
}

#[test]
fn health_ready_and_metrics() {
    let node = Node::start(&[]);
    let r = node.req("GET", "/health", &[], "");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = node.req("GET", "/ready", &[], "");
    assert_eq!((r.status, r.json()["ready"].as_bool()), (200, Some(true)));
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    signal(&node, &node.demo_key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#);
    signal(&node, &node.demo_key, r#"{"symbol":"BTC-USD","action":"buy"}"#);
    let m = node.req("GET", "/metrics", &[], "");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.body;
    assert!(text.contains(r#"signalgate_http_requests_total{route="POST /v1/signals",status="201"} 1"#), "{text}");
    assert!(text.contains(r#"signalgate_http_requests_total{route="POST /v1/signals",status="400"} 1"#));
    assert!(text.contains("signalgate_signal_to_order_seconds_count 1"));
    for q in ["0.5", "0.99", "0.999"] {
        assert!(text.contains(&format!("signalgate_signal_to_order_seconds{{quantile=\"{q}\"}}")));
    }
    assert!(text.contains("signalgate_signal_to_order_max_seconds"));
    assert!(text.contains("signalgate_http_inflight"));
    assert!(text.contains("signalgate_open_orders"));
}

#[test]
fn order_lists_are_newest_first_even_after_the_history_wraps() {
    let node = Node::start(&[("SIGNALGATE_ENGINE_ORDERS_PER_ACCOUNT", "4")]);
    let key = node.demo_key.clone();
    node.wait_for_quote(&key, "BTC-USD");
    let auth = bearer(&key);
    let price = resting_price(&node, &key, 0.97);
    let rest = format!(r#"{{"symbol":"BTC-USD","action":"buy","qty":"0.01","limit_price":"{price}"}}"#);
    let first = signal(&node, &key, &rest).json()["order"]["id"].as_u64().unwrap();
    for i in 0..6 {
        let side = if i % 2 == 0 { "buy" } else { "sell" };
        assert_eq!(
            signal(&node, &key, &format!(r#"{{"symbol":"BTC-USD","action":"{side}","qty":"0.01"}}"#)).status,
            201
        );
    }
    let ids = |status: &str| -> Vec<u64> {
        let v = node.req("GET", &format!("/v1/orders?status={status}"), &[("Authorization", &auth)], "").json();
        v["orders"].as_array().unwrap().iter().map(|o| o["id"].as_u64().unwrap()).collect()
    };
    let all = ids("all");
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    assert_eq!(all.last(), Some(&first), "the old open order is kept and listed last: {all:?}");
    assert!(all.len() <= 5, "the history is bounded: {all:?}");
    assert_eq!(ids("open"), vec![first]);
}
