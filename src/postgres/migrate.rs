//! Schema migrations: the SQL files of `schema/`, built into the binary and applied in order.
//!
//! `signalgate_schema` records each applied migration with a SHA-256 of its text, so a re-run
//! applies nothing and an edited migration is caught instead of silently diverging. An advisory
//! lock serialises nodes that start together. A migration that needs TimescaleDB (first line
//! `-- signalgate: requires timescaledb; no transaction`) is recorded as skipped on plain
//! PostgreSQL and applied by a later run once the extension is installed; its statements run one
//! by one, outside a transaction, as TimescaleDB requires for continuous aggregates. Every other
//! migration runs in one transaction.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number, the order of application.
    pub version: i32,
    /// Its file name.
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
    /// SHA-256 of its earlier texts, whose fixes change nothing where they were applied: a
    /// database that applied one of them is up to date.
    pub earlier: &'static [&'static str],
}

impl Migration {
    fn header(&self) -> &str {
        self.sql.lines().next().unwrap_or_default()
    }

    /// Whether it needs TimescaleDB (and runs outside a transaction).
    pub fn needs_timescale(&self) -> bool {
        self.header().contains("signalgate: requires timescaledb")
    }

    fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    fn matches(&self, recorded: &str) -> bool {
        recorded == self.checksum() || self.earlier.contains(&recorded)
    }
}

/// The migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "0001_core.sql", sql: include_str!("../../schema/0001_core.sql"), earlier: &[] },
    Migration {
        version: 2,
        name: "0002_aggregates.sql",
        sql: include_str!("../../schema/0002_aggregates.sql"),
        // Before it left TimescaleDB alone where it is installed but not preloaded (where the
        // earlier text failed: no database applied it there).
        earlier: &["955d045f71c6537937bb7b8688fb1c429c5e808dfe94d5fac7607585199309f4"],
    },
    Migration {
        version: 3,
        name: "0003_timescale_aggregates.sql",
        sql: include_str!("../../schema/0003_timescale_aggregates.sql"),
        earlier: &[],
    },
    Migration {
        version: 4,
        name: "0004_market_data_key.sql",
        sql: include_str!("../../schema/0004_market_data_key.sql"),
        earlier: &[],
    },
    Migration {
        version: 5,
        name: "0005_market_data_brin.sql",
        sql: include_str!("../../schema/0005_market_data_brin.sql"),
        earlier: &[],
    },
    Migration {
        version: 6,
        name: "0006_rollups.sql",
        sql: include_str!("../../schema/0006_rollups.sql"),
        earlier: &[],
    },
    Migration {
        version: 7,
        name: "0007_timescale_hierarchy.sql",
        sql: include_str!("../../schema/0007_timescale_hierarchy.sql"),
        earlier: &[],
    },
];

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Migrations applied by this run.
    pub applied: Vec<&'static str>,
    /// Migrations that need TimescaleDB, which this database lacks.
    pub skipped: Vec<&'static str>,
    /// Migrations found already applied.
    pub already: usize,
    /// Whether TimescaleDB is installed in the database.
    pub timescale: bool,
}

/// Lock key for `pg_advisory_lock`: "signalgate" in ASCII.
const LOCK: i64 = 0x7369_676e_616c_6761;

/// Applies what is missing. Fails, applying nothing more, when an applied migration's text
/// changed since, or when a statement fails (its migration rolls back).
pub async fn migrate(client: &mut Client) -> Result<Report, String> {
    let fail = |what: &str, e: tokio_postgres::Error| format!("{what}: {}", describe(&e));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .await
        .map_err(|e| fail("cannot take the migration lock", e))?;
    let result = apply(client).await;
    // Released with the session anyway; this keeps a long-lived session usable.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK]).await;
    result
}

async fn apply(client: &mut Client) -> Result<Report, String> {
    let fail = |what: String, e: tokio_postgres::Error| format!("{what}: {}", describe(&e));
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS signalgate_schema (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                status     text NOT NULL CHECK (status IN ('applied', 'skipped')),
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(|e| fail("cannot create signalgate_schema".into(), e))?;
    let rows = client
        .query("SELECT version, name, checksum, status FROM signalgate_schema", &[])
        .await
        .map_err(|e| fail("cannot read signalgate_schema".into(), e))?;
    let mut report = Report::default();
    for m in MIGRATIONS {
        let recorded = rows.iter().find(|r| r.get::<_, i32>(0) == m.version);
        let skipped_before = recorded.is_some_and(|r| r.get::<_, &str>(3) == "skipped");
        if let Some(r) = recorded {
            if !m.matches(r.get::<_, &str>(2)) {
                return Err(format!(
                    "migration {} was applied as {} and has changed since; migrations are never edited once \
                     released: add a new one instead",
                    m.version,
                    r.get::<_, &str>(1)
                ));
            }
            if !skipped_before {
                report.already += 1;
                continue;
            }
        }
        let timescale = client
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')", &[])
            .await
            .map_err(|e| fail("cannot look for TimescaleDB".into(), e))?
            .get::<_, bool>(0);
        report.timescale = timescale;
        let record = "INSERT INTO signalgate_schema (version, name, checksum, status) VALUES ($1, $2, $3, $4)
                      ON CONFLICT (version) DO UPDATE SET status = EXCLUDED.status, applied_at = now()";
        let checksum = m.checksum();
        if m.needs_timescale() {
            if !timescale {
                if !skipped_before {
                    client
                        .execute(record, &[&m.version, &m.name, &checksum, &"skipped"])
                        .await
                        .map_err(|e| fail(format!("cannot record {}", m.name), e))?;
                }
                report.skipped.push(m.name);
                continue;
            }
            for statement in statements(m.sql) {
                client.batch_execute(statement).await.map_err(|e| fail(m.name.to_string(), e))?;
            }
            client
                .execute(record, &[&m.version, &m.name, &checksum, &"applied"])
                .await
                .map_err(|e| fail(format!("cannot record {}", m.name), e))?;
        } else {
            let tx = client.transaction().await.map_err(|e| fail(m.name.to_string(), e))?;
            tx.batch_execute(m.sql).await.map_err(|e| fail(m.name.to_string(), e))?;
            tx.execute(record, &[&m.version, &m.name, &checksum, &"applied"])
                .await
                .map_err(|e| fail(format!("cannot record {}", m.name), e))?;
            tx.commit().await.map_err(|e| fail(m.name.to_string(), e))?;
        }
        report.applied.push(m.name);
    }
    Ok(report)
}

/// The statements of a migration, one by one: split at lines ending in `;` outside `$$` quotes.
fn statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut offset, mut quoted) = (0, 0, false);
    for line in sql.split_inclusive('\n') {
        quoted ^= line.matches("$$").count() % 2 == 1;
        offset += line.len();
        let comment = line.trim_start().starts_with("--");
        if !quoted && !comment && line.trim_end().ends_with(';') {
            let statement = sql[start..offset].trim();
            if statement.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--")) {
                out.push(statement);
            }
            start = offset;
        }
    }
    out
}

/// A PostgreSQL error with the server's message and detail when there is one, otherwise with
/// its causes (a TLS handshake's says what was wrong with the certificate).
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut out = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                out = format!("{out}: {c}");
                cause = c.source();
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_marked() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)), "{}", m.name);
        }
        let flagged: Vec<&str> = MIGRATIONS.iter().filter(|m| m.needs_timescale()).map(|m| m.name).collect();
        assert_eq!(flagged, vec!["0003_timescale_aggregates.sql", "0007_timescale_hierarchy.sql"]);
    }

    #[test]
    fn statements_split_outside_dollar_quotes() {
        let sql =
            "-- a comment;\nCREATE TABLE a (x int);\n\nDO $$\nBEGIN\n  PERFORM 1;\nEND\n$$;\nSELECT f(1,\n  2);\n";
        assert_eq!(
            statements(sql),
            vec![
                "-- a comment;\nCREATE TABLE a (x int);",
                "DO $$\nBEGIN\n  PERFORM 1;\nEND\n$$;",
                "SELECT f(1,\n  2);"
            ]
        );
        let split = statements(MIGRATIONS[2].sql);
        assert_eq!(split.len(), 1 + 5 + 5 + 5, "{split:#?}");
        assert!(split.iter().all(|s| s.ends_with(';')));
    }
}
