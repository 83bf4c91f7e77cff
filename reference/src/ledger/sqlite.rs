//! The SQLite ledger (sqlx): embedded and durable. One writer connection, so
//! transactions serialise without SQLITE_BUSY; WAL with `synchronous = NORMAL` for
//! files. The UNIQUE (child_id, direction, idem_key) index is what makes crediting
//! idempotent, and CHECK (balance_cents >= 0) backs up the withdraw rule.
//!
//! The same database holds the real tables and the `shadow_` ones; a ledger uses
//! exactly one pair, fixed when it is opened.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Sqlite, Transaction};

use super::sql::{
    ACCOUNT_COLUMNS, AccountRow, EntryRow, EntryValues, Tables, entries, entry_columns,
    history_before, history_page, store, to_i64, to_u64,
};
use super::{
    AccountKey, AccountState, Credit, CreditOutcome, Cursor, Entry, EntryKind, HistoryPage, Ledger,
    LedgerCleanup, LedgerError, LedgerOptions, LedgerSnapshot, WithdrawOutcome, Withdrawal,
    check_batch, check_limit,
};
use crate::ChildId;
use crate::order_no::OrderNo;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Ledger in a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteLedger {
    pool: SqlitePool,
    options: LedgerOptions,
    sql: Arc<Statements>,
}

/// Every statement of one ledger, built once from its table names (never from
/// input), so each is safe to pass as [`AssertSqlSafe`] and sqlx caches it
/// prepared by its text.
#[derive(Debug)]
struct Statements {
    find: Arc<str>,
    insert_entry: Arc<str>,
    credit_account: Arc<str>,
    debit_account: Arc<str>,
    read_account: Arc<str>,
    history: Arc<str>,
    all_entries: Arc<str>,
    all_accounts: Arc<str>,
    purge_entries: Arc<str>,
    purge_accounts: Arc<str>,
}

impl Statements {
    fn new(tables: &Tables) -> Self {
        let Tables { entries, accounts } = tables;
        let columns = entry_columns("idem_key");
        let sql = |text: String| Arc::<str>::from(text);
        Self {
            find: sql(format!(
                "SELECT {columns} FROM {entries} WHERE child_id = ? AND direction = ? AND idem_key = ?"
            )),
            insert_entry: sql(format!(
                "INSERT INTO {entries} (child_id, act_id, direction, idem_key, award_type, \
                 amount_cents, asset_id, batch, at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq"
            )),
            credit_account: sql(format!(
                "INSERT INTO {accounts} (child_id, act_id, balance_cents, credited_cents, withdrawn_cents) \
                 VALUES (?, ?, ?, ?, 0) ON CONFLICT (child_id, act_id) DO UPDATE SET \
                 balance_cents = balance_cents + excluded.balance_cents, \
                 credited_cents = credited_cents + excluded.credited_cents"
            )),
            debit_account: sql(format!(
                "UPDATE {accounts} SET balance_cents = balance_cents - ?, \
                 withdrawn_cents = withdrawn_cents + ? \
                 WHERE child_id = ? AND act_id = ? AND balance_cents >= ?"
            )),
            read_account: sql(format!(
                "SELECT {ACCOUNT_COLUMNS} FROM {accounts} WHERE child_id = ? AND act_id = ?"
            )),
            history: sql(format!(
                "SELECT {columns} FROM {entries} WHERE child_id = ? AND act_id = ? AND seq < ? \
                 ORDER BY seq DESC LIMIT ?"
            )),
            all_entries: sql(format!("SELECT {columns} FROM {entries} ORDER BY seq")),
            all_accounts: sql(format!(
                "SELECT {ACCOUNT_COLUMNS} FROM {accounts} ORDER BY child_id, act_id"
            )),
            purge_entries: sql(format!("DELETE FROM {entries}")),
            purge_accounts: sql(format!("DELETE FROM {accounts}")),
        }
    }
}

/// A statement of [`Statements`], for sqlx.
fn sql(statement: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(statement))
}

impl SqliteLedger {
    /// Open (creating if missing) the database a `sqlite:` URL names, migrate it,
    /// and use the real tables.
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        Self::connect_with(url, LedgerOptions::default()).await
    }

    /// Open (creating if missing) the database a `sqlite:` URL names, migrate it,
    /// and use the tables `options` names.
    pub async fn connect_with(url: &str, options: LedgerOptions) -> Result<Self, LedgerError> {
        let bad_url = |why: String| LedgerError::BadUrl {
            url: url.to_owned(),
            why,
        };
        let connect = SqliteConnectOptions::from_str(url).map_err(|e| bad_url(e.to_string()))?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let connect = if in_memory {
            connect
        } else {
            connect
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
            .connect_with(connect)
            .await
            .map_err(|e| bad_url(format!("cannot open: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| LedgerError::Migration(e.to_string()))?;
        Ok(Self {
            pool,
            options,
            sql: Arc::new(Statements::new(&Tables::new(options))),
        })
    }

    /// Delete every row of the shadow tables in one transaction; refused on a
    /// ledger opened on the real tables.
    pub async fn purge_shadow(&self) -> Result<LedgerCleanup, LedgerError> {
        if !self.options.shadow {
            return Err(LedgerError::Misuse(
                "purge_shadow on a ledger of the real tables".to_owned(),
            ));
        }
        let mut tx = self.pool.begin().await.map_err(store)?;
        let entries = sqlx::query(sql(&self.sql.purge_entries))
            .execute(&mut *tx)
            .await
            .map_err(store)?
            .rows_affected();
        let accounts = sqlx::query(sql(&self.sql.purge_accounts))
            .execute(&mut *tx)
            .await
            .map_err(store)?
            .rows_affected();
        tx.commit().await.map_err(store)?;
        Ok(LedgerCleanup { entries, accounts })
    }

    async fn find(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        child_id: ChildId,
        direction: &'static str,
        idem_key: &str,
    ) -> Result<Option<Entry>, LedgerError> {
        let row: Option<EntryRow> = sqlx::query_as(sql(&self.sql.find))
            .bind(to_i64(child_id, "child_id")?)
            .bind(direction)
            .bind(idem_key.to_owned())
            .fetch_optional(&mut **tx)
            .await
            .map_err(store)?;
        row.map(EntryRow::into_entry).transpose()
    }

    async fn insert_entry(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        account: AccountKey,
        at_ms: u64,
        kind: &EntryKind,
    ) -> Result<u64, LedgerError> {
        let v = EntryValues::new(account, at_ms, kind)?;
        let (seq,): (i64,) = sqlx::query_as(sql(&self.sql.insert_entry))
            .bind(v.child_id)
            .bind(v.act_id)
            .bind(v.direction)
            .bind(v.idem_key)
            .bind(v.award_type)
            .bind(v.amount_cents)
            .bind(v.asset_id)
            .bind(v.batch)
            .bind(v.at_ms)
            .fetch_one(&mut **tx)
            .await
            .map_err(store)?;
        to_u64(seq, "seq")
    }

    async fn read_account(
        &self,
        executor: impl sqlx::SqliteExecutor<'_>,
        key: AccountKey,
    ) -> Result<AccountState, LedgerError> {
        let row: Option<AccountRow> = sqlx::query_as(sql(&self.sql.read_account))
            .bind(to_i64(key.child_id, "child_id")?)
            .bind(to_i64(key.act_id, "act_id")?)
            .fetch_optional(executor)
            .await
            .map_err(store)?;
        row.map_or(Ok(AccountState::empty(key)), AccountRow::into_state)
    }
}

#[async_trait]
impl Ledger for SqliteLedger {
    async fn credit_batch(&self, credits: &[Credit]) -> Result<Vec<CreditOutcome>, LedgerError> {
        check_batch(credits)?;
        let mut tx = self.pool.begin().await.map_err(store)?;
        let mut outcomes = Vec::with_capacity(credits.len());
        for credit in credits {
            let idem_key = credit.order_no.to_string();
            if let Some(first) = self
                .find(&mut tx, credit.account.child_id, "credit", &idem_key)
                .await?
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
            let seq = self
                .insert_entry(&mut tx, credit.account, credit.at_ms, &kind)
                .await?;
            let cents = to_i64(credit.award.cash_cents(), "amount_cents")?;
            sqlx::query(sql(&self.sql.credit_account))
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
        let found = self
            .find(&mut tx, child_id, "credit", &order_no.to_string())
            .await?;
        tx.commit().await.map_err(store)?;
        Ok(found)
    }

    async fn withdraw(&self, withdrawal: &Withdrawal) -> Result<WithdrawOutcome, LedgerError> {
        let key = withdrawal.account;
        let mut tx = self.pool.begin().await.map_err(store)?;
        if let Some(first) = self
            .find(&mut tx, key.child_id, "withdrawal", &withdrawal.withdraw_no)
            .await?
        {
            tx.commit().await.map_err(store)?;
            return Ok(if first.matches_withdrawal(withdrawal) {
                WithdrawOutcome::Duplicate { entry: first }
            } else {
                WithdrawOutcome::Conflict { first }
            });
        }
        let amount = to_i64(withdrawal.amount_cents, "amount_cents")?;
        let updated = sqlx::query(sql(&self.sql.debit_account))
            .bind(amount)
            .bind(amount)
            .bind(to_i64(key.child_id, "child_id")?)
            .bind(to_i64(key.act_id, "act_id")?)
            .bind(amount)
            .execute(&mut *tx)
            .await
            .map_err(store)?;
        if updated.rows_affected() == 0 {
            let account = self.read_account(&mut *tx, key).await?;
            tx.rollback().await.map_err(store)?;
            return Ok(WithdrawOutcome::InsufficientBalance {
                balance_cents: account.balance_cents,
            });
        }
        let kind = EntryKind::Withdrawal {
            withdraw_no: withdrawal.withdraw_no.clone(),
            amount_cents: withdrawal.amount_cents,
        };
        let seq = self
            .insert_entry(&mut tx, key, withdrawal.at_ms, &kind)
            .await?;
        let account = self.read_account(&mut *tx, key).await?;
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
        self.read_account(&self.pool, key).await
    }

    async fn history(
        &self,
        key: AccountKey,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<HistoryPage, LedgerError> {
        check_limit(limit)?;
        let before = history_before(cursor);
        // One row more than the page tells whether a next page exists.
        let rows: Vec<EntryRow> = sqlx::query_as(sql(&self.sql.history))
            .bind(to_i64(key.child_id, "child_id")?)
            .bind(to_i64(key.act_id, "act_id")?)
            .bind(before)
            .bind(to_i64(limit as u64 + 1, "limit")?)
            .fetch_all(&self.pool)
            .await
            .map_err(store)?;
        history_page(rows, limit)
    }

    async fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError> {
        // One transaction, so entries and accounts are of one moment.
        let mut tx = self.pool.begin().await.map_err(store)?;
        let rows: Vec<EntryRow> = sqlx::query_as(sql(&self.sql.all_entries))
            .fetch_all(&mut *tx)
            .await
            .map_err(store)?;
        let accounts: Vec<AccountRow> = sqlx::query_as(sql(&self.sql.all_accounts))
            .fetch_all(&mut *tx)
            .await
            .map_err(store)?;
        tx.commit().await.map_err(store)?;
        Ok(LedgerSnapshot {
            entries: entries(rows)?,
            accounts: accounts
                .into_iter()
                .map(AccountRow::into_state)
                .collect::<Result<_, _>>()?,
        })
    }
}
