//! The SQLite ledger (sqlx): embedded and durable. One writer connection, so
//! transactions serialise without SQLITE_BUSY; WAL with `synchronous = NORMAL` for
//! files. The UNIQUE (child_id, direction, idem_key) index is what makes crediting
//! idempotent, and CHECK (balance_cents >= 0) backs up the withdraw rule.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::{
    AccountKey, AccountState, Award, Credit, CreditOutcome, Cursor, Entry, EntryKind, HistoryPage,
    Ledger, LedgerCleanup, LedgerError, LedgerOptions, LedgerSnapshot, WithdrawOutcome, Withdrawal,
    check_batch, check_limit,
};
use crate::ChildId;
use crate::order_no::OrderNo;

/// `SELECT <every entry column> FROM entries <rest>`, as one `&'static str`
/// (sqlx 0.9 takes only static SQL), so the column list `entry_from_row` reads
/// is written once.
macro_rules! select_entries {
    ($rest:literal) => {
        concat!(
            "SELECT seq, child_id, act_id, direction, idem_key, award_type, amount_cents, asset_id, batch, at_ms FROM entries ",
            $rest
        )
    };
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Ledger in a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteLedger {
    pool: SqlitePool,
}

fn store(e: sqlx::Error) -> LedgerError {
    LedgerError::Store(e.to_string())
}

/// SQLite stores signed 64-bit integers; every value we write is below `i64::MAX`
/// (act ids are checked at parse time, amounts by caps), so this only fails on a bug.
fn to_i64(value: u64, what: &str) -> Result<i64, LedgerError> {
    i64::try_from(value).map_err(|_| {
        LedgerError::Misuse(format!(
            "{what} {value} does not fit a signed 64-bit column"
        ))
    })
}

fn to_u64(value: i64, what: &str) -> Result<u64, LedgerError> {
    u64::try_from(value).map_err(|_| LedgerError::Corrupt(format!("{what} is negative: {value}")))
}

impl SqliteLedger {
    /// Open with the tables `options` names. STUB: shadow tables are being written.
    pub async fn connect_with(url: &str, options: LedgerOptions) -> Result<Self, LedgerError> {
        let _ = options;
        Self::connect(url).await
    }

    /// Delete every row of the shadow tables. STUB.
    pub async fn purge_shadow(&self) -> Result<LedgerCleanup, LedgerError> {
        Err(LedgerError::Misuse("not built yet".to_owned()))
    }

    /// Open (creating if missing) the database a `sqlite:` URL names and migrate it.
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        let bad_url = |why: String| LedgerError::BadUrl {
            url: url.to_owned(),
            why,
        };
        let options = SqliteConnectOptions::from_str(url).map_err(|e| bad_url(e.to_string()))?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = if in_memory {
            options
        } else {
            options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
        };
        // One connection: SQLite has one writer anyway, and an in-memory database
        // lives exactly as long as its connection, so it must never be recycled.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|e| bad_url(format!("cannot open: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| LedgerError::Migration(e.to_string()))?;
        Ok(Self { pool })
    }

    async fn find(
        tx: &mut Transaction<'_, Sqlite>,
        child_id: ChildId,
        direction: &'static str,
        idem_key: &str,
    ) -> Result<Option<Entry>, LedgerError> {
        let row = sqlx::query(select_entries!(
            "WHERE child_id = ? AND direction = ? AND idem_key = ?"
        ))
        .bind(to_i64(child_id, "child_id")?)
        .bind(direction)
        .bind(idem_key.to_owned())
        .fetch_optional(&mut **tx)
        .await
        .map_err(store)?;
        row.map(|r| entry_from_row(&r)).transpose()
    }

    async fn insert_entry(
        tx: &mut Transaction<'_, Sqlite>,
        account: AccountKey,
        at_ms: u64,
        kind: &EntryKind,
    ) -> Result<u64, LedgerError> {
        let (direction, idem_key, award_type, amount, asset_id, batch) = match kind {
            EntryKind::Credit { order_no, award } => {
                let (asset_id, batch) = match award {
                    Award::Cash { .. } => (None, None),
                    Award::Coupon { template_id, batch } => (
                        Some(to_i64(*template_id, "template_id")?),
                        Some(batch.clone()),
                    ),
                    Award::Pendant { pendant_id } => {
                        (Some(to_i64(*pendant_id, "pendant_id")?), None)
                    }
                };
                (
                    "credit",
                    order_no.to_string(),
                    Some(award.award_type().name()),
                    award.cash_cents(),
                    asset_id,
                    batch,
                )
            }
            EntryKind::Withdrawal {
                withdraw_no,
                amount_cents,
            } => (
                "withdrawal",
                withdraw_no.clone(),
                None,
                *amount_cents,
                None,
                None,
            ),
        };
        let seq: i64 = sqlx::query(
            "INSERT INTO entries (child_id, act_id, direction, idem_key, award_type, amount_cents, asset_id, batch, at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        )
        .bind(to_i64(account.child_id, "child_id")?)
        .bind(to_i64(account.act_id, "act_id")?)
        .bind(direction)
        .bind(idem_key)
        .bind(award_type)
        .bind(to_i64(amount, "amount_cents")?)
        .bind(asset_id)
        .bind(batch)
        .bind(to_i64(at_ms, "at_ms")?)
        .fetch_one(&mut **tx)
        .await
        .map_err(store)?
        .try_get(0)
        .map_err(store)?;
        to_u64(seq, "seq")
    }

    async fn read_account(
        executor: impl sqlx::SqliteExecutor<'_>,
        key: AccountKey,
    ) -> Result<AccountState, LedgerError> {
        let row = sqlx::query(
            "SELECT balance_cents, credited_cents, withdrawn_cents FROM accounts WHERE child_id = ? AND act_id = ?",
        )
        .bind(to_i64(key.child_id, "child_id")?)
        .bind(to_i64(key.act_id, "act_id")?)
        .fetch_optional(executor)
        .await
        .map_err(store)?;
        match row {
            None => Ok(AccountState::empty(key)),
            Some(row) => account_from_row(key, &row),
        }
    }
}

fn get_i64(row: &SqliteRow, column: &str) -> Result<i64, LedgerError> {
    row.try_get::<i64, _>(column)
        .map_err(|e| LedgerError::Corrupt(format!("column {column}: {e}")))
}

fn get_u64(row: &SqliteRow, column: &str) -> Result<u64, LedgerError> {
    to_u64(get_i64(row, column)?, column)
}

fn account_from_row(key: AccountKey, row: &SqliteRow) -> Result<AccountState, LedgerError> {
    Ok(AccountState {
        key,
        balance_cents: get_u64(row, "balance_cents")?,
        credited_cents: get_u64(row, "credited_cents")?,
        withdrawn_cents: get_u64(row, "withdrawn_cents")?,
    })
}

fn entry_from_row(row: &SqliteRow) -> Result<Entry, LedgerError> {
    let corrupt = |what: String| LedgerError::Corrupt(what);
    let direction: String = row
        .try_get("direction")
        .map_err(|e| corrupt(e.to_string()))?;
    let idem_key: String = row
        .try_get("idem_key")
        .map_err(|e| corrupt(e.to_string()))?;
    let amount_cents = get_u64(row, "amount_cents")?;
    let kind = match direction.as_str() {
        "credit" => {
            let order_no: OrderNo = idem_key
                .parse()
                .map_err(|e| corrupt(format!("entry order number: {e}")))?;
            let award_type: Option<String> = row
                .try_get("award_type")
                .map_err(|e| corrupt(e.to_string()))?;
            let asset_id: Option<i64> = row
                .try_get("asset_id")
                .map_err(|e| corrupt(e.to_string()))?;
            let batch: Option<String> = row.try_get("batch").map_err(|e| corrupt(e.to_string()))?;
            let asset = || {
                asset_id
                    .ok_or_else(|| corrupt(format!("{order_no}: asset_id missing")))
                    .and_then(|a| to_u64(a, "asset_id"))
            };
            let award = match award_type.as_deref() {
                Some("cash") => Award::Cash { amount_cents },
                Some("coupon") => Award::Coupon {
                    template_id: asset()?,
                    batch: batch
                        .ok_or_else(|| corrupt(format!("{order_no}: coupon without batch")))?,
                },
                Some("pendant") => Award::Pendant {
                    pendant_id: asset()?,
                },
                other => return Err(corrupt(format!("{order_no}: award type {other:?}"))),
            };
            EntryKind::Credit { order_no, award }
        }
        "withdrawal" => EntryKind::Withdrawal {
            withdraw_no: idem_key,
            amount_cents,
        },
        other => return Err(corrupt(format!("direction {other:?}"))),
    };
    Ok(Entry {
        seq: get_u64(row, "seq")?,
        account: AccountKey {
            child_id: get_u64(row, "child_id")?,
            act_id: get_u64(row, "act_id")?,
        },
        at_ms: get_u64(row, "at_ms")?,
        kind,
    })
}

#[async_trait]
impl Ledger for SqliteLedger {
    async fn credit_batch(&self, credits: &[Credit]) -> Result<Vec<CreditOutcome>, LedgerError> {
        check_batch(credits)?;
        let mut tx = self.pool.begin().await.map_err(store)?;
        let mut outcomes = Vec::with_capacity(credits.len());
        for credit in credits {
            let idem_key = credit.order_no.to_string();
            if let Some(first) =
                Self::find(&mut tx, credit.account.child_id, "credit", &idem_key).await?
            {
                outcomes.push(if first.matches_credit(credit) {
                    CreditOutcome::Duplicate { entry: first }
                } else {
                    CreditOutcome::Conflict { first }
                });
                continue;
            }
            let kind = EntryKind::Credit {
                order_no: credit.order_no.clone(),
                award: credit.award.clone(),
            };
            let seq = Self::insert_entry(&mut tx, credit.account, credit.at_ms, &kind).await?;
            let cents = to_i64(credit.award.cash_cents(), "amount_cents")?;
            sqlx::query(
                "INSERT INTO accounts (child_id, act_id, balance_cents, credited_cents, withdrawn_cents) \
                 VALUES (?, ?, ?, ?, 0) ON CONFLICT (child_id, act_id) DO UPDATE SET \
                 balance_cents = balance_cents + excluded.balance_cents, \
                 credited_cents = credited_cents + excluded.credited_cents",
            )
            .bind(to_i64(credit.account.child_id, "child_id")?)
            .bind(to_i64(credit.account.act_id, "act_id")?)
            .bind(cents)
            .bind(cents)
            .execute(&mut *tx)
            .await
            .map_err(store)?;
            outcomes.push(CreditOutcome::Credited {
                entry: Entry {
                    seq,
                    account: credit.account,
                    at_ms: credit.at_ms,
                    kind,
                },
            });
        }
        tx.commit().await.map_err(store)?;
        Ok(outcomes)
    }

    async fn lookup_credit(
        &self,
        child_id: ChildId,
        order_no: &OrderNo,
    ) -> Result<Option<Entry>, LedgerError> {
        let mut tx = self.pool.begin().await.map_err(store)?;
        let found = Self::find(&mut tx, child_id, "credit", &order_no.to_string()).await?;
        tx.commit().await.map_err(store)?;
        Ok(found)
    }

    async fn withdraw(&self, withdrawal: &Withdrawal) -> Result<WithdrawOutcome, LedgerError> {
        let key = withdrawal.account;
        let mut tx = self.pool.begin().await.map_err(store)?;
        if let Some(first) =
            Self::find(&mut tx, key.child_id, "withdrawal", &withdrawal.withdraw_no).await?
        {
            tx.commit().await.map_err(store)?;
            return Ok(if first.matches_withdrawal(withdrawal) {
                WithdrawOutcome::Duplicate { entry: first }
            } else {
                WithdrawOutcome::Conflict { first }
            });
        }
        let amount = to_i64(withdrawal.amount_cents, "amount_cents")?;
        let updated = sqlx::query(
            "UPDATE accounts SET balance_cents = balance_cents - ?, withdrawn_cents = withdrawn_cents + ? \
             WHERE child_id = ? AND act_id = ? AND balance_cents >= ?",
        )
        .bind(amount)
        .bind(amount)
        .bind(to_i64(key.child_id, "child_id")?)
        .bind(to_i64(key.act_id, "act_id")?)
        .bind(amount)
        .execute(&mut *tx)
        .await
        .map_err(store)?;
        if updated.rows_affected() == 0 {
            let account = Self::read_account(&mut *tx, key).await?;
            tx.rollback().await.map_err(store)?;
            return Ok(WithdrawOutcome::InsufficientBalance {
                balance_cents: account.balance_cents,
            });
        }
        let kind = EntryKind::Withdrawal {
            withdraw_no: withdrawal.withdraw_no.clone(),
            amount_cents: withdrawal.amount_cents,
        };
        let seq = Self::insert_entry(&mut tx, key, withdrawal.at_ms, &kind).await?;
        let account = Self::read_account(&mut *tx, key).await?;
        tx.commit().await.map_err(store)?;
        let entry = Entry {
            seq,
            account: key,
            at_ms: withdrawal.at_ms,
            kind,
        };
        Ok(WithdrawOutcome::Withdrawn {
            entry,
            balance_after_cents: account.balance_cents,
        })
    }

    async fn account(&self, key: AccountKey) -> Result<AccountState, LedgerError> {
        Self::read_account(&self.pool, key).await
    }

    async fn history(
        &self,
        key: AccountKey,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<HistoryPage, LedgerError> {
        check_limit(limit)?;
        let before = cursor.map_or(i64::MAX, |c| {
            i64::try_from(c.before_seq).unwrap_or(i64::MAX)
        });
        // One row more than the page tells whether a next page exists.
        let rows = sqlx::query(select_entries!(
            "WHERE child_id = ? AND act_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
        ))
        .bind(to_i64(key.child_id, "child_id")?)
        .bind(to_i64(key.act_id, "act_id")?)
        .bind(before)
        .bind(to_i64(limit as u64 + 1, "limit")?)
        .fetch_all(&self.pool)
        .await
        .map_err(store)?;
        let mut entries = rows
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next = if more {
            entries.last().map(|e| Cursor { before_seq: e.seq })
        } else {
            None
        };
        Ok(HistoryPage { entries, next })
    }

    async fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError> {
        let rows = sqlx::query(select_entries!("ORDER BY seq"))
            .fetch_all(&self.pool)
            .await
            .map_err(store)?;
        let entries = rows
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let rows = sqlx::query(
            "SELECT child_id, act_id, balance_cents, credited_cents, withdrawn_cents FROM accounts ORDER BY child_id, act_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(store)?;
        let accounts = rows
            .iter()
            .map(|row| {
                let key = AccountKey {
                    child_id: get_u64(row, "child_id")?,
                    act_id: get_u64(row, "act_id")?,
                };
                account_from_row(key, row)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LedgerSnapshot { entries, accounts })
    }
}
