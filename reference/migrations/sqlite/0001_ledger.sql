-- Accounts per (child activity, user). The CHECKs are the last line of defence:
-- a balance below zero aborts the transaction that tried it.
CREATE TABLE accounts (
    child_id        INTEGER NOT NULL,
    act_id          INTEGER NOT NULL,
    balance_cents   INTEGER NOT NULL CHECK (balance_cents >= 0),
    credited_cents  INTEGER NOT NULL CHECK (credited_cents >= 0),
    withdrawn_cents INTEGER NOT NULL CHECK (withdrawn_cents >= 0),
    PRIMARY KEY (child_id, act_id)
) WITHOUT ROWID;

-- Every posting. `idem_key` is the order number (credits) or withdraw number
-- (withdrawals); the UNIQUE constraint is what makes crediting idempotent.
CREATE TABLE entries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    child_id     INTEGER NOT NULL,
    act_id       INTEGER NOT NULL,
    direction    TEXT    NOT NULL CHECK (direction IN ('credit', 'withdrawal')),
    idem_key     TEXT    NOT NULL,
    award_type   TEXT    CHECK (award_type IN ('cash', 'coupon', 'pendant')),
    amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
    asset_id     INTEGER,
    batch        TEXT,
    at_ms        INTEGER NOT NULL,
    UNIQUE (child_id, direction, idem_key)
);

CREATE INDEX entries_by_account ON entries (child_id, act_id, seq);
