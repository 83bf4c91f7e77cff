-- The MariaDB/MySQL ledger: the same tables, columns and meaning as the SQLite
-- schema (reference/migrations/sqlite), in InnoDB. CHECK constraints are enforced
-- (MariaDB >= 10.2, MySQL >= 8.0.16): a balance below zero aborts the statement.

-- Accounts per (child activity, user).
CREATE TABLE accounts (
    child_id        BIGINT NOT NULL,
    act_id          BIGINT NOT NULL,
    balance_cents   BIGINT NOT NULL CHECK (balance_cents >= 0),
    credited_cents  BIGINT NOT NULL CHECK (credited_cents >= 0),
    withdrawn_cents BIGINT NOT NULL CHECK (withdrawn_cents >= 0),
    PRIMARY KEY (child_id, act_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Every posting, `seq` in posting order. `idem_key` is the order number (credits)
-- or the withdraw number (withdrawals); the UNIQUE key on it is what makes
-- crediting idempotent. It is VARBINARY so keys compare byte for byte: a text
-- collation would make `W1` equal `w1` (`_ci`) or `w1 ` equal `w1` (PAD SPACE).
CREATE TABLE entries (
    seq          BIGINT NOT NULL AUTO_INCREMENT,
    child_id     BIGINT NOT NULL,
    act_id       BIGINT NOT NULL,
    direction    VARCHAR(10) CHARACTER SET ascii NOT NULL
                 CHECK (direction IN ('credit', 'withdrawal')),
    idem_key     VARBINARY(255) NOT NULL,
    award_type   VARCHAR(8) CHARACTER SET ascii NULL
                 CHECK (award_type IN ('cash', 'coupon', 'pendant')),
    amount_cents BIGINT NOT NULL CHECK (amount_cents >= 0),
    asset_id     BIGINT NULL,
    batch        VARCHAR(255) NULL,
    at_ms        BIGINT NOT NULL,
    PRIMARY KEY (seq),
    UNIQUE KEY entries_idem (child_id, direction, idem_key),
    KEY entries_by_account (child_id, act_id, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Shadow tables for shadow traffic: LIKE copies columns, keys, CHECKs and the
-- AUTO_INCREMENT column, so they are the real tables' shape by construction.
CREATE TABLE shadow_accounts LIKE accounts;
CREATE TABLE shadow_entries LIKE entries;
