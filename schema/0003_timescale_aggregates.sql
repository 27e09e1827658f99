-- signalgate: requires timescaledb; no transaction
--
-- signalgate history schema, part 3 (TimescaleDB only): candles and P&L as continuous aggregates,
-- refreshed by policy and kept 2 years, under the names 0002 gives plain views on PostgreSQL
-- without TimescaleDB. TimescaleDB creates continuous aggregates only outside a transaction, so
-- `signalgate migrate` runs these statements one by one; without the extension it records this
-- migration as skipped and applies it on a later run once the extension is there.

-- The plain views 0002 made while TimescaleDB was not installed give way to the aggregates.
DO $$
DECLARE
    v text;
BEGIN
    FOREACH v IN ARRAY ARRAY['candles_1m', 'candles_1h', 'candles_1d', 'pnl_hourly', 'pnl_daily'] LOOP
        IF EXISTS (SELECT 1 FROM pg_views WHERE viewname = v AND schemaname = current_schema()) THEN
            EXECUTE format('DROP VIEW %I', v);
        END IF;
    END LOOP;
END
$$;

CREATE MATERIALIZED VIEW IF NOT EXISTS candles_1m WITH (timescaledb.continuous) AS
SELECT symbol, time_bucket(interval '1 minute', ts) AS bucket,
       first(((bid + ask) / 2)::numeric(38, 8), ts) AS open, max(((bid + ask) / 2)::numeric(38, 8)) AS high,
       min(((bid + ask) / 2)::numeric(38, 8)) AS low, last(((bid + ask) / 2)::numeric(38, 8), ts) AS close, count(*) AS quotes
FROM market_data GROUP BY symbol, bucket WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS candles_1h WITH (timescaledb.continuous) AS
SELECT symbol, time_bucket(interval '1 hour', ts) AS bucket,
       first(((bid + ask) / 2)::numeric(38, 8), ts) AS open, max(((bid + ask) / 2)::numeric(38, 8)) AS high,
       min(((bid + ask) / 2)::numeric(38, 8)) AS low, last(((bid + ask) / 2)::numeric(38, 8), ts) AS close, count(*) AS quotes
FROM market_data GROUP BY symbol, bucket WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS candles_1d WITH (timescaledb.continuous) AS
SELECT symbol, time_bucket(interval '1 day', ts) AS bucket,
       first(((bid + ask) / 2)::numeric(38, 8), ts) AS open, max(((bid + ask) / 2)::numeric(38, 8)) AS high,
       min(((bid + ask) / 2)::numeric(38, 8)) AS low, last(((bid + ask) / 2)::numeric(38, 8), ts) AS close, count(*) AS quotes
FROM market_data GROUP BY symbol, bucket WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS pnl_hourly WITH (timescaledb.continuous) AS
SELECT account_id, time_bucket(interval '1 hour', ts) AS bucket,
       sum(realized) AS realized, sum(fee) AS fees, sum(realized) - sum(fee) AS net, count(*) AS fills,
       count(*) FILTER (WHERE realized > 0) AS winning_fills, count(*) FILTER (WHERE realized < 0) AS losing_fills
FROM fills GROUP BY account_id, bucket WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS pnl_daily WITH (timescaledb.continuous) AS
SELECT account_id, time_bucket(interval '1 day', ts) AS bucket,
       sum(realized) AS realized, sum(fee) AS fees, sum(realized) - sum(fee) AS net, count(*) AS fills,
       count(*) FILTER (WHERE realized > 0) AS winning_fills, count(*) FILTER (WHERE realized < 0) AS losing_fills
FROM fills GROUP BY account_id, bucket WITH NO DATA;

SELECT add_continuous_aggregate_policy('candles_1m', start_offset => interval '1 hour', end_offset => interval '1 minute', schedule_interval => interval '1 minute', if_not_exists => true);
SELECT add_continuous_aggregate_policy('candles_1h', start_offset => interval '1 day', end_offset => interval '1 hour', schedule_interval => interval '15 minutes', if_not_exists => true);
SELECT add_continuous_aggregate_policy('candles_1d', start_offset => interval '7 days', end_offset => interval '1 day', schedule_interval => interval '1 hour', if_not_exists => true);
SELECT add_continuous_aggregate_policy('pnl_hourly', start_offset => interval '1 day', end_offset => interval '1 hour', schedule_interval => interval '15 minutes', if_not_exists => true);
SELECT add_continuous_aggregate_policy('pnl_daily', start_offset => interval '7 days', end_offset => interval '1 day', schedule_interval => interval '1 hour', if_not_exists => true);

SELECT add_retention_policy('candles_1m', interval '2 years', if_not_exists => true);
SELECT add_retention_policy('candles_1h', interval '2 years', if_not_exists => true);
SELECT add_retention_policy('candles_1d', interval '2 years', if_not_exists => true);
SELECT add_retention_policy('pnl_hourly', interval '2 years', if_not_exists => true);
SELECT add_retention_policy('pnl_daily', interval '2 years', if_not_exists => true);
