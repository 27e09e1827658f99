//! Nodes that share one Redis as a cluster (`[cluster]`), all real processes: membership and its
//! refusals at start (Redis away, a node id held by a live node, other symbols), liveness as the
//! members see it, and what `/ready`, `/metrics` and `GET /admin/cluster` show of it.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Node, Redis};

/// The environment of cluster node `id` on `redis`.
fn member_env(redis: &Redis, id: &str) -> Vec<(String, String)> {
    vec![
        ("SIGNALGATE_CLUSTER_REDIS_URL".into(), redis.url()),
        ("SIGNALGATE_CLUSTER_NODE_ID".into(), id.into()),
        ("SIGNALGATE_CLUSTER_ADDRESS".into(), "127.0.0.1".into()),
        ("SIGNALGATE_CLUSTER_LEASE_MS".into(), "600".into()),
        ("SIGNALGATE_DEMO_ENABLED".into(), "false".into()),
    ]
}

fn try_member(redis: &Redis, id: &str, extra: &[(&str, &str)]) -> Result<Node, String> {
    let env = member_env(redis, id);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    Node::try_start(&all)
}

fn member(redis: &Redis, id: &str) -> Node {
    try_member(redis, id, &[]).unwrap_or_else(|e| panic!("node {id} did not join: {e}"))
}

/// `GET /admin/cluster` of `node`: node id → alive.
fn members(node: &Node) -> Vec<(String, bool)> {
    let r = node.admin("GET", "/admin/cluster", "");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = r.json();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["node_id"].as_str().unwrap().to_string(), m["alive"].as_bool().unwrap()))
        .collect()
}

/// Waits until `node` shows `want` as its members.
fn wait_members(node: &Node, want: &[(&str, bool)]) {
    let want: Vec<(String, bool)> = want.iter().map(|(n, a)| (n.to_string(), *a)).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = members(node);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "members {got:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.metric("signalgate_cluster_redis_up") != 0 {
        assert!(Instant::now() < deadline, "the node did not notice that Redis left");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready = a.req("GET", "/ready", &[], "");
    assert_eq!(ready.status, 200, "a node without Redis stays ready to trade what it owns: {}", ready.body);
    assert_eq!(ready.json()["cluster"]["redis"], "unavailable");
    assert!(a.metric("signalgate_cluster_redis_errors_total") > 0);
    // Redis comes back empty: the node takes its lease again and publishes itself.
    let port = redis.port;
    let redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.query(&["HGET", "signalgate:members", "a"]).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the node did not publish itself again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!redis.query(&["GET", "signalgate:config"]).unwrap().is_empty());
    wait_members(&a, &[("a", true)]);
    assert_eq!(a.metric("signalgate_cluster_redis_up"), 1);
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
