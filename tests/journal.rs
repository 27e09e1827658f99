//! The journal against the real binary: acknowledged orders survive `kill -9` under every fsync
//! policy, the state comes back on restart, a torn tail is cut, damage stops the start until the
//! operator repairs it, a full disk refuses orders and recovers, and the operator tools read it.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{bearer, binary, Node, JSON};

/// Limits high enough that only the journal can refuse a signal.
fn unlimited() -> Value {
    json!({"requests_per_minute": 1_000_000, "max_orders_per_second": 100_000, "max_open_orders": 1000})
}

fn get(node: &Node, key: &str, path: &str) -> Value {
    let r = node.req("GET", path, &[("Authorization", &bearer(key))], "");
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.json()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn journal_tool(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).arg("journal").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Orders, positions and account as the API shows them, minus what moves with the market.
fn snapshot(node: &Node, key: &str) -> (Value, Value, Value) {
    let orders = get(node, key, "/v1/orders?status=all&limit=1000")["orders"].clone();
    let mut positions = get(node, key, "/v1/positions")["positions"].clone();
    for p in positions.as_array_mut().unwrap() {
        let p = p.as_object_mut().unwrap();
        p.retain(|k, _| {
            ["symbol", "qty", "avg_price", "cost", "realized_pnl", "fees", "open_buy_qty", "open_sell_qty"]
                .contains(&k.as_str())
        });
    }
    let mut account = get(node, key, "/v1/account");
    let a = account.as_object_mut().unwrap();
    a.retain(|k, _| ["id", "name", "tier", "state", "cash", "realized_pnl", "fees", "limits"].contains(&k.as_str()));
    (orders, positions, account)
}

#[test]
fn acknowledged_orders_survive_kill_9_under_every_fsync_policy() {
    for policy in ["never", "interval", "always"] {
        let env = [("SIGNALGATE_JOURNAL_FSYNC", policy)];
        let node = Node::start(&env);
        let (_, key) = node.account("enterprise", "10000000", unlimited());
        node.wait_for_quote(&key, "BTC-USD");
        // Four traders send signals as fast as answers come; every 201 is an acknowledged order.
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let traders: Vec<_> = (0..4)
            .map(|t| {
                let (addr, key, stop, answered) = (node.http, key.clone(), stop.clone(), answered.clone());
                std::thread::spawn(move || {
                    let mut conn = support::Conn::open(addr);
                    let auth = bearer(&key);
                    let mut acked = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let side = if i % 2 == 0 { "buy" } else { "sell" };
                        let body =
                            format!(r#"{{"symbol":"ETH-USD","action":"{side}","qty":"0.01","signal_id":"t{t}-{i}"}}"#);
                        match conn.try_send("POST", "/v1/signals", &[("Authorization", &auth), JSON], body.as_bytes()) {
                            Ok(r) if r.status == 201 => {
                                acked.push((format!("t{t}-{i}"), r.json()));
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => panic!("unexpected answer {}: {}", r.status, r.body),
                            Err(_) => break, // the node died under us
                        }
                        i += 1;
                    }
                    acked
                })
            })
            .collect();
        // The crash comes once the traders have had answers (however slow the machine is), while
        // they are still sending.
        let deadline = Instant::now() + Duration::from_secs(30);
        while answered.load(Ordering::Relaxed) < 40 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let dir = node.crash();
        stop.store(true, Ordering::Relaxed);
        let acked: Vec<(String, Value)> = traders.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert!(acked.len() > 20, "{policy}: the traders got answers before the crash ({})", acked.len());

        let node = Node::start_in(dir, &env);
        let auth = bearer(&key);
        for (signal_id, answer) in &acked {
            let id = answer["order"]["id"].as_u64().unwrap();
            let r = node.req("GET", &format!("/v1/orders/{id}"), &[("Authorization", &auth)], "");
            assert_eq!(r.status, 200, "{policy}: acknowledged order {id} lost after kill -9: {}", r.body);
            assert_eq!(r.json()["status"], answer["order"]["status"], "{policy}: order {id}");
            // The idempotency record came back too: a retry places nothing.
            let body = format!(r#"{{"symbol":"ETH-USD","action":"buy","qty":"0.01","signal_id":"{signal_id}"}}"#);
            let r = node.req("POST", "/v1/signals", &[("Authorization", &auth), JSON], &body);
            assert_eq!((r.status, r.header("idempotent-replay")), (200, Some("true")), "{policy}: {}", r.body);
            assert_eq!(r.json()["order"]["id"], id, "{policy}");
        }
        let dir = node.stop();
        let (code, out, _) = journal_tool(&["verify", dir.path().to_str().unwrap()]);
        assert_eq!(code, 0, "{policy}: the journal verifies after the crash and restart: {out}");
    }
}

#[test]
fn a_restart_rebuilds_accounts_keys_orders_positions_and_quotes() {
    // Quotes come from ticks posted here, not the simulator, so the last one is known.
    let node = Node::start(&[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    let (account, key) = node.account("pro", "250000", json!({"max_open_orders": 7}));
    let auth = bearer(&key);
    let ticks = r#"{"ticks":[{"symbol":"BTC-USD","bid":"65000.00","ask":"65001.00"},{"symbol":"ETH-USD","bid":"3200.00","ask":"3200.50"}]}"#;
    let r = node.req("POST", "/v1/market/ticks", &[("Authorization", &bearer(&node.demo_key)), JSON], ticks);
    assert_eq!(r.status, 200, "{}", r.body);
    let signal = |body: &str| node.req("POST", "/v1/signals", &[("Authorization", &auth), JSON], body);
    assert_eq!(signal(r#"{"symbol":"BTC-USD","action":"buy","qty":"0.03"}"#).status, 201);
    assert_eq!(signal(r#"{"symbol":"ETH-USD","action":"sell","qty":"0.5"}"#).status, 201);
    assert_eq!(signal(r#"{"symbol":"BTC-USD","action":"sell","qty":"0.01"}"#).status, 201);
    // Two resting limit orders, one of them canceled.
    let bid: f64 = get(&node, &key, "/v1/market/BTC-USD/quote")["bid"].as_str().unwrap().parse().unwrap();
    let price = format!("{:.2}", (bid * 0.97).floor());
    let rest = |qty: &str| {
        let body = format!(r#"{{"symbol":"BTC-USD","action":"buy","qty":"{qty}","limit_price":"{price}"}}"#);
        let r = signal(&body);
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.json()["order"]["status"], "new");
        r.json()["order"]["id"].as_u64().unwrap()
    };
    let (resting, canceled) = (rest("0.01"), rest("0.02"));
    let r = node.req("DELETE", &format!("/v1/orders/{canceled}"), &[("Authorization", &auth)], "");
    assert_eq!(r.json()["status"], "canceled");
    // A second key, revoked.
    let r = node.admin("POST", &format!("/admin/accounts/{account}/keys"), "{}");
    let revoked = r.json()["key"].as_str().unwrap().to_string();
    let revoked_id = r.json()["key_id"].as_u64().unwrap();
    assert_eq!(node.admin("DELETE", &format!("/admin/keys/{revoked_id}"), "").status, 200);
    let before = snapshot(&node, &key);
    let quote_before = get(&node, &key, "/v1/market/ETH-USD/quote");
    let dir = node.stop();

    // Still no simulator: the quotes shown come from the journal.
    let node = Node::start_in(dir, &[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    assert_eq!(snapshot(&node, &key), before);
    assert_eq!(get(&node, &key, "/v1/market/ETH-USD/quote"), quote_before);
    let r = node.req("GET", "/v1/account", &[("Authorization", &bearer(&revoked))], "");
    assert_eq!((r.status, r.code().as_str()), (401, "auth.key_revoked"));
    // The resting order is working at the venue again: it can be canceled.
    let r = node.req("DELETE", &format!("/v1/orders/{resting}"), &[("Authorization", &auth)], "");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("canceled")), "{}", r.body);
    // Limits came back with the account: an eighth open order is refused.
    let acct = get(&node, &key, "/v1/account");
    assert_eq!(acct["limits"]["max_open_orders"], 7, "{acct}");
    let ready = node.req("GET", "/ready", &[], "").json();
    assert_eq!((ready["journal"].as_str(), ready["ready"].as_bool()), (Some("ok"), Some(true)), "{ready}");
    assert_eq!(ready["durable_seq"], ready["last_seq"], "{ready}");
}

#[test]
fn one_demo_key_works_at_a_time_however_often_the_node_restarts() {
    let node = Node::start(&[]);
    let mut earlier = vec![node.demo_key.clone()];
    let mut dir = node.stop();
    for _ in 0..3 {
        let node = Node::start_in(dir, &[]);
        assert!(node.banner.iter().any(|l| l.contains("its earlier key is revoked")), "{:?}", node.banner);
        for old in &earlier {
            let r = node.req("GET", "/v1/account", &[("Authorization", &bearer(old))], "");
            assert_eq!((r.status, r.code().as_str()), (401, "auth.key_revoked"), "an earlier demo key still works");
        }
        assert_eq!(get(&node, &node.demo_key, "/v1/account")["name"], "demo");
        let keys = node.admin("GET", "/admin/accounts/1", "").json()["keys"].clone();
        let live: Vec<&Value> = keys.as_array().unwrap().iter().filter(|k| k["revoked"] == false).collect();
        assert_eq!(live.len(), 1, "{keys}");
        earlier.push(node.demo_key.clone());
        dir = node.stop();
    }
}

#[test]
fn a_torn_tail_is_cut_and_damage_stops_the_start_until_repaired() {
    let node = Node::start(&[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    let (_, key) = node.account("pro", "1000", json!({}));
    let dir = node.stop();
    let seg = segments(dir.path()).pop().expect("a segment");
    let good_len = std::fs::metadata(&seg).unwrap().len();
    let path = dir.path().to_str().unwrap().to_string();
    assert_eq!(journal_tool(&["verify", &path]).0, 0);

    // A crash in the middle of a write: half a record at the end.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 9]);
    std::fs::write(&seg, &bytes).unwrap();
    let (code, out, _) = journal_tool(&["verify", &path]);
    assert_eq!(code, 0, "a torn tail is not damage: {out}");
    assert!(out.contains("partial record") && out.contains(&format!("offset {good_len}")), "{out}");
    let node = Node::start_in(dir, &[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    assert!(node.log().iter().any(|l| l.contains("partial record")), "the cut is logged");
    assert_eq!(get(&node, &key, "/v1/account")["cash"], "1000.00");
    let dir = node.stop();
    assert!(std::fs::metadata(&seg).unwrap().len() > good_len, "writing went on after the cut");

    // A power loss in the middle of the last record: the file ends inside it.
    let bytes = std::fs::read(&seg).unwrap();
    let (_, out, _) = journal_tool(&["inspect", &path, "--json"]);
    let last_seq = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["seq"].as_u64())
        .max()
        .unwrap();
    std::fs::write(&seg, &bytes[..bytes.len() - 5]).unwrap();
    let (code, out, _) = journal_tool(&["verify", &path]);
    assert_eq!(code, 0, "a record cut short at the end is a torn tail: {out}");
    assert!(out.contains("partial record"), "{out}");
    let node = Node::start_in(dir, &[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    assert!(node.log().iter().any(|l| l.contains("partial record")), "the cut is logged");
    let ready = node.req("GET", "/ready", &[], "").json();
    assert!(ready["last_seq"].as_u64().unwrap() >= last_seq - 1, "only the cut record is gone: {ready}");
    let dir = node.stop();
    assert_eq!(journal_tool(&["verify", &path]).0, 0, "the segment is sound again");

    // One flipped byte inside an early record, good records after it: real damage.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[16 + 20] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, out, _) = journal_tool(&["verify", &path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&seg.display().to_string()) && out.contains("offset 16"), "names file and offset: {out}");
    let (err, dir) = match Node::try_start_in(dir, &[], &[]) {
        Err(e) => e,
        Ok(_) => panic!("a node started on a damaged journal"),
    };
    assert!(err.contains("offset 16") && err.contains("--repair-journal"), "{err}");

    // The operator repairs: everything from the damage on is dropped, and the node starts.
    let node = Node::try_start_in(dir, &["--repair-journal"], &[("SIGNALGATE_MARKET_SIMULATOR", "false")])
        .unwrap_or_else(|(e, _)| panic!("starts with --repair-journal: {e}"));
    assert!(node.log().iter().any(|l| l.contains("repaired") && l.contains("offset 16")), "{:?}", node.log());
    let r = node.req("GET", "/v1/account", &[("Authorization", &bearer(&key))], "");
    assert_eq!(r.status, 401, "the account was in the dropped part: {}", r.body);
    let dir = node.stop();
    assert_eq!(journal_tool(&["verify", dir.path().to_str().unwrap()]).0, 0);
}

#[test]
fn a_flipped_bit_in_the_last_record_is_damage_and_stops_the_start() {
    let node = Node::start(&[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    let (_, key) = node.account("pro", "1000", json!({}));
    let r = node.req("POST", "/v1/account/halt", &[("Authorization", &bearer(&key))], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let dir = node.stop();
    let seg = segments(dir.path()).pop().expect("a segment");
    let path = dir.path().to_str().unwrap().to_string();
    // The last record is whole; one bit of its payload flips (the disk, not a crash).
    let mut bytes = std::fs::read(&seg).unwrap();
    *bytes.last_mut().unwrap() ^= 0x04;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, out, _) = journal_tool(&["verify", &path]);
    assert_eq!(code, 1, "damage, not a torn tail: {out}");
    assert!(out.contains("checksum") && out.contains(&seg.display().to_string()), "{out}");
    let (err, _dir) = match Node::try_start_in(dir, &[], &[]) {
        Err(e) => e,
        Ok(n) => panic!("a node started on a damaged last record, log: {:?}", n.log()),
    };
    assert!(err.contains("checksum") && err.contains("--repair-journal"), "{err}");
}

#[test]
fn a_failing_snapshot_thread_reports_it_and_tries_again_until_it_writes() {
    let env = [("SIGNALGATE_MARKET_SIMULATOR", "false"), ("SIGNALGATE_JOURNAL_SNAPSHOT_EVERY_EVENTS", "20")];
    let node = Node::start(&env);
    // Every name a snapshot could take for a while is a directory: writing one fails.
    let blockers: Vec<PathBuf> =
        (1..=3000).map(|seq| node.data_dir().join(format!("snapshot-{seq:020}.snap.tmp"))).collect();
    for b in &blockers {
        std::fs::create_dir(b).unwrap();
    }
    let feed = bearer(&node.demo_key);
    let tick = r#"{"ticks":[{"symbol":"BTC-USD","bid":"65000","ask":"65001"}]}"#;
    assert_eq!(node.req("POST", "/v1/market/ticks", &[JSON, ("Authorization", &feed)], tick).status, 200);
    let (_, key) = node.account("pro", "100000", unlimited());
    for _ in 0..10 {
        let r = node.req(
            "POST",
            "/v1/signals",
            &[JSON, ("Authorization", &bearer(&key))],
            r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#,
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let ready = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = node.req("GET", "/ready", &[], "");
            assert_eq!(r.status, 200, "snapshots do not make the node unready: {}", r.body);
            if r.json()["snapshots"] == want {
                return r.json();
            }
            assert!(Instant::now() < deadline, "snapshots never became {want}: {}", r.body);
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let failing = ready("failing");
    assert!(failing["snapshot_error"].as_str().unwrap().contains("cannot write a snapshot"), "{failing}");
    assert!(node.metric("signalgate_snapshot_failures_total") >= 1);
    assert_eq!(node.metric("signalgate_snapshots_healthy"), 0);
    for b in &blockers {
        std::fs::remove_dir(b).unwrap();
    }
    ready("ok");
    assert_eq!(node.metric("signalgate_snapshots_healthy"), 1);
    assert!(node.metric("signalgate_snapshot_last_seq") >= 20);
    let written = std::fs::read_dir(node.data_dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".snap"))
        .count();
    assert!(written >= 1, "a snapshot was written once it could be");
}

#[test]
fn inspect_prints_events_as_text_and_json() {
    let node = Node::start(&[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    let (account, key) = node.account("pro", "1000", json!({}));
    let r = node.req(
        "POST",
        "/v1/market/ticks",
        &[("Authorization", &bearer(&node.demo_key)), JSON],
        r#"{"ticks":[{"symbol":"BTC-USD","bid":"65000.00","ask":"65001.00"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = node.req(
        "POST",
        "/v1/signals",
        &[("Authorization", &bearer(&key)), JSON],
        r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let dir = node.stop();
    let path = dir.path().to_str().unwrap();
    let (code, out, err) = journal_tool(&["inspect", path, "--json"]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gap-free from 1");
    let kinds: BTreeMap<&str, usize> = events.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["type"].as_str().unwrap()).or_default() += 1;
        m
    });
    for kind in ["account_created", "key_added", "quote", "order_accepted", "fill"] {
        assert!(kinds.contains_key(kind), "{kind} in {kinds:?}");
    }
    let created = events.iter().find(|e| e["type"] == "account_created" && e["data"]["account"] == account).unwrap();
    assert_eq!(created["data"]["name"], "t");
    let key_added = events.iter().find(|e| e["type"] == "key_added").unwrap();
    assert_eq!(key_added["data"]["hash"].as_str().unwrap().len(), 64, "hash as hex, never the key");
    let fill = events.iter().find(|e| e["type"] == "fill").unwrap();
    let from = fill["seq"].as_u64().unwrap();
    let (code, out, _) = journal_tool(&["inspect", path, "--from", &from.to_string()]);
    assert_eq!(code, 0);
    let first = out.lines().next().unwrap();
    assert!(first.trim_start().starts_with(&format!("{from} ")) && first.contains("Fill"), "{first}");
    assert_eq!(out.lines().count() as u64, seqs.len() as u64 - from + 1);
    let (code, _, err) = journal_tool(&["inspect", "/nonexistent/dir"]);
    assert_eq!((code, err.is_empty()), (0, true), "a missing directory is an empty journal");
}

/// A small tmpfs for the data directory, unmounted on drop.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount(8) runs");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (run the suite as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_refuses_orders_with_503_and_recovers_by_itself() {
    let disk = SmallDisk::mount("4m");
    let data = disk.0.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let env = [
        ("SIGNALGATE_JOURNAL_DIR", data.to_str().unwrap()),
        ("SIGNALGATE_JOURNAL_SEGMENT_BYTES", "1048576"),
        ("SIGNALGATE_MARKET_INTERVAL_MS", "5"),
    ];
    let mut node = Node::start(&env);
    let (_, key) = node.account("enterprise", "10000000", unlimited());
    node.wait_for_quote(&key, "BTC-USD");
    // Leave the journal a little room, then fill it with signals.
    let ballast = disk.0.path().join("ballast");
    let free = {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(disk.0.path()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
    };
    std::fs::write(&ballast, vec![1u8; (free - 96 * 1024) as usize]).unwrap();
    let auth = bearer(&key);
    // A trader sends signals until told to stop; a request caught by the failure waits for the
    // disk (it is neither acknowledged nor refused while its events are unwritten).
    let stop = Arc::new(AtomicBool::new(false));
    let trader = {
        let (addr, auth, stop) = (node.http, auth.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut conn = support::Conn::open(addr);
            let mut acked = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body = br#"{"symbol":"ETH-USD","action":"buy","qty":"0.01"}"#;
                let r = conn.send("POST", "/v1/signals", &[("Authorization", &auth), JSON], body);
                match r.status {
                    201 => acked.push(r.json()["order"]["id"].as_u64().unwrap()),
                    503 => {
                        assert_eq!(r.code(), "journal.full", "{}", r.body);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    s => panic!("unexpected {s}: {}", r.body),
                }
            }
            acked
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.req("GET", "/ready", &[], "").status == 200 {
        assert!(Instant::now() < deadline, "the disk never filled up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready = node.req("GET", "/ready", &[], "");
    assert_eq!((ready.status, ready.json()["reason"].as_str()), (503, Some("journal.full")), "{}", ready.body);
    let r = node.req(
        "POST",
        "/v1/signals",
        &[("Authorization", &auth), JSON],
        r#"{"symbol":"ETH-USD","action":"buy","qty":"0.01"}"#,
    );
    assert_eq!((r.status, r.code().as_str()), (503, "journal.full"), "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = node.admin("POST", "/admin/accounts", r#"{"name":"late","tier":"free","cash":"1"}"#);
    assert_eq!((r.status, r.code().as_str()), (503, "journal.full"), "{}", r.body);
    let metrics = node.req("GET", "/metrics", &[], "").body;
    assert!(metrics.contains("signalgate_journal_healthy 0"), "{metrics}");
    assert!(node.log().iter().any(|l| l.contains("cannot prepare a segment")), "the failure is logged");

    // Space comes back: the node takes orders again by itself.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.req("GET", "/ready", &[], "").status != 200 {
        assert!(Instant::now() < deadline, "the node did not recover");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = node.req(
        "POST",
        "/v1/signals",
        &[("Authorization", &auth), JSON],
        r#"{"symbol":"ETH-USD","action":"sell","qty":"0.01"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    stop.store(true, Ordering::Relaxed);
    let mut acked = trader.join().unwrap();
    acked.push(r.json()["order"]["id"].as_u64().unwrap());
    assert!(acked.len() > 10, "{}", acked.len());

    // The disk ran full under the node's mapped segments and it never died of it (a store into a
    // mapping with no block behind it is a SIGBUS): it is still running.
    assert!(node.wait(Duration::ZERO).is_none(), "the node died; log: {:?}", node.log());
    // Nothing acknowledged was lost, across the outage and a crash (dropping a node kills it).
    drop(node);
    let node = Node::start(&env);
    for id in acked {
        let r = node.req("GET", &format!("/v1/orders/{id}"), &[("Authorization", &auth)], "");
        assert_eq!(r.status, 200, "order {id} lost: {}", r.body);
    }
}

#[test]
fn snapshots_bound_the_replay_and_covered_segments_are_pruned() {
    let env = [
        ("SIGNALGATE_JOURNAL_SNAPSHOT_EVERY_EVENTS", "500"),
        ("SIGNALGATE_JOURNAL_SEGMENT_BYTES", "1048576"),
        ("SIGNALGATE_JOURNAL_KEEP_COVERED_SEGMENTS", "0"),
    ];
    let node = Node::start(&env);
    let (_, key) = node.account("enterprise", "10000000", unlimited());
    node.wait_for_quote(&key, "BTC-USD");
    let auth = bearer(&key);
    let mut conn = node.conn();
    // Enough signals to fill more than one 1 MiB segment.
    let mut i = 0;
    while segments(node.data_dir()).len() < 2 || i < 500 {
        let side = if i % 2 == 0 { "buy" } else { "sell" };
        let body = format!(r#"{{"symbol":"ETH-USD","action":"{side}","qty":"0.01","signal_id":"s{i}"}}"#);
        assert_eq!(conn.send("POST", "/v1/signals", &[("Authorization", &auth), JSON], body.as_bytes()).status, 201);
        i += 1;
        assert!(i < 20_000, "no second segment");
    }
    let first_segment = segments(node.data_dir())[0].clone();
    // The follower catches up, writes a snapshot past the first segment, and removes it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while first_segment.exists() {
        assert!(Instant::now() < deadline, "the covered segment was never pruned; log: {:?}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let snaps: Vec<String> = std::fs::read_dir(node.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".snap"))
        .collect();
    assert!(!snaps.is_empty() && snaps.len() <= 2, "{snaps:?}");
    let before = snapshot(&node, &key);
    let dir = node.stop();

    let node = Node::start_in(dir, &[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    let log = node.log();
    assert!(log.iter().any(|l| l.contains("restored the snapshot at seq")), "{log:?}");
    assert_eq!(snapshot(&node, &key), before);
    // Idempotency records came back through the snapshot too.
    let r = node.req(
        "POST",
        "/v1/signals",
        &[("Authorization", &auth), JSON],
        r#"{"symbol":"ETH-USD","action":"buy","qty":"0.01","signal_id":"s3"}"#,
    );
    assert_eq!((r.status, r.header("idempotent-replay")), (200, Some("true")), "{}", r.body);
    let dir = node.stop();
    let (code, out, _) = journal_tool(&["verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_journal_written_in_the_first_format_is_replayed_and_continued_in_the_second() {
    // tests/fixtures/journal-v1: what the node wrote before segments were memory-mapped
    // (`SGJRNL01`, records back to back): the demo account bought and sold BTC and ETH.
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v1/00000000000000000001.seg");
    std::fs::copy(&fixture, dir.path().join("00000000000000000001.seg")).unwrap();
    let node = Node::start_in(dir, &[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    let auth = bearer(&node.demo_key);
    let positions = |node: &Node| {
        let r = node.req("GET", "/v1/positions", &[("Authorization", &bearer(&node.demo_key))], "");
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let by = |sym: &str| v["positions"].as_array().unwrap().iter().find(|p| p["symbol"] == sym).unwrap().clone();
        (by("BTC-USD"), by("ETH-USD"))
    };
    let (btc, eth) = positions(&node);
    assert_eq!(
        (btc["qty"].as_str(), btc["cost"].as_str(), btc["realized_pnl"].as_str()),
        (Some("-0.0100"), Some("-650.5097"), Some("0.8112"))
    );
    assert_eq!((eth["qty"].as_str(), eth["realized_pnl"].as_str()), (Some("0.000"), Some("0.285")));
    let r = node.req("GET", "/v1/orders/5", &[("Authorization", &auth)], "");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("filled")), "{}", r.body);
    // Recent history reads those segments too, and works out what their fills realized (format 1
    // did not carry it).
    let r = node.req("GET", "/v1/trades?symbol=BTC-USD", &[("Authorization", &auth)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let realized: Vec<String> = r.json()["trades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["realized_pnl"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(realized.len(), 3, "{}", r.body);
    let total: f64 = realized.iter().map(|v| v.parse::<f64>().unwrap()).sum();
    assert!((total - 0.8112).abs() < 1e-9, "{realized:?}");
    // The next order goes into a new segment in the current format.
    let body = r#"{"symbol":"BTC-USD","action":"close"}"#;
    let r = node.req("POST", "/v1/signals", &[("Authorization", &auth), JSON], body);
    // No quote without the simulator: refused, and that refusal is an audit event all the same.
    assert_eq!(r.status, 422, "{}", r.body);
    let dir = node.stop();
    let segments = segments(dir.path());
    assert_eq!(segments.len(), 2, "{segments:?}");
    assert_eq!(&std::fs::read(&segments[0]).unwrap()[..8], b"SGJRNL01", "the old segment is left as it was");
    assert_eq!(&std::fs::read(&segments[1]).unwrap()[..8], b"SGJRNL02");
    // Both read back at the next start, and `journal verify` reads them too.
    let out = Command::new(binary()).args(["journal", "verify"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let node = Node::start_in(dir, &[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    assert_eq!(positions(&node).0["realized_pnl"].as_str(), Some("0.8112"));
}
