-- signalgate history schema, part 2: the query surface for candles and P&L, and the time-series
-- features of TimescaleDB when it is installed.
--
-- With TimescaleDB (the extension is available to this database): fills and position_snapshots
-- become hypertables with 1-day chunks and market_data with 1-hour chunks; chunks older than
-- 7 days are compressed (segmented by symbol); detailed rows older than 90 days are dropped;
-- candles_1m / _1h / _1d and pnl_hourly / pnl_daily are continuous aggregates refreshed by
-- policy and kept 2 years.
--
-- On plain PostgreSQL (Debian's 15, which has no TimescaleDB package) the same names are plain
-- views over the tables, so queries are the same either way; nothing is dropped automatically.
-- Every statement is guarded, so running this again changes nothing.

DO $migration$
DECLARE
    timescale boolean;
BEGIN
    -- Installed but not preloaded (shared_preload_libraries), TimescaleDB cannot be created:
    -- the database stays plain PostgreSQL.
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries') ~ 'timescaledb' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;
    timescale := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');

    IF timescale THEN
        PERFORM create_hypertable('fills', 'ts', chunk_time_interval => interval '1 day',
                                  if_not_exists => true, migrate_data => true);
        PERFORM create_hypertable('position_snapshots', 'ts', chunk_time_interval => interval '1 day',
                                  if_not_exists => true, migrate_data => true);
        PERFORM create_hypertable('market_data', 'ts', chunk_time_interval => interval '1 hour',
                                  if_not_exists => true, migrate_data => true);
        EXECUTE 'ALTER TABLE fills SET (timescaledb.compress, timescaledb.compress_segmentby = ''symbol'')';
        EXECUTE 'ALTER TABLE position_snapshots SET (timescaledb.compress, timescaledb.compress_segmentby = ''symbol'')';
        EXECUTE 'ALTER TABLE market_data SET (timescaledb.compress, timescaledb.compress_segmentby = ''symbol'')';
        PERFORM add_compression_policy('fills', interval '7 days', if_not_exists => true);
        PERFORM add_compression_policy('position_snapshots', interval '7 days', if_not_exists => true);
        PERFORM add_compression_policy('market_data', interval '7 days', if_not_exists => true);
        PERFORM add_retention_policy('fills', interval '90 days', if_not_exists => true);
        PERFORM add_retention_policy('position_snapshots', interval '90 days', if_not_exists => true);
        PERFORM add_retention_policy('market_data', interval '90 days', if_not_exists => true);
    END IF;
END
$migration$;

-- Candles of the mid price. With TimescaleDB these are continuous aggregates, created by
-- signalgate migrate outside a transaction (TimescaleDB refuses them inside one); see
-- schema/0003_timescale_aggregates.sql. Here: plain views with the same columns.
DO $views$
DECLARE
    bucket record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    FOR bucket IN SELECT * FROM (VALUES ('candles_1m', 'minute'), ('candles_1h', 'hour'), ('candles_1d', 'day')) AS b (name, unit)
    LOOP
        EXECUTE format($sql$
            CREATE OR REPLACE VIEW %I AS
            SELECT symbol,
                   date_trunc(%L, ts) AS bucket,
                   (array_agg(((bid + ask) / 2)::numeric(38, 8) ORDER BY ts, seq))[1] AS open,
                   max(((bid + ask) / 2)::numeric(38, 8)) AS high,
                   min(((bid + ask) / 2)::numeric(38, 8)) AS low,
                   (array_agg(((bid + ask) / 2)::numeric(38, 8) ORDER BY ts DESC, seq DESC))[1] AS close,
                   count(*) AS quotes
            FROM market_data
            GROUP BY symbol, date_trunc(%L, ts)
        $sql$, bucket.name, bucket.unit, bucket.unit);
    END LOOP;
    FOR bucket IN SELECT * FROM (VALUES ('pnl_hourly', 'hour'), ('pnl_daily', 'day')) AS b (name, unit)
    LOOP
        EXECUTE format($sql$
            CREATE OR REPLACE VIEW %I AS
            SELECT account_id,
                   date_trunc(%L, ts) AS bucket,
                   sum(realized) AS realized,
                   sum(fee) AS fees,
                   sum(realized) - sum(fee) AS net,
                   count(*) AS fills,
                   count(*) FILTER (WHERE realized > 0) AS winning_fills,
                   count(*) FILTER (WHERE realized < 0) AS losing_fills
            FROM fills
            GROUP BY account_id, date_trunc(%L, ts)
        $sql$, bucket.name, bucket.unit, bucket.unit);
    END LOOP;
END
$views$;
