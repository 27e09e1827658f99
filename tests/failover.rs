//! Failover in a cluster, all real processes: every account event replicated to Redis before
//! anything shows it (`cluster.ack`), accounts of a node that dies moving to the live nodes with
//! every acknowledged order, and a node that was paused or cut off acting for none of them.

mod support;

use std::time::{Duration, Instant};

use support::cluster::*;
use support::{bearer, Redis, JSON};

#[test]
fn every_event_of_an_account_reaches_its_stream_and_under_replicated_answers_wait_for_redis() {
    let redis = Redis::start();
    let nodes = three(&redis);
    let (id, key) = nodes[0].account("pro", "100000", serde_json::json!({}));
    let owner = nodes.iter().position(|n| n.admin("GET", &format!("/admin/accounts/{id}"), "").status == 200);
    let owner = &nodes[owner.expect("an owner")];
    owner.wait_for_quote(&key, "BTC-USD");
    for i in 0..20 {
        let body = format!(r#"{{"symbol":"BTC-USD","action":"buy","qty":"0.001","signal_id":"r{i}"}}"#);
        assert_eq!(signal(&nodes[i % 3], &key, &body).status, 201);
        // Within the tier's 20 orders per second.
        std::thread::sleep(Duration::from_millis(60));
    }
    // Redis hangs: an answer waits for it, then comes once it answers again.
    redis.pause();
    let started = Instant::now();
    let waiting = {
        let (http, key) = (owner.http, key.clone());
        std::thread::spawn(move || {
            let mut c = support::Conn::open(http);
            let body = br#"{"symbol":"BTC-USD","action":"buy","qty":"0.001","signal_id":"held"}"#;
            let auth = bearer(&key);
            (c.send("POST", "/v1/signals", &[JSON, ("Authorization", &auth)], body), Instant::now())
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    assert!(!waiting.is_finished(), "answered while Redis was hung");
    redis.resume();
    let (r, answered) = waiting.join().unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(answered - started >= Duration::from_millis(800));
    // Every event of the account in its owner's journal is in its stream, once, in order.
    within_5s(|| same(owner.metric("signalgate_cluster_replication_lag_events"), 0));
    let owner_index = nodes.iter().position(|n| std::ptr::eq(n, owner)).unwrap();
    let mut nodes = nodes;
    let dir = nodes.remove(owner_index).crash();
    let journal = journal_events_of(dir.path(), id);
    let stream = stream_of(&redis, id);
    assert!(journal.len() > 60, "{journal:?}");
    assert_eq!(stream.iter().map(|(s, _)| *s).collect::<Vec<_>>(), journal);
    assert!(stream.iter().all(|(field, record)| field == record), "{stream:?}");
    assert_eq!(redis.query(&["HGET", "signalgate:epochs", &id.to_string()]).unwrap(), "1");
}

#[test]
fn under_local_acks_answers_do_not_wait_for_redis() {
    let redis = Redis::start();
    let node = try_member(&redis, "a", &[("SIGNALGATE_CLUSTER_ACK", "local")]).unwrap();
    let (_, key) = node.account("pro", "100000", serde_json::json!({}));
    node.wait_for_quote(&key, "BTC-USD");
    redis.pause();
    let started = Instant::now();
    let r = signal(&node, &key, r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    redis.resume();
    within_5s(|| same(node.metric("signalgate_cluster_replication_lag_events"), 0));
}

#[test]
fn a_node_whose_account_was_taken_under_a_newer_epoch_stops_without_answering_for_it() {
    let redis = Redis::start();
    let mut node = member(&redis, "a");
    let (id, key) = node.account("pro", "100000", serde_json::json!({}));
    node.wait_for_quote(&key, "BTC-USD");
    let buy = r#"{"symbol":"BTC-USD","action":"buy","qty":"0.001"}"#;
    assert_eq!(signal(&node, &key, buy).status, 201);
    // Another node took the account (a takeover raises its epoch): nothing more of node a's
    // reaches the stream, its answer is never sent, and it stops, saying why.
    let before = stream_of(&redis, id).len();
    redis.query(&["HSET", "signalgate:epochs", &id.to_string(), "2"]).unwrap();
    let mut c = support::Conn::open(node.http);
    let auth = bearer(&key);
    let r = c.try_send("POST", "/v1/signals", &[JSON, ("Authorization", &auth)], buy.as_bytes());
    assert!(r.as_ref().map_or(true, |r| r.status != 201), "{r:?}");
    let status = node.wait(Duration::from_secs(10)).expect("the node stops");
    assert!(!status.success());
    assert!(node.log().iter().any(|l| l.contains("belong to another node")), "{:?}", node.log());
    assert_eq!(stream_of(&redis, id).len(), before);
}

/// Signals with ids of their own, `buy` of a small quantity, for `key`.
fn signal_with_id(id: &str) -> String {
    format!(r#"{{"symbol":"BTC-USD","action":"buy","qty":"0.0001","signal_id":"{id}"}}"#)
}

/// Sends a signal through `node` until it is answered (201, or 200 for a replay; 503s while the
/// account moves are retried), for at most 5 s; the answer and when it came.
fn until_answered(node: &support::Node, key: &str, body: &str) -> (support::Resp, Instant) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = signal(node, key, body);
        if r.status == 201 || r.status == 200 {
            return (r, Instant::now());
        }
        assert!(r.status == 503 && Instant::now() < deadline, "{} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_accounts_of_a_node_that_dies_move_to_the_live_nodes_with_every_answered_order() {
    let redis = Redis::start();
    let mut nodes = three(&redis);
    // Two accounts on node a, with answered signals.
    let accounts: Vec<(u64, String)> = (0..2).map(|_| account_on(&redis, &nodes[1], "a")).collect();
    nodes[1].wait_for_quote(&accounts[0].1, "BTC-USD");
    let mut answered = Vec::new();
    for (i, (_, key)) in accounts.iter().enumerate() {
        for j in 0..5 {
            let id = format!("s{i}-{j}");
            let r = signal(&nodes[j % 3], key, &signal_with_id(&id));
            assert_eq!(r.status, 201, "{}", r.body);
            answered.push((key.clone(), id, r.json()["order"]["id"].as_u64().unwrap()));
        }
    }
    // Node a dies: within the lease and a little more, each account answers through b and c,
    // under epoch 2, on a live owner, and every answered signal is there under its order.
    let killed = Instant::now();
    let dir = nodes.remove(0).crash();
    for (i, (id, key)) in accounts.iter().enumerate() {
        let (r, at) = until_answered(&nodes[i % 2], key, &signal_with_id(&format!("after-{i}")));
        assert_eq!(r.header("idempotent-replay"), None, "{}", r.body);
        let took = at - killed;
        assert!(took < Duration::from_secs(3), "account {id} answered {took:?} after the kill");
        let now = owner(&redis, *id);
        assert!(now == "b" || now == "c", "{now}");
        assert_eq!(redis.query(&["HGET", "signalgate:epochs", &id.to_string()]).unwrap(), "2");
    }
    for (key, id, order) in &answered {
        for n in &nodes {
            let r = signal(n, key, &signal_with_id(id));
            assert_eq!(r.header("idempotent-replay"), Some("true"), "{id} lost: {}", r.body);
            assert_eq!(r.json()["order"]["id"].as_u64(), Some(*order), "{}", r.body);
        }
    }
    // Node a comes back on its journal: it lets the accounts go (they stay where they moved) and
    // serves their requests through their new owners.
    let a = restart_member(&redis, "a", dir);
    assert!(
        a.log_until(Duration::from_secs(5), |l| l.contains("lets it go")).iter().any(|l| l.contains("lets it go")),
        "{:?}",
        a.log()
    );
    for (key, id, order) in &answered {
        let r = signal(&a, key, &signal_with_id(id));
        assert_eq!(r.json()["order"]["id"].as_u64(), Some(*order), "{}", r.body);
    }
    for (id, _) in &accounts {
        assert_ne!(owner(&redis, *id), "a");
    }
    assert_eq!(a.metric("signalgate_cluster_stale"), 0);
    // Its stream too: opened on node a, it is the new owner's.
    use signalgate::engine::event::EventKind;
    use signalgate::ws::protocol::{ClientMsg, ServerBody};
    let mut c = signalgate::ws::client::Client::connect(a.ws, "", Some(&accounts[0].1)).unwrap();
    c.set_timeout(Duration::from_secs(5));
    c.send(&ClientMsg::Subscribe { channels: vec!["account".into()], resume_from: None }).unwrap();
    ws_until(&mut c, "subscribed", |m| matches!(m.body, ServerBody::Subscribed { .. }));
    let r = signal(&nodes[0], &accounts[0].1, &signal_with_id("streamed"));
    let order = r.json()["order"]["id"].as_u64().unwrap();
    ws_until(
        &mut c,
        "the order",
        |m| matches!(m.body, ServerBody::Event { event: EventKind::OrderAccepted { order: o } } if o.id.0 == order),
    );
}

#[test]
fn a_paused_owner_writes_nothing_for_the_accounts_that_moved_and_stops() {
    let redis = Redis::start();
    let mut nodes = three(&redis);
    let (id, key) = account_on(&redis, &nodes[0], "b");
    nodes[0].wait_for_quote(&key, "BTC-USD");
    assert_eq!(signal(&nodes[1], &key, &signal_with_id("before")).status, 201);
    let b = nodes.remove(1);
    b.signal("STOP");
    // Longer than the lease (600 ms here): the account moves to a or c.
    let (r, _) = until_answered(&nodes[0], &key, &signal_with_id("moved"));
    assert_eq!(r.status, 201);
    let stream = stream_of(&redis, id).len();
    // A signal waits in node b's socket while it is paused; then it goes on.
    let waiting = {
        let (http, key) = (b.http, key.clone());
        std::thread::spawn(move || {
            let mut c = support::Conn::open(http);
            let auth = bearer(&key);
            c.try_send("POST", "/v1/signals", &[JSON, ("Authorization", &auth)], signal_with_id("stale").as_bytes())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    b.signal("CONT");
    let r = waiting.join().unwrap();
    assert!(r.as_ref().map_or(true, |r| r.status != 201), "the paused node answered for the moved account: {r:?}");
    let mut b = b;
    let status = b.wait(Duration::from_secs(10)).expect("the stale node stops");
    assert!(!status.success());
    assert!(b.log().iter().any(|l| l.contains("took some of its accounts")), "{:?}", b.log());
    // Nothing of node b's reached the account's stream after the move, and the signal it held
    // was never done: sent again to the new owner, it is a new order.
    assert_eq!(stream_of(&redis, id).len(), stream);
    let r = signal(&nodes[1], &key, &signal_with_id("stale"));
    assert_eq!((r.status, r.header("idempotent-replay")), (201, None), "{}", r.body);
}

#[test]
fn a_node_whose_lease_runs_out_as_it_comes_back_takes_it_again_and_lets_its_moved_accounts_go() {
    let redis = Redis::start();
    let mut nodes = three(&redis);
    let (id, key) = account_on(&redis, &nodes[0], "c");
    nodes[0].wait_for_quote(&key, "BTC-USD");
    assert_eq!(signal(&nodes[2], &key, &signal_with_id("before")).status, 201);
    // Node c dies and its account moves: it is noted as taken from node c.
    let dir = nodes.remove(2).crash();
    let (r, _) = until_answered(&nodes[0], &key, &signal_with_id("moved"));
    assert_eq!(r.status, 201, "{}", r.body);
    // Node c comes back. Right after it took its lease, and before it let the account go, its
    // start is held and the lease runs out (Redis loses it): the account taken from its
    // previous run is still noted, and is no account taken from this run. Its lease thread
    // takes the lease again; then the start goes on.
    let url = redis.url();
    let hook: support::LineHook = Box::new(move |pid, line| {
        if line.contains("cluster: joined as") {
            hold_main_thread(pid, || {
                let client = redis::Client::open(url.as_str()).unwrap();
                let mut con = client.get_connection().unwrap();
                let _: () = redis::cmd("DEL").arg("signalgate:lease:c").query(&mut con).unwrap();
                // Until the lease is taken again (the assertions below tell when it is not).
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if redis::cmd("EXISTS").arg("signalgate:lease:c").query(&mut con) == Ok(true) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
    });
    let env = member_env(&redis, "c");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c = support::Node::start_in_hooked(dir, &env, hook);
    let log = c.log();
    let at = |what: &str| log.iter().position(|l| l.contains(what));
    let retaken_then_released = matches!(
        (at("lease taken again"), at("lets it go")),
        (Some(retaken), Some(released)) if retaken < released
    );
    assert!(retaken_then_released, "the lease was not taken again before the account was let go: {log:#?}");
    assert_eq!(at("took some of its accounts"), None, "{log:#?}");
    // It serves: a member of the cluster again, not stale, and the account stays where it moved.
    assert_eq!(c.wait(Duration::from_secs(1)), None, "node c stopped: {:#?}", c.log());
    for n in nodes.iter().chain([&c]) {
        wait_members(n, &[("a", true), ("b", true), ("c", true)]);
    }
    assert_eq!(c.metric("signalgate_cluster_stale"), 0);
    assert_ne!(owner(&redis, id), "c");
    let r = signal(&c, &key, &signal_with_id("after"));
    assert_eq!(r.status, 201, "{}", r.body);
}

/// Holds the main thread of process `pid` (a child of this process) while `meanwhile` runs,
/// the other threads going on: it is traced and interrupted, then let go.
fn hold_main_thread(pid: u32, meanwhile: impl FnOnce()) {
    let tid = pid as libc::pid_t;
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: ptrace(2) and waitpid(2) on the main thread of a process this test started and
    // has not reaped; the thread is let go (PTRACE_DETACH) before this returns.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, tid, null, null), 0, "{}", std::io::Error::last_os_error());
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
    }
    meanwhile();
    // SAFETY: as above; the thread is in a ptrace stop.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_DETACH, tid, null, null), 0, "{}", std::io::Error::last_os_error());
    }
}

/// One answered signal, as a load worker saw it.
#[derive(Debug, Clone)]
struct Answered {
    key: String,
    signal_id: String,
    body: String,
    order: u64,
    at: Instant,
    /// Answered 201: placed by the try that was answered.
    new: bool,
}

/// A stream client of `key`'s account at `addr` until `stop`: subscribes (then says so on
/// `subscribed`), and whenever the stream ends, connects again and resumes after the last account
/// message it had (a refused connection, while the account moves, is tried again). The orders
/// it saw accepted, in order, and how often it connected again; it panics on a refused resume.
fn watch_stream(
    addr: std::net::SocketAddr,
    key: &str,
    stop: &std::sync::atomic::AtomicBool,
    subscribed: std::sync::mpsc::Sender<()>,
) -> (Vec<u64>, u32) {
    use signalgate::engine::event::EventKind;
    use signalgate::ws::client::{Client, Incoming};
    use signalgate::ws::protocol::{ClientMsg, ServerBody};
    let (mut accepted, mut ends, mut last) = (Vec::new(), Vec::new(), None::<u64>);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let query = last.map(|s| format!("resume_from={s}")).unwrap_or_default();
        let Ok(mut c) = Client::connect(addr, &query, Some(key)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        c.set_timeout(Duration::from_millis(200));
        c.send(&ClientMsg::Subscribe { channels: vec!["account".into()], resume_from: None }).unwrap();
        loop {
            match c.recv() {
                Ok(Incoming::Messages(msgs)) => {
                    for m in msgs {
                        match m.body {
                            ServerBody::Subscribed { .. } if last.is_none() => subscribed.send(()).unwrap(),
                            ServerBody::ResumeFailed { reason, .. } => {
                                panic!("resume from {last:?} refused after the stream ended {ends:?}: {reason}")
                            }
                            ServerBody::Event { event } => {
                                if let EventKind::OrderAccepted { order } = event {
                                    accepted.push(order.id.0);
                                }
                                last = Some(m.seq);
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) if e.contains("temporarily unavailable") || e.contains("timed out") => {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return (accepted, ends.len() as u32);
                    }
                }
                end => {
                    ends.push(format!("{end:?}"));
                    break;
                }
            }
        }
    }
    (accepted, ends.len() as u32)
}

/// The range of order ids of the node that placed `order` (nodes give ids from ranges of their
/// own, 2^40 wide).
fn range_of(order: u64) -> u64 {
    order >> 40
}

#[test]
fn under_load_through_nginx_ten_kill_9s_lose_no_answered_order_and_do_nothing_twice() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let redis = Redis::start();
    let pg = support::Postgres::start();
    let ids = ["a", "b", "c"];
    // Fixed ports: a node restarted after its kill is where nginx and the others expect it.
    let ports: Vec<[u16; 3]> = ids.iter().map(|_| [0; 3].map(|_| support::fixed_port())).collect();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let env_of = |i: usize| {
        let mut env = member_env(&redis, ids[i]);
        env.push(("SIGNALGATE_POSTGRES_URL".into(), pg.url()));
        env.push(("SIGNALGATE_POSTGRES_MIGRATE".into(), "true".into()));
        for (name, port) in ["SIGNALGATE_HTTP_ADDR", "SIGNALGATE_ADMIN_ADDR", "SIGNALGATE_WS_ADDR"].iter().zip(ports[i])
        {
            env.push((name.to_string(), addr(port)));
        }
        env
    };
    let start = |i: usize, dir: Option<tempfile::TempDir>| {
        let env = env_of(i);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match dir {
            Some(dir) => support::Node::start_in(dir, &env),
            None => support::Node::try_start(&env).unwrap(),
        }
    };
    let mut nodes: Vec<Option<support::Node>> = (0..3).map(|i| Some(start(i, None))).collect();
    let http: Vec<std::net::SocketAddr> = ports.iter().map(|p| addr(p[0]).parse().unwrap()).collect();
    let ws: Vec<std::net::SocketAddr> = ports.iter().map(|p| addr(p[2]).parse().unwrap()).collect();
    let nginx = support::nginx::Nginx::start(&http, &ws, &ids);
    for n in nodes.iter().flatten() {
        wait_members(n, &[("a", true), ("b", true), ("c", true)]);
    }
    // Six accounts, two on each node, allowed the load.
    let limits =
        serde_json::json!({"requests_per_minute": 600000, "max_orders_per_second": 1000, "max_open_orders": 1000});
    let keys: Vec<(u64, String)> =
        (0..6).map(|_| nodes[0].as_ref().unwrap().account("pro", "1000000", limits.clone())).collect();
    nodes[0].as_ref().unwrap().wait_for_quote(&keys[0].1, "BTC-USD");
    // A stream client of the first account through nginx, from before the load: after each
    // kill it connects again and resumes after the last account message it had.
    let stop = Arc::new(AtomicBool::new(false));
    let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
    let watcher = {
        let (key, stop, plain) = (keys[0].1.clone(), stop.clone(), nginx.plain);
        std::thread::spawn(move || watch_stream(plain, &key, &stop, subscribed_tx))
    };
    subscribed.recv_timeout(Duration::from_secs(10)).unwrap();
    // Twenty workers at 50 signals/s each through nginx, every signal with an id of its own, sent
    // again (the same id) until it is answered (201, or 200 when a try it did not hear of was done).
    let answered = Arc::new(Mutex::new(Vec::<Answered>::new()));
    let workers: Vec<_> = (0..20)
        .map(|w| {
            let (keys, answered, stop, plain) = (keys.clone(), answered.clone(), stop.clone(), nginx.plain);
            std::thread::spawn(move || {
                let mut conn = support::Conn::open(plain);
                let mut given_up = 0;
                let mut i = 0u64;
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[(w + 20 * i as usize) % keys.len()].1;
                    let side = if i.is_multiple_of(2) { "buy" } else { "sell" };
                    let id = format!("w{w}-{i}");
                    let body = format!(r#"{{"symbol":"BTC-USD","action":"{side}","qty":"0.0001","signal_id":"{id}"}}"#);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        let auth = bearer(key);
                        let r =
                            conn.try_send("POST", "/v1/signals", &[JSON, ("Authorization", &auth)], body.as_bytes());
                        match r {
                            // 201, or 200 for the replay of an earlier try that was done.
                            Ok(r) if r.status == 201 || r.status == 200 => {
                                let order = r.json()["order"]["id"].as_u64().unwrap();
                                let at = Instant::now();
                                answered.lock().unwrap().push(Answered {
                                    key: key.clone(),
                                    signal_id: id.clone(),
                                    body: body.clone(),
                                    order,
                                    at,
                                    new: r.status == 201,
                                });
                                break;
                            }
                            // The account moving (503), or its node killed with the request
                            // in flight (502 from nginx): the outcome is unknown, the id says.
                            Ok(r) => assert!(matches!(r.status, 502 | 503), "{} {}", r.status, r.body),
                            Err(_) => conn = support::Conn::open(plain),
                        }
                        if Instant::now() > deadline {
                            given_up += 1;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    i += 1;
                    // 50 signals a second.
                    let due = started + Duration::from_micros(20_000 * i);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                given_up
            })
        })
        .collect();
    // Ten kill -9s at random moments, each node restarted on its journal at once.
    let mut failovers = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let load_started = Instant::now();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300 + random(1200)));
        // A node that owns accounts (they gather on fewer nodes as they move).
        let owners: Vec<usize> = (0..3).filter(|&i| keys.iter().any(|(id, _)| owner(&redis, *id) == ids[i])).collect();
        let victim = owners[random(owners.len() as u64) as usize];
        let owned: Vec<String> =
            keys.iter().filter(|(id, _)| owner(&redis, *id) == ids[victim]).map(|(_, k)| k.clone()).collect();
        let killed = Instant::now();
        let dir = nodes[victim].take().unwrap().crash();
        // Its accounts move; then it comes back (and lets them go).
        within_5s(|| {
            let left = keys.iter().filter(|(id, _)| owner(&redis, *id) == ids[victim]).count();
            same(left, 0)
        });
        // From the kill to the first order the new owner placed for each account the dead node
        // owned (told apart by its range of order ids: answers the dead node sent as it died
        // do not count).
        let dead_range = {
            let answered = answered.lock().unwrap();
            answered.iter().rev().find(|a| a.new && a.at < killed && owned.contains(&a.key)).map(|a| range_of(a.order))
        };
        let first_answers = || -> Option<Vec<Duration>> {
            let answered = answered.lock().unwrap();
            owned
                .iter()
                .map(|k| {
                    answered
                        .iter()
                        .find(|a| a.key == *k && a.new && a.at > killed && Some(range_of(a.order)) != dead_range)
                        .map(|a| a.at - killed)
                })
                .collect()
        };
        let deadline = killed + Duration::from_secs(10);
        let firsts = loop {
            if let Some(f) = first_answers() {
                break f;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> =
                    nodes.iter().flatten().flat_map(|n| n.log()).filter(|l| l.contains("cluster")).collect();
                let answered = answered.lock().unwrap();
                let seen: Vec<String> = owned
                    .iter()
                    .map(|k| {
                        let last: Vec<String> = answered
                            .iter()
                            .filter(|a| a.key == *k)
                            .rev()
                            .take(3)
                            .map(|a| {
                                format!("{} {} {:?}", a.new, range_of(a.order), a.at.saturating_duration_since(killed))
                            })
                            .collect();
                        format!("{}: {last:?}", &k[..6])
                    })
                    .collect();
                let errors = std::fs::read_to_string(nginx.dir.path().join("logs/error.log")).unwrap_or_default();
                let errors: Vec<&str> = errors.lines().rev().take(15).collect();
                panic!(
                    "an account of node {} not answered by its new owner within 10 s (dead range {dead_range:?}): {seen:#?} nginx: {errors:?} {logs:#?}",
                    ids[victim]
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(longest) = firsts.into_iter().max() {
            failovers.push(longest);
        }
        nodes[victim] = Some(start(victim, Some(dir)));
        for n in nodes.iter().flatten() {
            wait_members(n, &[("a", true), ("b", true), ("c", true)]);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let given_up: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let (streamed, reconnects) = watcher.join().unwrap();
    let elapsed = load_started.elapsed();
    let answered = answered.lock().unwrap().clone();
    let rate = answered.len() as f64 / elapsed.as_secs_f64();
    failovers.sort();
    eprintln!(
        "{} signals answered 201 in {elapsed:?} ({rate:.0}/s), {given_up} given up; kill to first 201 of the dead node's accounts: {failovers:?}",
        answered.len()
    );
    // (How long a failover takes is measured by the bench, on a release build: scripts/bench.)
    assert_eq!(failovers.len(), 10, "{failovers:?}");
    // A release build keeps up with the load (scripts/test runs this test on one too).
    assert!(cfg!(debug_assertions) || rate >= 900.0, "{rate:.0} signals/s, not 1,000");
    assert_eq!(given_up, 0);
    // The stream client had each order of its account once, whichever node sent it, through
    // every reconnection (each a resume on the account's owner of the moment).
    let mut of_first: Vec<u64> = answered.iter().filter(|a| a.key == keys[0].1).map(|a| a.order).collect();
    let mut seen = streamed.clone();
    of_first.sort_unstable();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), streamed.len(), "an order streamed twice");
    assert_eq!(seen, of_first, "the stream and the answers differ ({reconnects} reconnections)");
    assert!(reconnects > 0);
    // Nothing twice: one order per signal id, and no order for two.
    let mut by_signal = std::collections::HashMap::new();
    let mut orders = std::collections::HashSet::new();
    for a in &answered {
        assert!(by_signal.insert(a.signal_id.clone(), a.order).is_none(), "{} answered 201 twice", a.signal_id);
        assert!(orders.insert(a.order), "order {} answered for two signals", a.order);
    }
    // Every answered order is on its account's owner now: sent again, each signal id replays it.
    let mut conn = support::Conn::open(nginx.plain);
    for a in &answered {
        let auth = bearer(&a.key);
        let headers = [JSON, ("Authorization", auth.as_str())];
        let r = conn.try_send("POST", "/v1/signals", &headers, a.body.as_bytes()).unwrap_or_else(|_| {
            // nginx closes a kept-alive connection after a while.
            conn = support::Conn::open(nginx.plain);
            conn.send("POST", "/v1/signals", &headers, a.body.as_bytes())
        });
        assert_eq!(r.header("idempotent-replay"), Some("true"), "{} answered 201 and lost: {}", a.signal_id, r.body);
        assert_eq!(r.json()["order"]["id"].as_u64(), Some(a.order), "{}", r.body);
    }
    // And in PostgreSQL once caught up, whichever node journaled it, and whether it died before
    // its offload had it or came back to offload it again: each answered signal once, with its
    // order; no other order, and no fill twice.
    for n in nodes.iter().flatten() {
        offloaded_all(n);
    }
    within_5s(|| same(redis.query(&["SCARD", "signalgate:pg_pending"]).unwrap(), "0".to_string()));
    let rows = pg.query(
        "SELECT signal_id || ' ' || min(order_id) || ' ' || count(*) FROM signals WHERE signal_id IS NOT NULL GROUP BY signal_id",
    );
    let in_pg: std::collections::HashMap<&str, (u64, u64)> = rows
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0], (f[1].parse().unwrap(), f[2].parse().unwrap()))
        })
        .collect();
    for a in &answered {
        assert_eq!(in_pg.get(a.signal_id.as_str()), Some(&(a.order, 1)), "{} in PostgreSQL", a.signal_id);
    }
    assert_eq!(in_pg.len(), answered.len());
    assert_eq!(pg.query("SELECT count(*) FROM orders"), answered.len().to_string());
    assert_eq!(
        pg.query("SELECT count(*) = count(DISTINCT (ts, order_id, qty)) FROM fills"),
        "t",
        "a fill in PostgreSQL twice"
    );
}

#[test]
fn streams_are_cut_back_to_checkpoints_and_a_new_owner_rebuilds_the_same_account_from_one() {
    let redis = Redis::start();
    let small = [("SIGNALGATE_CLUSTER_CHECKPOINT_EVENTS", "64"), ("SIGNALGATE_ENGINE_ORDERS_PER_ACCOUNT", "16")];
    let mut nodes = three_with(&redis, &small);
    let (id, key) = account_on(&redis, &nodes[1], "a");
    nodes[0].wait_for_quote(&key, "BTC-USD");
    // 120 signals, the last five with ids: some 480 events, while the account itself (its 16
    // remembered orders, five idempotency records, positions and key) takes a few dozen.
    let mut orders = Vec::new();
    for i in 0..120 {
        let side = if i % 3 == 0 { "sell" } else { "buy" };
        let id_part = if i >= 115 { format!(r#","signal_id":"last-{i}""#) } else { String::new() };
        let body = format!(r#"{{"symbol":"BTC-USD","action":"{side}","qty":"0.001"{id_part}}}"#);
        let r = signal(&nodes[0], &key, &body);
        assert_eq!(r.status, 201, "{}", r.body);
        if i >= 115 {
            orders.push((body, r.json()["order"]["id"].as_u64().unwrap()));
        }
    }
    within_5s(|| same(nodes[0].metric("signalgate_cluster_replication_lag_events"), 0));
    let entries = stream_of(&redis, id).len();
    assert!(entries < 200, "{entries} entries: the stream was not cut back");
    let view = |n: &support::Node| {
        let r = n.req("GET", "/v1/account", &[("Authorization", &bearer(&key))], "");
        assert_eq!(r.status, 200, "{}", r.body);
        let a = r.json();
        let mut p = n.req("GET", "/v1/positions", &[("Authorization", &bearer(&key))], "").json();
        // What the quotes move is left out.
        for pos in p["positions"].as_array_mut().unwrap() {
            let pos = pos.as_object_mut().unwrap();
            pos.remove("mark_price");
            pos.remove("unrealized_pnl");
        }
        (a["cash"].clone(), a["realized_pnl"].clone(), a["fees"].clone(), a["open_orders"].clone(), p)
    };
    let before = view(&nodes[0]);
    // Node a dies: the node that takes the account rebuilds it from the checkpoint and what
    // followed it, to the cent.
    let _ = nodes.remove(0).crash();
    let (r, _) = until_answered(&nodes[0], &key, &orders[4].0);
    assert_eq!(r.header("idempotent-replay"), Some("true"), "{}", r.body);
    assert_eq!(view(&nodes[0]), before);
    assert_eq!(view(&nodes[1]), before);
    for (body, order) in &orders {
        let r = signal(&nodes[1], &key, body);
        assert_eq!((r.header("idempotent-replay"), r.json()["order"]["id"].as_u64()), (Some("true"), Some(*order)));
    }
}

#[test]
fn redis_restarted_in_the_middle_of_a_failover_loses_no_order_answered_under_replicated_acks() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut redis = Redis::start_persistent();
    let mut nodes = three(&redis);
    let (id, key) = account_on(&redis, &nodes[1], "a");
    nodes[1].wait_for_quote(&key, "BTC-USD");
    // Workers send signals with ids of their own through nodes b and c, each again until it is
    // answered, while node a dies and Redis restarts.
    let answered = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (http, key, answered, stop) = (nodes[1 + w % 2].http, key.clone(), answered.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = signal_with_id(&format!("w{w}-{i}"));
                    i += 1;
                    while !stop.load(Ordering::Relaxed) {
                        let auth = bearer(&key);
                        let r = support::Conn::open(http).try_send(
                            "POST",
                            "/v1/signals",
                            &[JSON, ("Authorization", &auth)],
                            body.as_bytes(),
                        );
                        match r {
                            Ok(r) if r.status == 201 || r.status == 200 => {
                                answered
                                    .lock()
                                    .unwrap()
                                    .push((body.clone(), r.json()["order"]["id"].as_u64().unwrap()));
                                break;
                            }
                            Ok(r) => assert_eq!(r.status, 503, "{}", r.body),
                            Err(_) => {}
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let _ = nodes.remove(0).crash();
    redis.restart();
    within_10s(|| {
        let now = redis.query(&["HGET", "signalgate:owners", &id.to_string()]).unwrap_or_default();
        if now == "b" || now == "c" {
            Ok(())
        } else {
            Err(format!("account {id} is still on {now:?}"))
        }
    });
    assert_eq!(until_answered(&nodes[0], &key, &signal_with_id("after")).0.status, 201);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() > 20, "{} answered", answered.len());
    for (body, order) in &answered {
        for n in &nodes {
            let r = signal(n, &key, body);
            assert_eq!(r.header("idempotent-replay"), Some("true"), "{body} answered and lost: {}", r.body);
            assert_eq!(r.json()["order"]["id"].as_u64(), Some(*order), "{}", r.body);
        }
    }
}

#[test]
fn what_a_dead_owner_journaled_and_redis_never_had_is_reported_and_never_reaches_postgresql() {
    let pg = support::Postgres::start();
    let mut redis = Redis::start_persistent();
    let with_pg = [("SIGNALGATE_POSTGRES_URL", pg.url()), ("SIGNALGATE_POSTGRES_MIGRATE", "true".to_string())];
    let extra: Vec<(&str, &str)> = with_pg.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut nodes = vec![try_member(&redis, "a", &extra).unwrap(), try_member(&redis, "b", &extra).unwrap()];
    let (id, key) = account_on(&redis, &nodes[1], "a");
    nodes[0].wait_for_quote(&key, "BTC-USD");
    for i in 0..3 {
        assert_eq!(signal(&nodes[0], &key, &signal_with_id(&format!("s{i}"))).status, 201);
    }
    // Redis dies: node a journals one more signal, which it cannot acknowledge, and dies too.
    redis.kill();
    let held = {
        let (http, key) = (nodes[0].http, key.clone());
        std::thread::spawn(move || {
            let mut c = support::Conn::open(http);
            let auth = bearer(&key);
            c.try_send("POST", "/v1/signals", &[JSON, ("Authorization", &auth)], signal_with_id("never").as_bytes())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let dir = nodes.remove(0).crash();
    assert!(held.join().unwrap().is_err(), "answered without Redis");
    redis.restart();
    // The account moves to node b, without the signal Redis never had.
    within_10s(|| same(owner(&redis, id), "b".to_string()));
    let (r, _) = until_answered(&nodes[0], &key, &signal_with_id("never"));
    assert_eq!((r.status, r.header("idempotent-replay")), (201, None), "{}", r.body);
    // Node a comes back: it lets the account go, reports the event it kept, and its offload
    // leaves it out of PostgreSQL, where every answered signal is once.
    let a = restart_member_with(&redis, "a", dir, &extra);
    within_10s(|| {
        let c = a.admin("GET", "/admin/cluster", "").json();
        let listed = c["unreplicated"].as_array().cloned().unwrap_or_default();
        match listed.iter().find(|u| u["account"] == id) {
            Some(u) if u["events"].as_u64() > Some(0) => Ok(()),
            _ => Err(format!("{c}")),
        }
    });
    assert!(a.metric("signalgate_cluster_unreplicated_events") > 0);
    offloaded_all(&a);
    offloaded_all(&nodes[0]);
    let count = |signal: &str| {
        pg.query(&format!("SELECT count(*) FROM signals WHERE account_id = {id} AND signal_id = '{signal}'"))
    };
    within_10s(|| {
        same((count("s0"), count("s1"), count("s2"), count("never")), ("1".into(), "1".into(), "1".into(), "1".into()))
    });
    // The one "never" row is node b's: the order it placed.
    let order = r.json()["order"]["id"].as_u64().unwrap();
    assert_eq!(pg.query("SELECT order_id FROM signals WHERE signal_id = 'never'"), order.to_string());
}

/// Waits until PostgreSQL has every event `node` had journaled when called (quotes go on).
fn offloaded_all(node: &support::Node) {
    let last = node.req("GET", "/ready", &[], "").json()["last_seq"].as_u64().unwrap();
    within_10s(|| {
        let offloaded = node.metric("signalgate_offload_seq");
        if offloaded >= last {
            Ok(())
        } else {
            Err(format!("offloaded up to {offloaded}, not {last}"))
        }
    });
}

/// Each answered signal id of `account` in PostgreSQL with its order and how many rows it has,
/// then whether every fill is there once and how the orders stand.
fn projection_of(pg: &support::Postgres, account: u64) -> (String, String, String) {
    let signals = pg.query(&format!(
        "SELECT string_agg(signal_id || ':' || order_id || 'x' || n, ' ' ORDER BY signal_id) FROM
         (SELECT signal_id, min(order_id) AS order_id, count(*) AS n FROM signals
          WHERE account_id = {account} AND signal_id IS NOT NULL GROUP BY signal_id) s"
    ));
    let fills = pg.query(&format!(
        "SELECT count(*) || ' fills, ' || count(DISTINCT (ts, order_id, qty)) || ' distinct' FROM fills WHERE account_id = {account}"
    ));
    let orders = pg.query(&format!(
        "SELECT count(*) || ' orders, ' || count(*) FILTER (WHERE status = 'filled') || ' filled' FROM orders WHERE account_id = {account}"
    ));
    (signals, fills, orders)
}

#[test]
fn what_a_dead_owner_never_offloaded_reaches_postgresql_once_through_the_node_that_took_its_accounts() {
    let pg = support::Postgres::start();
    let redis = Redis::start();
    let url = pg.url();
    let small = ("SIGNALGATE_CLUSTER_CHECKPOINT_EVENTS", "16");
    let with_pg = [("SIGNALGATE_POSTGRES_URL", url.as_str()), ("SIGNALGATE_POSTGRES_MIGRATE", "true"), small];
    let b = try_member(&redis, "b", &with_pg).unwrap();
    // Node a's database is out of reach: it offloads nothing before it dies.
    let a = try_member(&redis, "a", &[("SIGNALGATE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/none"), small])
        .unwrap();
    wait_members(&b, &[("a", true), ("b", true)]);
    let (id, key) = account_on(&redis, &b, "a");
    a.wait_for_quote(&key, "BTC-USD");
    let mut expected = Vec::new();
    for i in 0..20 {
        let signal_id = format!("s{i:02}");
        let r = signal(&a, &key, &signal_with_id(&signal_id));
        assert_eq!(r.status, 201, "{}", r.body);
        expected.push(format!("{signal_id}:{}x1", r.json()["order"]["id"]));
    }
    // Some 80 events, with a checkpoint due every 16: the stream keeps them all, from the
    // account's creation on, since PostgreSQL has none of them yet.
    within_5s(|| same(a.metric("signalgate_cluster_replication_lag_events"), 0));
    assert!(a.metric("signalgate_cluster_checkpoints_total") > 0);
    let stream = stream_of(&redis, id);
    assert!(stream.len() > 80 && stream[0].1 > 0, "{stream:?}");
    assert_eq!(pg.query(&format!("SELECT count(*) FROM signals WHERE account_id = {id}")), "0");
    let dir = a.crash();
    // Node b takes the account and writes what node a had not: every answered signal once.
    within_10s(|| same(owner(&redis, id), "b".to_string()));
    let r = until_answered(&b, &key, &signal_with_id("s20")).0;
    expected.push(format!("s20:{}x1", r.json()["order"]["id"]));
    let want = (expected.join(" "), "21 fills, 21 distinct".to_string(), "21 orders, 21 filled".to_string());
    within_10s(|| same(projection_of(&pg, id), want.clone()));
    within_5s(|| same(redis.query(&["SCARD", "signalgate:pg_pending"]).unwrap(), "0".to_string()));
    // Its earlier owner's events in PostgreSQL, node b's checkpoints cut the stream back again.
    for i in 21..30 {
        assert_eq!(signal(&b, &key, &signal_with_id(&format!("s{i}"))).status, 201);
    }
    // (A checkpoint's entries carry records numbered 0.)
    within_5s(|| same(stream_of(&redis, id).first().map(|(_, record)| *record), Some(0)));
    // Node a comes back, now with the database: its offload of the same events leaves each row
    // once, and sets no order back.
    let a = restart_member_with(&redis, "a", dir, &with_pg);
    offloaded_all(&a);
    let (signals, fills, orders) = projection_of(&pg, id);
    assert!(signals.starts_with(&want.0), "{signals}");
    assert_eq!(signals.matches("x1").count(), 30, "{signals}");
    assert_eq!((fills, orders), ("30 fills, 30 distinct".to_string(), "30 orders, 30 filled".to_string()));
}

#[test]
fn a_stream_client_of_a_moved_account_resumes_on_its_new_owner_without_a_gap_or_a_duplicate() {
    use signalgate::engine::event::EventKind;
    use signalgate::ws::client::Client;
    use signalgate::ws::protocol::{ClientMsg, ServerBody, ServerMsg};
    let redis = Redis::start();
    let mut nodes = three(&redis);
    let (_, key) = account_on(&redis, &nodes[1], "a");
    nodes[0].wait_for_quote(&key, "BTC-USD");
    // Each order the messages accept or fill, in order.
    let orders_in = |msgs: &[ServerMsg]| -> Vec<(&str, u64)> {
        msgs.iter()
            .filter_map(|m| match m.body {
                ServerBody::Event { event: EventKind::OrderAccepted { order } } => Some(("accepted", order.id.0)),
                ServerBody::Event { event: EventKind::Fill { order, .. } } => Some(("filled", order.0)),
                _ => None,
            })
            .collect()
    };
    let subscribe = |c: &mut Client| {
        c.send(&ClientMsg::Subscribe { channels: vec!["account".into()], resume_from: None }).unwrap();
    };
    // On node a, the owner: five orders, each accepted and filled.
    let mut c = Client::connect(nodes[0].ws, "", Some(&key)).unwrap();
    c.set_timeout(Duration::from_secs(5));
    ws_until(&mut c, "welcome", |m| matches!(m.body, ServerBody::Welcome { .. }));
    subscribe(&mut c);
    ws_until(&mut c, "subscribed", |m| matches!(m.body, ServerBody::Subscribed { .. }));
    let mut orders = Vec::new();
    for i in 0..5 {
        let r = signal(&nodes[0], &key, &signal_with_id(&format!("s{i}")));
        assert_eq!(r.status, 201, "{}", r.body);
        orders.push(r.json()["order"]["id"].as_u64().unwrap());
    }
    let last = orders[4];
    let got = ws_until(
        &mut c,
        "the fifth fill",
        |m| matches!(m.body, ServerBody::Event { event: EventKind::Fill { order, .. } } if order.0 == last),
    );
    // The client processed up to the third fill, then lost node a.
    let third = got
        .iter()
        .find(|m| matches!(m.body, ServerBody::Event { event: EventKind::Fill { order, .. } } if order.0 == orders[2]))
        .unwrap()
        .seq;
    drop(c);
    let _ = nodes.remove(0).crash();
    for i in 5..7 {
        let (r, _) = until_answered(&nodes[0], &key, &signal_with_id(&format!("s{i}")));
        assert_eq!(r.status, 201, "{}", r.body);
        orders.push(r.json()["order"]["id"].as_u64().unwrap());
    }
    // On node c, whichever node took the account: resumed after the third fill, the rest of
    // node a's events and the new owner's, each once, in order.
    let mut c = Client::connect(nodes[1].ws, &format!("resume_from={third}"), Some(&key)).unwrap();
    c.set_timeout(Duration::from_secs(5));
    ws_until(&mut c, "welcome", |m| matches!(m.body, ServerBody::Welcome { .. }));
    subscribe(&mut c);
    let got = ws_until(&mut c, "resumed", |m| matches!(m.body, ServerBody::Resumed { .. }));
    let want: Vec<(&str, u64)> = orders[3..].iter().flat_map(|&o| [("accepted", o), ("filled", o)]).collect();
    assert_eq!(orders_in(&got), want, "{got:?}");
    let seqs: Vec<u64> = got.iter().filter(|m| matches!(m.body, ServerBody::Event { .. })).map(|m| m.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Live messages follow, numbered after them.
    let r = signal(&nodes[1], &key, &signal_with_id("s7"));
    assert_eq!(r.status, 201, "{}", r.body);
    let next =
        ws_until(&mut c, "the next fill", |m| matches!(m.body, ServerBody::Event { event: EventKind::Fill { .. } }));
    assert!(next.iter().all(|m| m.seq > *seqs.last().unwrap()), "{next:?}");
    // A sequence number node a gave to no event of the account that moved is refused, clearly.
    let foreign = signalgate::config::node_base("a") + 1;
    let mut c = Client::connect(nodes[0].ws, &format!("resume_from={foreign}"), Some(&key)).unwrap();
    c.set_timeout(Duration::from_secs(5));
    subscribe(&mut c);
    let got = ws_until(&mut c, "resume_failed", |m| matches!(m.body, ServerBody::ResumeFailed { .. }));
    assert!(
        matches!(&got.last().unwrap().body, ServerBody::ResumeFailed { reason, .. } if reason.contains("another node")),
        "{got:?}"
    );
}
