-- signalgate history schema, part 1: the tables the offloader fills from the journal.
--
-- Money, prices and quantities are numeric: the node's fixed-point integers, converted exactly.
-- Times are timestamptz (the journal's nanoseconds, to the microsecond). Every row carries the
-- journal sequence number (`seq`) of the event it came from, so a replay can never insert it
-- twice. Tables that grow with time have the time column first in their primary key, as
-- partitioning (TimescaleDB hypertables, see 0002) needs.

CREATE TABLE IF NOT EXISTS accounts (
    account_id   integer PRIMARY KEY,
    name         text NOT NULL,
    tier         text NOT NULL,
    initial_cash numeric(38, 8) NOT NULL,
    state        text NOT NULL DEFAULT 'active',
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    seq          bigint NOT NULL
);

-- Keys as their SHA-256 only: the key itself is shown once, when made, and never stored.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     integer PRIMARY KEY,
    account_id integer NOT NULL REFERENCES accounts (account_id),
    key_sha256 bytea NOT NULL UNIQUE CHECK (octet_length(key_sha256) = 32),
    feed       boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz,
    seq        bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys (account_id);

-- Signals that were answered with a client signal id, and every refusal (the audit trail).
CREATE TABLE IF NOT EXISTS signals (
    ts          timestamptz NOT NULL,
    seq         bigint NOT NULL,
    account_id  integer NOT NULL,
    signal_id   text,
    order_id    bigint,
    outcome     text NOT NULL CHECK (outcome IN ('answered', 'rejected')),
    reject_code text,
    PRIMARY KEY (ts, seq)
);
CREATE INDEX IF NOT EXISTS signals_account_ts ON signals (account_id, ts DESC);

-- One row per order, updated as it changes.
CREATE TABLE IF NOT EXISTS orders (
    order_id    bigint PRIMARY KEY,
    account_id  integer NOT NULL,
    symbol      text NOT NULL,
    side        text NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type  text NOT NULL,
    tif         text NOT NULL,
    qty         numeric(38, 8) NOT NULL,
    limit_price numeric(38, 8),
    strategy    text NOT NULL DEFAULT '',
    status      text NOT NULL,
    filled_qty  numeric(38, 8) NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    seq         bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_account_created ON orders (account_id, created_at DESC);

CREATE TABLE IF NOT EXISTS fills (
    ts         timestamptz NOT NULL,
    seq        bigint NOT NULL,
    order_id   bigint NOT NULL,
    account_id integer NOT NULL,
    symbol     text NOT NULL,
    side       text NOT NULL CHECK (side IN ('buy', 'sell')),
    qty        numeric(38, 8) NOT NULL,
    price      numeric(38, 8) NOT NULL,
    notional   numeric(38, 8) NOT NULL,
    fee        numeric(38, 8) NOT NULL,
    -- P&L this fill realized (0 when it only opened or added to a position).
    realized   numeric(38, 8) NOT NULL,
    PRIMARY KEY (ts, seq)
);
-- Keyset pagination of GET /v1/trades: per account, newest first, by (ts, seq).
CREATE INDEX IF NOT EXISTS fills_account_ts ON fills (account_id, ts DESC, seq DESC);
CREATE INDEX IF NOT EXISTS fills_account_symbol_ts ON fills (account_id, symbol, ts DESC, seq DESC);

-- Positions over time: for each offload batch, the state at its end of every position it changed
-- (`seq` and `ts` are those of the position's last fill in the batch).
CREATE TABLE IF NOT EXISTS position_snapshots (
    ts         timestamptz NOT NULL,
    seq        bigint NOT NULL,
    account_id integer NOT NULL,
    symbol     text NOT NULL,
    qty        numeric(38, 8) NOT NULL,
    cost       numeric(38, 8) NOT NULL,
    realized   numeric(38, 8) NOT NULL,
    fees       numeric(38, 8) NOT NULL,
    PRIMARY KEY (ts, seq)
);
CREATE INDEX IF NOT EXISTS position_snapshots_account ON position_snapshots (account_id, symbol, ts DESC);

-- Quotes (top of book) as the node saw them.
CREATE TABLE IF NOT EXISTS market_data (
    ts       timestamptz NOT NULL,
    seq      bigint NOT NULL,
    symbol   text NOT NULL,
    bid      numeric(38, 8) NOT NULL,
    ask      numeric(38, 8) NOT NULL,
    bid_size numeric(38, 8) NOT NULL,
    ask_size numeric(38, 8) NOT NULL,
    PRIMARY KEY (ts, seq)
);
CREATE INDEX IF NOT EXISTS market_data_symbol_ts ON market_data (symbol, ts DESC);

-- How far each node's journal has been offloaded: committed in the same transaction as the rows.
CREATE TABLE IF NOT EXISTS offload_cursor (
    node       text PRIMARY KEY,
    last_seq   bigint NOT NULL CHECK (last_seq >= 0),
    updated_at timestamptz NOT NULL
);
