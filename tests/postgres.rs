//! The history schema against a real PostgreSQL started on a free port: `signalgate migrate`
//! from empty, a re-run that changes nothing, the query surface on plain PostgreSQL, a changed
//! migration caught, a bad address reported, and `[postgres] migrate = true` at start.

mod support;

use std::process::Command;

use support::{binary, Node, Postgres};

fn migrate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).arg("migrate").args(args).env_clear().output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TABLES: [&str; 9] = [
    "accounts",
    "api_keys",
    "fills",
    "market_data",
    "offload_cursor",
    "orders",
    "position_snapshots",
    "signalgate_schema",
    "signals",
];

#[test]
fn migrations_apply_from_empty_and_a_rerun_changes_nothing() {
    let pg = Postgres::start();
    let url = pg.url();
    let (code, out, err) = migrate(&["--postgres", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied 0001_core.sql") && out.contains("applied 0002_aggregates.sql"), "{out}");
    assert!(out.contains("skipped 0003_timescale_aggregates.sql"), "no TimescaleDB in Debian's PostgreSQL: {out}");
    assert!(out.contains("applied 0004_market_data_key.sql"), "{out}");
    assert!(out.contains("applied 0005_market_data_brin.sql"), "{out}");
    let tables = pg.query(
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    );
    assert_eq!(tables, TABLES.join(","));
    let views = pg.query(
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.views WHERE table_schema = 'public'",
    );
    assert_eq!(views, "candles_1d,candles_1h,candles_1m,pnl_daily,pnl_hourly");
    let schema = "SELECT string_agg(version || ':' || status, ',' ORDER BY version) FROM signalgate_schema";
    assert_eq!(pg.query(schema), "1:applied,2:applied,3:skipped,4:applied,5:applied");
    let fingerprint = "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace";
    let before = pg.query(fingerprint);

    let (code, out, err) = migrate(&["--postgres", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("schema up to date (4 migration(s) already applied)"), "{out}");
    assert!(out.contains("skipped 0003"), "{out}");
    assert_eq!(pg.query(fingerprint), before, "a re-run creates nothing");
    assert_eq!(pg.query(schema), "1:applied,2:applied,3:skipped,4:applied,5:applied");

    // The query surface works on plain PostgreSQL: candles from quotes, P&L from fills.
    pg.query(
        "INSERT INTO market_data VALUES \
         ('2026-11-23 10:00:01+00', 1, 'BTC-USD', 100, 102, 1, 1), \
         ('2026-11-23 10:00:30+00', 2, 'BTC-USD', 110, 112, 1, 1), \
         ('2026-11-23 10:00:59+00', 3, 'BTC-USD', 90, 92, 1, 1), \
         ('2026-11-23 10:01:00+00', 4, 'BTC-USD', 95, 97, 1, 1)",
    );
    assert_eq!(
        pg.query("SELECT open, high, low, close, quotes FROM candles_1m WHERE symbol = 'BTC-USD' ORDER BY bucket"),
        "101.00000000|111.00000000|91.00000000|91.00000000|3\n96.00000000|96.00000000|96.00000000|96.00000000|1"
    );
    pg.query(
        "INSERT INTO fills VALUES \
         ('2026-11-23 10:00:00+00', 5, 1, 7, 'BTC-USD', 'buy', 1, 100, 100, 0.1, 0), \
         ('2026-11-23 11:00:00+00', 6, 2, 7, 'BTC-USD', 'sell', 1, 110, 110, 0.1, 10)",
    );
    assert_eq!(
        pg.query("SELECT realized, fees, net, fills, winning_fills FROM pnl_daily WHERE account_id = 7"),
        "10.00000000|0.20000000|9.80000000|2|1"
    );
    // Fills are keyed by (time, journal sequence): the same event cannot go in twice.
    let dup = Command::new("psql")
        .args([
            "-X",
            "-c",
            "INSERT INTO fills VALUES ('2026-11-23 10:00:00+00', 5, 1, 7, 'BTC-USD', 'buy', 1, 100, 100, 0.1, 0)",
        ])
        .arg(&url)
        .output()
        .unwrap();
    assert!(!dup.status.success() && String::from_utf8_lossy(&dup.stderr).contains("duplicate key"));
    // Quotes have no key (0004): the offload cursor, committed with the rows, is what keeps a
    // quote from going in twice. Their one index is a BRIN on time (0005).
    let market_data_indexes = "SELECT string_agg(c.relname || ':' || a.amname, ',' ORDER BY c.relname) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam \
         WHERE i.indrelid = 'market_data'::regclass";
    assert_eq!(pg.query(market_data_indexes), "market_data_ts_brin:brin");
}

#[test]
fn a_changed_migration_and_a_wrong_address_are_reported() {
    let pg = Postgres::start();
    let url = pg.url();
    assert_eq!(migrate(&["--postgres", &url]).0, 0);
    pg.query("UPDATE signalgate_schema SET checksum = 'edited' WHERE version = 2");
    let (code, out, err) = migrate(&["--postgres", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("migration 2 was applied as 0002_aggregates.sql and has changed since"), "{err}");

    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, _, err) = migrate(&["--postgres", &format!("host=127.0.0.1 port={port} user=postgres")]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
    let (code, _, err) = migrate(&["--postgres", "postgresql://[nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a valid connection string"), "{err}");
    // No PostgreSQL configured: nothing to do (the systemd unit runs this unconditionally).
    let (code, out, _) = migrate(&[]);
    assert_eq!((code, out.trim()), (0, "no PostgreSQL configured (postgres.url is empty): nothing to migrate"));
}

#[test]
fn a_node_with_migrate_on_applies_the_schema_at_start_and_starts_without_postgres_too() {
    let pg = Postgres::start();
    let url = pg.url();
    let node = Node::start(&[("SIGNALGATE_POSTGRES_URL", &url), ("SIGNALGATE_POSTGRES_MIGRATE", "true")]);
    assert!(node.log().iter().any(|l| l.contains("postgres: applied 0001_core.sql")), "{:?}", node.log());
    assert_eq!(pg.query("SELECT count(*) FROM signalgate_schema WHERE status = 'applied'"), "4");
    drop(node);
    drop(pg);
    // PostgreSQL gone: the node logs the failure and trades all the same.
    let node = Node::start(&[("SIGNALGATE_POSTGRES_URL", &url), ("SIGNALGATE_POSTGRES_MIGRATE", "true")]);
    assert!(
        node.log().iter().any(|l| l.contains("schema migration failed") && l.contains("cannot connect")),
        "{:?}",
        node.log()
    );
    node.wait_for_quote(&node.demo_key, "BTC-USD");
}
