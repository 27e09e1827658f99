-- signalgate: requires timescaledb; no transaction
--
-- signalgate history schema, part 7 (TimescaleDB only): the continuous aggregates the history API
-- reads, each fast to query whatever the window.
--
-- candles_1m sums up quotes; candles_1h sums up candles_1m, candles_1d candles_1h, and the new
-- candles_1w candles_1d (hierarchical aggregates); pnl_daily sums up pnl_hourly. All answer with
-- real-time aggregation (materialized_only = false): what is not materialized yet comes from the
-- level below, so the newest candle is as current as the offload, and reading a day's candles
-- aggregates at most hours of the level below, never a day of quotes. The mid is exact,
-- (bid + ask) / 2, and open and close are the first and last quote in (time, seq) order, as on
-- plain PostgreSQL (0003 rounded the mid to 8 decimals and left quotes of the same microsecond
-- in no order). That order is one number, the time in µs then seq (below 10^20), because
-- materializing first() and last() over a row value fails ("input of anonymous composite types
-- is not implemented").
--
-- 0003's aggregates are dropped and made again: their buckets are computed again from the rows
-- still there (raw rows are kept 90 days). Refresh policies look back 30 days (five weeks for
-- weeks), well inside that, so a late batch (an offload catching up after an outage) is folded
-- in, and a refresh never runs over rows the retention policy dropped.

DROP VIEW IF EXISTS candles_1w;
DROP MATERIALIZED VIEW IF EXISTS candles_1d;
DROP MATERIALIZED VIEW IF EXISTS candles_1h;
DROP MATERIALIZED VIEW IF EXISTS candles_1m;
DROP MATERIALIZED VIEW IF EXISTS pnl_daily;
DROP MATERIALIZED VIEW IF EXISTS pnl_hourly;

CREATE MATERIALIZED VIEW candles_1m WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT symbol, time_bucket(interval '1 minute', ts) AS bucket,
       first((bid + ask) / 2, extract(epoch FROM ts) * 1e26 + seq) AS open,
       max((bid + ask) / 2) AS high, min((bid + ask) / 2) AS low,
       last((bid + ask) / 2, extract(epoch FROM ts) * 1e26 + seq) AS close, count(*) AS quotes
FROM market_data GROUP BY symbol, time_bucket(interval '1 minute', ts) WITH NO DATA;

CREATE MATERIALIZED VIEW candles_1h WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT symbol, time_bucket(interval '1 hour', bucket) AS bucket,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low, last(close, bucket) AS close,
       sum(quotes)::bigint AS quotes
FROM candles_1m GROUP BY symbol, time_bucket(interval '1 hour', bucket) WITH NO DATA;

CREATE MATERIALIZED VIEW candles_1d WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT symbol, time_bucket(interval '1 day', bucket) AS bucket,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low, last(close, bucket) AS close,
       sum(quotes)::bigint AS quotes
FROM candles_1h GROUP BY symbol, time_bucket(interval '1 day', bucket) WITH NO DATA;

CREATE MATERIALIZED VIEW candles_1w WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT symbol, time_bucket(interval '1 week', bucket) AS bucket,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low, last(close, bucket) AS close,
       sum(quotes)::bigint AS quotes
FROM candles_1d GROUP BY symbol, time_bucket(interval '1 week', bucket) WITH NO DATA;

CREATE MATERIALIZED VIEW pnl_hourly WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT account_id, time_bucket(interval '1 hour', ts) AS bucket,
       sum(realized) AS realized, sum(fee) AS fees, sum(realized) - sum(fee) AS net, count(*) AS fills,
       count(*) FILTER (WHERE realized > 0) AS winning_fills, count(*) FILTER (WHERE realized < 0) AS losing_fills
FROM fills GROUP BY account_id, time_bucket(interval '1 hour', ts) WITH NO DATA;

CREATE MATERIALIZED VIEW pnl_daily WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT account_id, time_bucket(interval '1 day', bucket) AS bucket,
       sum(realized) AS realized, sum(fees) AS fees, sum(realized) - sum(fees) AS net, sum(fills)::bigint AS fills,
       sum(winning_fills)::bigint AS winning_fills, sum(losing_fills)::bigint AS losing_fills
FROM pnl_hourly GROUP BY account_id, time_bucket(interval '1 day', bucket) WITH NO DATA;

SELECT add_continuous_aggregate_policy('candles_1m', start_offset => interval '30 days', end_offset => interval '1 minute', schedule_interval => interval '1 minute');
SELECT add_continuous_aggregate_policy('candles_1h', start_offset => interval '30 days', end_offset => interval '1 hour', schedule_interval => interval '5 minutes');
SELECT add_continuous_aggregate_policy('candles_1d', start_offset => interval '30 days', end_offset => interval '1 day', schedule_interval => interval '1 hour');
SELECT add_continuous_aggregate_policy('candles_1w', start_offset => interval '35 days', end_offset => interval '1 week', schedule_interval => interval '1 hour');
SELECT add_continuous_aggregate_policy('pnl_hourly', start_offset => interval '30 days', end_offset => interval '1 hour', schedule_interval => interval '5 minutes');
SELECT add_continuous_aggregate_policy('pnl_daily', start_offset => interval '30 days', end_offset => interval '1 day', schedule_interval => interval '1 hour');

SELECT add_retention_policy('candles_1m', interval '2 years');
SELECT add_retention_policy('candles_1h', interval '2 years');
SELECT add_retention_policy('candles_1d', interval '2 years');
SELECT add_retention_policy('candles_1w', interval '2 years');
SELECT add_retention_policy('pnl_hourly', interval '2 years');
SELECT add_retention_policy('pnl_daily', interval '2 years');

-- Materialize what is there now (nothing, on a new database), as far as each policy would.
CALL refresh_continuous_aggregate('candles_1m', NULL, now() - interval '1 minute');
CALL refresh_continuous_aggregate('candles_1h', NULL, now() - interval '1 hour');
CALL refresh_continuous_aggregate('candles_1d', NULL, now() - interval '1 day');
CALL refresh_continuous_aggregate('candles_1w', NULL, now() - interval '1 week');
CALL refresh_continuous_aggregate('pnl_hourly', NULL, now() - interval '1 hour');
CALL refresh_continuous_aggregate('pnl_daily', NULL, now() - interval '1 day');
