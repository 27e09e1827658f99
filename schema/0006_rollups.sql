-- signalgate history schema, part 6: rollups of candles and P&L on plain PostgreSQL.
--
-- Aggregating raw quotes took seconds for the default candles window over millions of rows. With
-- TimescaleDB, continuous aggregates keep the aggregates (0007) and this migration does nothing.
-- Without it, the offloader keeps these rollup tables, in the same transaction as the rows they
-- sum up: one row per symbol and candle (1m, 1h, 1d and 1w, UTC buckets, weeks from Monday) and
-- per account and hour or day. candles_1m/_1h/_1d/_1w and pnl_hourly/_daily become views over
-- them, under the names and columns they have on TimescaleDB.
--
-- Candle prices are kept as bid + ask, twice the mid (exact); the views halve them. Open and close
-- keep the time and journal sequence number of their quote, so that rows merged from two batches
-- keep the first and the last quote in (time, seq) order.
--
-- The rollups are filled from the rows already there. offload_cursor is locked meanwhile: each
-- offload batch moves its cursor before it writes rows, so a batch either committed before this
-- migration read the tables, or waits for it and then sees the rollup tables.
DO $rollups$
DECLARE
    w record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    LOCK TABLE offload_cursor IN EXCLUSIVE MODE;

    CREATE TABLE candle_rollups (
        width     text NOT NULL CHECK (width IN ('1m', '1h', '1d', '1w')),
        symbol    text NOT NULL,
        bucket    timestamptz NOT NULL,
        open_ts   timestamptz NOT NULL,
        open_seq  bigint NOT NULL,
        open2     numeric(38, 8) NOT NULL,
        close_ts  timestamptz NOT NULL,
        close_seq bigint NOT NULL,
        close2    numeric(38, 8) NOT NULL,
        high2     numeric(38, 8) NOT NULL,
        low2      numeric(38, 8) NOT NULL,
        quotes    bigint NOT NULL,
        PRIMARY KEY (width, symbol, bucket)
    );
    CREATE TABLE pnl_rollups (
        width         text NOT NULL CHECK (width IN ('1h', '1d')),
        account_id    integer NOT NULL,
        bucket        timestamptz NOT NULL,
        realized      numeric(38, 8) NOT NULL,
        fees          numeric(38, 8) NOT NULL,
        fills         bigint NOT NULL,
        winning_fills bigint NOT NULL,
        losing_fills  bigint NOT NULL,
        PRIMARY KEY (width, account_id, bucket)
    );

    INSERT INTO candle_rollups
    SELECT '1m', symbol, date_trunc('minute', ts, 'UTC'),
           (array_agg(ts ORDER BY ts, seq))[1], (array_agg(seq ORDER BY ts, seq))[1],
           (array_agg(bid + ask ORDER BY ts, seq))[1],
           (array_agg(ts ORDER BY ts DESC, seq DESC))[1], (array_agg(seq ORDER BY ts DESC, seq DESC))[1],
           (array_agg(bid + ask ORDER BY ts DESC, seq DESC))[1],
           max(bid + ask), min(bid + ask), count(*)
    FROM market_data
    GROUP BY symbol, date_trunc('minute', ts, 'UTC');
    FOR w IN SELECT * FROM (VALUES ('1h', 'hour'), ('1d', 'day'), ('1w', 'week')) AS v (width, unit)
    LOOP
        INSERT INTO candle_rollups
        SELECT w.width, symbol, date_trunc(w.unit, bucket, 'UTC'),
               (array_agg(open_ts ORDER BY open_ts, open_seq))[1], (array_agg(open_seq ORDER BY open_ts, open_seq))[1],
               (array_agg(open2 ORDER BY open_ts, open_seq))[1],
               (array_agg(close_ts ORDER BY close_ts DESC, close_seq DESC))[1],
               (array_agg(close_seq ORDER BY close_ts DESC, close_seq DESC))[1],
               (array_agg(close2 ORDER BY close_ts DESC, close_seq DESC))[1],
               max(high2), min(low2), sum(quotes)
        FROM candle_rollups
        WHERE width = '1m'
        GROUP BY symbol, date_trunc(w.unit, bucket, 'UTC');
    END LOOP;
    INSERT INTO pnl_rollups
    SELECT '1h', account_id, date_trunc('hour', ts, 'UTC'), sum(realized), sum(fee), count(*),
           count(*) FILTER (WHERE realized > 0), count(*) FILTER (WHERE realized < 0)
    FROM fills
    GROUP BY account_id, date_trunc('hour', ts, 'UTC');
    INSERT INTO pnl_rollups
    SELECT '1d', account_id, date_trunc('day', bucket, 'UTC'), sum(realized), sum(fees), sum(fills),
           sum(winning_fills), sum(losing_fills)
    FROM pnl_rollups
    WHERE width = '1h'
    GROUP BY account_id, date_trunc('day', bucket, 'UTC');

    DROP VIEW IF EXISTS candles_1m, candles_1h, candles_1d, pnl_hourly, pnl_daily;
    FOR w IN SELECT * FROM (VALUES ('candles_1m', '1m'), ('candles_1h', '1h'), ('candles_1d', '1d'), ('candles_1w', '1w')) AS v (name, width)
    LOOP
        EXECUTE format($sql$
            CREATE VIEW %I AS
            SELECT symbol, bucket, open2 / 2 AS open, high2 / 2 AS high, low2 / 2 AS low, close2 / 2 AS close, quotes
            FROM candle_rollups
            WHERE width = %L
        $sql$, w.name, w.width);
    END LOOP;
    FOR w IN SELECT * FROM (VALUES ('pnl_hourly', '1h'), ('pnl_daily', '1d')) AS v (name, width)
    LOOP
        EXECUTE format($sql$
            CREATE VIEW %I AS
            SELECT account_id, bucket, realized, fees, realized - fees AS net, fills, winning_fills, losing_fills
            FROM pnl_rollups
            WHERE width = %L
        $sql$, w.name, w.width);
    END LOOP;
END
$rollups$;
