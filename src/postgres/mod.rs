//! PostgreSQL: the history database. Never on the hot path: everything here runs on its own
//! thread with a tokio current-thread runtime.
//!
//! [`migrate`] applies `schema/` (`signalgate migrate`, and `[postgres] migrate = true` at
//! start); [`offload`] copies the journal into those tables, and on plain PostgreSQL keeps the
//! [`rollup`]s of candles and P&L that TimescaleDB's continuous aggregates keep otherwise.

pub mod connect;
mod copy;
pub mod migrate;
pub mod offload;
mod rollup;

use std::time::Duration;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `url` and applies the missing migrations, on the calling thread (with its own
/// runtime). Errors name what failed: the connection, a statement, a changed migration.
pub fn migrate_blocking(url: &str) -> Result<migrate::Report, String> {
    let target =
        connect::Target::parse(url).map_err(|e| format!("postgres.url is not a valid connection string: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the PostgreSQL runtime: {e}"))?;
    runtime.block_on(async move {
        let (mut client, driver) = target.connect(CONNECT_TIMEOUT).await?;
        let report = migrate::migrate(&mut client).await;
        // The connection ends cleanly (Terminate) before the runtime goes.
        drop(client);
        let _ = driver.await;
        report
    })
}

/// One line per migration state, for people.
pub fn summary(r: &migrate::Report) -> String {
    let mut out = Vec::new();
    for name in &r.applied {
        out.push(format!("applied {name}"));
    }
    for name in &r.skipped {
        out.push(format!(
            "skipped {name} (needs TimescaleDB, which this database does not have; a later run applies it)"
        ));
    }
    if r.applied.is_empty() {
        out.push(format!("schema up to date ({} migration(s) already applied)", r.already));
    }
    out.join("\n")
}
