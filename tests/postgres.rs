//! The history schema against a real PostgreSQL started on a free port, plain and with
//! TimescaleDB: `signalgate migrate` from empty, a re-run that changes nothing, the query surface
//! (rollups on plain PostgreSQL, continuous aggregates on TimescaleDB, whose policies' jobs run),
//! a changed migration caught, a bad address reported, and `[postgres] migrate = true` at start.

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

fn list(pg: &Postgres, sql: &str) -> Vec<String> {
    pg.query(sql).split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

#[test]
fn migrations_apply_from_empty_and_a_rerun_changes_nothing_on_plain_postgresql() {
    let pg = Postgres::start();
    let url = pg.url();
    let (code, out, err) = migrate(&["--postgres", &url]);
    assert_eq!(code, 0, "{out}{err}");
    for name in ["0001_core", "0002_aggregates", "0004_market_data_key", "0005_market_data_brin", "0006_rollups"] {
        assert!(out.contains(&format!("applied {name}.sql")), "{out}");
    }
    for name in ["0003_timescale_aggregates", "0007_timescale_hierarchy"] {
        assert!(out.contains(&format!("skipped {name}.sql")), "no TimescaleDB here: {out}");
    }
    let tables = list(
        &pg,
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    );
    let mut expected: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    expected.extend(["candle_rollups".to_string(), "pnl_rollups".to_string()]);
    expected.sort();
    assert_eq!(tables, expected);
    let views = pg.query(
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.views WHERE table_schema = 'public'",
    );
    assert_eq!(views, "candles_1d,candles_1h,candles_1m,candles_1w,pnl_daily,pnl_hourly");
    let schema = "SELECT string_agg(version || ':' || status, ',' ORDER BY version) FROM signalgate_schema";
    let statuses = "1:applied,2:applied,3:skipped,4:applied,5:applied,6:applied,7:skipped";
    assert_eq!(pg.query(schema), statuses);
    let fingerprint = "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace";
    let before = pg.query(fingerprint);

    let (code, out, err) = migrate(&["--postgres", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("schema up to date (5 migration(s) already applied)"), "{out}");
    assert!(out.contains("skipped 0003") && out.contains("skipped 0007"), "{out}");
    assert_eq!(pg.query(fingerprint), before, "a re-run creates nothing");
    assert_eq!(pg.query(schema), statuses);

    // Rows that were there before the rollups (a database migrated before 0006): 0006 sums them
    // up, and the views answer from the rollups.
    insert_rows(&pg);
    pg.query("DROP TABLE candle_rollups, pnl_rollups CASCADE");
    pg.query("DELETE FROM signalgate_schema WHERE version = 6");
    let (code, out, err) = migrate(&["--postgres", &url]);
    assert_eq!((code, out.contains("applied 0006_rollups.sql")), (0, true), "{out}{err}");
    assert_query_surface(&pg);

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
fn on_timescaledb_the_tables_are_hypertables_with_policies_that_run_and_aggregates_that_answer() {
    let pg = Postgres::start_timescale();
    let url = pg.url();
    let (code, out, err) = migrate(&["--postgres", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("skipped"), "{out}");
    let schema = "SELECT string_agg(version || ':' || status, ',' ORDER BY version) FROM signalgate_schema";
    let statuses = "1:applied,2:applied,3:applied,4:applied,5:applied,6:applied,7:applied";
    assert_eq!(pg.query(schema), statuses);
    assert_eq!(
        pg.query(
            "SELECT string_agg(hypertable_name || ':' || compression_enabled, ',' ORDER BY hypertable_name) \
             FROM timescaledb_information.hypertables WHERE hypertable_schema = 'public'"
        ),
        "fills:true,market_data:true,position_snapshots:true"
    );
    assert_eq!(
        pg.query(
            "SELECT string_agg(view_name || ':' || materialized_only, ',' ORDER BY view_name) \
             FROM timescaledb_information.continuous_aggregates"
        ),
        "candles_1d:false,candles_1h:false,candles_1m:false,candles_1w:false,pnl_daily:false,pnl_hourly:false"
    );
    assert_eq!(pg.query("SELECT to_regclass('candle_rollups') IS NULL"), "t", "no rollups: the aggregates keep them");
    let (code, out, err) = migrate(&["--postgres", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("schema up to date (7 migration(s) already applied)"), "{out}");

    // Real-time aggregation: rows just written answer at once, before any refresh.
    insert_rows(&pg);
    assert_query_surface(&pg);

    // Rows 10 and 100 days old: every policy's job run once compresses the first and drops the
    // second; refreshed, the aggregates still answer the same.
    pg.query(
        "INSERT INTO market_data \
         SELECT date_trunc('minute', now() - interval '10 days') + i * interval '1 second', 100 + i, 'ETH-USD', \
                3000 + i, 3001 + i, 1, 1 \
         FROM generate_series(0, 89) i",
    );
    pg.query("INSERT INTO market_data VALUES (now() - interval '100 days', 999, 'ETH-USD', 1, 2, 1, 1)");
    // As the policy did when that quote was new (policies look back 30 days).
    pg.query(
        "CALL refresh_continuous_aggregate('candles_1m', now() - interval '101 days', now() - interval '99 days')",
    );
    let old = "SELECT string_agg(quotes::text, ',' ORDER BY bucket) FROM candles_1m WHERE symbol = 'ETH-USD'";
    let before = pg.query(old);
    assert_eq!(before, "1,60,30", "one quote 100 days old, then 90 over two minutes");
    let jobs = list(
        &pg,
        "SELECT string_agg(job_id::text, ',' ORDER BY job_id) FROM timescaledb_information.jobs \
         WHERE proc_name IN ('policy_compression', 'policy_retention', 'policy_refresh_continuous_aggregate')",
    );
    assert_eq!(jobs.len(), 3 + 3 + 6 + 6, "compression, retention, refresh and retention of aggregates: {jobs:?}");
    // Run here, one by one, not by the background scheduler as well (two refreshes of one
    // aggregate at once fail); refreshes first, so that the aggregates hold the old rows before
    // retention drops them.
    for job in &jobs {
        pg.query(&format!("SELECT alter_job({job}, scheduled => false)"));
    }
    for kind in ["policy_refresh_continuous_aggregate", "policy_compression", "policy_retention"] {
        for job in list(
            &pg,
            &format!(
                "SELECT string_agg(job_id::text, ',' ORDER BY job_id) FROM timescaledb_information.jobs \
                 WHERE proc_name = '{kind}'"
            ),
        ) {
            pg.query(&format!("CALL run_job({job})"));
        }
    }
    let failed = "SELECT string_agg(s.job_id || ' ' || j.proc_name || ' ' || s.last_run_status, '; ') \
         FROM timescaledb_information.job_stats s JOIN timescaledb_information.jobs j USING (job_id) \
         WHERE s.last_run_status <> 'Success'";
    assert_eq!(
        pg.query(failed),
        "",
        "{}",
        pg.query("SELECT string_agg(err_message, '; ') FROM timescaledb_information.job_errors")
    );
    assert!(
        pg.query("SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'market_data' AND is_compressed")
            .parse::<u32>()
            .unwrap()
            >= 1,
        "the chunks of 10 days ago are compressed"
    );
    assert_eq!(
        pg.query("SELECT count(*) FROM market_data WHERE ts < now() - interval '90 days'"),
        "0",
        "retention dropped the row of 100 days ago"
    );
    assert_eq!(pg.query("SELECT count(*) FROM market_data WHERE symbol = 'ETH-USD'"), "90", "compressed rows answer");
    assert_eq!(pg.query(old), before, "the aggregates keep what retention dropped from the rows");
    assert_query_surface(&pg);
}

/// Quotes and fills of 2026-11-23, on either flavor.
fn insert_rows(pg: &Postgres) {
    pg.query(
        "INSERT INTO market_data VALUES \
         ('2026-11-23 10:00:01+00', 1, 'BTC-USD', 100, 102, 1, 1), \
         ('2026-11-23 10:00:30+00', 2, 'BTC-USD', 110, 112, 1, 1), \
         ('2026-11-23 10:00:59+00', 3, 'BTC-USD', 90, 92, 1, 1), \
         ('2026-11-23 10:01:00+00', 4, 'BTC-USD', 95, 96, 1, 1)",
    );
    pg.query(
        "INSERT INTO fills VALUES \
         ('2026-11-23 10:00:00+00', 5, 1, 7, 'BTC-USD', 'buy', 1, 100, 100, 0.1, 0), \
         ('2026-11-23 11:00:00+00', 6, 2, 7, 'BTC-USD', 'sell', 1, 110, 110, 0.1, 10)",
    );
}

/// Candles of every width and P&L by hour and day, from [`insert_rows`]'s rows.
fn assert_query_surface(pg: &Postgres) {
    let candles = |view: &str| {
        pg.query(&format!(
            "SELECT string_agg(to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' ' || \
                    trim_scale(open) || ' ' || trim_scale(high) || ' ' || trim_scale(low) || ' ' || \
                    trim_scale(close) || ' ' || quotes, ';' ORDER BY bucket) \
             FROM {view} WHERE symbol = 'BTC-USD'"
        ))
    };
    assert_eq!(candles("candles_1m"), "2026-11-23 10:00 101 111 91 91 3;2026-11-23 10:01 95.5 95.5 95.5 95.5 1");
    assert_eq!(candles("candles_1h"), "2026-11-23 10:00 101 111 91 95.5 4");
    assert_eq!(candles("candles_1d"), "2026-11-23 00:00 101 111 91 95.5 4");
    assert_eq!(candles("candles_1w"), "2026-11-23 00:00 101 111 91 95.5 4", "2026-11-23 was a Monday");
    let pnl = |view: &str| {
        pg.query(&format!(
            "SELECT string_agg(to_char(bucket AT TIME ZONE 'UTC', 'HH24') || ' ' || trim_scale(realized) || ' ' || \
                    trim_scale(fees) || ' ' || trim_scale(net) || ' ' || fills || ' ' || winning_fills || ' ' || \
                    losing_fills, ';' ORDER BY bucket) \
             FROM {view} WHERE account_id = 7"
        ))
    };
    assert_eq!(pnl("pnl_hourly"), "10 0 0.1 -0.1 1 0 0;11 10 0.1 9.9 1 1 0");
    assert_eq!(pnl("pnl_daily"), "00 10 0.2 9.8 2 1 0");
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
    assert_eq!(pg.query("SELECT count(*) FROM signalgate_schema WHERE status = 'applied'"), "5");
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
