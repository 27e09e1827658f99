//! History reads against real PostgreSQL servers: a pool of their own that answers 503 when all
//! its connections are busy or the database is down and never waits on the offload; a streaming
//! replica (`pg_basebackup -R`) that serves reads while it is up and close, and is left for the
//! primary when stopped or lagging; TLS to PostgreSQL with a throwaway CA, a wrong certificate
//! refused.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{bearer, binary, certificate_authority, server_certificate, Node, Postgres};

fn unlimited() -> Value {
    json!({"requests_per_minute": 1_000_000, "max_orders_per_second": 100_000, "max_open_orders": 1000})
}

fn start(url: &str, extra: &[(&str, &str)]) -> Node {
    let mut env = vec![
        ("SIGNALGATE_POSTGRES_URL", url),
        ("SIGNALGATE_POSTGRES_MIGRATE", "true"),
        ("SIGNALGATE_MARKET_SIMULATOR", "false"),
    ];
    env.extend_from_slice(extra);
    Node::start(&env)
}

/// The account's fills through the API: their count, or the error answer.
fn trades(node: &Node, key: &str) -> Result<usize, (u16, String)> {
    let r = node.req("GET", "/v1/trades?limit=1000", &[("Authorization", &bearer(key))], "");
    if r.status == 200 {
        Ok(r.json()["trades"].as_array().unwrap().len())
    } else {
        Err((r.status, r.json()["error"]["message"].as_str().unwrap_or_default().to_string()))
    }
}

/// Holds `LOCK TABLE … IN ACCESS EXCLUSIVE MODE` on `tables` in a session of its own until
/// dropped.
struct Lock<'a> {
    pg: &'a Postgres,
    child: std::process::Child,
}

impl<'a> Lock<'a> {
    fn hold(pg: &'a Postgres, tables: &str) -> Lock<'a> {
        let sql = format!("BEGIN; LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE; SELECT 'held' FROM pg_sleep(120)");
        let child = Command::new("psql")
            .args(["-X", "-q", "-c", &sql, "-v", "ON_ERROR_STOP=1", "--set", "application_name=test-lock"])
            .arg(pg.url() + " application_name=test-lock")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pg.query("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'test-lock' AND l.mode = 'AccessExclusiveLock' AND l.granted") == "0" {
            assert!(Instant::now() < deadline, "the lock was not taken");
            std::thread::sleep(Duration::from_millis(20));
        }
        Lock { pg, child }
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        self.pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'test-lock'");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn reads_have_a_pool_of_their_own_that_answers_503_when_busy_or_down() {
    let pg = Postgres::start();
    let node = start(
        &pg.url(),
        &[("SIGNALGATE_POSTGRES_READ_POOL_SIZE", "1"), ("SIGNALGATE_POSTGRES_READ_TIMEOUT_MS", "1500")],
    );
    let (_, key) = node.account("pro", "1000000", unlimited());
    node.trade(&key, 6);
    node.wait_offloaded();
    assert_eq!(trades(&node, &key), Ok(6));

    // The offload stuck behind a lock on the quotes: reads do not wait for it.
    {
        let _lock = Lock::hold(&pg, "market_data");
        node.trade(&key, 3);
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.ready().1["offload_lag_events"].as_u64() == Some(0) {
            assert!(Instant::now() < deadline, "{}", node.ready().1);
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Instant::now();
        assert_eq!(trades(&node, &key), Ok(6), "what is committed, at once");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }
    node.wait_offloaded();
    assert_eq!(trades(&node, &key), Ok(9));

    // The one connection busy with a query that waits on a lock: the next query gets a 503
    // within a second, the first one when the server stops it.
    {
        let _lock = Lock::hold(&pg, "fills");
        let first = {
            let (addr, auth) = (node.http, bearer(&key));
            std::thread::spawn(move || {
                let mut c = support::Conn::open(addr);
                let r = c.send("GET", "/v1/trades", &[("Authorization", &auth)], b"");
                (r.status, r.json()["error"]["message"].as_str().unwrap_or_default().to_string())
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let busy = trades(&node, &key);
        assert_eq!(busy, Err((503, "all 1 history connections are busy; try again later".into())));
        assert!(started.elapsed() < Duration::from_millis(1400), "{:?}", started.elapsed());
        assert_eq!(first.join().unwrap(), (503, "the history query took too long".into()));
        let r = node.req("GET", "/v1/trades", &[("Authorization", &bearer(&key))], "");
        assert_eq!((r.status, r.code()), (503, "history.unavailable".to_string()), "{}", r.body);
    }
    assert_eq!(trades(&node, &key), Ok(9), "the connection is usable again");

    // The database down, then back.
    pg.kill();
    assert_eq!(trades(&node, &key), Err((503, "PostgreSQL cannot be reached; try again later".into())));
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(15);
    while trades(&node, &key) != Ok(9) {
        assert!(Instant::now() < deadline, "{:?}", trades(&node, &key));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/ready`'s history fields once `replica` is as given.
fn wait_replica(node: &Node, replica: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = node.ready().1;
        if r["replica"] == replica {
            return r;
        }
        assert!(Instant::now() < deadline, "replica never {replica}: {r}; {:?}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_streaming_replica_serves_reads_while_up_and_close_and_the_primary_otherwise() {
    let primary = Postgres::start();
    let out = Command::new(binary()).args(["migrate", "--postgres", &primary.url()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replica = primary.start_replica();
    assert_eq!(replica.query("SELECT pg_is_in_recovery()"), "t");
    let node = start(
        &primary.url(),
        &[("SIGNALGATE_POSTGRES_READ_URL", &replica.url()), ("SIGNALGATE_POSTGRES_READ_MAX_LAG_MS", "2000")],
    );
    let (_, key) = node.account("pro", "1000000", unlimited());
    node.trade(&key, 4);
    node.wait_offloaded();
    let r = wait_replica(&node, "ok");
    assert_eq!(r["history"], "replica", "{r}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while trades(&node, &key) != Ok(4) {
        assert!(Instant::now() < deadline, "the replica catches up: {:?}", trades(&node, &key));
        std::thread::sleep(Duration::from_millis(50));
    }

    // Replay paused: within the bound, reads still come from the replica and miss the newest
    // fills; past it, from the primary, and have them.
    replica.query("SELECT pg_wal_replay_pause()");
    node.trade(&key, 3);
    node.wait_offloaded();
    let r = node.ready().1;
    if r["replica"] == "ok" {
        assert_eq!(trades(&node, &key), Ok(4), "the replica answers, as far as it replayed: {r}");
    }
    let r = wait_replica(&node, "lagging");
    assert_eq!(r["history"], "primary", "{r}");
    assert!(r["replica_lag_ms"].as_u64().unwrap() > 2000, "{r}");
    assert_eq!(trades(&node, &key), Ok(7));
    replica.query("SELECT pg_wal_replay_resume()");
    let r = wait_replica(&node, "ok");
    assert_eq!(r["history"], "replica", "{r}");
    assert_eq!(trades(&node, &key), Ok(7));

    // Replica stopped: the primary answers, with no error in between.
    replica.kill();
    for _ in 0..5 {
        assert_eq!(trades(&node, &key), Ok(7));
    }
    let r = wait_replica(&node, "down");
    assert_eq!(r["history"], "primary", "{r}");
    assert_eq!(trades(&node, &key), Ok(7));
    replica.start_again();
    wait_replica(&node, "ok");
    assert!(
        node.log().iter().any(|l| l.contains("read replica") && l.contains("reading from the primary")),
        "{:?}",
        node.log()
    );

    // Without read_url, reads go to the primary and /ready says nothing of a replica.
    let plain = start(&primary.url(), &[]);
    let r = plain.ready().1;
    assert_eq!((r["history"].as_str(), r.get("replica")), (Some("primary"), None), "{r}");
}

#[test]
fn tls_to_postgresql_verifies_the_server_and_refuses_a_wrong_certificate() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    certificate_authority(dir.path(), "ca");
    certificate_authority(dir.path(), "other-ca");
    server_certificate(dir.path(), "ca", "server", "IP:127.0.0.1");
    server_certificate(dir.path(), "ca", "elsewhere", "DNS:db.example");
    server_certificate(dir.path(), "other-ca", "forged", "IP:127.0.0.1");
    let data = pg.data_dir();
    let use_certificate = |name: &str| {
        for ext in ["crt", "key"] {
            std::fs::copy(dir.path().join(format!("{name}.{ext}")), data.join(format!("server.{ext}"))).unwrap();
        }
        let mode = Command::new("chmod").arg("600").arg(data.join("server.key")).status().unwrap();
        assert!(mode.success());
    };
    use_certificate("server");
    // TLS only: a connection without it is refused.
    pg.reconfigure(
        "ssl = on\n",
        Some("local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"),
    );
    let ca = dir.path().join("ca.crt").display().to_string();
    let url = |mode: &str, root: &str| format!("{} sslmode={mode} sslrootcert='{root}'", pg.url());
    let migrate = |url: &str| {
        let out = Command::new(binary()).args(["migrate", "--postgres", url]).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = migrate(&format!("{} sslmode=disable", pg.url()));
    assert!(!ok && out.contains("no encryption"), "plain connections are refused: {out}");
    let (ok, out) = migrate(&url("verify-full", &ca));
    assert!(ok, "{out}");

    // Offload and reads over verify-full.
    let node = start(&url("verify-full", &ca), &[]);
    let (_, key) = node.account("pro", "1000000", unlimited());
    node.trade(&key, 3);
    node.wait_offloaded();
    assert_eq!(trades(&node, &key), Ok(3));
    assert_eq!(
        pg.query("SELECT count(*) FROM pg_stat_ssl WHERE ssl"),
        pg.query("SELECT count(*) FROM pg_stat_ssl WHERE ssl AND version LIKE 'TLS%'")
    );
    assert!(
        pg.query("SELECT count(*) FROM pg_stat_ssl WHERE ssl").parse::<u32>().unwrap() >= 2,
        "offload and reads over TLS"
    );
    drop(node);

    // A CA that did not sign the server's certificate, for every mode that checks it; require
    // without a root certificate encrypts and checks nothing.
    let other = dir.path().join("other-ca.crt").display().to_string();
    for mode in ["verify-full", "verify-ca", "require"] {
        let (ok, out) = migrate(&url(mode, &other));
        assert!(
            !ok && out.contains("cannot connect to PostgreSQL") && out.to_lowercase().contains("certificate"),
            "{mode}: {out}"
        );
    }
    assert!(migrate(&format!("{} sslmode=require", pg.url())).0);
    let node = start(&url("verify-full", &other), &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.ready().1["postgres_reason"] != "postgres.unreachable" {
        assert!(Instant::now() < deadline, "{}", node.ready().1);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        node.log_until(Duration::from_secs(5), |l| l.contains("offload stopped")
            && l.to_lowercase().contains("certificate"))
            .iter()
            .any(|l| l.contains("offload stopped")),
        "{:?}",
        node.log()
    );
    let (_, key) = node.account("pro", "1000000", unlimited());
    assert_eq!(trades(&node, &key).unwrap_err().0, 503);
    drop(node);

    // A certificate signed by the right CA for another name: verify-ca takes it, verify-full
    // does not. A forged one (another CA, the right name) neither.
    use_certificate("elsewhere");
    pg.reconfigure("", None);
    assert!(migrate(&url("verify-ca", &ca)).0);
    let (ok, out) = migrate(&url("verify-full", &ca));
    assert!(!ok && out.contains("certificate"), "{out}");
    use_certificate("forged");
    pg.reconfigure("", None);
    let (ok, out) = migrate(&url("verify-ca", &ca));
    assert!(!ok && out.contains("certificate"), "{out}");
}
