-- The PostgreSQL ledger: the same tables, columns and meaning as the SQLite
-- schema (reference/migrations/sqlite).

-- Accounts per (child activity, user). The CHECKs are the last line of defence:
-- a balance below zero aborts the transaction that tried it.
CREATE TABLE accounts (
    child_id        BIGINT NOT NULL,
    act_id          BIGINT NOT NULL,
    balance_cents   BIGINT NOT NULL CHECK (balance_cents >= 0),
    credited_cents  BIGINT NOT NULL CHECK (credited_cents >= 0),
    withdrawn_cents BIGINT NOT NULL CHECK (withdrawn_cents >= 0),
    PRIMARY KEY (child_id, act_id)
);

-- Every posting, `seq` in posting order. `idem_key` is the order number (credits)
-- or the withdraw number (withdrawals); the UNIQUE constraint is what makes
-- crediting idempotent.
CREATE TABLE entries (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    child_id     BIGINT NOT NULL,
    act_id       BIGINT NOT NULL,
    direction    TEXT   NOT NULL CHECK (direction IN ('credit', 'withdrawal')),
    idem_key     TEXT   NOT NULL,
    award_type   TEXT   CHECK (award_type IN ('cash', 'coupon', 'pendant')),
    amount_cents BIGINT NOT NULL CHECK (amount_cents >= 0),
    asset_id     BIGINT,
    batch        TEXT,
    at_ms        BIGINT NOT NULL,
    UNIQUE (child_id, direction, idem_key)
);

CREATE INDEX entries_by_account ON entries (child_id, act_id, seq);

-- Shadow tables for shadow traffic: LIKE … INCLUDING ALL copies columns,
-- constraints, indexes and the identity (with a sequence of its own), so they
-- are the real tables' shape by construction.
CREATE TABLE shadow_accounts (LIKE accounts INCLUDING ALL);
CREATE TABLE shadow_entries (LIKE entries INCLUDING ALL);
