-- Shadow tables: the same shape as `accounts` and `entries` (0001), for shadow
-- traffic that must never touch the real tables. A ledger opened with
-- `LedgerOptions::shadow()` uses these and nothing else; `purge_shadow` empties them.
CREATE TABLE shadow_accounts (
    child_id        INTEGER NOT NULL,
    act_id          INTEGER NOT NULL,
    balance_cents   INTEGER NOT NULL CHECK (balance_cents >= 0),
    credited_cents  INTEGER NOT NULL CHECK (credited_cents >= 0),
    withdrawn_cents INTEGER NOT NULL CHECK (withdrawn_cents >= 0),
    PRIMARY KEY (child_id, act_id)
) WITHOUT ROWID;

CREATE TABLE shadow_entries (
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

CREATE INDEX shadow_entries_by_account ON shadow_entries (child_id, act_id, seq);
