-- signalgate history schema, part 4: market_data without a primary key.
--
-- Quotes are the busiest table: one row per quote, up to hundreds of thousands a second. Its key
-- on (ts, seq) cost PostgreSQL a second index insertion for every row of the offload's COPY, and
-- it guarded against nothing the offload cursor does not: rows and cursor commit in one
-- transaction, so a replay cannot insert a quote twice. The (symbol, ts DESC) index that candles
-- and per-symbol ranges use stays. Where TimescaleDB refuses the change (a hypertable with
-- compressed chunks), the key stays too, and the migration says so.
DO $$
BEGIN
    ALTER TABLE market_data DROP CONSTRAINT IF EXISTS market_data_pkey;
EXCEPTION WHEN feature_not_supported OR object_not_in_prerequisite_state THEN
    RAISE NOTICE 'market_data keeps its primary key: %', SQLERRM;
END
$$;
