-- signalgate history schema, part 5: quotes indexed by time ranges (BRIN) instead of a B-tree.
--
-- Every quote the node sees becomes a row, up to hundreds of thousands a second, and its B-tree
-- on (symbol, ts DESC) was the largest part of PostgreSQL's work in the offload's COPY: each row
-- descended the tree to its symbol's end, comparing text and timestamps on the way. Rows arrive
-- in time order, so a BRIN index on ts (the least and greatest ts of every 128 pages) finds any
-- time window for almost nothing per insert. Candles and per-symbol ranges read the window and
-- keep their symbol's rows: with a handful of symbols that costs about what the B-tree did; the
-- more symbols a node quotes, the more rows of other symbols a narrow window reads. Where
-- TimescaleDB refuses the change (a hypertable with compressed chunks), the B-tree stays, and
-- the migration says so.
DO $$
BEGIN
    CREATE INDEX IF NOT EXISTS market_data_ts_brin ON market_data USING brin (ts);
    DROP INDEX IF EXISTS market_data_symbol_ts;
EXCEPTION WHEN feature_not_supported OR object_not_in_prerequisite_state THEN
    RAISE NOTICE 'market_data keeps its (symbol, ts) index: %', SQLERRM;
END
$$;
