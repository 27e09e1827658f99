//! Nodes of a cluster sharing one Redis, for the tests that start them: their settings, and
//! what the tests ask of Redis and of the members.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{bearer, Node, Redis, JSON};

/// The environment of cluster node `id` on `redis`.
pub fn member_env(redis: &Redis, id: &str) -> Vec<(String, String)> {
    vec![
        ("SIGNALGATE_CLUSTER_REDIS_URL".into(), redis.url()),
        ("SIGNALGATE_CLUSTER_NODE_ID".into(), id.into()),
        ("SIGNALGATE_CLUSTER_ADDRESS".into(), "127.0.0.1".into()),
        ("SIGNALGATE_CLUSTER_LEASE_MS".into(), "600".into()),
        ("SIGNALGATE_DEMO_ENABLED".into(), "false".into()),
    ]
}

/// Starts cluster node `id` again on its data directory.
pub fn restart_member(redis: &Redis, id: &str, dir: tempfile::TempDir) -> Node {
    restart_member_with(redis, id, dir, &[])
}

/// Like [`restart_member`], with `extra` settings.
pub fn restart_member_with(redis: &Redis, id: &str, dir: tempfile::TempDir, extra: &[(&str, &str)]) -> Node {
    let env = member_env(redis, id);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend_from_slice(extra);
    Node::start_in(dir, &env)
}

pub fn try_member(redis: &Redis, id: &str, extra: &[(&str, &str)]) -> Result<Node, String> {
    let env = member_env(redis, id);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    Node::try_start(&all)
}

pub fn member(redis: &Redis, id: &str) -> Node {
    try_member(redis, id, &[]).unwrap_or_else(|e| panic!("node {id} did not join: {e}"))
}

/// `GET /admin/cluster` of `node`: node id → alive.
pub fn members(node: &Node) -> Vec<(String, bool)> {
    if let Err(e) = std::net::TcpStream::connect(node.admin) {
        let log = node.log();
        let pid = node.pid();
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        panic!(
            "node {pid} at {} unreachable ({e}), /proc says {state:?}; its last lines: {:#?}",
            node.admin,
            &log[log.len().saturating_sub(30)..]
        );
    }
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

/// Polls `check` until it holds, for at most 5 s; panics with what it last said otherwise.
pub fn within_5s(check: impl FnMut() -> Result<(), String>) {
    within(Duration::from_secs(5), check)
}

/// `Ok` when `got` is `want`, else both, to say.
pub fn same<T: PartialEq + std::fmt::Debug>(got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{got:?}, not {want:?}"))
    }
}

/// Waits until `node` shows `want` as its members.
pub fn wait_members(node: &Node, want: &[(&str, bool)]) {
    let want: Vec<(String, bool)> = want.iter().map(|(n, a)| (n.to_string(), *a)).collect();
    within_5s(|| same(members(node), want.clone()));
}

/// Three members of one cluster, each seeing all three alive.
pub fn three(redis: &Redis) -> Vec<Node> {
    three_with(redis, &[])
}

/// Like [`three`], each node with `extra` settings.
pub fn three_with(redis: &Redis, extra: &[(&str, &str)]) -> Vec<Node> {
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|id| try_member(redis, id, extra).unwrap_or_else(|e| panic!("node {id} did not join: {e}")))
        .collect();
    for n in &nodes {
        wait_members(n, &[("a", true), ("b", true), ("c", true)]);
    }
    nodes
}

/// The node id that owns `account`, from the registry.
pub fn owner(redis: &Redis, account: u64) -> String {
    redis.query(&["HGET", "signalgate:owners", &account.to_string()]).unwrap()
}

pub fn signal(node: &Node, key: &str, body: &str) -> super::Resp {
    node.req("POST", "/v1/signals", &[JSON, ("Authorization", &bearer(key))], body)
}

/// An account made through `via` whose owner is `node_id`, with its key.
pub fn account_on(redis: &Redis, via: &Node, node_id: &str) -> (u64, String) {
    for _ in 0..10 {
        let (id, key) = via.account("enterprise", "100000", serde_json::json!({}));
        if owner(redis, id) == node_id {
            return (id, key);
        }
    }
    panic!("no account landed on node {node_id}");
}

/// The entries of an account's stream in Redis: each one's `seq` field, and the sequence number
/// its journal record (the `event` field) carries.
pub fn stream_of(redis: &Redis, account: u64) -> Vec<(u64, u64)> {
    let mut con = redis.connection();
    let entries: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> =
        redis::cmd("XRANGE").arg(format!("signalgate:events:{account}")).arg("-").arg("+").query(&mut con).unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            let seq: u64 = String::from_utf8(fields["seq"].clone()).unwrap().parse().unwrap();
            // A journal record: length, checksum, then the sequence number (little-endian).
            let record = &fields["event"];
            (seq, u64::from_le_bytes(record[8..16].try_into().unwrap()))
        })
        .collect()
}

/// The sequence numbers of `account`'s events in a stopped node's journal.
pub fn journal_events_of(dir: &std::path::Path, account: u64) -> Vec<u64> {
    let out = std::process::Command::new(super::binary())
        .args(["journal", "inspect", "--json", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            let d = &e["data"];
            let of = d["account"].as_u64().or(d["order"]["account"].as_u64());
            (of == Some(account)).then(|| e["seq"].as_u64().unwrap())
        })
        .collect()
}

/// Polls `check` until it gives a value, for at most `limit`; panics with what it last said
/// otherwise.
pub fn within<T>(limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "not within {limit:?}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`within_5s`], for at most 10 s: what waits for a lease to run out and Redis to come back.
pub fn within_10s(check: impl FnMut() -> Result<(), String>) {
    within(Duration::from_secs(10), check)
}

/// Binary messages from `c` until `pred` holds for one, with everything before it.
pub fn ws_until(
    c: &mut signalgate::ws::client::Client,
    what: &str,
    pred: impl Fn(&signalgate::ws::protocol::ServerMsg) -> bool,
) -> Vec<signalgate::ws::protocol::ServerMsg> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match c.recv() {
            Ok(signalgate::ws::client::Incoming::Messages(msgs)) => {
                for m in msgs {
                    let hit = pred(&m);
                    seen.push(m);
                    if hit {
                        return seen;
                    }
                }
            }
            other => panic!("waiting for {what}: {other:?} after {seen:?}"),
        }
    }
    panic!("no {what} within 5 s: {seen:?}");
}
