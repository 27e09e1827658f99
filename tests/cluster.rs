//! Nodes that share one Redis as a cluster (`[cluster]`), all real processes: membership and its
//! refusals at start (Redis away, a node id held by a live node, other symbols), liveness as the
//! members see it, and what `/ready`, `/metrics` and `GET /admin/cluster` show of it; accounts
//! and keys made through any node working on every node, requests served by each account's
//! owner whichever node they reach, limits that hold across nodes, and the faults (an owner
//! down, Redis away).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::cluster::*;
use support::{bearer, Node, Redis, JSON};

#[test]
fn three_nodes_join_see_each_other_and_see_a_dead_one_leave() {
    let redis = Redis::start();
    let a = member(&redis, "a");
    let b = member(&redis, "b");
    let c = member(&redis, "c");
    for n in [&a, &b, &c] {
        wait_members(n, &[("a", true), ("b", true), ("c", true)]);
    }
    // Each publishes the listeners it bound, at its cluster.address.
    let r = a.admin("GET", "/admin/cluster", "").json();
    let b_entry = r["members"].as_array().unwrap().iter().find(|m| m["node_id"] == "b").unwrap().clone();
    assert_eq!(b_entry["http"], b.http.to_string());
    assert_eq!(b_entry["admin"], b.admin.to_string());
    assert_eq!(b_entry["ws"], b.ws.to_string());
    assert_eq!(r["node_id"], "a");
    assert_eq!(r["redis"], "ok");
    // /ready and /metrics say the same.
    let ready = b.req("GET", "/ready", &[], "");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["cluster"]["redis"], "ok");
    let metrics = c.req("GET", "/metrics", &[], "").body;
    for line in [
        "signalgate_cluster_redis_up 1",
        "signalgate_cluster_member_up{node=\"a\"} 1",
        "signalgate_cluster_member_up{node=\"b\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // Both followers of the journal keep up with it (quotes keep coming: catch them at rest).
    within_5s(|| {
        let lags =
            (c.metric("signalgate_cluster_registry_lag_events"), c.metric("signalgate_cluster_replication_lag_events"));
        same(lags, (0, 0))
    });
    assert!(
        c.metric("signalgate_cluster_lease_renewals_total") > 0 || {
            std::thread::sleep(Duration::from_millis(500));
            c.metric("signalgate_cluster_lease_renewals_total") > 0
        }
    );
    // A node killed -9 stops renewing: its lease runs out and the others see it gone.
    let _ = c.crash();
    wait_members(&a, &[("a", true), ("b", true), ("c", false)]);
    wait_members(&b, &[("a", true), ("b", true), ("c", false)]);
    // A node stopped cleanly lets its lease go at once, and may join again under its id.
    let _ = b.stop();
    wait_members(&a, &[("a", true), ("b", false), ("c", false)]);
    let b = member(&redis, "b");
    wait_members(&b, &[("a", true), ("b", true), ("c", false)]);
}

#[test]
fn a_node_keeps_serving_while_redis_is_away_and_joins_again_when_it_returns() {
    let mut redis = Redis::start();
    let a = member(&redis, "a");
    wait_members(&a, &[("a", true)]);
    redis.kill();
    within_5s(|| same(a.metric("signalgate_cluster_redis_up"), 0));
    let ready = a.req("GET", "/ready", &[], "");
    assert_eq!(ready.status, 200, "a node without Redis stays up: {}", ready.body);
    assert_eq!(ready.json()["cluster"]["redis"], "unavailable");
    // It cannot tell whether its accounts were taken: it acts for none until Redis is back.
    within_5s(|| same(a.req("GET", "/ready", &[], "").json()["cluster"]["acting"].as_bool(), Some(false)));
    assert!(a.metric("signalgate_cluster_redis_errors_total") > 0);
    // Redis comes back empty: the node takes its lease again and publishes itself.
    let port = redis.port;
    let redis = Redis::start_on(port);
    within_5s(|| same(redis.query(&["HGET", "signalgate:members", "a"]).unwrap().is_empty(), false));
    assert!(!redis.query(&["GET", "signalgate:config"]).unwrap().is_empty());
    wait_members(&a, &[("a", true)]);
    assert_eq!(a.metric("signalgate_cluster_redis_up"), 1);
    within_5s(|| same(a.req("GET", "/ready", &[], "").json()["cluster"]["acting"].as_bool(), Some(true)));
}

#[test]
fn a_node_id_held_by_a_live_node_is_refused() {
    let redis = Redis::start();
    let _a = member(&redis, "a");
    let err = match try_member(&redis, "a", &[]) {
        Ok(_) => panic!("a second node with node_id a started"),
        Err(e) => e,
    };
    assert!(err.contains(r#"cluster.node_id \"a\" is held by a live node"#), "{err}");
}

#[test]
fn without_redis_a_cluster_node_refuses_to_start() {
    let mut redis = Redis::start();
    redis.kill();
    let err = match try_member(&redis, "a", &[]) {
        Ok(_) => panic!("a cluster node started without Redis"),
        Err(e) => e,
    };
    assert!(err.contains("cannot be reached") && err.contains("a cluster node needs it to start"), "{err}");
}

#[test]
fn a_node_with_other_symbols_or_tiers_than_the_cluster_is_refused() {
    let redis = Redis::start();
    let _a = member(&redis, "a");
    let symbols = "[[symbols]]\nname = \"SOL-USD\"\nprice_decimals = 2\nqty_decimals = 2\ntick = \"0.01\"\nlot = \"0.01\"\nmax_order_qty = \"100\"\ninitial_price = \"150\"\nvolatility_bps = 2\n";
    let tiers = "[tiers.vip]\nrequests_per_minute = 7\nmax_order_notional = \"1\"\nmax_position_notional = \"1\"\nmax_gross_exposure = \"1\"\nmax_orders_per_second = 1\nmax_daily_loss = \"0\"\nmax_open_orders = 1\n";
    for (file, what) in [(symbols, "symbols"), (tiers, "tiers")] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("other.toml");
        std::fs::write(&cfg, file).unwrap();
        let env = member_env(&redis, "b");
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let err = match Node::try_start_in(dir, &["--config", cfg.to_str().unwrap()], &env) {
            Ok(_) => panic!("a node with other {what} joined"),
            Err((e, _)) => e,
        };
        assert!(err.contains(&format!("this node's {what} differ from the cluster's")), "{err}");
    }
}

#[test]
fn cluster_settings_without_redis_or_with_a_demo_account_are_configuration_errors() {
    let err = Node::try_start(&[("SIGNALGATE_CLUSTER_NODE_ID", "a")]).err().expect("refused");
    assert!(err.contains("cluster.node_id: needs cluster.redis_url"), "{err}");
    let err = Node::try_start(&[
        ("SIGNALGATE_CLUSTER_REDIS_URL", "redis://127.0.0.1:1/"),
        ("SIGNALGATE_CLUSTER_NODE_ID", "a"),
        ("SIGNALGATE_CLUSTER_ADDRESS", "127.0.0.1"),
    ])
    .err()
    .expect("refused");
    assert!(err.contains("demo.enabled: must be false on a cluster node"), "{err}");
}

#[test]
fn accounts_and_keys_made_through_any_node_work_through_every_node() {
    let redis = Redis::start();
    let nodes = three(&redis);
    // Three accounts made through node a land on three owners: the one with the fewest each time.
    let mut made = Vec::new();
    for i in 0..3 {
        let r =
            nodes[0].admin("POST", "/admin/accounts", &format!(r#"{{"name":"t{i}","tier":"pro","cash":"100000"}}"#));
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.json()["id"].as_u64().unwrap();
        made.push((id, owner(&redis, id)));
    }
    let mut owners: Vec<&str> = made.iter().map(|(_, o)| o.as_str()).collect();
    owners.sort_unstable();
    assert_eq!(owners, ["a", "b", "c"], "{made:?}");
    let mut ids: Vec<u64> = made.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), 3, "ids are the cluster's: {ids:?}");
    // Any node lists every account of the cluster, by id.
    ids.sort_unstable();
    for n in &nodes {
        let listed = n.admin("GET", "/admin/accounts", "").json();
        let got: Vec<u64> = listed["accounts"].as_array().unwrap().iter().map(|a| a["id"].as_u64().unwrap()).collect();
        assert_eq!(got, ids, "{listed}");
    }
    // A key made through node b for the account node c owns; the key is shown once, by the owner.
    let (account, _) = made.iter().find(|(_, o)| o == "c").unwrap().clone();
    let r = nodes[1].admin("POST", &format!("/admin/accounts/{account}/keys"), "{}");
    assert_eq!(r.status, 201, "{}", r.body);
    let key = r.json()["key"].as_str().unwrap().to_string();
    let key_id = r.json()["key_id"].as_u64().unwrap();
    assert_eq!(r.json()["account_id"], account);
    assert_eq!(nodes[0].admin("GET", &format!("/admin/accounts/{account}"), "").json()["id"], account);
    // Signals through each node give one account's history, served by its owner.
    for (i, n) in nodes.iter().enumerate() {
        let r = signal(n, &key, &format!(r#"{{"symbol":"BTC-USD","action":"buy","qty":"0.001","signal_id":"s{i}"}}"#));
        assert_eq!(r.status, 201, "through node {i}: {}", r.body);
        assert_eq!(r.json()["order"]["status"], "filled", "{}", r.body);
        assert!(r.header("server-timing").is_some_and(|v| v.starts_with("s2o;dur=")), "{:?}", r.headers);
        assert_eq!(r.header("x-ratelimit-limit"), Some("1200"));
    }
    // The same signal id again, through another node, is the owner's replay.
    let r = signal(&nodes[2], &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001","signal_id":"s0"}"#);
    assert_eq!(r.header("idempotent-replay"), Some("true"), "{:?} {}", r.headers, r.body);
    // (The mark price moves with the owner's quotes between two reads: the rest is the same.)
    let views: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let r = n.req("GET", "/v1/positions", &[("Authorization", &bearer(&key))], "");
            assert_eq!(r.status, 200, "{}", r.body);
            let p = &r.json()["positions"][0];
            serde_json::json!([p["symbol"], p["qty"], p["avg_price"], p["cost"], p["fees"]])
        })
        .collect();
    assert!(views.iter().all(|v| *v == views[0]), "{views:?}");
    assert_eq!(views[0][1], "0.0030", "{}", views[0]);
    let orders = nodes[1].req("GET", "/v1/orders?status=all", &[("Authorization", &bearer(&key))], "").json();
    assert_eq!(orders["orders"].as_array().map(Vec::len), Some(3), "{orders}");
    // Revoked through node a, the key is refused through every node at once.
    let r = nodes[0].admin("DELETE", &format!("/admin/keys/{key_id}"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    for n in &nodes {
        let r = signal(n, &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#);
        assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("auth.key_revoked")), "{}", r.body);
    }
    // An unknown key is refused as on one node.
    let r = signal(&nodes[1], "sg_unknown", r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("auth.invalid_key")), "{}", r.body);
    let forwarded = nodes[1].metric("signalgate_cluster_forwarded_total");
    assert!(forwarded >= 2);
    assert_eq!(nodes[1].metric("signalgate_cluster_forward_seconds_count"), forwarded);
}

#[test]
fn a_per_key_limit_holds_across_the_nodes() {
    let redis = Redis::start();
    let nodes = three(&redis);
    let (_, key) = nodes[1].account("pro", "1000", serde_json::json!({"requests_per_minute": 600}));
    let auth = bearer(&key);
    let mut conns: Vec<support::Conn> = nodes.iter().map(Node::conn).collect();
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..660 {
        let r = conns[i % 3].send("GET", "/v1/account", &[("Authorization", &auth)], b"");
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
            }
            s => panic!("{s}: {}", r.body),
        }
    }
    assert_eq!((ok, limited), (600, 60));
}

#[test]
fn an_owner_down_is_503_until_its_accounts_move_and_redis_away_stops_every_owner_within_a_lease() {
    let mut redis = Redis::start();
    // Answers that wait for Redis would wait here; see tests/failover.rs for those.
    let mut nodes = three_with(&redis, &[("SIGNALGATE_CLUSTER_ACK", "local")]);
    let mut keys = std::collections::HashMap::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, key) = nodes[0].account("pro", "100000", serde_json::json!({}));
        ids.push(id);
        keys.insert(owner(&redis, id), key);
    }
    assert_eq!(keys.len(), 3, "one account on each node");
    let buy = r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#;
    let code = |r: &support::Resp| (r.status, r.json()["error"]["code"].as_str().map(str::to_string));
    // Node c dies: its account answers 503 owner_unavailable through a and b until it moves to
    // one of them (within the lease), the others trade on.
    let c = nodes.pop().unwrap();
    let _ = c.crash();
    let unavailable = (503, Some("cluster.owner_unavailable".to_string()));
    let r = signal(&nodes[0], &keys["c"], buy);
    if r.status != 201 {
        assert_eq!(code(&r), unavailable, "{}", r.body);
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    for n in &nodes {
        for owner in ["a", "b"] {
            assert_eq!(signal(n, &keys[owner], buy).status, 201);
        }
    }
    within_5s(|| same(signal(&nodes[1], &keys["c"], buy).status, 201));
    // With node c down, its accounts cannot be listed.
    let r = nodes[0].admin("GET", "/admin/accounts", "");
    assert_eq!(code(&r), unavailable, "{}", r.body);
    // Redis goes away: no node can tell any more whether its accounts were taken, so within a
    // lease each stops acting for them; admin changes are refused with nothing changed.
    redis.kill();
    let not_owner = (503, Some("cluster.not_owner".to_string()));
    // Each node's lease lapses at its own moment (they renew out of step).
    for (n, owner) in [(&nodes[0], "a"), (&nodes[1], "b")] {
        within_5s(|| same(code(&signal(n, &keys[owner], buy)), not_owner.clone()));
    }
    let r = nodes[0].admin("POST", "/admin/accounts", r#"{"name":"later","tier":"pro","cash":"1"}"#);
    assert_eq!(code(&r), (503, Some("cluster.unavailable".to_string())), "{}", r.body);
    // Redis comes back empty: the live nodes take their leases and publish their accounts
    // again, trade again, and no id of theirs is given out again. (What a node that is down
    // holds, Redis cannot know: docs/operations.md says to keep Redis's data, and such a node
    // refuses to start on an account given out twice.)
    let redis = Redis::start_on(redis.port);
    within_5s(|| same(redis.query(&["HLEN", "signalgate:owners"]).unwrap(), "3".into()));
    for n in &nodes {
        wait_members(n, &[("a", true), ("b", true)]);
    }
    for owner in ["a", "b", "c"] {
        within_5s(|| same(signal(&nodes[0], &keys[owner], buy).status, 201));
    }
    let counter: u64 = redis.query(&["GET", "signalgate:next_account"]).unwrap().parse().unwrap();
    assert!(ids.iter().all(|&i| i <= counter), "{ids:?} above the counter {counter}");
    let (id, key) = nodes[1].account("pro", "100000", serde_json::json!({}));
    assert!(!ids.contains(&id), "account {id} again: {ids:?}");
    assert_eq!(signal(&nodes[0], &key, buy).status, 201);
}

#[test]
fn three_nodes_behind_the_shipped_nginx_answer_every_key_wherever_it_lands() {
    let redis = Redis::start();
    let nodes = three(&redis);
    let nginx = support::nginx::Nginx::start(
        &nodes.iter().map(|n| n.http).collect::<Vec<_>>(),
        &nodes.iter().map(|n| n.ws).collect::<Vec<_>>(),
        &["a", "b", "c"],
    );
    // Accounts on every node: a key's requests reach its owner, by header straight through nginx
    // (the key names its node), in a webhook body through whichever node nginx picks.
    let keys: Vec<String> = (0..3).map(|i| nodes[i].account("pro", "100000", serde_json::json!({})).1).collect();
    let forwarded = || -> u64 { nodes.iter().map(|n| n.metric("signalgate_cluster_forwarded_total")).sum() };
    let made = forwarded();
    for key in &keys {
        let auth = format!("Authorization: Bearer {key}");
        let (code, body) = nginx.curl(&[
            "-H",
            "Content-Type: application/json",
            "-H",
            &auth,
            "-d",
            r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#,
            "/v1/signals",
        ]);
        assert_eq!(code, 201, "{body}");
    }
    assert_eq!(forwarded() - made, 0, "a key in a header reaches its owner through nginx");
    for key in &keys {
        // TradingView sends the key in the body, as text/plain: nginx hashes on the address.
        let webhook = format!(r#"{{"passphrase":"{key}","symbol":"BTC-USD","action":"buy","qty":"0.001"}}"#);
        let (code, body) = nginx.curl(&["-H", "Content-Type: text/plain", "-d", &webhook, "/v1/signals"]);
        assert_eq!(code, 201, "{body}");
        let (code, body) = nginx.curl(&["-H", &format!("X-API-Key: {key}"), "/v1/positions"]);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""qty":"0.0020""#), "{body}");
    }
    assert_eq!(forwarded() - made, 2, "the webhooks all reach one node, which forwards those of the two others");
}

#[test]
fn a_journal_whose_accounts_another_node_owns_is_refused_and_its_own_node_rejoins_with_them() {
    let redis = Redis::start();
    let a = member(&redis, "a");
    let (id, key) = a.account("pro", "100000", serde_json::json!({}));
    let dir = a.stop();
    // The same data directory under another node id: its account belongs to node a.
    let env = member_env(&redis, "x");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (err, dir) = match Node::try_start_in(dir, &[], &env) {
        Ok(_) => panic!("node x started with node a's accounts"),
        Err(e) => e,
    };
    assert!(err.contains(&format!("account {id} of this node's journal belongs to node")), "{err}");
    // Node a, restarted on it, serves the account again.
    let a = restart_member(&redis, "a", dir);
    let r = signal(&a, &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn a_stream_on_any_node_carries_the_owners_events_and_resumes_on_another_node() {
    use signalgate::engine::event::EventKind;
    use signalgate::ws::client::Client;
    use signalgate::ws::protocol::{ClientMsg, ServerBody};
    let redis = Redis::start();
    let nodes = three(&redis);
    let mut owned_by_a = None;
    while owned_by_a.is_none() {
        let (id, key) = nodes[0].account("pro", "100000", serde_json::json!({}));
        if owner(&redis, id) == "a" {
            owned_by_a = Some((id, key));
        }
    }
    let (account, key) = owned_by_a.unwrap();
    let buy = r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#;
    let subscribe = |c: &mut Client, resume_from| {
        c.send(&ClientMsg::Subscribe { channels: vec!["account".into()], resume_from }).unwrap();
    };
    let fills = |msgs: &[signalgate::ws::protocol::ServerMsg]| -> Vec<u64> {
        msgs.iter()
            .filter(|m| matches!(m.body, ServerBody::Event { event: EventKind::Fill { .. } }))
            .map(|m| m.seq)
            .collect()
    };
    // On node c, with the key in the upgrade: the owner's welcome, then the fills of orders
    // placed through node b, in order.
    let mut c = Client::connect(nodes[2].ws, "", Some(&key)).unwrap();
    c.set_timeout(Duration::from_secs(5));
    let welcome = ws_until(&mut c, "welcome", |m| matches!(m.body, ServerBody::Welcome { .. }));
    assert!(matches!(welcome[0].body, ServerBody::Welcome { account: a, .. } if u64::from(a) == account));
    subscribe(&mut c, None);
    ws_until(&mut c, "subscribed", |m| matches!(m.body, ServerBody::Subscribed { .. }));
    for _ in 0..3 {
        assert_eq!(signal(&nodes[1], &key, buy).status, 201);
    }
    let got = ws_until(&mut c, "the third position", |m| matches!(m.body, ServerBody::Position { qty: 30, .. }));
    let seen = fills(&got);
    assert_eq!(seen.len(), 3, "{got:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    let last_seen = got.last().unwrap().seq;
    c.socket().shutdown(std::net::Shutdown::Both).unwrap();
    drop(c);
    // Two more orders while away; then on node b, the key in an `auth` message: resume from the
    // last message seen gives the two missed fills once, then the next one live.
    for _ in 0..2 {
        assert_eq!(signal(&nodes[0], &key, buy).status, 201);
    }
    let mut b = Client::connect(nodes[1].ws, &format!("resume_from={last_seen}"), None).unwrap();
    b.set_timeout(Duration::from_secs(5));
    b.send(&ClientMsg::Auth { key: key.clone() }).unwrap();
    ws_until(&mut b, "welcome", |m| matches!(m.body, ServerBody::Welcome { .. }));
    subscribe(&mut b, None);
    let got = ws_until(&mut b, "resumed", |m| matches!(m.body, ServerBody::Resumed { .. }));
    let resumed = fills(&got);
    assert_eq!(resumed.len(), 2, "{got:?}");
    assert!(resumed.iter().all(|&s| s > last_seen) && resumed[0] < resumed[1], "{resumed:?}");
    assert_eq!(signal(&nodes[2], &key, buy).status, 201);
    let next =
        ws_until(&mut b, "the next fill", |m| matches!(m.body, ServerBody::Event { event: EventKind::Fill { .. } }));
    assert!(fills(&next).iter().all(|s| s > resumed.last().unwrap()), "{next:?}");
    // An unknown key in an `auth` message is refused as on one node; the owner down, with 1013.
    let mut x = Client::connect(nodes[1].ws, "", None).unwrap();
    x.set_timeout(Duration::from_secs(5));
    x.send(&ClientMsg::Auth { key: "sg_nobody".into() }).unwrap();
    match x.recv() {
        Ok(signalgate::ws::client::Incoming::Closed(code, reason)) => {
            assert_eq!(code, 4001, "{reason}");
            assert!(reason.starts_with("auth.invalid_key"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// The bid and ask of `symbol` as the owner of `key` sees them, asked through `node`.
fn quote_through(node: &Node, key: &str, symbol: &str) -> Option<(String, String)> {
    let r = node.req("GET", &format!("/v1/market/{symbol}/quote"), &[("Authorization", &bearer(key))], "");
    (r.status == 200).then(|| {
        let q = r.json();
        (q["bid"].as_str().unwrap().to_string(), q["ask"].as_str().unwrap().to_string())
    })
}

#[test]
fn ticks_posted_to_any_node_reach_every_node_in_one_order_and_fill_resting_orders() {
    let redis = Redis::start();
    let off = [("SIGNALGATE_MARKET_SIMULATOR", "false")];
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|id| try_member(&redis, id, &off).unwrap()).collect();
    for n in &nodes {
        wait_members(n, &[("a", true), ("b", true), ("c", true)]);
        assert_eq!(n.admin("GET", "/admin/cluster", "").json()["simulator"], false);
    }
    let keys: Vec<String> = ["a", "b", "c"].iter().map(|id| account_on(&redis, &nodes[0], id).1).collect();
    let (feed_account, _) = account_on(&redis, &nodes[0], "b");
    let r = nodes[2].admin("POST", &format!("/admin/accounts/{feed_account}/keys"), r#"{"roles":["feed"]}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let feed = r.json()["key"].as_str().unwrap().to_string();
    let tick = |node: &Node, bid: &str, ask: &str| {
        let body = format!(
            r#"{{"ticks":[{{"symbol":"BTC-USD","bid":"{bid}","ask":"{ask}","bid_size":"5","ask_size":"5"}}]}}"#
        );
        let r = node.req("POST", "/v1/market/ticks", &[JSON, ("Authorization", &bearer(&feed))], &body);
        assert_eq!((r.status, r.body.as_str()), (200, r#"{"accepted":1}"#));
    };
    // A tick posted to node b reaches every node.
    tick(&nodes[1], "100.00", "101.00");
    everywhere(&nodes, &keys, "BTC-USD", ("100.00", "101.00"));
    // A resting buy on node a's account, placed through node c; a tick through node b that
    // crosses it fills it on its owner.
    let auth = bearer(&keys[0]);
    let r = nodes[2].req(
        "POST",
        "/v1/orders",
        &[JSON, ("Authorization", &auth)],
        r#"{"symbol":"BTC-USD","side":"buy","qty":"0.01","limit_price":"99.00","tif":"gtc"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["status"], "new", "{}", r.body);
    let order = r.json()["id"].as_u64().unwrap();
    tick(&nodes[1], "98.00", "98.50");
    everywhere(&nodes, &keys, "BTC-USD", ("98.00", "98.50"));
    within_5s(|| {
        let o = nodes[2].req("GET", &format!("/v1/orders/{order}"), &[("Authorization", &auth)], "").json();
        same(o["status"].clone(), serde_json::json!("filled")).map_err(|e| format!("{e}: {o}"))
    });
    // Many ticks through the three nodes at once: every node applies them in the same order.
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let (http, feed) = (nodes[i].http, feed.clone());
            std::thread::spawn(move || {
                let mut c = support::Conn::open(http);
                for j in 0..20 {
                    let body = format!(
                        r#"[{{"symbol":"ETH-USD","bid":"{}.00","ask":"{}.50"}}]"#,
                        3000 + i * 100 + j,
                        3000 + i * 100 + j
                    );
                    let r =
                        c.send("POST", "/v1/market/ticks", &[JSON, ("Authorization", &bearer(&feed))], body.as_bytes());
                    assert_eq!(r.status, 200, "{}", r.body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let last = redis.query(&["XREVRANGE", "signalgate:quotes", "+", "-", "COUNT", "1"]).unwrap();
    let last = last.lines().nth(2).unwrap().split(' ').collect::<Vec<_>>();
    let bid = format!("{}.{:02}", last[1].parse::<u64>().unwrap() / 100, last[1].parse::<u64>().unwrap() % 100);
    let ask = format!("{}.{:02}", last[2].parse::<u64>().unwrap() / 100, last[2].parse::<u64>().unwrap() % 100);
    everywhere(&nodes, &keys, "ETH-USD", (&bid, &ask));
}

/// Waits until every node's owner of each key (in turn) quotes `symbol` at `want`.
fn everywhere(nodes: &[Node], keys: &[String], symbol: &str, want: (&str, &str)) {
    for (n, key) in nodes.iter().zip(keys) {
        within_5s(|| same(quote_through(n, key, symbol), Some((want.0.into(), want.1.into()))));
    }
}

#[test]
fn one_elected_simulator_feeds_every_node_and_another_takes_over_when_it_dies() {
    let redis = Redis::start();
    let mut nodes = three(&redis);
    let simulating = |nodes: &[Node]| -> Vec<bool> {
        nodes.iter().map(|n| n.admin("GET", "/admin/cluster", "").json()["simulator"].as_bool().unwrap()).collect()
    };
    let now = simulating(&nodes);
    assert_eq!(now.iter().filter(|s| **s).count(), 1, "{now:?}");
    let keys: Vec<String> = ["a", "b", "c"].iter().map(|id| account_on(&redis, &nodes[0], id).1).collect();
    for (n, key) in nodes.iter().zip(&keys) {
        n.wait_for_quote(key, "BTC-USD");
    }
    // The elected node dies: within its lease another one feeds the cluster.
    let elected = now.iter().position(|s| *s).unwrap();
    let _ = nodes.remove(elected).crash();
    let live_keys: Vec<String> =
        keys.iter().enumerate().filter(|(i, _)| *i != elected).map(|(_, k)| k.clone()).collect();
    within_5s(|| same(simulating(&nodes).iter().filter(|s| **s).count(), 1));
    let before: Vec<_> = nodes.iter().zip(&live_keys).map(|(n, k)| quote_through(n, k, "BTC-USD")).collect();
    within_5s(|| {
        let after: Vec<_> = nodes.iter().zip(&live_keys).map(|(n, k)| quote_through(n, k, "BTC-USD")).collect();
        let moved = after.iter().zip(&before).all(|(a, b)| a != b);
        same(moved, true).map_err(|_| format!("quotes stopped: {before:?} {after:?}"))
    });
}

#[test]
fn a_forwarded_answer_never_shows_what_the_owners_crash_takes_back() {
    let redis = Redis::start();
    let mut nodes = three(&redis);
    let (_, key) = account_on(&redis, &nodes[0], "a");
    nodes[1].wait_for_quote(&key, "BTC-USD");
    // Workers send signals with ids of their own through nodes b and c while node a is killed.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (http, key, answered, stop) = (nodes[1 + w % 2].http, key.clone(), answered.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = format!("w{w}-{i}");
                    i += 1;
                    let body = format!(r#"{{"symbol":"BTC-USD","action":"buy","qty":"0.0001","signal_id":"{id}"}}"#);
                    let r = support::Conn::open(http).try_send(
                        "POST",
                        "/v1/signals",
                        &[JSON, ("Authorization", &bearer(&key))],
                        body.as_bytes(),
                    );
                    if let Ok(r) = r {
                        if r.status == 201 {
                            answered.lock().unwrap().push((id, r.json()["order"]["id"].as_u64().unwrap()));
                        }
                    }
                }
            })
        })
        .collect();
    // Some answers first (however long a busy machine takes for them), then the crash.
    within_5s(|| {
        let n = answered.lock().unwrap().len();
        if n > 50 {
            Ok(())
        } else {
            Err(format!("{n} answers"))
        }
    });
    let dir = nodes.remove(0).crash();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() > 50, "{} answers before the crash", answered.len());
    // Node a comes back on its journal: every answered signal is there, under the same order.
    let a = restart_member(&redis, "a", dir);
    for (id, order) in &answered {
        let body = format!(r#"{{"symbol":"BTC-USD","action":"buy","qty":"0.0001","signal_id":"{id}"}}"#);
        let r = signal(&a, &key, &body);
        assert_eq!(r.header("idempotent-replay"), Some("true"), "signal {id} answered 201 and lost: {}", r.body);
        assert_eq!(r.json()["order"]["id"].as_u64(), Some(*order), "{}", r.body);
    }
}
